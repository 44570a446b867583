"""What a domain score shows the user: a text report and a histogram plot.

Both read the results of :func:`.inversion.domain_reference` and :func:`.inversion.domain_score`;
nothing here computes a statistic.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .inversion import DomainReference, DomainScore


def domain_report(reference: DomainReference, score: DomainScore) -> str:
    """The reference's size and thresholds, then one line per scored latent (features, p-value, verdict)."""
    n_in = int(score.in_domain.sum())
    lines = [
        f"reference: {reference.fit.count} latents, {reference.fit.dim} values each, scalar variance "
        f"{reference.fit.var:.4g}; thresholds at the {reference.percentile:g}th percentile of leave-one-out scores:",
    ]
    for name, (lo, hi) in reference.thresholds.items():
        lines.append(f"  {name}: [{lo:.5g}, {hi:.5g}]")
    lines.append(f"scored: {n_in} of {len(score.in_domain)} in-domain")
    lines.append("index  distance  p_value  mean_pair_distance  mean_angle  verdict")
    f = score.features
    for i in range(len(score.in_domain)):
        lines.append(
            f"{i:5d}  {float(f['distance'][i]):8.4f}  {float(score.p_value[i]):7.3f}  "
            f"{float(f['mean_pair_distance'][i]):18.4f}  {float(f['mean_angle'][i]):10.3f}  "
            f"{'in-domain' if bool(score.in_domain[i]) else 'out-of-domain'}"
        )
    return "\n".join(lines)


def domain_plot(
    reference: DomainReference, score: DomainScore, width: int = 640, height: int = 320
) -> torch.Tensor:
    """Histogram of the reference's leave-one-out distances, the threshold, and ticks at the scored
    latents (green in-domain, red out). Returns an image ``[1, height, width, 3]`` float32 in [0, 1]."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    ref = reference.loo["distance"].numpy()
    test = score.features["distance"].numpy()
    thr = reference.thresholds["distance"][1]
    lo = float(min(ref.min(), test.min(), thr))
    hi = float(max(ref.max(), test.max(), thr))
    pad = 0.05 * (hi - lo) + 1e-9
    lo, hi = lo - pad, hi + pad
    left, right, top, bottom = 40, width - 15, 30, height - 60

    def xpos(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (right - left)

    bins = 30
    counts, edges = np.histogram(ref, bins=bins, range=(lo, hi))
    peak = max(int(counts.max()), 1)
    for c, e0, e1 in zip(counts, edges[:-1], edges[1:]):
        if c:
            draw.rectangle(
                [xpos(e0), bottom - (bottom - top) * c / peak, xpos(e1) - 1, bottom], fill=(150, 170, 200)
            )
    draw.line([left, bottom, right, bottom], fill=(0, 0, 0))
    draw.line([xpos(thr), top - 10, xpos(thr), bottom], fill=(200, 30, 30), width=2)
    draw.text(
        (xpos(thr) + 4, top - 12), f"threshold {thr:.4g} ({reference.percentile:g}th pct)", fill=(200, 30, 30)
    )
    for v, ok in zip(test, score.in_domain.tolist()):
        colour = (30, 150, 60) if ok else (210, 60, 30)
        draw.line([xpos(float(v)), bottom + 5, xpos(float(v)), bottom + 25], fill=colour, width=2)
    for v in np.linspace(lo, hi, 5):
        draw.text((xpos(float(v)) - 12, bottom + 30), f"{v:.3g}", fill=(0, 0, 0))
    draw.text(
        (left, 8),
        "normalised distance to the reference Gaussian: bars = reference (leave-one-out), "
        "ticks = scored (green in / red out)",
        fill=(0, 0, 0),
    )
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    return arr[None]

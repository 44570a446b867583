"""Tiled diffusion: per-step tile plans and the blending of per-tile predictions.

Methods (all in latent units; a *step* is one sampler step, identified by an integer key):

- ``fstd`` -- Fast Seamless Tiled Diffusion (Any-Size-Diffusion, arXiv 2308.16582). A grid of
  ceil(H/th) x ceil(W/tw) **non-overlapping** tiles whose origin is shifted by a random offset
  (oy, ox), each drawn uniformly from [0, tile/2), per step; the offset is reset to (0, 0) every
  ``reset_interval`` steps. Tile origins are ``clamp(i*tile + offset, 0, size - tile)``, so the
  last tile is clamped inside the image (and overlaps its neighbour) and, when the offset is
  non-zero, the leading strips ``[0, oy)`` rows and ``[0, ox)`` columns are left uncovered.
  As in the official code (``--noise_reference``), those strips take the previous step's
  noise prediction: :func:`run_tiles` fills them from ``reference``. Seams move every step
  ("implicit overlap") at about the cost of the image area itself.
  One deliberate difference from the official loop: when two grid indices clamp to the same
  origin (the image is not a whole number of tiles and the offset pushes the last-but-one tile
  past ``size - tile``), the official code evaluates that tile twice and weights it double where
  it overlaps its neighbour; here every distinct tile is evaluated once, with its normal weight.
  Outputs are identical elsewhere (tests/kernels/test_tiled_diffusion.py ports the official loop).
- ``fstd_full`` -- the documented full-coverage variant: the same shifted grid plus one extra
  row/column of tiles at origin 0 whenever the offset is non-zero, so no reference is needed
  (costs one more row and column of tiles on shifted steps).
- ``multidiffusion`` -- overlapping tiles (stride = tile - overlap), uniform weights, averaged.
- ``mixture_of_diffusers`` -- the same tiles, Gaussian weights (variance 0.01 of the tile size).
- ``spotdiffusion`` -- non-overlapping tiles on a latent circularly shifted by a random
  (sy, sx) in [0, tile) per step; the shift is undone after blending.

Every plan is a pure function of (method, sizes, seed, step): deterministic for a given seed,
the same for every evaluation a multi-stage sampler makes within one step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch

METHODS = ("fstd", "fstd_full", "multidiffusion", "mixture_of_diffusers", "spotdiffusion")
METHOD_LABELS = {
    "FSTD": "fstd",
    "FSTD (full coverage)": "fstd_full",
    "MultiDiffusion": "multidiffusion",
    "Mixture of Diffusers": "mixture_of_diffusers",
    "SpotDiffusion": "spotdiffusion",
}
"""The methods by the names users see (the node's combo, the demo) -> ``METHODS`` keys."""
OVERLAPPING = ("multidiffusion", "mixture_of_diffusers")
"""The methods whose tiles overlap by ``overlap``; the others tile without overlap."""
GAUSSIAN_VARIANCE = 0.01  # Mixture of Diffusers / FSTD blend weights, relative to the tile size
MIN_TILE_PX = 64
"""The smallest tile side in pixels."""
TILE_MULTIPLE_PX = 8
"""Tile sides are multiples of this many pixels."""


@dataclass(frozen=True)
class Tile:
    """A tile box in latent pixels: rows [y, y+h), columns [x, x+w)."""

    y: int
    x: int
    h: int
    w: int

    def slices(self, scale_h: float = 1.0, scale_w: float = 1.0) -> tuple[slice, slice]:
        """(rows, columns) of the box; with ``scale_*``, of the same box on a grid that many times
        finer (e.g. a hint in pixels for a tile in latent pixels), edges rounded to the nearest cell."""
        y0, y1 = round(self.y * scale_h), round((self.y + self.h) * scale_h)
        x0, x1 = round(self.x * scale_w), round((self.x + self.w) * scale_w)
        return slice(y0, y1), slice(x0, x1)


def area_in_tile(area: Sequence[int], tile: Tile) -> tuple[int, int, int, int] | None:
    """An area conditioning's box clipped to ``tile`` and placed relative to the tile's origin.

    area: ComfyUI's area, whose last four entries are (h, w, y, x) in latent pixels (earlier entries,
    e.g. a frame range, are ignored). Returns (h, w, y, x) of the overlap relative to the tile, or None
    when the area does not touch the tile."""
    h, w, y, x = area[-4:]
    y0, x0 = max(y, tile.y), max(x, tile.x)
    y1, x1 = min(y + h, tile.y + tile.h), min(x + w, tile.x + tile.w)
    if y1 <= y0 or x1 <= x0:
        return None
    return y1 - y0, x1 - x0, y0 - tile.y, x0 - tile.x


@dataclass
class StepPlan:
    """What one step evaluates.

    tiles: boxes in the (possibly rolled) latent; all have the same (h, w).
    weighting: "gaussian" or "uniform" blend weights per tile.
    roll: (dy, dx) circular shift applied to the latent before tiling and undone after.
    uncovered: bool [H, W] mask of latent pixels no tile covers (FSTD's leading strips), or None.
    offset: the grid offset (oy, ox) this step used (FSTD), for display and tests.
    """

    tiles: list[Tile]
    weighting: str
    roll: tuple[int, int] = (0, 0)
    uncovered: torch.Tensor | None = None
    offset: tuple[int, int] = (0, 0)
    image_hw: tuple[int, int] = field(default=(0, 0))

    @property
    def tile_area_ratio(self) -> float:
        """Latent area evaluated this step / image area (1.0 = no overlap work)."""
        h, w = self.image_hw
        return sum(t.h * t.w for t in self.tiles) / float(h * w)


def _grid_origins(size: int, tile: int, offset: int) -> list[int]:
    """FSTD origins along one axis: clamp(i*tile + offset, 0, size - tile), i < ceil(size/tile)."""
    n = math.ceil(size / tile)
    return sorted({min(max(i * tile + offset, 0), size - tile) for i in range(n)})


def _overlap_origins(size: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread overlapping origins (ComfyUI-TiledDiffusion's split): stride <= tile - overlap."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    n = math.ceil((size - overlap) / stride)
    n = max(n, 2)
    step = (size - tile) / (n - 1)
    return sorted({min(int(i * step), size - tile) for i in range(n)})


def _step_rng(seed: int, step: int) -> torch.Generator:
    # A generator per (seed, step): plans do not depend on how often or in which order steps are
    # evaluated (Heun-type samplers evaluate some sigmas twice).
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919) % (2**63 - 1))


class TilePlanner:
    """Per-step tile plans for a latent of ``height`` x ``width`` (latent pixels).

    tile_h, tile_w: tile size in latent pixels; clamped to the latent size (``clamped`` tells).
    overlap: latent pixels of overlap for ``multidiffusion`` / ``mixture_of_diffusers``.
    reset_interval: FSTD resets its grid offset to (0, 0) on steps that are multiples of this.
    seed: makes the random offsets/shifts reproducible.
    """

    def __init__(
        self,
        method: str,
        height: int,
        width: int,
        tile_h: int,
        tile_w: int,
        overlap: int = 0,
        reset_interval: int = 4,
        seed: int = 0,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown tiling method {method!r}; expected one of {METHODS}")
        if min(height, width, tile_h, tile_w) < 1:
            raise ValueError(f"sizes must be positive, got image {height}x{width}, tile {tile_h}x{tile_w}")
        if reset_interval < 1:
            raise ValueError(f"reset_interval must be >= 1, got {reset_interval}")
        self.method, self.height, self.width = method, height, width
        self.clamped = tile_h > height or tile_w > width
        self.tile_h, self.tile_w = min(tile_h, height), min(tile_w, width)
        if method in OVERLAPPING:
            if not 0 <= overlap < min(self.tile_h, self.tile_w):
                raise ValueError(
                    f"overlap {overlap} must be in [0, tile size {min(self.tile_h, self.tile_w)})"
                )
        self.overlap = overlap
        self.reset_interval = reset_interval
        self.seed = seed

    def offset(self, step: int) -> tuple[int, int]:
        """FSTD grid offset for ``step``: (0, 0) on reset steps, else uniform in [0, tile/2)."""
        if step % self.reset_interval == 0:
            return 0, 0
        gen = _step_rng(self.seed, step)
        oy = int(torch.randint(0, max(1, self.tile_h // 2), (1,), generator=gen))
        ox = int(torch.randint(0, max(1, self.tile_w // 2), (1,), generator=gen))
        return oy, ox

    def plan(self, step: int) -> StepPlan:
        H, W, th, tw = self.height, self.width, self.tile_h, self.tile_w
        m = self.method
        if m in ("fstd", "fstd_full"):
            oy, ox = self.offset(step)
            ys, xs = _grid_origins(H, th, oy), _grid_origins(W, tw, ox)
            if m == "fstd_full":
                ys, xs = sorted({0, *ys}), sorted({0, *xs})
            uncovered = None
            if ys[0] > 0 or xs[0] > 0:  # the leading strips [0, ys[0]) rows and [0, xs[0]) columns
                uncovered = torch.zeros(H, W, dtype=torch.bool)
                uncovered[: ys[0], :] = True
                uncovered[:, : xs[0]] = True
            tiles = [Tile(y, x, th, tw) for y in ys for x in xs]
            return StepPlan(tiles, "gaussian", uncovered=uncovered, offset=(oy, ox), image_hw=(H, W))
        if m in OVERLAPPING:
            ys, xs = _overlap_origins(H, th, self.overlap), _overlap_origins(W, tw, self.overlap)
            tiles = [Tile(y, x, th, tw) for y in ys for x in xs]
            return StepPlan(tiles, "uniform" if m == "multidiffusion" else "gaussian", image_hw=(H, W))
        # spotdiffusion: non-overlapping grid on a circularly shifted latent
        gen = _step_rng(self.seed, step)
        dy = int(torch.randint(0, th, (1,), generator=gen)) if th < H else 0
        dx = int(torch.randint(0, tw, (1,), generator=gen)) if tw < W else 0
        ys, xs = _grid_origins(H, th, 0), _grid_origins(W, tw, 0)
        tiles = [Tile(y, x, th, tw) for y in ys for x in xs]
        return StepPlan(tiles, "gaussian", roll=(dy, dx), image_hw=(H, W))


@lru_cache(maxsize=32)
def _gaussian_1d(n: int) -> torch.Tensor:
    x = torch.arange(n, dtype=torch.float64)
    mu = (n - 1) / 2  # centred on both axes (ComfyUI-TiledDiffusion uses n/2 on one axis)
    g = torch.exp(-((x - mu) ** 2) / (n * n * 2 * GAUSSIAN_VARIANCE)) / math.sqrt(
        2 * math.pi * GAUSSIAN_VARIANCE
    )
    return g.float()


def blend_weights(h: int, w: int, weighting: str) -> torch.Tensor:
    """[h, w] float32 blend weights: Gaussian (variance 0.01 of the tile size) or all ones."""
    if weighting == "uniform":
        return torch.ones(h, w)
    if weighting == "gaussian":
        return torch.outer(_gaussian_1d(h), _gaussian_1d(w))
    raise ValueError(f"unknown weighting {weighting!r}")


Predict = Callable[[torch.Tensor, Sequence[Tile]], Sequence[torch.Tensor]]


def run_tiles(
    x: torch.Tensor,
    plan: StepPlan,
    predict: Predict,
    batch_size: int = 1,
    reference: Sequence[torch.Tensor | None] | None = None,
    between_batches: Callable[[], None] | None = None,
) -> list[torch.Tensor]:
    """Evaluate ``predict`` on the plan's tiles of ``x`` and blend the results.

    x: [B, C, H, W] latent (any float dtype/device).
    predict(tiles_x, tiles) -> K tensors, each [n*B, C, h, w], for tiles_x [n*B, C, h, w] stacked
        tile-major (tile 0 of every batch item, then tile 1, ...) and the n tiles it holds. K is
        the number of predictions per input (e.g. cond and uncond); each is blended separately.
    batch_size: tiles per ``predict`` call.
    reference: K tensors [B, C, H, W] (or None) used where no tile covers (FSTD's strips); if the
        plan leaves pixels uncovered and no reference is given, the uncovered pixels are an error.
    between_batches: called before every ``predict`` call (interruption checks, progress).
    Returns K blended [B, C, H, W] tensors. Memory: K latents plus one tile batch, whatever the
    number of tiles.
    """
    if x.ndim != 4:
        raise ValueError(f"tiled diffusion needs a [B, C, H, W] image latent, got shape {tuple(x.shape)}")
    if tuple(x.shape[-2:]) != tuple(plan.image_hw):
        raise ValueError(f"plan is for {plan.image_hw}, latent is {tuple(x.shape[-2:])}")
    dy, dx = plan.roll
    xr = torch.roll(x, shifts=(dy, dx), dims=(-2, -1)) if (dy or dx) else x
    B = x.shape[0]
    acc: list[torch.Tensor] | None = None
    weight_sum = torch.zeros(1, 1, *plan.image_hw, device=x.device, dtype=torch.float32)
    weights: dict[tuple[int, int], torch.Tensor] = {}  # per tile size (a plan's tiles share one)
    for start in range(0, len(plan.tiles), max(1, batch_size)):
        batch = plan.tiles[start : start + max(1, batch_size)]
        if between_batches is not None:
            between_batches()
        crops = torch.cat([xr[(..., *t.slices())] for t in batch], dim=0)
        outs = predict(crops, batch)
        if acc is None:
            acc = [torch.zeros(x.shape, device=x.device, dtype=torch.float32) for _ in outs]
        for i, t in enumerate(batch):
            w = weights.get((t.h, t.w))
            if w is None:
                w = weights[(t.h, t.w)] = blend_weights(t.h, t.w, plan.weighting).to(x.device)
            weight_sum[(..., *t.slices())] += w
            for k, out in enumerate(outs):
                acc[k][(..., *t.slices())] += out[i * B : (i + 1) * B].float() * w
    assert acc is not None
    covered = weight_sum > 0
    results = []
    for k, a in enumerate(acc):
        blended = torch.where(covered, a / weight_sum.clamp_min(1e-12), a)
        if dy or dx:
            blended = torch.roll(blended, shifts=(-dy, -dx), dims=(-2, -1))
        if plan.uncovered is not None and bool(plan.uncovered.any()):
            ref = reference[k] if reference is not None else None
            if ref is None:
                raise ValueError(
                    "this plan leaves strips uncovered and no reference prediction was given; "
                    "use the full-coverage variant or pass the previous step's prediction"
                )
            mask = plan.uncovered.to(x.device)
            blended = torch.where(mask, ref.float(), blended)
        results.append(blended.to(x.dtype))
    return results


@dataclass(frozen=True)
class TileSettings:
    """A tiled run's settings in the units a user thinks in: tile and overlap sizes in **pixels**.

    method: one of ``METHODS``; tile_batch_size: tiles per model call; reset_interval: FSTD resets
    its grid offset to (0, 0) every this many steps (4, the official default); seed: the offsets'
    and shifts' seed.
    """

    method: str = "fstd"
    tile_width: int = 512
    tile_height: int = 512
    overlap: int = 64
    tile_batch_size: int = 4
    reset_interval: int = 4
    seed: int = 0

    @classmethod
    def from_label(cls, method: str, **values) -> TileSettings:
        """The settings with ``method`` given by its label (a key of :data:`METHOD_LABELS`, as the node's
        combo and the demo show it); ``values``: the other fields."""
        return cls(method=METHOD_LABELS[method], **values)

    def latent_tile(self, ratio: int) -> tuple[int, int, int]:
        """(tile_h, tile_w, overlap) in latent pixels for a model with ``ratio`` pixels per latent pixel."""
        return max(1, self.tile_height // ratio), max(1, self.tile_width // ratio), self.overlap // ratio


def tile_size_problem(
    tile_width: int | None, tile_height: int | None, overlap: int | None, method: str | None
) -> str | None:
    """The rules on a run's tile sizes in pixels that a range cannot say, for values already in range
    (``None``: not known yet, skipped): each tile side a multiple of :data:`TILE_MULTIPLE_PX`, and for
    the :data:`OVERLAPPING` methods (``method``: a ``METHODS`` key) an overlap below the smaller side.
    Returns None, or a message naming the setting, its value and the fix."""
    m = TILE_MULTIPLE_PX
    for name, value in (("tile_width", tile_width), ("tile_height", tile_height)):
        if value is not None and value % m:
            return f"{name}={value} is not a multiple of {m}: use {value - value % m} or {value - value % m + m}."
    if method in OVERLAPPING and all(isinstance(v, int) for v in (overlap, tile_width, tile_height)):
        smallest = min(tile_width, tile_height)
        if overlap >= smallest:
            return f"overlap={overlap} must be smaller than the tile ({smallest} px): lower it, e.g. to {smallest // 8}."
    return None


TILED_STATE_TENSORS = 16
"""Latent-sized float32 tensors alive at the peak of a tiled step: per cond group the blend accumulator,
the blended output and FSTD's two references (4 x 2 groups), plus the weight sum, the sampler's state
and the sampler host's copies around it (noise, latent, noised input, output: ~8)."""


def tiled_state_bytes(batch: int, channels: int, height: int, width: int) -> int:
    """Bytes of the latent-sized state of a tiled run (:data:`TILED_STATE_TENSORS` float32 latents of
    ``batch`` x ``channels`` x ``height`` x ``width``), whatever the number of tiles."""
    return TILED_STATE_TENSORS * batch * channels * height * width * 4


def memory_fix(available: int, state: int, per_tile: int, tile_batch_size: int) -> str | None:
    """None when a tiled run fits: ``state`` bytes (:func:`tiled_state_bytes`) plus ``per_tile`` bytes of
    activations for each of ``tile_batch_size`` tiles per model call within ``available`` bytes. Else
    what to change, as the end of a sentence: the largest tile batch that fits, or smaller tiles, or a
    smaller image when the latent-sized state alone exceeds the memory."""
    if state + per_tile * tile_batch_size <= available:
        return None
    fits = (available - state) // per_tile if per_tile else 0
    if fits >= 1:
        return f"set tile_batch_size to {int(min(fits, tile_batch_size - 1))} or less"
    if state < available:
        return "use smaller tiles"
    return "generate a smaller image (the latent-sized buffers alone exceed the memory)"


def pixel_count(size) -> int | None:
    """Pixels of a size stated as one side (``512``) or a ``(height, width)`` pair; None for anything
    unusable (a bool, zero, a negative side, not numbers, not one or two values)."""
    if size is None or isinstance(size, bool):
        return None
    try:
        if isinstance(size, (int, float)):
            h = w = int(size)
        else:
            h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        return None
    return h * w if h > 0 and w > 0 else None


GroupKey = object  # any hashable naming one cond group for a whole run (None: the group is absent)
GroupPredict = Callable[[torch.Tensor, Sequence[Tile], Sequence[int]], Sequence[torch.Tensor]]


def step_of(sigma: torch.Tensor | float, sigmas: torch.Tensor | None) -> int:
    """The sampler step a model call belongs to: the index of the schedule entry nearest ``sigma``
    (``sigmas``: the run's ``[steps + 1]`` schedule), so every evaluation a multi-stage sampler makes
    at one step gets the same key. No schedule known: a stable key per sigma (``round(sigma * 1e4)``)."""
    s = float(torch.as_tensor(sigma).reshape(-1)[0])
    if sigmas is None or len(sigmas) == 0:
        return int(round(s * 1e4))
    return int(torch.argmin((sigmas.float().cpu() - s).abs()))


class TiledRun:
    """One sampling run of tiled diffusion on a ``height`` x ``width`` latent (latent pixels).

    Holds what must live for a whole run and nothing longer:
    - the planner (and, for FSTD, the full-coverage planner with the same offsets);
    - FSTD's reference: per cond group, the raw prediction ``(x - denoised) / sigma`` (noise for
      eps models, velocity for flow models) of the **first** evaluation of the most recent earlier
      sampler step. Extra evaluations inside a step (Self-Attention/Perturbed-Attention/Skip-Layer
      guidance, a second-order sampler's correction at the same sigma) never replace it. The
      reference for a strip at this step is ``x - sigma * raw_prev``, the official code's
      ``--noise_reference`` rule.
    - the fallback: a call with a group that has no earlier-step reference (the first step, a group
      first seen now, a group rebuilt every step) evaluates the full-coverage plan instead, so a
      plan never leaves a strip without a prediction.

    ``denoise(x, sigma, step, groups, predict)`` evaluates one model call; ``groups`` names each cond
    group (``None`` = absent, e.g. the uncond group at cfg 1: it gets no prediction and needs no
    reference).
    """

    def __init__(self, settings: TileSettings, height: int, width: int, ratio: int = 8):
        if settings.method not in METHODS:
            raise ValueError(f"unknown tiling method {settings.method!r}; expected one of {METHODS}")
        tile_h, tile_w, overlap = settings.latent_tile(ratio)
        overlap = min(overlap, max(0, min(tile_h, tile_w, height, width) - 1))
        self.settings = settings
        self.planner = TilePlanner(
            settings.method,
            height,
            width,
            tile_h,
            tile_w,
            overlap=overlap,
            reset_interval=settings.reset_interval,
            seed=settings.seed,
        )
        self.full = None
        if settings.method == "fstd":  # same offsets, extra tiles: used when no reference exists
            self.full = TilePlanner(
                "fstd_full",
                height,
                width,
                tile_h,
                tile_w,
                reset_interval=settings.reset_interval,
                seed=settings.seed,
            )
        self._step = None  # the step now being evaluated
        self._current: dict = {}  # group -> raw prediction, first evaluation of this step
        self._previous: dict = {}  # group -> raw prediction of the latest earlier step it ran in

    @property
    def clamped(self) -> bool:
        return self.planner.clamped

    @property
    def shape(self) -> tuple[int, int]:
        return self.planner.height, self.planner.width

    def _enter(self, step: int) -> None:
        if step != self._step:
            self._previous.update(self._current)
            self._current = {}
            self._step = step

    def plan(self, step: int, groups: Sequence[GroupKey | None]) -> StepPlan:
        """This call's plan: the method's plan, or the full-coverage one when FSTD would need a
        reference that some present group does not have."""
        self._enter(step)
        plan = self.planner.plan(step)
        if plan.uncovered is not None and any(g is not None and g not in self._previous for g in groups):
            plan = self.full.plan(step)
        return plan

    def denoise(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        step: int,
        groups: Sequence[GroupKey | None],
        predict: GroupPredict,
        between_batches: Callable[[], None] | None = None,
        batch_size: int | None = None,
    ) -> list[torch.Tensor | None]:
        """Denoised predictions [B, C, H, W] for each group (None for absent groups).

        predict(tiles_x, tiles, active) -> one tensor [n*B, C, h, w] per index in ``active`` (the
        positions of the present groups), for tiles_x stacked tile-major as in :func:`run_tiles`.
        sigma: [B] noise levels of ``x``.
        """
        active = [i for i, g in enumerate(groups) if g is not None]
        plan = self.plan(step, groups)
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        reference = None
        if plan.uncovered is not None:
            reference = [x - s * self._previous[groups[i]].to(x.dtype) for i in active]
        outs = run_tiles(
            x,
            plan,
            lambda tx, tiles: predict(tx, tiles, active),
            batch_size=batch_size or self.settings.tile_batch_size,
            reference=reference,
            between_batches=between_batches,
        )
        if bool((sigma > 0).all()):
            for i, out in zip(active, outs):
                self._current.setdefault(groups[i], (x - out) / s)
        result: list[torch.Tensor | None] = [None] * len(groups)
        for i, out in zip(active, outs):
            result[i] = out
        return result


def plan_any_size(
    target_w: int, target_h: int, native_pixels: int, multiple: int = 64
) -> tuple[int, int, float]:
    """Any-Size-Diffusion's first stage (the ARAD idea): the size to generate at natively.

    Returns (w, h, upscale) where w x h has the target's aspect ratio, about ``native_pixels``
    pixels (never more than the target), sides are multiples of ``multiple``, and
    ``upscale = max(target_w / w, target_h / h)`` is the factor the second (tiled) stage applies.
    """
    if min(target_w, target_h, native_pixels, multiple) <= 0:
        raise ValueError(f"sizes must be positive, got target {target_w}x{target_h}, native {native_pixels}")
    aspect = target_w / target_h
    area = min(native_pixels, target_w * target_h)
    w = math.sqrt(area * aspect)
    h = w / aspect
    w = max(multiple, int(round(w / multiple)) * multiple)
    h = max(multiple, int(round(h / multiple)) * multiple)
    return w, h, max(target_w / w, target_h / h)


def cover_and_crop(
    w: int, h: int, target_w: int, target_h: int, multiple: int = 8
) -> tuple[int, int, int, int]:
    """The Any-Size pipeline's exact ending: scale the first stage's ``w`` x ``h`` by one factor (its
    aspect ratio kept) to the smallest size that covers the target, in multiples of ``multiple``,
    then crop the target out of its centre. Returns (scaled_w, scaled_h, crop_x, crop_y), with the
    crop origin a multiple of ``multiple`` too (a latent crop can only start on a latent pixel).
    """
    if min(w, h, target_w, target_h, multiple) <= 0:
        raise ValueError(f"sizes must be positive, got {w}x{h} -> {target_w}x{target_h}")
    up = max(target_w / w, target_h / h)
    sw = max(target_w, math.ceil(w * up / multiple) * multiple)
    sh = max(target_h, math.ceil(h * up / multiple) * multiple)
    x = (sw - target_w) // 2 // multiple * multiple
    y = (sh - target_h) // 2 // multiple * multiple
    return sw, sh, x, y

"""Kernel tests for DDIM inversion/generation and the latent statistics (no ComfyUI).

The denoiser is the exact posterior mean for Gaussian data x0 ~ N(mu, s^2) per dimension, so the
probability-flow ODE has a closed-form solution to compare against.
"""

from __future__ import annotations

import math

import pytest
import torch
from ultrares.kernels import inversion as inv


@pytest.fixture(autouse=True)
def _float64():
    """Double precision for these tests only (restored afterwards: other test files share the process)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def gaussian_denoiser(mu: torch.Tensor, s: torch.Tensor, parametrisation: str = "ve"):
    """Optimal D(x, sigma) = E[x0 | x] for x0 ~ N(mu, s^2) (per dimension)."""

    def d(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sig = sigma.view(-1, *([1] * (x.ndim - 1)))
        if parametrisation == "ve":
            return mu + s**2 / (s**2 + sig**2) * (x - mu)
        a = 1.0 - sig
        return mu + a * s**2 / (a**2 * s**2 + sig**2) * (x - a * mu)

    return d


def log_schedule(steps: int, sigma_min: float = 0.02, sigma_max: float = 20.0) -> torch.Tensor:
    """Generation order, log-uniform from sigma_max to sigma_min, then 0."""
    s = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps))
    return torch.cat([s, torch.zeros(1)])


def flow_schedule(steps: int, top: float = 0.9) -> torch.Tensor:
    return torch.linspace(top, 0.0, steps + 1)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    shape = (3, 2, 4, 4)
    mu = torch.randn(shape[1:], generator=g) * 0.5
    s = 0.2 + torch.rand(shape[1:], generator=g)
    x0 = mu + s * torch.randn(shape, generator=g)
    return mu, s, x0


def round_trip_error(denoiser, x0, sigmas, **kw) -> float:
    z = inv.ddim_invert(denoiser, x0, sigmas, **kw)
    back = inv.ddim_generate(denoiser, z, sigmas, parametrisation=kw.get("parametrisation", "ve"))
    return float((back - x0).abs().max())


@pytest.mark.parametrize("parametrisation", ["ve", "flow"])
def test_round_trip_error_falls_as_steps_grow(data, parametrisation):
    mu, s, x0 = data
    d = gaussian_denoiser(mu, s, parametrisation)
    sched = log_schedule if parametrisation == "ve" else flow_schedule
    errors = [round_trip_error(d, x0, sched(n), parametrisation=parametrisation) for n in (5, 10, 20, 40, 80)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.1 * errors[0], errors


def test_inverted_latent_converges_to_exact_ode_solution(data):
    mu, s, x0 = data
    d = gaussian_denoiser(mu, s)
    top = 20.0
    # PF-ODE dx/dsigma = (x - D)/sigma for Gaussian data: (x - mu) grows like sqrt(s^2 + sigma^2)
    exact = mu + (x0 - mu) * torch.sqrt(s**2 + top**2) / s
    errs = []
    for n in (10, 40, 160):
        z = inv.ddim_invert(d, x0, log_schedule(n, sigma_min=1e-3, sigma_max=top))
        errs.append(float((z - exact).norm() / exact.norm()))
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[-1] < 0.03, errs


def test_generation_matches_paper_vp_formula(data):
    """One DDIM step in sigma space equals the paper's sqrt(alpha_bar) form after the VP<->VE change."""
    mu, s, x0 = data
    d = gaussian_denoiser(mu, s)
    sig, sig_next = 3.0, 1.2
    x_ve = x0 + sig * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    pred = d(x_ve, torch.full((x0.shape[0],), sig))
    ours = inv.ddim_step(x_ve, pred, sig, sig_next)
    ab, ab_next = 1 / (1 + sig**2), 1 / (1 + sig_next**2)
    x_vp = x_ve * math.sqrt(ab)
    eps = (x_vp - math.sqrt(ab) * pred) / math.sqrt(1 - ab)
    paper = math.sqrt(ab_next) * pred + math.sqrt(1 - ab_next) * eps
    torch.testing.assert_close(ours * math.sqrt(ab_next), paper)


def test_refinement_makes_the_round_trip_nearly_exact(data):
    mu, s, x0 = data
    d = gaussian_denoiser(mu, s)
    sigmas = log_schedule(10)
    plain = round_trip_error(d, x0, sigmas)
    refined = round_trip_error(d, x0, sigmas, refine_iters=20)
    assert refined < 1e-3 * plain, (plain, refined)


def test_callback_counts_steps(data):
    mu, s, x0 = data
    d = gaussian_denoiser(mu, s)
    seen = []
    inv.ddim_invert(d, x0, log_schedule(7), callback=lambda i, x, x0_, sig: seen.append((i, sig)))
    assert [i for i, _ in seen] == list(range(7))
    assert seen[-1][1] == pytest.approx(20.0)


def test_first_move_from_sigma_min_to_sigma_min_costs_no_model_call(data):
    """Schedules ending ``sigma_min, 0`` (karras, normal...): a clean input already counts as the
    point at sigma_min, so S steps cost S - 1 model calls and the result is the plain DDIM walk up
    from sigma_min (written out here independently)."""
    mu, s, x0 = data
    d = gaussian_denoiser(mu, s)
    calls = []

    def counting(x, sigma):
        calls.append(float(sigma[0]))
        return d(x, sigma)

    sigmas = log_schedule(6)  # 20 ... 0.02, 0
    z = inv.ddim_invert(counting, x0, sigmas, sigma_floor=0.02)
    assert len(calls) == 5 and min(calls) == pytest.approx(0.02), calls
    up = [float(v) for v in sigmas.flip(0)[1:]]  # 0.02 ... 20
    x = x0.clone()
    for lo, hi in zip(up, up[1:]):
        pred = d(x, torch.full((x.shape[0],), lo))
        x = pred + hi * (x - pred) / lo
    torch.testing.assert_close(z, x)
    # a floor below the schedule's last level still needs the first call
    calls.clear()
    inv.ddim_invert(counting, x0, sigmas, sigma_floor=0.01)
    assert len(calls) == 6 and calls[0] == pytest.approx(0.01)
    # refinement keeps its own calls (one per iteration per step)
    calls.clear()
    inv.ddim_invert(counting, x0, sigmas, sigma_floor=0.02, refine_iters=2)
    assert len(calls) == 5 + 6 * 2


def test_bad_schedules_are_rejected(data):
    mu, s, x0 = data
    d = gaussian_denoiser(mu, s)
    with pytest.raises(ValueError, match="strictly decreasing"):
        inv.ddim_invert(d, x0, torch.tensor([5.0, 5.0, 0.0]))
    with pytest.raises(ValueError, match="at least 2 entries"):
        inv.ddim_generate(d, x0, torch.tensor([5.0]))
    with pytest.raises(ValueError, match="top sigma must be < 1"):
        inv.ddim_invert(d, x0, torch.tensor([1.0, 0.5, 0.0]), parametrisation="flow")
    with pytest.raises(ValueError, match="level must be in"):
        inv.schedule_steps_for_level(10, 1.5)
    with pytest.raises(ValueError, match="fewer than the 20"):
        inv.level_schedule(log_schedule(10), 20, 1.0)


def test_level_schedule_matches_ksampler_denoise():
    full = log_schedule(inv.schedule_steps_for_level(10, 0.5))
    assert full.numel() == 21
    tail = inv.level_schedule(full, 10, 0.5)
    torch.testing.assert_close(tail, full[-11:])


# ---------------------------------------------------------------------------------------------
# geometry and statistics
# ---------------------------------------------------------------------------------------------


def test_slerp_endpoints_norm_and_uniform_angle():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 4, 8, 8, generator=g)
    b = torch.randn(2, 4, 8, 8, generator=g)
    b = b * (a.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    torch.testing.assert_close(inv.slerp(a, b, 0.0), a)
    torch.testing.assert_close(inv.slerp(a, b, 1.0), b)
    path = inv.slerp(a, b, torch.linspace(0, 1, 9))
    assert path.shape == (9, 2, 4, 8, 8)
    norms = path.flatten(2).norm(dim=2)
    torch.testing.assert_close(norms, a.flatten(1).norm(dim=1).expand(9, 2))
    steps = torch.stack([inv.angle_deg(path[k, :1], path[k + 1, :1])[0, 0] for k in range(8)])
    torch.testing.assert_close(steps, steps.mean().expand(8))
    assert float(steps.sum()) == pytest.approx(float(inv.angle_deg(a[:1], b[:1])[0, 0]))


def test_slerp_parallel_falls_back_to_lerp_and_rejects_shape_mismatch():
    a = torch.ones(1, 3)
    torch.testing.assert_close(inv.slerp(a, 2 * a, 0.5), 1.5 * a)
    with pytest.raises(ValueError, match="same shape"):
        inv.slerp(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 16), 0.5)


def test_distance_and_angle_measures_match_direct_evaluation():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 5, generator=g), torch.randn(4, 5, generator=g)
    for i in range(3):
        for j in range(4):
            assert float(inv.pairwise_distance(a, b)[i, j]) == pytest.approx(float((a[i] - b[j]).norm()))
            cos = float(a[i] @ b[j] / (a[i].norm() * b[j].norm()))
            assert float(inv.angle_deg(a, b)[i, j]) == pytest.approx(math.degrees(math.acos(cos)))
    tri = inv.angle_at(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]))
    assert float(tri[0]) == pytest.approx(90.0)


def test_fit_gaussian_recovers_mean_and_scalar_variance():
    g = torch.Generator().manual_seed(4)
    mean = torch.linspace(-1, 1, 64)
    z = mean + 1.7 * torch.randn(4000, 64, generator=g)
    fit = inv.fit_gaussian(z)
    assert fit.var == pytest.approx(1.7**2, rel=0.02)
    assert float((fit.mean - mean).abs().max()) < 0.12
    nll = -inv.log_likelihood(z[:5], fit)
    direct = 0.5 * (((z[:5] - fit.mean) ** 2).sum(dim=1) / fit.var / 64 + math.log(2 * math.pi * fit.var))
    torch.testing.assert_close(nll, direct)


def test_leave_one_out_distances_match_refitting():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(7, 3, 4, generator=g)
    ref = inv.domain_reference(z)
    for i in range(7):
        others = torch.cat([z[:i], z[i + 1 :]])
        direct = inv.mahalanobis(z[i : i + 1], inv.fit_gaussian(others))[0]
        assert float(ref.loo["distance"][i]) == pytest.approx(float(direct))


def test_domain_score_separates_two_gaussian_sets():
    g = torch.Generator().manual_seed(6)
    d = 1024
    ref = torch.randn(64, d, generator=g)
    in_domain = torch.randn(100, d, generator=g)
    shifted = 0.5 + torch.randn(100, d, generator=g)
    wider = 1.3 * torch.randn(100, d, generator=g)
    reference = inv.domain_reference(ref, percentile=95.0)
    ok = inv.domain_score(in_domain, reference)
    assert float(ok.in_domain.double().mean()) > 0.8
    for ood in (shifted, wider):
        bad = inv.domain_score(ood, reference)
        assert float(bad.in_domain.double().mean()) < 0.05
        assert float(bad.p_value.max()) < float(ok.p_value.median())


def test_thresholds_come_from_the_data_not_constants():
    """Rescaling every latent rescales the thresholds and leaves every decision unchanged."""
    g = torch.Generator().manual_seed(7)
    ref, test = torch.randn(32, 256, generator=g), 0.1 + torch.randn(40, 256, generator=g)
    base = inv.domain_score(test, inv.domain_reference(ref))
    scaled_ref = inv.domain_reference(250.0 * ref)
    scaled = inv.domain_score(250.0 * test, scaled_ref)
    assert torch.equal(base.in_domain, scaled.in_domain)
    hi = scaled_ref.thresholds["mean_pair_distance"][1]
    assert hi == pytest.approx(250.0 * inv.domain_reference(ref).thresholds["mean_pair_distance"][1])
    # a stricter percentile can only accept fewer latents
    strict = inv.domain_score(test, inv.domain_reference(ref, percentile=60.0))
    assert int(strict.in_domain.sum()) <= int(base.in_domain.sum())


def test_statistics_reject_mismatched_sizes():
    reference = inv.domain_reference(torch.randn(5, 4, 8, 8))
    with pytest.raises(ValueError, match="same model at the same image size"):
        inv.domain_score(torch.randn(2, 4, 8, 16), reference)
    with pytest.raises(ValueError, match="at least 3 latents"):
        inv.domain_reference(torch.randn(2, 4))


def test_psnr():
    a = torch.zeros(1, 3, 4, 4)
    assert inv.psnr(a, a) == math.inf
    assert inv.psnr(a, a + 0.1) == pytest.approx(20.0)


def test_reference_file_round_trip_and_refusal(tmp_path):
    from ultrares.kernels import inversion_format as fmt  # noqa: PLC0415

    z = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0)).float()
    path = str(tmp_path / "ref.safetensors")
    fmt.save_reference(path, z, {"sigma": 14.6, "steps": 8}, {"ultrares_file": "domain_reference"})
    back, record = fmt.load_reference(path)
    assert torch.equal(back, z) and back.dtype == torch.float32 and record == {"sigma": 14.6, "steps": 8}
    fmt.save_reference(path, z.double(), None)  # no record: read back as None, latents as float32
    back, record = fmt.load_reference(path)
    assert record is None and back.dtype == torch.float32 and torch.equal(back, z)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a domain reference"):
        fmt.load_reference(str(tmp_path / "junk.safetensors"))
    import safetensors.torch  # noqa: PLC0415

    safetensors.torch.save_file({"other": z}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a domain reference"):
        fmt.load_reference(str(tmp_path / "other.safetensors"))


def test_domain_report_and_plot_show_every_scored_latent():
    from ultrares.kernels import inversion_report as report  # noqa: PLC0415

    gen = torch.Generator().manual_seed(1)
    reference = inv.domain_reference(torch.randn(12, 64, generator=gen), percentile=90.0)
    test = torch.cat([torch.randn(2, 64, generator=gen), 5.0 + torch.randn(1, 64, generator=gen)])
    score = inv.domain_score(test, reference)
    text = report.domain_report(reference, score)
    rows = text.splitlines()[-3:]
    assert "90th percentile" in text and all(f"  {name}: [" in text for name in inv.FEATURES)
    assert [r.split()[0] for r in rows] == ["0", "1", "2"] and rows[2].endswith("out-of-domain")
    img = report.domain_plot(reference, score, width=320, height=200)
    assert img.shape == (1, 200, 320, 3) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    red = (img[0, ..., 0] > 0.7) & (img[0, ..., 1] < 0.3) & (img[0, ..., 2] < 0.3)
    assert red.any()  # the threshold line and the out-of-domain tick


# ---------------------------------------------------------------- node facts moved into the kernel


def test_flow_top_is_the_last_level_below_one():
    assert inv.flow_top(torch.tensor([0.001, 0.5, 0.998, 1.0])) == pytest.approx(0.998)
    assert inv.flow_top(None) == 0.999  # no discrete levels
    assert inv.flow_top(torch.tensor([1.0, 1.5])) == 0.999  # none below 1


def test_inversion_schedule_truncates_replaces_the_flow_top_and_names_the_context():
    full = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    torch.testing.assert_close(inv.inversion_schedule(full, 2, 0.5, "ve"), torch.tensor([0.5, 0.25, 0.0]))
    flow = inv.inversion_schedule(full, 4, 1.0, "flow", levels=torch.tensor([0.1, 0.9, 1.0]))
    torch.testing.assert_close(flow, torch.tensor([0.9, 0.75, 0.5, 0.25, 0.0]))
    ctx = inv.schedule_context(9, 0.5, "simple", 0.03, 14.6, 1000)
    assert (
        ctx
        == "steps=9, level=0.5, scheduler='simple' on this model's schedule (sigma 0.03..14.6, 1000 discrete levels)"
    )
    with pytest.raises(ValueError, match=r"^CTX: the model's schedule has only 4 steps"):
        inv.inversion_schedule(full, 9, 0.5, "ve", context="CTX")
    with pytest.raises(ValueError, match=r"^CTX: the schedule does not end at sigma 0"):
        inv.inversion_schedule(torch.tensor([1.0, 0.5, 0.1]), 2, 1.0, "ve", context="CTX")
    with pytest.raises(ValueError, match=r"^CTX: .*strictly decreasing"):
        inv.inversion_schedule(torch.tensor([1.0, 1.0, 0.0]), 2, 1.0, "ve", context="CTX")


def test_guidance_needs_both_conditionings_only_away_from_cfg_one():
    inv.check_guidance(1.0, False, False)
    inv.check_guidance(3.0, True, True)
    with pytest.raises(ValueError, match="cfg=3.0 needs a positive and a negative"):
        inv.check_guidance(3.0, False, True)
    with pytest.raises(ValueError, match="cfg=3.0 needs a negative conditioning"):
        inv.check_guidance(3.0, True, False)


def test_ddim_loop_is_the_kernel_loop_with_comfy_style_step_reports(data):
    mu, s, x0 = data
    d, sigmas = gaussian_denoiser(mu, s), log_schedule(6)

    class Run:
        def __init__(self):
            self.denoise, self.reports = d, []

        def report(self, info):
            self.reports.append(info)

    run, steps = Run(), []
    up = inv.ddim_loop(
        run, x0, sigmas.flip(0), direction="invert", refine_iters=1, sigma_floor=0.02, parametrisation="ve"
    )
    expect = inv.ddim_invert(
        d,
        x0,
        sigmas,
        sigma_floor=0.02,
        refine_iters=1,
        callback=lambda i, x, x0_, sg: steps.append((i, x, sg)),
    )
    torch.testing.assert_close(up, expect)
    assert [(r["i"], r["sigma"]) for r in run.reports] == [(i, sg) for i, _, sg in steps]
    assert all(set(r) == {"x", "i", "sigma", "sigma_hat", "denoised"} for r in run.reports)
    run.reports.clear()
    down = inv.ddim_loop(
        run, up, sigmas, direction="generate", refine_iters=0, sigma_floor=0.0, parametrisation="ve"
    )
    torch.testing.assert_close(down, inv.ddim_generate(d, up, sigmas))
    assert len(run.reports) == len(sigmas) - 1


def test_slerp_fractions_and_path():
    assert inv.slerp_fractions(0.6, 1) == [0.6]
    assert inv.slerp_fractions(0.6, 3) == pytest.approx([0.2, 0.4, 0.6])
    with pytest.raises(ValueError, match="count must be >= 1"):
        inv.slerp_fractions(0.5, 0)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 4, generator=g), torch.randn(1, 3, 4, generator=g)
    path = inv.slerp_path(a, b, 1.0, 2, seed=0)  # point-major: t = 0.5 (both rows), then t = 1
    assert path.shape == (4, 3, 4)
    torch.testing.assert_close(
        path[:2], inv.slerp(a, b.expand_as(a), 0.5).float()
    )  # float32, as ComfyUI latents
    torch.testing.assert_close(path[2:], b.expand_as(a).float())
    with pytest.raises(ValueError, match="differ in shape"):
        inv.slerp_path(a, torch.zeros(2, 3, 5), 0.5, 1, seed=0)
    with pytest.raises(ValueError, match="batch 2 and latent_b batch 3"):
        inv.slerp_path(a, torch.zeros(3, 3, 4), 0.5, 1, seed=0)


def test_rms_matched_gaussian_is_seeded_and_matches_each_rows_rms():
    a = torch.stack([torch.full((2, 3), 2.0), torch.full((2, 3), 0.5)])
    g = inv.rms_matched_gaussian(a, seed=5)
    torch.testing.assert_close(g.flatten(1).pow(2).mean(1).sqrt(), torch.tensor([2.0, 0.5]))
    raw = torch.randn(a.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(
        g / g.flatten(1).norm(dim=1).view(-1, 1, 1), raw / raw.flatten(1).norm(dim=1).view(-1, 1, 1)
    )
    assert not torch.equal(g, inv.rms_matched_gaussian(a, seed=6))
    # without latent_b the path ends at this draw
    torch.testing.assert_close(
        inv.slerp_path(a, None, 1.0, 1, seed=5), inv.rms_matched_gaussian(a.float(), 5).float()
    )


def test_domain_latent_checks():
    with pytest.raises(ValueError, match="batch of 1; fitting a Gaussian needs at least 2"):
        inv.check_domain_latents(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="NaN or infinite"):
        inv.check_domain_latents(torch.tensor([[0.0], [float("nan")]]))
    inv.check_domain_latents(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"latents \(2, 4, 2\) and reference \(3, 2, 4\) differ in shape"):
        inv.check_same_shape(torch.zeros(2, 4, 2), torch.zeros(3, 2, 4))


def test_inversion_records():
    from ultrares.kernels import inversion_format as fmt

    rec = fmt.make_record(torch.tensor(14.6), 9, 0.5, "simple", "SD15", torch.Size([4, 8, 8]))
    assert rec == {
        "sigma": pytest.approx(14.6),
        "steps": 9,
        "level": 0.5,
        "scheduler": "simple",
        "model": "SD15",
        "shape": [4, 8, 8],
    }
    assert fmt.read_record({"samples": 0, fmt.RECORD_KEY: rec}) is rec
    assert fmt.read_record({"samples": 0, fmt.RECORD_KEY: "junk"}) is None
    assert fmt.sigmas_differ(rec, {"sigma": 14.7}) and not fmt.sigmas_differ(rec, {"sigma": 14.6001})
    assert not fmt.sigmas_differ(rec, None)
    fmt.check_generate_record(rec, "SD15", 14.6, 9, 0.5, "simple")
    fmt.check_generate_record(None, "SDXL", 1.0, 1, 1.0, "karras")
    with pytest.raises(ValueError, match="inverted with a SD15 model but this model is SDXL"):
        fmt.check_generate_record(rec, "SDXL", 14.6, 9, 0.5, "simple")
    with pytest.raises(ValueError, match=r"sits at sigma 14.6 .*steps=9, level=0.5.*start at sigma 3"):
        fmt.check_generate_record(rec, "SD15", 3.0, 9, 0.5, "simple")

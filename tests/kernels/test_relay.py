"""Relay Diffusion kernel: DCT, blur coefficients, block noise, the sampler and the objective,
each checked against an independent direct evaluation (scipy DCT, explicit loops, a reference
k-diffusion-style Heun written here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import scipy.stats
import torch
from ultrares.kernels import relay as R
from ultrares.kernels import schedules

# ----------------------------------------------------------------------------- helpers


def scipy_block_dct(x: np.ndarray, p: int, inverse: bool = False) -> np.ndarray:
    """Per-block orthonormal DCT with scipy, by explicit loops over blocks."""
    out = np.empty_like(x)
    fn = scipy.fft.idctn if inverse else scipy.fft.dctn
    h, w = x.shape[-2:]
    for i in range(0, h, p):
        for j in range(0, w, p):
            out[..., i : i + p, j : j + p] = fn(x[..., i : i + p, j : j + p], norm="ortho", axes=(-2, -1))
    return out


def official_block_noise(eps: torch.Tensor, p: int) -> torch.Tensor:
    """The official definition: the sum of p*p circular rolls divided by p."""
    out = torch.zeros_like(eps)
    for px in range(p):
        for py in range(p):
            out += torch.roll(eps, shifts=(px, py), dims=(-2, -1))
    return out / p


class ToyDenoiser(torch.nn.Module):
    """A fixed, nonlinear, sigma-dependent denoiser (seeded random conv net), computing in the
    dtype of its input (float32 or float64)."""

    def __init__(self, channels: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(8, channels, 3, 3, generator=g) * 0.3
        self.w2 = torch.randn(channels, 8, 3, 3, generator=g) * 0.3
        self.calls: list[float] = []

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        self.calls.append(s)
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        xw = x.to(dt)
        c_in = 1 / math.sqrt(s**2 + 0.25)
        h = torch.tanh(torch.nn.functional.conv2d(xw * c_in, self.w1.to(dt), padding=1))
        out = torch.nn.functional.conv2d(h, self.w2.to(dt), padding=1)
        return xw * 0.25 / (s**2 + 0.25) + out * s * 0.5 / math.sqrt(s**2 + 0.25)


def reference_heun(
    model, x, sigmas, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, randn_like=None
):
    """Karras et al. Algorithm 2 written out independently (dtype of x; churn noise from
    ``randn_like``, default the global RNG)."""
    randn_like = randn_like or torch.randn_like
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + randn_like(x) * s_noise * math.sqrt(s_hat**2 - s**2)
        den = model(x, torch.tensor(s_hat))
        d = (x - den) / s_hat
        if s_next == 0:
            x = den
        else:
            x2 = x + d * (s_next - s_hat)
            d2 = (x2 - model(x2, torch.tensor(s_next))) / s_next
            x = x + (d + d2) / 2 * (s_next - s_hat)
    return x


# ----------------------------------------------------------------------------- DCT


@pytest.mark.parametrize("p", [2, 4, 8])
def test_block_dct_matches_scipy_and_round_trips(p):
    g = torch.Generator().manual_seed(p)
    x = torch.randn(2, 3, 4 * p, 3 * p, generator=g, dtype=torch.float64)
    u = R.block_dct(x, p)
    np.testing.assert_allclose(u.numpy(), scipy_block_dct(x.numpy(), p), atol=1e-12)
    np.testing.assert_allclose(R.block_idct(u, p).numpy(), x.numpy(), atol=1e-12)
    np.testing.assert_allclose(
        R.block_idct(u, p).numpy(), scipy_block_dct(u.numpy(), p, inverse=True), atol=1e-12
    )
    # orthonormal: energy preserved, matrix orthogonal
    assert torch.allclose((u**2).sum(), (x**2).sum())
    c = R.dct_matrix(p)
    assert torch.allclose(c @ c.T, torch.eye(p, dtype=torch.float64), atol=1e-12)


def test_block_dct_dc_coefficient_is_scaled_block_mean():
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    u = R.block_dct(x, 4)
    means = torch.nn.functional.avg_pool2d(x, 4)
    assert torch.allclose(u[..., ::4, ::4], means * 4)


def test_block_dct_rejects_non_multiple_size():
    with pytest.raises(ValueError, match="block size 4 does not divide"):
        R.block_dct(torch.zeros(1, 1, 10, 8), 4)


# ----------------------------------------------------------------------------- alpha and coupling


def test_alpha_table_matches_formula():
    p, min_scale = 4, 0.001
    for sb in [0.0, 0.5, 1.7, 3.0]:
        table = R.alpha_table(sb, p, min_scale)
        for ky in range(p):
            for kx in range(p):
                f2 = (math.pi * ky / p) ** 2 + (math.pi * kx / p) ** 2
                want = math.exp(-f2 * sb**2 / 2) * (1 - min_scale) + min_scale
                assert table[ky, kx].item() == pytest.approx(want, rel=1e-12)
    assert torch.equal(R.alpha_table(0.0, p), torch.ones(p, p, dtype=torch.float64))
    batched = R.alpha_table(torch.tensor([0.0, 3.0]), p)
    assert batched.shape == (2, p, p) and torch.allclose(batched[1], R.alpha_table(3.0, p))


def test_sigma_u_coupling_is_the_official_mapping_and_inverse():
    L = 0.93
    for sigma in [0.01, 0.2, 0.9, 5.0, 80.0]:
        u = R.u_of_sigma(sigma, L).item()
        assert u == pytest.approx(scipy.stats.norm.cdf((math.log(sigma) + 1.2) / 1.2) / L, rel=1e-12)
        assert R.sigma_of_u(u, L).item() == pytest.approx(sigma, rel=1e-9)
    u = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(R.blur_sigma_of_u(u, 3.0), 3.0 * torch.sin(u * math.pi / 2) ** 2)
    s = R.RelaySettings(patch=4, blur_sigma_max=3.0, prob_length=L)
    a = R.alpha_for_sigma(0.9, s)
    assert torch.allclose(a, R.alpha_table(R.blur_sigma_of_u(R.u_of_sigma(0.9, L), 3.0), 4))
    # blur grows with sigma: the highest frequency is attenuated more at larger sigma
    assert R.alpha_for_sigma(0.5, s)[3, 3] > R.alpha_for_sigma(2.0, s)[3, 3]


def test_dct_blur_applies_alpha_per_coefficient():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    sb = torch.tensor([0.0, 2.0])
    y = R.dct_blur(x, sb, 4)
    assert torch.allclose(y[0], x[0])
    want = scipy_block_dct(x[1].numpy(), 4) * np.tile(R.alpha_table(2.0, 4).numpy(), (2, 2))
    np.testing.assert_allclose(y[1].numpy(), scipy_block_dct(want, 4, inverse=True), atol=1e-12)


# ----------------------------------------------------------------------------- block noise


@pytest.mark.parametrize("p", [2, 4])
def test_block_noise_is_the_circular_box_sum(p):
    eps = torch.randn(2, 3, 12, 8)
    assert torch.allclose(R.block_noise(eps, p), official_block_noise(eps, p), atol=1e-5)


def test_block_noise_covariance():
    p = 4
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(4000, 1, 16, 16, generator=g, dtype=torch.float64)
    blk = R.block_noise(eps, p)[:, 0]
    var = blk.var(dim=0)
    assert abs(var.mean().item() - 1.0) < 0.02  # unit variance per pixel
    assert (var - 1).abs().max().item() < 0.15
    for di in range(-p, p + 1):
        for dj in range(-p, p + 1):
            shifted = torch.roll(blk, shifts=(di, dj), dims=(-2, -1))
            corr = (blk * shifted).mean().item()
            want = max(p - abs(di), 0) * max(p - abs(dj), 0) / p**2
            assert corr == pytest.approx(want, abs=0.02), (di, dj)


def test_upsample_nearest_repeats_pixels():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    y = R.upsample_nearest(x, 2)
    assert y.shape == (1, 1, 4, 6)
    assert torch.equal(y, torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


# ----------------------------------------------------------------------------- schedule


def test_relay_sigmas_start_below_truncation():
    sig = R.relay_sigmas(40, 0.002, 80.0, 7.0, 0.9)
    grid = schedules.karras_sigmas(40, 0.002, 80.0, 7.0, convention="edm")
    first_kept = int((grid >= 0.9).sum())
    assert sig[0].item() == grid[first_kept].item()
    assert grid[first_kept - 1] >= 0.9 > sig[0]
    assert sig[-1].item() == 0.0 and len(sig) == 40 - first_kept + 1
    assert torch.all(sig[1:] < sig[:-1])
    with pytest.raises(ValueError, match="no step"):
        R.relay_sigmas(10, 0.5, 80.0, 7.0, 0.4)


def test_stage_two_begins_at_truncation_sigma():
    """The first denoiser call of stage two is at the first grid level below the truncation."""
    torch.manual_seed(0)
    s = R.RelaySettings(patch=2, blur_sigma_max=2.0, prob_length=0.89, s_block=0.15, s_noise=0.2)
    sig = R.relay_sigmas(30, 0.008, 80.0, 7.0, 0.9)
    low = torch.randn(1, 3, 8, 8)
    x_up = R.upsample_nearest(low, 2)
    x0 = R.relay_start(x_up, float(sig[0]), 2, s.s_block)
    # starting noise has std sigma0 * sqrt(1 + s_block^2)
    assert (x0 - x_up).std().item() == pytest.approx(float(sig[0]) * math.sqrt(1 + 0.15**2), rel=0.15)
    model = ToyDenoiser()
    out = R.relay_sample(model, x0, sig, s)
    assert model.calls[0] == pytest.approx(float(sig[0])) and float(sig[0]) < 0.9
    assert max(model.calls) < 0.9
    # 2 calls per step except the final one (returns D(x))
    assert len(model.calls) == 2 * (len(sig) - 1) - 1
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- sampler


def documented_stream(seed):
    """randn_like drawing from the documented step-noise stream: a CPU generator seeded with
    (seed * 6364136223846793005 + 1442695040888963407) mod 2^64, float32 draws."""
    g = torch.Generator().manual_seed((seed * 6364136223846793005 + 1442695040888963407) % 2**64)
    return lambda x: torch.randn(x.shape, generator=g, dtype=torch.float32).to(x)


@pytest.mark.parametrize("churn", [0.0, 20.0])
def test_sampler_reduces_to_edm_heun(churn):
    """B_max = 0, s_block = 0, s_noise = 0: identical to plain (churned) EDM Heun."""
    sig = R.relay_sigmas(12, 0.02, 10.0, 7.0, 5.0).float()
    x = torch.randn(2, 3, 8, 8) * float(sig[0])
    model = ToyDenoiser()
    s = R.RelaySettings(
        patch=4,
        blur_sigma_max=0.0,
        s_block=0.0,
        s_noise=0.0,
        s_churn=churn,
        s_tmin=0.05,
        s_tmax=3.0,
        s_churn_noise=1.003,
    )
    got = R.relay_sample(model, x, sig, s, seed=7)
    want = reference_heun(
        model, x, sig, s_churn=churn, s_tmin=0.05, s_tmax=3.0, s_noise=1.003, randn_like=documented_stream(7)
    )
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    # and the churn really did something (different result without it)
    if churn:
        assert not torch.allclose(reference_heun(model, x, sig), want, atol=1e-3)


def flow_reference_heun(model, x, sigmas):
    """k-diffusion's Heun as ComfyUI runs it on a flow model (sigma == t, d = (x - D) / t), no churn."""
    for i in range(len(sigmas) - 1):
        t, t_next = float(sigmas[i]), float(sigmas[i + 1])
        den = model(x, torch.tensor(t))
        d = (x - den) / t
        if t_next == 0:
            x = x + d * (t_next - t)  # k-diffusion's Euler last step == den
        else:
            x2 = x + d * (t_next - t)
            d2 = (x2 - model(x2, torch.tensor(t_next))) / t_next
            x = x + (d + d2) / 2 * (t_next - t)
    return x


def test_flow_sampler_reduces_to_heun():
    """Flow matching with B_max = 0, s_block = 0, s_noise = 0: k-diffusion's Heun in t."""
    sig = torch.tensor([0.6, 0.45, 0.3, 0.15, 0.05, 0.0])
    x = torch.randn(2, 3, 8, 8) * 0.6
    model = ToyDenoiser(seed=2)
    s = R.RelaySettings(patch=2, blur_sigma_max=0.0, s_block=0.0, s_noise=0.0)
    got = R.relay_sample(model, x, sig, s, flow=True)
    want = flow_reference_heun(model, x, sig)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # EDM and flow steps differ on the same schedule (the flow path is not x0 + t n)
    assert not torch.allclose(
        R.relay_sample(
            model, x, sig, R.RelaySettings(patch=2, blur_sigma_max=1.0, s_block=0.0, s_noise=0.0), flow=True
        ),
        R.relay_sample(model, x, sig, R.RelaySettings(patch=2, blur_sigma_max=1.0, s_block=0.0, s_noise=0.0)),
        atol=1e-3,
    )


# float32 kernel vs the float64 evaluation below, after a 3-step stage two with values up to ~1.4
# (measured 4.7e-7 EDM, 2.5e-7 flow):
F32_ATOL = 5e-6


@pytest.mark.parametrize("flow", [False, True])
def test_sampler_matches_direct_dct_evaluation_with_blur_and_noise(flow):
    """The full relay update (blur, s_noise, s_block) run in float32 against an independent float64
    numpy/scipy evaluation of x' = IDCT(c_s a_s u0 + g (u - c_t a_t u0)) + s_noise s n and its Heun
    correction (c = 1 for EDM, 1 - t for flow, whose blur is read at the EDM sigma t / (1 - t)),
    with the same noise draws. Equal within F32_ATOL; a float64 input reproduces it to 1e-10."""
    p = 2
    s = R.RelaySettings(patch=p, blur_sigma_max=3.0, prob_length=0.93, s_block=0.15, s_noise=0.3)
    sig = torch.tensor([0.8, 0.3, 0.1, 0.0], dtype=torch.float64)
    model = ToyDenoiser(seed=3)
    x = torch.randn(1, 3, 4, 6, dtype=torch.float64)

    def recording(seed):
        draws: list[torch.Tensor] = []
        g = torch.Generator().manual_seed(seed)

        def randn(shape):
            draws.append(torch.randn(shape, generator=g))
            return draws[-1]

        return randn, draws

    randn, draws = recording(11)
    got = R.relay_sample(model, x.float(), sig, s, randn=randn, flow=flow)
    assert got.dtype == torch.float32
    randn64, _ = recording(11)
    got64 = R.relay_sample(model, x, sig, s, randn=randn64, flow=flow)

    it = iter(draws)

    def noise():
        e = next(it).double()
        return e + 0.15 * official_block_noise(next(it).double(), p)

    def alpha(t):
        sigma_edm = t / (1 - t) if flow else t
        u = scipy.stats.norm.cdf((math.log(sigma_edm) + 1.2) / 1.2) / 0.93
        sb = 3.0 * math.sin(u * math.pi / 2) ** 2
        a = np.array(
            [
                [
                    math.exp(-((math.pi * i / p) ** 2 + (math.pi * j / p) ** 2) * sb**2 / 2) * 0.999 + 0.001
                    for j in range(p)
                ]
                for i in range(p)
            ]
        )
        return np.tile(a, (x.shape[-2] // p, x.shape[-1] // p))

    c = (lambda t: 1 - t) if flow else (lambda t: 1.0)
    dct = lambda v: scipy_block_dct(v.numpy(), p)  # noqa: E731
    idct = lambda v: torch.from_numpy(scipy_block_dct(v, p, inverse=True))  # noqa: E731
    xc = x.clone()
    for i in range(3):
        t, s_ = float(sig[i]), float(sig[i + 1])
        d0 = model(xc, torch.tensor(t)).double()
        if s_ == 0:
            xc = d0
            break
        a_t, a_s = alpha(t), alpha(s_)
        gam = math.sqrt(1 - 0.3**2) * s_ / t
        u, u0 = dct(xc), dct(d0)
        xp = idct(c(s_) * a_s * u0 + gam * (u - c(t) * a_t * u0)) + 0.3 * s_ * noise()
        d1 = model(xp, torch.tensor(s_)).double()
        # the Heun step: the same map with the noise estimate taken from the averaged slope
        slope = (u - u0) / t
        slope2 = (dct(xp) - dct(d1)) / s_
        avg = (slope + slope2) / 2  # plays the role of (u - u0_avg) / t
        u0_avg = u - t * avg
        xc = idct(c(s_) * a_s * u0_avg + gam * (u - c(t) * a_t * u0_avg)) + 0.3 * s_ * noise()
    assert next(it, None) is None  # no unused draws
    err = (got.double() - xc).abs().max().item()
    print(
        f"flow={flow}: float32 vs float64 max abs diff {err:.2e} (values up to {xc.abs().max().item():.2f})"
    )
    assert err < F32_ATOL
    assert torch.allclose(got64, xc, atol=1e-10)


def test_sampler_keeps_forward_marginal_for_point_mass_euler():
    """For data = one image y (so D = y exactly) and B_max = 0, a deterministic sampler keeps
    x_t = y + t n on the path: every callback state matches it."""
    y = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    n = torch.randn_like(y)
    sig = torch.tensor([0.9, 0.5, 0.2, 0.05, 0.0], dtype=torch.float64)
    seen = []
    s = R.RelaySettings(patch=4, blur_sigma_max=0.0, s_block=0.0, s_noise=0.0)
    out = R.relay_sample(
        lambda v, t: y, y + 0.9 * n, sig, s, callback=lambda d: seen.append((d["sigma"], d["x"]))
    )
    for sigma, xs in seen:
        assert torch.allclose(xs, y + float(sigma) * n, atol=1e-10)
    assert torch.equal(out, y)


def test_flow_sampler_keeps_forward_marginal_for_point_mass():
    """Flow matching, D = y exactly, B_max = 0, s_noise = 0: every state is (1 - t) y + t n."""
    y = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    n = torch.randn_like(y)
    sig = torch.tensor([0.7, 0.5, 0.2, 0.05, 0.0], dtype=torch.float64)
    seen = []
    s = R.RelaySettings(patch=4, blur_sigma_max=0.0, s_block=0.0, s_noise=0.0)
    out = R.relay_sample(
        lambda v, t: y,
        0.3 * y + 0.7 * n,
        sig,
        s,
        flow=True,
        callback=lambda d: seen.append((d["sigma"], d["x"])),
    )
    assert len(seen) == 4
    for sigma, xs in seen:
        t = float(sigma)
        assert torch.allclose(xs, (1 - t) * y + t * n, atol=1e-10)
    assert torch.equal(out, y)


@pytest.mark.parametrize("flow", [False, True])
def test_churn_keeps_the_noise_level(flow):
    """D = y exactly, churn on: each state (after churn, at sigma_hat) is c_t y + t n with n unit
    i.i.d. noise (c_t = 1 EDM, 1 - t flow): mean 0, std 1 over 2^16 pixels. (With s_noise > 0 the
    official Heun correction, which discards the proposal's noise, does not keep it exactly.)"""
    y = torch.randn(1, 1, 256, 256)
    sig = torch.tensor([0.6, 0.4, 0.2, 0.1, 0.0])
    s = R.RelaySettings(patch=2, blur_sigma_max=0.0, s_block=0.0, s_noise=0.0, s_churn=4.0)
    x = (0.4 if flow else 1.0) * y + 0.6 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    seen = []
    R.relay_sample(
        lambda v, t: y,
        x,
        sig,
        s,
        flow=flow,
        seed=3,
        callback=lambda d: seen.append((d["sigma"], d["sigma_hat"], d["x"])),
    )
    for sigma, t, xs in seen:
        assert t > float(sigma)  # churn raised the level
        n = (xs - (1 - t if flow else 1.0) * y) / t
        assert abs(n.mean().item()) < 0.02 and n.std().item() == pytest.approx(1.0, abs=0.02), (
            t,
            n.std().item(),
        )


def test_sampler_is_seeded_and_leaves_the_global_rng_alone():
    """The same seed gives bit-identical results across runs even with the global RNG disturbed in
    between (and consumed by the denoiser); the sampler never touches the global RNG."""
    s = R.RelaySettings(patch=2, blur_sigma_max=2.0, s_block=0.15, s_noise=0.3, s_churn=2.0)
    sig = torch.tensor([0.9, 0.5, 0.2, 0.0])
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    model = ToyDenoiser(seed=1)

    def greedy_model(v, t):  # other global RNG use during sampling
        torch.rand(7)
        return model(v, t)

    torch.manual_seed(123)
    a = R.relay_sample(model, x, sig, s, seed=42)
    torch.manual_seed(999)
    torch.randn(1000)
    b = R.relay_sample(greedy_model, x, sig, s, seed=42)
    assert torch.equal(a, b)
    state = torch.get_rng_state()
    c = R.relay_sample(model, x, sig, s, seed=43)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.allclose(a, c, atol=1e-3)  # the seed matters
    # relay_start: seeded the same way
    up = R.upsample_nearest(x, 2)
    assert torch.equal(R.relay_start(up, 0.5, 2, 0.15, seed=4), R.relay_start(up, 0.5, 2, 0.15, seed=4))
    assert torch.equal(torch.get_rng_state(), state)


def test_step_seed_is_a_distinct_stream():
    """What step_seed must satisfy, stated without its formula: fixed values (a change would change
    every seeded relay result), a bijection (tested exhaustively on the low 16 bits, where an affine
    map with an odd multiplier must be a permutation, and by distinct outputs on a sample), and never
    the seed itself or seed + 1 (the starting noise's streams)."""
    pinned = {
        0: 1442695040888963407,
        1: 7806831264735756412,
        5: 14816632086413376816,
        2**32: 6961151790551630159,
        2**64 - 1: 13525302890751722018,
    }
    assert {s: R.step_seed(s) for s in pinned} == pinned
    assert {R.step_seed(i) % 2**16 for i in range(2**16)} == set(range(2**16))
    g = torch.Generator().manual_seed(0)
    seeds = [int(v) % 2**64 for v in torch.randint(-(2**63), 2**63 - 1, (20000,), generator=g).tolist()]
    seeds += [0, 1, 2**63, 2**64 - 2, 2**64 - 1]
    outs = [R.step_seed(s) for s in seeds]
    assert len(set(outs)) == len(set(seeds)) and all(0 <= o < 2**64 for o in outs)
    # step_seed(s) - s is the same residue mod 4 for every seed, and that residue is neither 0 nor 1:
    # so no seed maps to itself or to seed + 1 (checked directly on the sample too)
    assert {(o - s) % 4 for s, o in zip(seeds, outs)} == {3}
    assert all(o not in (s, (s + 1) % 2**64) for s, o in zip(seeds, outs))


def test_relay_start_flow_and_edm():
    x_up = R.upsample_nearest(torch.randn(1, 2, 4, 4), 2)
    n = R.cpu_randn(torch.Generator().manual_seed(9))
    eps, eps2 = n(x_up.shape), n(x_up.shape)
    noise = eps + 0.15 * official_block_noise(eps2, 2)
    assert torch.allclose(
        R.relay_start(x_up, 0.6, 2, 0.15, seed=9, flow=True), 0.4 * x_up + 0.6 * noise, atol=1e-6
    )
    assert torch.allclose(R.relay_start(x_up, 0.6, 2, 0.15, seed=9), x_up + 0.6 * noise, atol=1e-6)


def test_edm_sigma_of_flow_time():
    t = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])
    assert torch.allclose(
        R.edm_sigma(t, flow=True), torch.tensor([0.0, 1 / 3, 1.0, 9.0, math.inf], dtype=torch.float64)
    )
    assert torch.equal(R.edm_sigma(t), t.double())
    s = R.RelaySettings(patch=4, blur_sigma_max=3.0)
    assert torch.allclose(R.alpha_for_sigma(0.5, s, flow=True), R.alpha_for_sigma(1.0, s))
    assert torch.isfinite(R.alpha_for_sigma(1.0, s, flow=True)).all()


class _NoFloat64OffCpu(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the dtype of every tensor an op creates on a non-CPU device."""

    def __init__(self):
        super().__init__()
        self.device_dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor) and o.device.type != "cpu":
                self.device_dtypes.add(o.dtype)
        return out


@pytest.mark.parametrize("flow", [False, True])
def test_no_float64_tensor_reaches_the_device(flow):
    """On a non-CPU device (the meta device stands in for MPS / DirectML) every tensor the sampler,
    relay_start and dct_blur create is float32: float64 stays in CPU-side tables."""
    s = R.RelaySettings(patch=2, blur_sigma_max=2.0, s_block=0.15, s_noise=0.3, s_churn=2.0)
    sig = torch.tensor([0.6, 0.3, 0.1, 0.0])
    x = torch.zeros(1, 4, 8, 8, device="meta")
    seen_in: set[torch.dtype] = set()

    def den(v, t):
        seen_in.add(v.dtype)
        return v * 0.5

    with _NoFloat64OffCpu() as mode:
        start = R.relay_start(x, 0.6, 2, 0.15, flow=flow)
        out = R.relay_sample(den, start, sig, s, flow=flow)
        blurred = R.dct_blur(x, torch.tensor([1.5]), 2)
    assert out.device.type == "meta" and out.dtype == blurred.dtype == torch.float32
    assert seen_in == {torch.float32}
    assert mode.device_dtypes and torch.float64 not in mode.device_dtypes, mode.device_dtypes


def test_sampler_bad_input():
    s = R.RelaySettings(patch=4)
    with pytest.raises(ValueError, match="does not divide"):
        R.relay_sample(lambda v, t: v, torch.zeros(1, 4, 10, 12), torch.tensor([1.0, 0.0]), s)
    with pytest.raises(ValueError, match="strictly decreasing"):
        R.relay_sample(lambda v, t: v, torch.zeros(1, 4, 8, 8), torch.tensor([0.5, 1.0, 0.0]), s)
    with pytest.raises(ValueError, match="finite"):
        R.relay_sample(lambda v, t: v, torch.zeros(1, 4, 8, 8), torch.tensor([float("nan"), 0.0]), s)
    with pytest.raises(ValueError, match="flow-matching schedule"):
        R.relay_sample(lambda v, t: v, torch.zeros(1, 4, 8, 8), torch.tensor([1.5, 0.0]), s, flow=True)
    with pytest.raises(ValueError, match="s_noise"):
        R.RelaySettings(s_noise=1.5)
    with pytest.raises(ValueError, match="positive integer"):
        R.RelaySettings(patch=0)
    for name in ("blur_sigma_max", "s_block", "s_churn", "prob_length"):
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            R.RelaySettings(**{name: float("nan")})
    with pytest.raises(ValueError, match="s_tmax"):
        R.RelaySettings(s_tmax=float("nan"))


# ----------------------------------------------------------------------------- training objective


def test_training_loss_equals_direct_evaluation():
    s = R.RelaySettings(patch=4, blur_sigma_max=3.0, prob_length=0.93)
    y = torch.randn(3, 3, 8, 8, dtype=torch.float64) * 0.5
    u = torch.tensor([0.0, 0.4, 0.95], dtype=torch.float64)
    eps, eps2 = torch.randn_like(y), torch.randn_like(y)
    model = ToyDenoiser(seed=5)
    seen_sigma = []

    def den(x, sigma):
        seen_sigma.append(sigma)
        return torch.stack([model(x[i : i + 1], sigma[i])[0].double() for i in range(x.shape[0])])

    loss = R.relay_training_loss(den, y, s, block_scale=0.15, u=u, noise=eps, noise_block=eps2)
    assert loss.shape == y.shape
    u_min = scipy.stats.norm.cdf((math.log(7.5e-3) + 1.2) / 1.2) / 0.93
    for i in range(3):
        ui = max(u[i].item(), u_min)
        sigma = math.exp(1.2 * scipy.stats.norm.ppf(ui * 0.93) - 1.2)
        assert seen_sigma[0][i].item() == pytest.approx(sigma, rel=1e-9)
        sb = 3.0 * math.sin(ui * math.pi / 2) ** 2
        coeff = scipy_block_dct(y[i].numpy(), 4) * np.tile(R.alpha_table(sb, 4).numpy(), (2, 2))
        y_blur = torch.from_numpy(scipy_block_dct(coeff, 4, inverse=True))
        x_in = y_blur + sigma * (eps[i] + 0.15 * official_block_noise(eps2[i], 4))
        w = min((sigma**2 + 0.25) / (sigma * 0.5) ** 2, 1e5)
        want = w * (model(x_in[None], torch.tensor(sigma))[0].double() - y[i]) ** 2
        assert torch.allclose(loss[i], want, rtol=1e-5, atol=1e-8)
    assert seen_sigma[0][0].item() == pytest.approx(7.5e-3, rel=1e-9)  # u = 0 clamped to sigma >= 7.5e-3


def test_training_loss_decreases_on_tiny_model():
    torch.manual_seed(0)
    s = R.RelaySettings(patch=2, blur_sigma_max=2.0, prob_length=0.89)
    data = R.upsample_nearest(torch.randn(16, 1, 4, 4) * 0.5, 2)  # blocky "upsampled" images

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(2, 16, 3, padding=1)
            self.b = torch.nn.Conv2d(16, 1, 3, padding=1)

        def forward(self, x, sigma):
            sig = sigma.view(-1, 1, 1, 1)
            c_in = 1 / (sig**2 + 0.25).sqrt()
            h = torch.cat([x * c_in, sig.log().expand_as(x) / 4], 1)
            f = self.b(torch.relu(self.a(h)))
            return x * 0.25 / (sig**2 + 0.25) + f * sig * 0.5 / (sig**2 + 0.25).sqrt()

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    eval_u = torch.rand(16, generator=g, dtype=torch.float64)
    eval_n, eval_b = torch.randn(16, 1, 8, 8, generator=g), torch.randn(16, 1, 8, 8, generator=g)

    def eval_loss():
        with torch.no_grad():
            return (
                R.relay_training_loss(net, data, s, u=eval_u, noise=eval_n, noise_block=eval_b).mean().item()
            )

    before = eval_loss()
    for _ in range(120):
        opt.zero_grad()
        R.relay_training_loss(net, data, s, generator=g).mean().backward()
        opt.step()
    after = eval_loss()
    print("relay loss before/after", before, after)
    assert after < 0.8 * before, (before, after)


def test_relay_config_reads_and_checks_the_stored_settings():
    raw = {
        "relay": {
            "patch": 4,
            "blur_sigma_max": 3.0,
            "prob_length": 0.93,
            "s_block": 0.15,
            "s_noise": 0.2,
            "truncation_sigma": 0.9,
            "rho": 7.0,
            "steps": 40,
            "low_res": [64, 64],
            "train": {"block_scale": 0.15, "truncate_sigma": 0.0075, "max_weight": 1e5},
        }
    }
    rc = R.relay_config(raw)
    assert rc == R.TrainedRelay(
        settings=R.RelaySettings(patch=4, blur_sigma_max=3.0, prob_length=0.93, s_block=0.15, s_noise=0.2),
        truncation_sigma=0.9,
        rho=7.0,
        steps=40,
        low_res=(64, 64),
        train={"block_scale": 0.15, "truncate_sigma": 0.0075, "max_weight": 1e5},
    )
    # the trained blur and noise settings replace a run's; another block size is refused by name
    run = R.RelaySettings(patch=4, blur_sigma_max=0.0, prob_length=0.5, s_block=0.0, s_noise=0.0, s_churn=1.0)
    assert rc.apply(run) == R.RelaySettings(
        patch=4, blur_sigma_max=3.0, prob_length=0.93, s_block=0.15, s_noise=0.2, s_churn=1.0
    )
    with pytest.raises(ValueError, match="block size 4 .* here is 2. Set it to 4"):
        rc.apply(R.RelaySettings(patch=2))
    # a model trained without blurring runs at any block size
    plain = R.relay_config({"relay": {"patch": 4, "blur_sigma_max": 0.0}})
    assert plain.apply(R.RelaySettings(patch=2)).patch == 2
    assert R.relay_config({"model": {}}) is None
    bad = [
        ({"blur": 3.0}, "unknown keys"),
        ({"blur_sigma_max": "3"}, "must be float"),
        ({"blur_sigma_max": float("nan")}, "finite"),
        ({"patch": True}, "must be int"),
        ({"prob_length": 1.5}, "prob_length"),
        ({"low_res": [64]}, "low_res"),
        ({"train": {"lr": 1}}, "unknown keys"),
        ({"steps": 1}, "steps"),
        ({"train": {"block_scale": "0.15"}}, "finite number"),
    ]
    for sec, msg in bad:
        with pytest.raises(ValueError, match=msg):
            R.relay_config({"relay": sec})


def test_relay_noise_and_the_one_divisibility_check():
    g = torch.Generator().manual_seed(3)
    eps, eps2 = torch.randn(1, 2, 8, 12, generator=g), torch.randn(1, 2, 8, 12, generator=g)
    torch.testing.assert_close(R.relay_noise(eps, eps2, 4, 0.15), eps + 0.15 * official_block_noise(eps2, 4))
    assert R.relay_noise(eps, None, 4, 0.0) is eps  # s_block 0: the i.i.d. noise, no second draw needed
    for s_block in (0.0, 0.15):  # the size is refused either way: the blocks must tile the latent
        with pytest.raises(ValueError, match="8x12, which the block size 8 does not divide"):
            R.relay_noise(eps, eps2, 8, s_block)


def test_relay_schedule_over_a_model_range():
    full = R.relay_schedule(10, 0.9, 7.0, (0.03, 14.6))
    assert full.dtype == torch.float32
    torch.testing.assert_close(full, R.relay_sigmas(10, 0.03, 14.6, 7.0, 0.9).float())
    own = R.relay_schedule(10, 0.9, 7.0, (0.03, 14.6), sigma_min=0.1, sigma_max=5.0)
    torch.testing.assert_close(own, R.relay_sigmas(10, 0.1, 5.0, 7.0, 0.9).float())
    for kw, msg in (
        ({"sigma_max": 20.0}, "outside this model's range"),
        ({"sigma_min": 0.95}, "must be above the lowest sigma 0.95"),
        ({"sigma_max": 0.5}, "above the model's sigma_max 0.5"),
    ):
        with pytest.raises(ValueError, match=msg):
            R.relay_schedule(10, 0.9, 7.0, (0.03, 14.6), **kw)
    R.check_schedule_in_range(full, (0.03, 14.6))
    with pytest.raises(ValueError, match="above this model.s sigma_max 0.4"):
        R.check_schedule_in_range(full, (0.03, 0.4))
    with pytest.raises(ValueError, match="below this model's sigma_min 0.5"):
        R.check_schedule_in_range(full, (0.5, 14.6))
    with pytest.raises(ValueError, match="at least 2 entries"):
        R.check_schedule_in_range(full[:1], (0.03, 14.6))


def test_relay_memory_arithmetic():
    act, state = R.relay_memory_bytes((2, 4, 64, 32), 1000)
    assert act == 1000 and state == R.RELAY_STATE_TENSORS * 2 * 4 * 64 * 32 * 4
    gib = 1024**3
    msg = R.memory_refusal((1, 4, 128, 64), 8, 3 * gib, gib, 2 * gib, "cuda:0", 8)
    assert "up-scaling a 64x128 latent (batch 1) by 8 to 512x1024 (4096x8192 px)" in msg
    assert "needs at least 4.0 GiB (model activations 3.0 GiB" in msg and "cuda:0 has about 2.0 GiB" in msg
    assert "model activations" not in R.memory_refusal((1, 4, 8, 8), 2, 0, gib, 0, "cpu", 8)


def test_the_ranges_are_stated_once():
    assert R.BLOCK_SIZES[0] == 1 and R.UPSCALE_FACTORS[0] == 2  # an up-scale factor is a block size >= 2
    assert R.BLOCK_SIZES[0] <= R.UPSCALE_FACTORS[0] <= R.UPSCALE_FACTORS[1] <= R.BLOCK_SIZES[1]
    with pytest.raises(ValueError, match=f"steps 1 in {R.STEPS[0]}..{R.STEPS[1]}"):
        R.relay_config({"relay": {"steps": R.STEPS[0] - 1}})
    assert R.relay_config({"relay": {"steps": R.STEPS[1]}}).steps == R.STEPS[1]
    lo, hi = R.BLOCK_SIZES  # the block size's range holds in the kernel too, not only in the schemas
    assert R.RelaySettings(patch=lo).patch == lo and R.RelaySettings(patch=hi).patch == hi
    for bad in (lo - 1, hi + 1, 2.5):
        with pytest.raises(ValueError, match=f"positive integer in {lo}..{hi}, got {bad}"):
            R.RelaySettings(patch=bad)
    with pytest.raises(ValueError, match=f"in {lo}..{hi}, got {hi + 1}"):  # a model file's trained patch
        R.relay_config({"relay": {"patch": hi + 1}})


def test_each_cross_input_rule_is_one_kernel_check():
    """The truncation and churn-window rules are one function each: the nodes' queue-time rules call
    them on what is known (None / 0: not yet), and the run-time checks raise the same text."""
    assert R.truncation_problem(0.9, None, None) is None and R.truncation_problem(None, 0.5, 2.0) is None
    assert R.truncation_problem(0.9, 0.0, 0.0) is None and R.truncation_problem(2.0, 0.5, 2.0) is None
    assert R.truncation_problem(0.9, 2.0, 1.0).startswith("sigma_min (2) must be below sigma_max (1)")
    low = R.truncation_problem(0.9, 0.95, 0.0)
    assert low.startswith("truncation_sigma 0.9 must be above the lowest sigma 0.95")
    high = R.truncation_problem(0.9, 0.0, 0.5)
    assert high.startswith(
        "truncation_sigma 0.9 is above the model's sigma_max 0.5: nothing would be truncated"
    )
    for kw, text in (({"sigma_min": 0.95}, low), ({"sigma_max": 0.5}, high)):
        with pytest.raises(ValueError) as e:
            R.relay_schedule(10, 0.9, 7.0, (0.03, 14.6), **kw)
        assert str(e.value) == text
    with pytest.raises(ValueError) as e:  # the model's own sigma_min is the lowest sigma when none is given
        R.relay_schedule(10, 0.02, 7.0, (0.03, 14.6))
    assert str(e.value) == R.truncation_problem(0.02, 0.03, 14.6)
    assert R.churn_window_problem(None, 1.0) is None and R.churn_window_problem(1.0, 1.0) is None
    churn = R.churn_window_problem(5.0, 1.0)
    assert churn == "s_tmin (5.0) must not exceed s_tmax (1.0): churn would never apply."
    with pytest.raises(ValueError) as e:
        R.RelaySettings(s_tmin=5.0, s_tmax=1.0)
    assert str(e.value) == churn

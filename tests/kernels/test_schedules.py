"""kernels/schedules.py: the one Karras grid gives each convention's reference values bit for bit
(the two implementations the kernels used before they shared it, written out here), and the
DPM++(2M) sampler against a direct evaluation of its update."""

from __future__ import annotations

import pytest
import torch
from ultrares.kernels import schedules as S

SIGMA_RANGES = [(0.002, 80.0), (0.01, 80.0), (0.0291675, 14.614642), (0.02, 60.0), (1e-3, 1.0)]


def edm_reference(steps, sigma_min, sigma_max, rho):
    """The EDM / Relay Diffusion reference grid: float64, ramp i / (steps - 1), no trailing zero."""
    if steps == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    i = torch.arange(steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + i / (steps - 1) * (lo - hi)) ** rho


def kdiffusion_reference(n, sigma_min, sigma_max, rho):
    """k-diffusion's get_sigmas_karras: float32, ramp linspace(0, 1, n), then a trailing zero."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@pytest.mark.parametrize("rho", [7.0, 3.0])
def test_each_convention_is_its_reference_bit_for_bit(rho):
    for lo, hi in SIGMA_RANGES:
        for n in [1, 2, 3, 4, 10, 30, 40, 99, 250, 1000]:
            edm = S.karras_sigmas(n, lo, hi, rho, convention="edm")
            want = edm_reference(n, lo, hi, rho)
            assert edm.dtype == torch.float64 and edm.shape == (n,) and torch.equal(edm, want), (n, lo, hi)
            kd = S.karras_sigmas(n, lo, hi, rho, convention="k-diffusion")
            want = kdiffusion_reference(n, lo, hi, rho)
            assert kd.dtype == torch.float32 and kd.shape == (n + 1,) and torch.equal(kd, want), (n, lo, hi)
            assert kd[-1] == 0 and torch.all(kd[1:] < kd[:-1])
    # the two ramps really differ in the last bits, which is why the caller names its convention
    a, b = (
        S.karras_sigmas(40, 0.002, 80.0, convention="edm"),
        S.karras_sigmas(40, 0.002, 80.0, convention="k-diffusion"),
    )
    assert torch.allclose(a.float(), b[:-1], rtol=1e-5) and not torch.equal(a.float(), b[:-1])


def test_grid_ends_and_device():
    edm = S.karras_sigmas(30, 0.002, 80.0, convention="edm")
    assert edm[0].item() == pytest.approx(80.0) and edm[-1].item() == pytest.approx(0.002)
    assert S.karras_sigmas(1, 0.002, 80.0, convention="edm").tolist() == [80.0]
    moved = S.karras_sigmas(30, 0.002, 80.0, convention="edm", device="cpu")
    assert torch.equal(moved, edm)


@pytest.mark.parametrize(
    "args,match",
    [
        ((0, 0.01, 80.0), "steps must be >= 1"),
        ((5, 0.0, 80.0), "0 < sigma_min < sigma_max"),
        ((5, 80.0, 0.01), "0 < sigma_min < sigma_max"),
    ],
)
@pytest.mark.parametrize("convention", S.KARRAS_CONVENTIONS)
def test_bad_grids_refused(args, match, convention):
    with pytest.raises(ValueError, match=match):
        S.karras_sigmas(*args, convention=convention)


def test_convention_is_explicit():
    with pytest.raises(TypeError):
        S.karras_sigmas(5, 0.01, 80.0)  # no default: every caller names the values it expects
    with pytest.raises(ValueError, match="convention must be one of"):
        S.karras_sigmas(5, 0.01, 80.0, convention="karras")


def test_dpmpp_2m_matches_its_update_written_out():
    """Against the DPM-Solver++(2M) update written from the paper (Lu et al. 2022, Alg. 2), with
    a toy denoiser D(x, s) = x / (1 + s^2) (the optimum for unit-variance Gaussian data)."""
    torch.manual_seed(0)
    calls = []

    def den(x, s, **kw):
        calls.append(kw.get("class_cond"))
        return x / (1 + s[:, None, None, None] ** 2)

    sig = S.karras_sigmas(6, 0.02, 20.0, convention="k-diffusion").double()
    noise = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    got = S.sample_dpmpp_2m(den, noise, sig)
    x, prev = noise * sig[0], None
    for i in range(len(sig) - 1):
        d = x / (1 + sig[i] ** 2)
        if sig[i + 1] == 0:
            x = d
            break
        lam, lam_next = -torch.log(sig[i]), -torch.log(sig[i + 1])
        h = lam_next - lam
        if prev is None:
            dd = d
        else:
            r = (lam - (-torch.log(sig[i - 1]))) / h
            dd = (1 + 1 / (2 * r)) * d - prev / (2 * r)
        x = sig[i + 1] / sig[i] * x - torch.expm1(-h) * dd
        prev = d
    assert torch.allclose(got, x, rtol=1e-12, atol=1e-12)
    assert calls == [None] * (len(sig) - 1)


def test_dpmpp_2m_cfg_combines_cond_and_uncond():
    seen = []

    def den(x, s, class_cond=None):
        seen.append(class_cond.tolist())
        return x * 0 + class_cond[:, None, None, None].to(x.dtype)

    sig = S.karras_sigmas(3, 0.1, 10.0, convention="k-diffusion")
    out = S.sample_dpmpp_2m(
        den, torch.zeros(2, 1, 2, 2), sig, torch.tensor([1, 2]), cfg_scale=3.0, uncond_class=5
    )
    assert seen[0] == [1, 2, 5, 5]  # one batch: cond rows, then the unconditional rows
    # u + (c - u) * 3 with u = 5: 5 + (1 - 5) * 3 = -7, 5 + (2 - 5) * 3 = -4
    assert out[:, 0, 0, 0].tolist() == [-7.0, -4.0]

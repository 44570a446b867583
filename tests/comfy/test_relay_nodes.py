"""Relay nodes on real (tiny, SD1.5 / SD3 / Flux architecture) ComfyUI models: equality with ComfyUI's
own heun sampler (EDM-style and flow matching), seeded step noise, the truncated schedule, the
all-in-one upscale node, the memory refusal, and bad inputs (NaN/inf included)."""

from __future__ import annotations

import comfy.model_sampling as comfy_ms
import comfy.samplers as comfy_samplers
import pytest
import torch
from comfy.k_diffusion import sampling as kd
from node_support import SAMPLER_DEFAULTS
from node_support import record_sigmas as _record_sigmas
from ultrares.kernels import relay as R
from ultrares.kernels import schedules


@pytest.fixture(scope="module")
def conds(comfy, tiny_sd15):
    _, clip, _ = tiny_sd15
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a castle on a hill")
    (neg,) = comfy.run_node("CLIPTextEncode", clip=clip, text="blurry")
    return pos, neg


def _latent(h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(1, 4, h, w, generator=g)}


def test_block_noise_without_block_component_is_random_noise(comfy):
    latent = _latent()
    (ours,) = comfy.run_node("UltraResBlockNoise", noise_seed=5, block_size=2, s_block=0.0)
    (core,) = comfy.run_node("RandomNoise", noise_seed=5)
    assert torch.equal(ours.generate_noise(latent), core.generate_noise(latent))
    (blk,) = comfy.run_node("UltraResBlockNoise", noise_seed=5, block_size=2, s_block=0.5)
    n = blk.generate_noise(latent)
    assert n.shape == latent["samples"].shape
    # i.i.d. part identical to RandomNoise, the rest is 0.5 * block noise of the seed+1 draw
    rest = (n - core.generate_noise(latent)) / 0.5
    (second,) = comfy.run_node("RandomNoise", noise_seed=6)
    assert torch.allclose(rest, R.block_noise(second.generate_noise(latent), 2), atol=1e-5)


def heun_with_step_stream(model, x, sigmas, extra_args=None, **kw):
    """ComfyUI's own k-diffusion heun, its churn noise (drawn from the global RNG) started at the relay
    sampler's documented step-noise seed: (seed * 6364136223846793005 + 1442695040888963407) mod 2^64."""
    seed = (extra_args or {}).get("seed")
    torch.manual_seed((seed * 6364136223846793005 + 1442695040888963407) % 2**64)
    return kd.sample_heun(model, x, sigmas, extra_args=extra_args, **kw)


@pytest.mark.parametrize("churn", [0.0, 10.0])
def test_relay_sampler_equals_comfy_heun(comfy, tiny_sd15, conds, churn):
    """B_max = 0, s_block = 0, s_noise = 0: SamplerCustomAdvanced with our SAMPLER/SIGMAS/NOISE gives the same
    latent as with ComfyUI's own k-diffusion heun (same churn options) on the same model, sigmas and noise
    (churn noise: the same seeded stream)."""
    model, _, _ = tiny_sd15
    pos, neg = conds
    (sigmas,) = comfy.run_node("UltraResRelaySigmas", model=model, steps=6, truncation_sigma=2.0, rho=7.0)
    (guider,) = comfy.run_node("CFGGuider", model=model, positive=pos, negative=neg, cfg=4.0)
    (noise,) = comfy.run_node("UltraResBlockNoise", noise_seed=3, block_size=2, s_block=0.0)
    opts = dict(s_churn=churn, s_tmin=0.05, s_tmax=50.0)
    (ours,) = comfy.run_node("UltraResRelaySampler", **{**SAMPLER_DEFAULTS, **opts, "s_churn_noise": 1.003})
    heun = comfy_samplers.KSAMPLER(heun_with_step_stream, extra_options={**opts, "s_noise": 1.003})
    latent = _latent(seed=1)
    out_ours, den_ours = comfy.run_node(
        "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=ours, sigmas=sigmas, latent_image=latent
    )
    out_heun, _ = comfy.run_node(
        "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=heun, sigmas=sigmas, latent_image=latent
    )
    a, b = out_ours["samples"], out_heun["samples"]
    assert a.shape == b.shape == (1, 4, 16, 16)
    assert torch.allclose(a, b, atol=2e-4, rtol=1e-4), (a - b).abs().max()
    assert not torch.allclose(a, latent["samples"], atol=1e-2)  # it did sample
    assert "samples" in den_ours  # the callback fed the x0 output


def _global_rng_eater(model):
    """A clone whose every model call also draws from torch's global RNG (other RNG use during sampling)."""
    m = model.clone()

    def wrapper(apply_model, args):
        torch.rand(17)
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    return m


def test_relay_sampler_is_reproducible_whatever_the_global_rng_does(comfy, tiny_sd15, conds):
    """Stochastic relay sampling (s_noise, s_block, churn) gives a bit-identical latent in two runs with the
    same noise seed although the global RNG is disturbed between them and during the second; another
    seed gives another latent."""
    model, _, _ = tiny_sd15
    pos, neg = conds
    (sigmas,) = comfy.run_node("UltraResRelaySigmas", model=model, steps=6, truncation_sigma=2.0, rho=7.0)
    (sampler,) = comfy.run_node(
        "UltraResRelaySampler", **(SAMPLER_DEFAULTS | {"s_block": 0.15, "s_noise": 0.3, "s_churn": 2.0})
    )
    latent = _latent(seed=1)

    def run(m, seed):
        (guider,) = comfy.run_node("CFGGuider", model=m, positive=pos, negative=neg, cfg=4.0)
        (noise,) = comfy.run_node("UltraResBlockNoise", noise_seed=seed, block_size=2, s_block=0.15)
        out, _ = comfy.run_node(
            "SamplerCustomAdvanced",
            noise=noise,
            guider=guider,
            sampler=sampler,
            sigmas=sigmas,
            latent_image=latent,
        )
        return out["samples"]

    torch.manual_seed(1)
    a = run(model, 5)
    torch.manual_seed(2)
    torch.randn(999)
    b = run(_global_rng_eater(model), 5)
    assert torch.equal(a, b)
    assert not torch.allclose(a, run(model, 6), atol=1e-3)


def test_relay_sigmas_truncate_the_models_own_grid(comfy, tiny_sd15):
    model, _, _ = tiny_sd15
    ms = model.get_model_object("model_sampling")
    (sig,) = comfy.run_node("UltraResRelaySigmas", model=model, steps=30, truncation_sigma=0.9, rho=7.0)
    grid = schedules.karras_sigmas(30, float(ms.sigma_min), float(ms.sigma_max), 7.0, convention="edm")
    assert sig.dtype == torch.float32 and sig[-1] == 0
    assert float(sig[0]) < 0.9 <= float(grid[grid >= 0.9][-1])
    assert torch.allclose(sig[:-1].double(), grid[grid < 0.9], rtol=1e-6)
    assert len(sig) - 1 <= 15  # over half of the 30 nominal steps are skipped


def test_relay_sigmas_range_refused_at_queue_time_by_the_kernels_check(comfy, tiny_sd15):
    """A truncation outside the sigma range typed on the node is refused at queue time with the text of
    the kernel's one check (kernels.relay.truncation_problem), the one the run raises on the model's range."""
    model, _, _ = tiny_sd15
    base = dict(steps=10, truncation_sigma=0.9, rho=7.0)
    for lo, hi in ((2.0, 1.0), (0.95, 0.0), (0.0, 0.5)):
        msg = comfy.validate("UltraResRelaySigmas", **base, sigma_min=lo, sigma_max=hi)
        assert msg == R.truncation_problem(0.9, lo, hi) and msg, (lo, hi, msg)
        with pytest.raises(ValueError) as e:
            comfy.run_node("UltraResRelaySigmas", model=model, **base, sigma_min=lo, sigma_max=hi)
        assert str(e.value) == msg
    assert comfy.validate("UltraResRelaySigmas", **base, sigma_min=0.5, sigma_max=2.0) is True


def test_relay_upscale_starts_at_truncation_and_doubles(comfy, tiny_sd15, conds):
    model, _, _ = tiny_sd15
    pos, neg = conds
    m, seen = _record_sigmas(model)
    low = _latent(8, 12, seed=2)
    (out,) = comfy.run_node(
        "UltraResRelayUpscale",
        model=m,
        positive=pos,
        negative=neg,
        latent=low,
        factor=2,
        seed=1,
        steps=8,
        truncation_sigma=1.5,
        rho=7.0,
        cfg=5.0,
        **{k: v for k, v in SAMPLER_DEFAULTS.items() if k != "block_size"}
        | {"s_block": 0.15, "s_noise": 0.2},
    )
    assert out["samples"].shape == (1, 4, 16, 24)
    assert torch.isfinite(out["samples"]).all()
    (sig,) = comfy.run_node("UltraResRelaySigmas", model=model, steps=8, truncation_sigma=1.5, rho=7.0)
    assert seen[0] == pytest.approx(float(sig[0]), rel=1e-4) and seen[0] < 1.5
    assert max(seen) < 1.5
    assert len(seen) == 2 * (len(sig) - 1) - 1  # Heun: 2 per step, 1 for the final denoise


def test_relay_upscale_blur_and_no_negative(comfy, tiny_sd15, conds):
    """The blur is applied (blur_sigma_max 2 differs from 0, and equals the modular graph with the same
    blur: block noise + relay sigmas + relay sampler), and without a negative the cfg is ignored."""
    model, _, _ = tiny_sd15
    pos, _ = conds
    low = _latent(4, 4, seed=4)
    kw = {k: v for k, v in SAMPLER_DEFAULTS.items() if k != "block_size"} | {
        "blur_sigma_max": 2.0,
        "s_block": 0.15,
    }
    schedule = dict(steps=6, truncation_sigma=0.9, rho=7.0)

    def upscale(**change):
        inputs = dict(model=model, positive=pos, latent=low, factor=4, seed=0, cfg=5.0, **schedule, **kw)
        (out,) = comfy.run_node("UltraResRelayUpscale", **(inputs | change))
        return out["samples"]

    blurred = upscale()
    assert blurred.shape == (1, 4, 16, 16) and torch.isfinite(blurred).all()
    no_blur = upscale(blur_sigma_max=0.0)
    assert (blurred - no_blur).abs().mean() > 1e-3  # ignoring the blur would make them equal
    torch.testing.assert_close(upscale(cfg=1.0), blurred, rtol=0, atol=0)  # no negative: cfg unused
    # the same stage two built from the modular nodes, blur included
    (noise,) = comfy.run_node("UltraResBlockNoise", noise_seed=0, block_size=4, s_block=0.15)
    (sigmas,) = comfy.run_node("UltraResRelaySigmas", model=model, **schedule)
    (sampler,) = comfy.run_node("UltraResRelaySampler", block_size=4, **kw)
    (guider,) = comfy.run_node("BasicGuider", model=model, conditioning=pos)
    up = {"samples": R.upsample_nearest(low["samples"], 4)}
    out, _ = comfy.run_node(
        "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas, latent_image=up
    )
    torch.testing.assert_close(out["samples"], blurred, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_have_clear_messages(comfy, tiny_sd15, conds):
    model, _, _ = tiny_sd15
    pos, neg = conds
    base = {k: v for k, v in SAMPLER_DEFAULTS.items() if k != "block_size"}
    common = dict(
        model=model,
        positive=pos,
        negative=neg,
        factor=2,
        seed=0,
        steps=10,
        truncation_sigma=0.9,
        rho=7.0,
        cfg=5.0,
        **base,
    )
    with pytest.raises(ValueError, match="5-D|video"):
        comfy.run_node("UltraResRelayUpscale", latent={"samples": torch.zeros(1, 4, 3, 8, 8)}, **common)
    with pytest.raises(ValueError, match="audio"):
        comfy.run_node(
            "UltraResRelayUpscale", latent={"samples": torch.zeros(1, 64, 100), "type": "audio"}, **common
        )
    with pytest.raises(ValueError, match="channels"):
        comfy.run_node("UltraResRelayUpscale", latent={"samples": torch.zeros(1, 16, 8, 8)}, **common)
    with pytest.raises(ValueError, match="sigma_max"):
        comfy.run_node("UltraResRelayUpscale", latent=_latent(8, 8), **(common | {"truncation_sigma": 50.0}))
    with pytest.raises(ValueError, match="outside this model's range"):
        comfy.run_node(
            "UltraResRelaySigmas", model=model, steps=10, truncation_sigma=0.9, rho=7.0, sigma_max=100.0
        )
    with pytest.raises(ValueError, match="must be above the lowest sigma"):
        comfy.run_node("UltraResRelaySigmas", model=model, steps=3, truncation_sigma=0.02, rho=7.0)
    # block size that does not divide the latent
    (noise,) = comfy.run_node("UltraResBlockNoise", noise_seed=0, block_size=4, s_block=0.15)
    with pytest.raises(ValueError, match="does not divide"):
        noise.generate_noise(_latent(18, 16))
    (guider,) = comfy.run_node("CFGGuider", model=model, positive=pos, negative=neg, cfg=4.0)
    (sampler,) = comfy.run_node("UltraResRelaySampler", **(SAMPLER_DEFAULTS | {"block_size": 3}))
    (sigmas,) = comfy.run_node("UltraResRelaySigmas", model=model, steps=10, truncation_sigma=0.9, rho=7.0)
    (rn,) = comfy.run_node("RandomNoise", noise_seed=0)
    with pytest.raises(ValueError, match="block size 3 does not divide"):
        comfy.run_node(
            "SamplerCustomAdvanced",
            noise=rn,
            guider=guider,
            sampler=sampler,
            sigmas=sigmas,
            latent_image=_latent(16, 16),
        )
    # a schedule above the model's range
    (sampler2,) = comfy.run_node("UltraResRelaySampler", **SAMPLER_DEFAULTS)
    with pytest.raises(ValueError, match="above this model's sigma_max"):
        comfy.run_node(
            "SamplerCustomAdvanced",
            noise=rn,
            guider=guider,
            sampler=sampler2,
            sigmas=torch.tensor([60.0, 1.0, 0.0]),
            latent_image=_latent(16, 16),
        )
    # static checks (queue time)
    assert "s_tmin" in comfy.validate("UltraResRelaySampler", s_tmin=5.0, s_tmax=1.0)
    assert comfy.validate("UltraResRelaySampler", s_tmin=0.0, s_tmax=1.0) is True
    assert "sigma_min" in comfy.validate(
        "UltraResRelaySigmas", truncation_sigma=0.9, sigma_min=2.0, sigma_max=1.0
    )
    assert "truncation_sigma" in comfy.validate(
        "UltraResRelaySigmas", truncation_sigma=0.01, sigma_min=0.1, sigma_max=0.0
    )


UPSCALE_WIDGETS = dict(
    factor=2,
    seed=0,
    steps=10,
    truncation_sigma=0.9,
    rho=7.0,
    cfg=5.0,
    **{k: v for k, v in SAMPLER_DEFAULTS.items() if k != "block_size"},
)
SIGMAS_WIDGETS = dict(steps=10, truncation_sigma=0.9, rho=7.0, sigma_min=0.0, sigma_max=0.0)
NOISE_WIDGETS = dict(noise_seed=0, block_size=2, s_block=0.15)
WIDGETS = {
    "UltraResRelayUpscale": UPSCALE_WIDGETS,
    "UltraResRelaySampler": SAMPLER_DEFAULTS,
    "UltraResRelaySigmas": SIGMAS_WIDGETS,
    "UltraResBlockNoise": NOISE_WIDGETS,
}


@pytest.mark.parametrize("node_id", list(WIDGETS))
def test_every_number_input_refuses_nan_inf_and_wrong_types_at_queue_time(comfy, node_id):
    """ComfyUI's own min/max check lets NaN through (NaN < min is False): every FLOAT/INT widget of the relay
    nodes is refused at queue time for NaN, +-inf and a non-number, with a message naming the input."""
    good = WIDGETS[node_id]
    assert comfy.validate(node_id, **good) is True
    info = comfy.object_info(node_id)["input"]
    numbers = [
        n
        for sec in ("required", "optional")
        for n, spec in info.get(sec, {}).items()
        if spec[0] in ("FLOAT", "INT")
    ]
    assert set(numbers) == set(good), numbers  # every number widget is covered
    for name in numbers:
        for bad in (float("nan"), float("inf"), float("-inf"), "abc"):
            msg = comfy.validate(node_id, **(good | {name: bad}))
            assert isinstance(msg, str) and name in msg, (name, bad, msg)
        lo = info.get("required", {}).get(name, info.get("optional", {}).get(name))[1].get("min")
        if lo is not None:  # min/max are still enforced although validate_inputs names the input
            msg = comfy.validate(node_id, **(good | {name: lo - 1}))
            assert isinstance(msg, str) and name in msg, (name, msg)


def test_nan_reaching_execute_is_refused_before_sampling(comfy, tiny_sd15, conds):
    """A NaN that arrives through a link (only known at run time) is refused with the input's name instead of
    sampling to a black image."""
    model, _, _ = tiny_sd15
    pos, neg = conds
    for name in ("blur_sigma_max", "s_churn", "cfg", "s_noise"):
        with pytest.raises(ValueError, match=name):
            comfy.run_node(
                "UltraResRelayUpscale",
                model=model,
                positive=pos,
                negative=neg,
                latent=_latent(8, 8),
                **(UPSCALE_WIDGETS | {name: float("nan")}),
            )
    with pytest.raises(ValueError, match="blur_sigma_max"):
        comfy.run_node("UltraResRelaySampler", **(SAMPLER_DEFAULTS | {"blur_sigma_max": float("nan")}))
    with pytest.raises(ValueError, match="truncation_sigma"):
        comfy.run_node(
            "UltraResRelaySigmas", model=model, **(SIGMAS_WIDGETS | {"truncation_sigma": float("inf")})
        )


def test_relay_upscale_refuses_an_output_that_cannot_fit(comfy, tiny_sd15, conds):
    """A x8 relay of a 1024 x 1024 latent (65536 px square) is refused before any allocation, with the
    estimate in the message; the estimate grows with the output area and a normal size passes."""
    from ultrares.nodes.relay import available_memory, check_relay_memory, estimate_relay_memory  # noqa: PLC0415

    model, _, _ = tiny_sd15
    pos, neg = conds
    huge = {"samples": torch.zeros(1, 4, 1024, 1024)}
    with pytest.raises(
        ValueError, match=r"by 8 .*needs at least [0-9.]+ GiB .*ComfyUI's own estimate.* GiB available"
    ):
        comfy.run_node(
            "UltraResRelayUpscale",
            model=model,
            positive=pos,
            negative=neg,
            latent=huge,
            **(UPSCALE_WIDGETS | {"factor": 8}),
        )
    act2, state2 = estimate_relay_memory(model, (1, 4, 64, 64))
    act4, state4 = estimate_relay_memory(model, (1, 4, 128, 128))
    assert state2 == 16 * 4 * 64 * 64 * 4 and state4 == 4 * state2
    assert act2 > 0 and act4 == pytest.approx(4 * act2, rel=1e-6)  # ComfyUI's estimate: linear in the area
    have, _ = available_memory(model)
    assert have > act2 + state2
    check_relay_memory(model, (1, 4, 32, 32), 2)  # fits: no error
    # a wrapped model (Tiled Diffusion, ...) decides what it evaluates: only the relay state is counted
    wrapped, _ = _record_sigmas(model)
    assert estimate_relay_memory(wrapped, (1, 4, 64, 64)) == (0, state2)


def test_noise_space_is_read_from_the_model():
    from ultrares.nodes.relay import check_sigma_space  # noqa: PLC0415

    class Flow(comfy_ms.ModelSamplingDiscreteFlow, comfy_ms.CONST):
        pass

    class FluxSampling(comfy_ms.ModelSamplingFlux, comfy_ms.CONST):
        pass

    class Eps(comfy_ms.ModelSamplingDiscrete, comfy_ms.EPS):
        pass

    class V(comfy_ms.ModelSamplingDiscrete, comfy_ms.V_PREDICTION):
        pass

    assert check_sigma_space(Flow(), "test") is True
    assert check_sigma_space(FluxSampling(), "test") is True
    assert check_sigma_space(Eps(), "test") is False
    assert check_sigma_space(V(), "test") is False


# ----------------------------------------------------------------------------- flow matching (SD3, Flux)


@pytest.fixture(scope="module")
def sd3_conds(comfy, tiny_sd3):
    _, clip, _ = tiny_sd3
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a lighthouse at dusk")
    (neg,) = comfy.run_node("CLIPTextEncode", clip=clip, text="blurry")
    return pos, neg


@pytest.fixture(scope="module")
def flux_cond(comfy, tiny_flux):
    _, clip, _ = tiny_flux
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a lighthouse at dusk")
    (guided,) = comfy.run_node("FluxGuidance", conditioning=pos, guidance=3.5)
    return guided


def _flow_heun_vs_relay(comfy, model, guider, channels, truncation):
    (sigmas,) = comfy.run_node(
        "UltraResRelaySigmas", model=model, steps=8, truncation_sigma=truncation, rho=3.0
    )
    assert float(sigmas[0]) < truncation <= 1.0 and sigmas[-1] == 0
    (noise,) = comfy.run_node("UltraResBlockNoise", noise_seed=3, block_size=2, s_block=0.0)
    (ours,) = comfy.run_node("UltraResRelaySampler", **SAMPLER_DEFAULTS)
    heun = comfy_samplers.KSAMPLER(kd.sample_heun)
    latent = {"samples": torch.randn(1, channels, 8, 8, generator=torch.Generator().manual_seed(1))}
    a, _ = comfy.run_node(
        "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=ours, sigmas=sigmas, latent_image=latent
    )
    b, _ = comfy.run_node(
        "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=heun, sigmas=sigmas, latent_image=latent
    )
    a, b = a["samples"], b["samples"]
    assert a.shape == b.shape == (1, channels, 8, 8)
    assert torch.allclose(a, b, atol=2e-4, rtol=1e-4), (a - b).abs().max()
    assert not torch.allclose(a, latent["samples"], atol=1e-2)
    return sigmas


def test_relay_sampler_equals_comfy_heun_on_sd3_with_cfg(comfy, tiny_sd3, sd3_conds):
    """Flow matching (SD3, cfg 4 with a negative): blur, block noise and s_noise off, the relay sampler is
    ComfyUI's own heun on the same model, flow schedule (t in [0, 1]) and noise."""
    model, _, _ = tiny_sd3
    pos, neg = sd3_conds
    (guider,) = comfy.run_node("CFGGuider", model=model, positive=pos, negative=neg, cfg=4.0)
    _flow_heun_vs_relay(comfy, model, guider, 16, 0.7)


def test_relay_sampler_equals_comfy_heun_on_flux_cfg1(comfy, tiny_flux, flux_cond):
    """Flux at cfg 1 with FluxGuidance (ComfyUI passes no uncond): the relay sampler is ComfyUI's heun."""
    model, _, _ = tiny_flux
    (guider,) = comfy.run_node("BasicGuider", model=model, conditioning=flux_cond)
    _flow_heun_vs_relay(comfy, model, guider, 16, 0.6)


def _record_inputs(model):
    """A clone recording (sigma, model input) of every model call."""
    m = model.clone()
    seen: list[tuple[float, torch.Tensor]] = []

    def wrapper(apply_model, args):
        seen.append((float(args["timestep"].reshape(-1)[0]), args["input"].clone()))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    return m, seen


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_relay_upscale_on_flow_models_starts_at_t0_with_block_noise(comfy, family, request):
    """Relay Upscale on SD3 (cfg 4, negative) and Flux (cfg 1, FluxGuidance, no negative): the first model
    input is (1 - t0) x_up + t0 (eps + s_block block_noise(eps')) in the model's latent space, at the first
    grid level t0 below the truncation t; all later calls stay below it; the result is the doubled size."""
    model, clip, _ = request.getfixturevalue(f"tiny_{family}")
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a lighthouse at dusk")
    kw = {k: v for k, v in SAMPLER_DEFAULTS.items() if k != "block_size"} | {"s_block": 0.15, "s_noise": 0.2}
    if family == "flux":
        (pos,) = comfy.run_node("FluxGuidance", conditioning=pos, guidance=3.5)
        extra = {"cfg": 1.0}
    else:
        (neg,) = comfy.run_node("CLIPTextEncode", clip=clip, text="blurry")
        extra = {"cfg": 4.0, "negative": neg}
    m, seen = _record_inputs(model)
    low = {"samples": torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(2))}
    (out,) = comfy.run_node(
        "UltraResRelayUpscale",
        model=m,
        positive=pos,
        latent=low,
        factor=2,
        seed=4,
        steps=8,
        truncation_sigma=0.6,
        rho=3.0,
        **kw,
        **extra,
    )
    assert out["samples"].shape == (1, 16, 8, 12) and torch.isfinite(out["samples"]).all()
    (sig,) = comfy.run_node("UltraResRelaySigmas", model=model, steps=8, truncation_sigma=0.6, rho=3.0)
    t0 = float(sig[0])
    assert seen[0][0] == pytest.approx(t0, rel=1e-4) and max(t for t, _ in seen) < 0.6
    assert len(seen) == 2 * (len(sig) - 1) - 1
    (noise_node,) = comfy.run_node("UltraResBlockNoise", noise_seed=4, block_size=2, s_block=0.15)
    up = {"samples": R.upsample_nearest(low["samples"], 2)}
    noise = noise_node.generate_noise(up)
    x_up = model.get_model_object("latent_format").process_in(up["samples"])
    want = (1 - t0) * x_up + t0 * noise
    first = seen[0][1]
    assert first.shape[0] == (2 if family == "sd3" else 1)  # cond + uncond batched for cfg > 1 only
    for half in first.split(1):
        assert torch.allclose(half, want, atol=1e-4), (half - want).abs().max()


def test_every_input_and_output_has_a_tooltip(comfy):
    for node_id in (
        "UltraResBlockNoise",
        "UltraResRelaySigmas",
        "UltraResRelaySampler",
        "UltraResRelayUpscale",
    ):
        info = comfy.object_info(node_id)
        assert info["description"] and info["display_name"].endswith("(UltraRes)")
        assert info["category"] == "UltraRes/relay"
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(info["output_tooltips"]), node_id

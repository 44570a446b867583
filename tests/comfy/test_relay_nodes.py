"""Relay nodes on a real (tiny, SD1.5-architecture) ComfyUI model: equality with ComfyUI's own heun
sampler, the truncated schedule, the all-in-one upscale node, and bad inputs."""

from __future__ import annotations

import comfy.model_sampling as comfy_ms
import comfy.samplers as comfy_samplers
import pytest
import torch
from comfy.k_diffusion import sampling as kd
from ultrares.kernels import relay as R


@pytest.fixture(scope="module")
def conds(comfy, tiny_sd15):
    _, clip, _ = tiny_sd15
    (pos,) = comfy.run_node("CLIPTextEncode", clip=clip, text="a castle on a hill")
    (neg,) = comfy.run_node("CLIPTextEncode", clip=clip, text="blurry")
    return pos, neg


def _latent(h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(1, 4, h, w, generator=g)}


def _record_sigmas(model):
    """A clone whose every model call appends its sigma (first batch entry) to a list."""
    m = model.clone()
    seen: list[float] = []

    def wrapper(apply_model, args):
        seen.append(float(args["timestep"].reshape(-1)[0]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    return m, seen


SAMPLER_DEFAULTS = dict(block_size=2, blur_sigma_max=0.0, prob_length=0.93, s_block=0.0, s_noise=0.0,
                        s_churn=0.0, s_tmin=0.0, s_tmax=1000.0, s_churn_noise=1.0)


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


@pytest.mark.parametrize("churn", [0.0, 10.0])
def test_relay_sampler_equals_comfy_heun(comfy, tiny_sd15, conds, churn):
    """B_max = 0, s_block = 0, s_noise = 0: SamplerCustomAdvanced with our SAMPLER/SIGMAS/NOISE gives the same
    latent as with ComfyUI's own k-diffusion heun (same churn options) on the same model, sigmas and noise."""
    model, _, _ = tiny_sd15
    pos, neg = conds
    (sigmas,) = comfy.run_node("UltraResRelaySigmas", model=model, steps=6, truncation_sigma=2.0, rho=7.0)
    (guider,) = comfy.run_node("CFGGuider", model=model, positive=pos, negative=neg, cfg=4.0)
    (noise,) = comfy.run_node("UltraResBlockNoise", noise_seed=3, block_size=2, s_block=0.0)
    opts = dict(s_churn=churn, s_tmin=0.05, s_tmax=50.0)
    (ours,) = comfy.run_node("UltraResRelaySampler", **{**SAMPLER_DEFAULTS, **opts, "s_churn_noise": 1.003})
    heun = comfy_samplers.KSAMPLER(kd.sample_heun, extra_options={**opts, "s_noise": 1.003})
    latent = _latent(seed=1)
    out_ours, den_ours = comfy.run_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=ours,
                                        sigmas=sigmas, latent_image=latent)
    out_heun, _ = comfy.run_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=heun,
                                 sigmas=sigmas, latent_image=latent)
    a, b = out_ours["samples"], out_heun["samples"]
    assert a.shape == b.shape == (1, 4, 16, 16)
    assert torch.allclose(a, b, atol=2e-4, rtol=1e-4), (a - b).abs().max()
    assert not torch.allclose(a, latent["samples"], atol=1e-2)  # it did sample
    assert "samples" in den_ours  # the callback fed the x0 output


def test_relay_sigmas_truncate_the_models_own_grid(comfy, tiny_sd15):
    model, _, _ = tiny_sd15
    ms = model.get_model_object("model_sampling")
    (sig,) = comfy.run_node("UltraResRelaySigmas", model=model, steps=30, truncation_sigma=0.9, rho=7.0)
    grid = R.karras_sigmas(30, float(ms.sigma_min), float(ms.sigma_max), 7.0)
    assert sig.dtype == torch.float32 and sig[-1] == 0
    assert float(sig[0]) < 0.9 <= float(grid[grid >= 0.9][-1])
    assert torch.allclose(sig[:-1].double(), grid[grid < 0.9], rtol=1e-6)
    assert len(sig) - 1 <= 15  # over half of the 30 nominal steps are skipped


def test_relay_upscale_starts_at_truncation_and_doubles(comfy, tiny_sd15, conds):
    model, _, _ = tiny_sd15
    pos, neg = conds
    m, seen = _record_sigmas(model)
    low = _latent(8, 12, seed=2)
    (out,) = comfy.run_node("UltraResRelayUpscale", model=m, positive=pos, negative=neg, latent=low, factor=2, seed=1,
                            steps=8, truncation_sigma=1.5, rho=7.0, cfg=5.0, **{k: v for k, v in SAMPLER_DEFAULTS.items()
                                                                                  if k != "block_size"} | {"s_block": 0.15, "s_noise": 0.2})
    assert out["samples"].shape == (1, 4, 16, 24)
    assert torch.isfinite(out["samples"]).all()
    (sig,) = comfy.run_node("UltraResRelaySigmas", model=model, steps=8, truncation_sigma=1.5, rho=7.0)
    assert seen[0] == pytest.approx(float(sig[0]), rel=1e-4) and seen[0] < 1.5
    assert max(seen) < 1.5
    assert len(seen) == 2 * (len(sig) - 1) - 1  # Heun: 2 per step, 1 for the final denoise


def test_relay_upscale_blur_and_no_negative(comfy, tiny_sd15, conds):
    model, _, _ = tiny_sd15
    pos, _ = conds
    low = _latent(4, 4, seed=4)
    kw = {k: v for k, v in SAMPLER_DEFAULTS.items() if k != "block_size"} | {"blur_sigma_max": 2.0, "s_block": 0.15}
    (out,) = comfy.run_node("UltraResRelayUpscale", model=model, positive=pos, latent=low, factor=4, seed=0, steps=6,
                            truncation_sigma=0.9, rho=7.0, cfg=5.0, **kw)
    assert out["samples"].shape == (1, 4, 16, 16) and torch.isfinite(out["samples"]).all()


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_have_clear_messages(comfy, tiny_sd15, conds):
    model, _, _ = tiny_sd15
    pos, neg = conds
    base = {k: v for k, v in SAMPLER_DEFAULTS.items() if k != "block_size"}
    common = dict(model=model, positive=pos, negative=neg, factor=2, seed=0, steps=10, truncation_sigma=0.9, rho=7.0,
                  cfg=5.0, **base)
    with pytest.raises(ValueError, match="5-D|video"):
        comfy.run_node("UltraResRelayUpscale", latent={"samples": torch.zeros(1, 4, 3, 8, 8)}, **common)
    with pytest.raises(ValueError, match="audio"):
        comfy.run_node("UltraResRelayUpscale", latent={"samples": torch.zeros(1, 64, 100), "type": "audio"}, **common)
    with pytest.raises(ValueError, match="channels"):
        comfy.run_node("UltraResRelayUpscale", latent={"samples": torch.zeros(1, 16, 8, 8)}, **common)
    with pytest.raises(ValueError, match="sigma_max"):
        comfy.run_node("UltraResRelayUpscale", latent=_latent(8, 8), **(common | {"truncation_sigma": 50.0}))
    with pytest.raises(ValueError, match="outside this model's range"):
        comfy.run_node("UltraResRelaySigmas", model=model, steps=10, truncation_sigma=0.9, rho=7.0, sigma_max=100.0)
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
        comfy.run_node("SamplerCustomAdvanced", noise=rn, guider=guider, sampler=sampler, sigmas=sigmas,
                       latent_image=_latent(16, 16))
    # a schedule above the model's range
    (sampler2,) = comfy.run_node("UltraResRelaySampler", **SAMPLER_DEFAULTS)
    with pytest.raises(ValueError, match="above this model's sigma_max"):
        comfy.run_node("SamplerCustomAdvanced", noise=rn, guider=guider, sampler=sampler2,
                       sigmas=torch.tensor([60.0, 1.0, 0.0]), latent_image=_latent(16, 16))
    # static checks (queue time)
    assert "s_tmin" in comfy.validate("UltraResRelaySampler", s_tmin=5.0, s_tmax=1.0)
    assert comfy.validate("UltraResRelaySampler", s_tmin=0.0, s_tmax=1.0) is True
    assert "sigma_min" in comfy.validate("UltraResRelaySigmas", truncation_sigma=0.9, sigma_min=2.0, sigma_max=1.0)
    assert "truncation_sigma" in comfy.validate("UltraResRelaySigmas", truncation_sigma=0.01, sigma_min=0.1, sigma_max=0.0)


def test_flow_models_are_refused():
    from ultrares.nodes.relay import check_sigma_space  # noqa: PLC0415

    class Flow(comfy_ms.ModelSamplingDiscreteFlow, comfy_ms.CONST):
        pass

    with pytest.raises(ValueError, match="flow-matching"):
        check_sigma_space(Flow(), "test")

    class Eps(comfy_ms.ModelSamplingDiscrete, comfy_ms.EPS):
        pass

    check_sigma_space(Eps(), "test")  # no error


def test_every_input_and_output_has_a_tooltip(comfy):
    for node_id in ("UltraResBlockNoise", "UltraResRelaySigmas", "UltraResRelaySampler", "UltraResRelayUpscale"):
        info = comfy.object_info(node_id)
        assert info["description"] and info["display_name"].endswith("(UltraRes)")
        assert info["category"] == "UltraRes/relay"
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(info["output_tooltips"]), node_id

"""The relay-trained model (ultrares-emoji-relay256) runs the blur path with its trained settings:
UltraResRelayUpscale with relay_settings="model" equals relay_settings="inputs" with the trained
values typed in (blur_sigma_max 3, prob_length 0.93, s_block 0.15, s_noise 0.2) and differs from
"inputs" with the blur off, as relay_emoji_1024 and the demo's first tab use it (16 -> 64 px here,
the smallest size the model's attention windows take, so the file stays quick)."""

from __future__ import annotations

import os

import pytest
import torch

RELAY_MODEL = "ultrares-emoji-relay256.safetensors"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAINED = dict(blur_sigma_max=3.0, prob_length=0.93, s_block=0.15, s_noise=0.2)
WIDGETS = dict(
    factor=4,
    seed=5,
    steps=40,
    truncation_sigma=0.9,
    rho=7.0,
    cfg=1.0,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=1000.0,
    s_churn_noise=1.0,
)

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(ROOT, "models", "hdit", RELAY_MODEL)),
    reason="relay model not built yet (make embedded-models)",
)


@pytest.fixture(scope="module")
def relay(comfy):
    model, _, num_classes = comfy.run_node(
        "UltraResHDiTLoader", model_name=RELAY_MODEL, weight_dtype="float32"
    )
    assert num_classes == 0
    pos, _ = comfy.run_node("UltraResHDiTClass", class_id=0, unconditional=True)
    g = torch.Generator().manual_seed(0)
    coarse = (
        torch.rand(1, 3, 4, 4, generator=g) * 2 - 1
    ) * 0.8  # a smooth stand-in stage-one image in [-1, 1]
    low = {
        "samples": torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=True)
    }

    def upscale(settings: str, **values) -> torch.Tensor:
        inputs = {**WIDGETS, **TRAINED, **values}
        (out,) = comfy.run_node(
            "UltraResRelayUpscale", model=model, positive=pos, latent=low, relay_settings=settings, **inputs
        )
        return out["samples"]

    return model, upscale


def test_relay_model_stores_the_trained_blur_settings(relay):
    model, _ = relay
    trained = model.model.hdit_config.relay.settings  # parsed once, when the file was loaded
    assert (trained.patch, trained.blur_sigma_max, trained.prob_length, trained.s_block, trained.s_noise) == (
        4,
        3.0,
        0.93,
        0.15,
        0.2,
    )


def test_model_settings_run_the_trained_blur_path(relay):
    _, upscale = relay
    from_model = upscale("model", blur_sigma_max=0.0, prob_length=0.5, s_block=0.0, s_noise=0.0)  # ignored
    assert from_model.shape == (1, 3, 64, 64) and torch.isfinite(from_model).all()
    typed = upscale("inputs")  # the trained values typed into the widgets
    torch.testing.assert_close(from_model, typed, rtol=0, atol=0)
    no_blur = upscale("inputs", blur_sigma_max=0.0)
    assert (from_model - no_blur).abs().mean() > 1e-3


def test_model_settings_refuse_another_factor(relay):
    _, upscale = relay
    with pytest.raises(ValueError, match="block size 4"):
        upscale("model", factor=2)

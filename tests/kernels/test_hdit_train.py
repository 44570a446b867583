"""HDiT training loop: recipe pieces, resumable checkpoints, inference export, Twemoji labels."""

import math

import pytest
import torch
from ultrares.kernels import hdit as H
from ultrares.kernels import hdit_train as T

TINY = {
    "model": {
        "type": "image_transformer_v2", "input_channels": 3, "input_size": [16, 16], "patch_size": [2, 2],
        "depths": [1, 1], "widths": [32, 64],
        "self_attns": [{"type": "neighborhood", "d_head": 16, "kernel_size": 3}, {"type": "global", "d_head": 32}],
        "mapping_width": 32, "mapping_depth": 1, "sigma_data": 0.5, "sigma_min": 0.01, "sigma_max": 80.0,
        "sigma_sample_density": {"type": "cosine-interpolated"}, "loss_weighting": "soft-min-snr",
    },
    "dataset": {"num_classes": 3, "cond_dropout_rate": 0.1},
    "optimizer": {"lr": 5e-4, "betas": [0.9, 0.95], "weight_decay": 1e-3},
    "ema_sched": {"power": 0.75, "max_value": 0.9999},
}


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return {"images": torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
            "labels": torch.randint(0, 3, (n,), generator=g), "holdout": torch.arange(n) % 8 == 7}


def test_ema_decay_schedule():
    assert T.ema_decay(0) == 0.0
    assert T.ema_decay(15) == pytest.approx(1 - 16**-0.75)
    assert T.ema_decay(10**9) == 0.9999


def test_cosine_interpolated_sigmas():
    sample = T.make_sigma_sampler(H.parse_config(TINY))
    s = sample(20000, generator=torch.Generator().manual_seed(0))
    assert s.min() >= 1e-3 * 0.999 and s.max() <= 1e3 * 1.001
    # interpolating between shifts for noise_d 32 and 16 (= image size): median log-sigma is near the
    # unshifted cosine schedule's median (sigma_data) scaled by the shift, i.e. between 0.5 and 1
    med = s.median().item()
    assert 0.3 < med < 1.5
    # the density is not log-uniform: more mass around sigma_data than at the extremes
    ls = s.log()
    assert ((ls > math.log(0.1)) & (ls < math.log(5))).float().mean() > 0.5


def test_train_resume_export(tmp_path):
    out = tmp_path / "run"
    export = tmp_path / "m.safetensors"
    logs = []
    r1 = T.train(TINY, str(out), steps=3, batch_size=4, data=_data(), export_path=str(export), log=logs.append,
                 ckpt_every=2, export_every=2)
    assert r1["step"] == 3 and math.isfinite(r1["last_loss"])
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ck["step"] == 3 and {"config", "model", "model_ema", "opt"} <= set(ck)
    # EMA differs from the online weights after a few steps (decay > 0 from step 1)
    assert any(not torch.equal(ck["model"][k], ck["model_ema"][k]) for k in ck["model"])
    r2 = T.train(TINY, str(out), steps=5, batch_size=4, data=_data(), resume=True, export_path=str(export),
                 log=logs.append)
    assert r2["step"] == 5 and any("resumed" in m for m in logs)
    model, cfg = H.load_checkpoint(str(export))
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    for k, v in ck["model_ema"].items():
        torch.testing.assert_close(model.state_dict()[k], v.half().float())
    # the training checkpoint itself loads as a model (model_ema preferred)
    m2, _ = H.load_checkpoint(str(out / "checkpoint.pth"))
    torch.testing.assert_close(m2.state_dict()["patch_in.proj.weight"], ck["model_ema"]["patch_in.proj.weight"])


def test_training_reduces_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = H.build_model(TINY)
    den = H.Denoiser(model, 0.5, "soft-min-snr")
    opt = T.make_optimizer(model, {**TINY["optimizer"], "lr": 3e-3})
    x = _data(4)["images"].float() / 127.5 - 1
    sigma = torch.tensor([0.3, 0.8, 1.5, 3.0])
    noise = torch.randn_like(x)
    c = torch.tensor([0, 1, 2, 3])
    first = den.loss(x, noise, sigma, class_cond=c).mean().item()
    for _ in range(40):
        loss = den.loss(x, noise, sigma, class_cond=c).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_emoji_class_ids():
    lut = T.emoji_category_lookup()
    assert T.EMOJI_CLASSES[T.emoji_class_id("1f600", lut)] == "Smileys & Emotion"
    assert T.EMOJI_CLASSES[T.emoji_class_id("1f436", lut)] == "Animals & Nature"
    assert T.EMOJI_CLASSES[T.emoji_class_id("1f355", lut)] == "Food & Drink"
    assert T.EMOJI_CLASSES[T.emoji_class_id("1f1e9-1f1ea", lut)] == "Flags"
    assert T.EMOJI_CLASSES[T.emoji_class_id("1f1e6", lut)] == "Flags"  # lone regional indicator
    # skin-tone ZWJ sequence missing from the table falls back to its first code point's group
    assert T.EMOJI_CLASSES[T.emoji_class_id("1f468-1f3fb-200d-1f384", lut)] == "People & Body"
    assert len(T.twemoji_files()) == 4009

"""HDiT training loop: recipe pieces, resumable checkpoints, inference export, Twemoji labels."""

import math

import pytest
import torch
from ultrares.kernels import hdit as H
from ultrares.kernels import hdit_format
from ultrares.kernels import hdit_train as T

TINY = {
    "model": {
        "type": "image_transformer_v2",
        "input_channels": 3,
        "input_size": [16, 16],
        "patch_size": [2, 2],
        "depths": [1, 1],
        "widths": [32, 64],
        "self_attns": [
            {"type": "neighborhood", "d_head": 16, "kernel_size": 3},
            {"type": "global", "d_head": 32},
        ],
        "mapping_width": 32,
        "mapping_depth": 1,
        "sigma_data": 0.5,
        "sigma_min": 0.01,
        "sigma_max": 80.0,
        "sigma_sample_density": {"type": "cosine-interpolated"},
        "loss_weighting": "soft-min-snr",
    },
    "dataset": {"num_classes": 3, "cond_dropout_rate": 0.1},
    "optimizer": {"lr": 5e-4, "betas": [0.9, 0.95], "weight_decay": 1e-3},
    "ema_sched": {"power": 0.75, "max_value": 0.9999},
}


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return {
        "images": torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
        "labels": torch.randint(0, 3, (n,), generator=g),
        "holdout": torch.arange(n) % 8 == 7,
    }


def test_ema_decay_schedule():
    assert T.ema_decay(0) == 0.0
    assert T.ema_decay(15) == pytest.approx(1 - 16**-0.75)
    assert T.ema_decay(10**9) == 0.9999


def test_cosine_interpolated_sigmas():
    sample = T.make_sigma_sampler(hdit_format.parse_config(TINY))
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
    r1 = T.train(
        TINY,
        str(out),
        steps=3,
        batch_size=4,
        data=_data(),
        export_path=str(export),
        log=logs.append,
        ckpt_every=2,
        export_every=2,
    )
    assert r1["step"] == 3 and math.isfinite(r1["last_loss"])
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ck["step"] == 3 and {"config", "model", "model_ema", "opt"} <= set(ck)
    # EMA differs from the online weights after a few steps (decay > 0 from step 1)
    assert any(not torch.equal(ck["model"][k], ck["model_ema"][k]) for k in ck["model"])
    r2 = T.train(
        TINY,
        str(out),
        steps=5,
        batch_size=4,
        data=_data(),
        resume=True,
        export_path=str(export),
        log=logs.append,
    )
    assert r2["step"] == 5 and any("resumed" in m for m in logs)
    model, cfg = hdit_format.load_checkpoint(str(export))
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    for k, v in ck["model_ema"].items():
        torch.testing.assert_close(model.state_dict()[k], v.half().float())
    # the training checkpoint itself loads as a model (model_ema preferred)
    m2, _ = hdit_format.load_checkpoint(str(out / "checkpoint.pth"))
    torch.testing.assert_close(
        m2.state_dict()["patch_in.proj.weight"], ck["model_ema"]["patch_in.proj.weight"]
    )


def test_training_reduces_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = hdit_format.build_model(TINY)
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


# ----------------------------------------------------------------------------- k-diffusion recipe


def _kdiff_ln_sigma(u, image_d, noise_d_low, noise_d_high, sigma_data=0.5, smin=1e-3, smax=1e3):
    """ln sigma at u of k-diffusion's rand_cosine_interpolated, derived here in sigma space.

    The cosine schedule ``logsnr(t) = -2 ln tan(a + t (b - a))`` gives sigma = sigma_data * tan(...);
    its copy shifted by ``2 ln(noise_d / image_d)`` in log-SNR is sigma_data * (image_d / noise_d) *
    tan(.) with the angle running from atan(smax/sd * k) at t=0 to atan(smin/sd * k) at t=1,
    k = noise_d / image_d (so both ends stay at smax and smin). k-diffusion lerps the two log-SNRs with
    weight t, i.e. ln sigma = (1 - t) ln sigma_low(t) + t ln sigma_high(t)."""

    def ln_sigma(noise_d):
        k = noise_d / image_d
        a, b = math.atan(smax / sigma_data * k), math.atan(smin / sigma_data * k)
        return torch.log(sigma_data / k * torch.tan(a + u * (b - a)))

    return (1 - u) * ln_sigma(noise_d_low) + u * ln_sigma(noise_d_high)


def _config_at(size):
    cfg = {**TINY, "model": {**TINY["model"], "input_size": [size, size]}}
    return hdit_format.parse_config(cfg)


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_cosine_interpolated_quantiles_match_k_diffusion(size):
    n = 100_000
    s = T.make_sigma_sampler(_config_at(size))(n, generator=torch.Generator().manual_seed(size))
    assert s.dtype == torch.float32 and s.shape == (n,)
    ln = s.double().log().sort().values
    qs = torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99], dtype=torch.float64)
    # sigma falls as u rises (checked below), so the q-quantile of ln sigma sits at u = 1 - q
    u = torch.linspace(0, 1, 20001, dtype=torch.float64)
    curve = _kdiff_ln_sigma(u, size, 32, size)
    assert (curve[1:] < curve[:-1]).all()
    expected = _kdiff_ln_sigma(1 - qs, size, 32, size)
    got = ln[(qs * n).long()]
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)
    # the tails are where the old sampler went wrong: both ends of [1e-3, 1e3] are reached
    assert ln[0] > math.log(1e-3) - 1e-4 and ln[-1] < math.log(1e3) + 1e-4
    assert ln[0] < math.log(2e-3) and ln[-1] > math.log(5e2)


def test_sigma_sampler_is_stratified_like_k_diffusion():
    u = T.stratified_uniform(16, torch.Generator().manual_seed(0))
    assert torch.equal((u * 16).floor().long(), torch.arange(16))
    # group/groups as enable_stratified_accelerate: rank 1 of 2 takes the odd strata
    u2 = T.stratified_uniform(8, torch.Generator().manual_seed(0), group=1, groups=2)
    assert torch.equal((u2 * 16).floor().long(), torch.arange(1, 16, 2))
    s = T.make_sigma_sampler(_config_at(64))(32, generator=torch.Generator().manual_seed(1))
    assert (s[1:] < s[:-1]).all()  # one draw per stratum, from the noisy end to the clean end
    # a batch of 4 always spans the four quarters of the schedule
    for seed in range(5):
        s = T.make_sigma_sampler(_config_at(64))(4, generator=torch.Generator().manual_seed(seed)).double()
        edges = _kdiff_ln_sigma(torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64), 64, 32, 64)
        assert ((s.log() <= edges[:-1] + 1e-6) & (s.log() >= edges[1:] - 1e-6)).all()
    # unstratified u (stratified=False) follows the same density
    s = T.make_sigma_sampler(_config_at(256), stratified=False)(
        100_000, generator=torch.Generator().manual_seed(2)
    )
    q = s.double().log().sort().values[[50_000, 90_000]]
    torch.testing.assert_close(
        q, _kdiff_ln_sigma(torch.tensor([0.5, 0.1], dtype=torch.float64), 256, 32, 256), atol=0.05, rtol=0
    )


def _perturbed_tiny(seed=0):
    """TINY with every parameter randomised (zero-init layers otherwise block most gradients)."""
    torch.manual_seed(seed)
    model = hdit_format.build_model(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def _tiny_loss(model, scale=1.0):
    d = _data(4)
    x = d["images"].float() / 127.5 - 1
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=g)
    sigma = torch.tensor([0.05, 0.5, 2.0, 20.0])
    den = H.Denoiser(model, 0.5, "soft-min-snr")
    return den.loss(x, noise, sigma, class_cond=torch.tensor([0, 1, 2, 3])).mean() * scale


def test_param_groups_follow_k_diffusion_tags():
    model = hdit_format.build_model(TINY)
    groups = T.param_group_names(model)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(n for g in groups.values() for n in g) == sorted(names)  # each parameter exactly once
    cond_in = ("time_in_proj.", "aug_in_proj.", "mapping_cond_in_proj.", "class_emb.")
    expect = {"wd": [], "no_wd": [], "mapping_wd": [], "mapping_no_wd": []}
    for n in names:
        mapping = n.startswith("mapping.") or ".norm.linear." in n  # MappingNetwork + AdaRMSNorm projections
        decays = n.endswith(".weight") and not n.startswith(cond_in)  # Linear weights (norms use .scale)
        expect[("mapping_" if mapping else "") + ("wd" if decays else "no_wd")].append(n)
    assert groups == expect
    for key, name in [
        ("wd", "patch_in.proj.weight"),
        ("wd", "merges.0.proj.weight"),
        ("wd", "patch_out.proj.weight"),
        ("wd", "mid_level.0.self_attn.qkv_proj.weight"),
        ("wd", "up_levels.0.0.ff.up_proj.weight"),
        ("no_wd", "class_emb.weight"),
        ("no_wd", "time_in_proj.weight"),
        ("no_wd", "aug_in_proj.weight"),
        ("no_wd", "splits.0.fac"),
        ("no_wd", "out_norm.scale"),
        ("no_wd", "mid_level.0.self_attn.scale"),
        ("mapping_wd", "mapping.blocks.0.up_proj.weight"),
        ("mapping_wd", "down_levels.0.0.ff.norm.linear.weight"),
        ("mapping_no_wd", "mapping.in_norm.scale"),
        ("mapping_no_wd", "mapping.blocks.0.norm.scale"),
    ]:
        assert name in groups[key], (key, name)
    opt = T.make_optimizer(model, {"lr": 6e-4, "weight_decay": 0.01, "betas": [0.9, 0.95]})
    by_name = {g["name"]: g for g in opt.param_groups}
    expected = {
        "wd": (6e-4, 0.01),
        "no_wd": (6e-4, 0.0),
        "mapping_wd": (2e-4, 0.01),
        "mapping_no_wd": (2e-4, 0.0),
    }
    assert set(by_name) == set(expected)
    for k, (lr, wd) in expected.items():
        assert by_name[k]["lr"] == pytest.approx(lr, rel=1e-12) and by_name[k]["weight_decay"] == wd, k
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_mapping_parameters_move_at_a_third_of_the_lr():
    model = _perturbed_tiny()
    opt = T.make_optimizer(model, {"lr": 1e-3, "weight_decay": 0.0})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    T.optimizer_step(model, opt, _tiny_loss(model), max_grad_norm=1e9)
    groups = T.param_group_names(model)
    params = dict(model.named_parameters())
    # Adam's first step moves every element with a non-negligible gradient by lr * sign(grad)
    for key, lr in (("wd", 1e-3), ("no_wd", 1e-3), ("mapping_wd", 1e-3 / 3), ("mapping_no_wd", 1e-3 / 3)):
        step = torch.cat([(params[n].detach() - before[n]).abs().flatten() for n in groups[key]])
        moved = step[step > 1e-7]
        assert moved.numel() > 0.5 * step.numel(), key
        assert moved.median().item() == pytest.approx(lr, rel=1e-3), key


def test_optimizer_step_clips_gradient_norm_to_one():
    model = _perturbed_tiny()
    opt = T.make_optimizer(model, TINY["optimizer"])
    pre = T.optimizer_step(model, opt, _tiny_loss(model, scale=1e3))
    post = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
    )
    assert pre > 10 and post.item() == pytest.approx(T.GRAD_CLIP_NORM, rel=1e-4)
    # a small gradient is left alone
    pre = T.optimizer_step(model, opt, _tiny_loss(model, scale=1e-4))
    post = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
    )
    assert pre < 1 and post.item() == pytest.approx(pre, rel=1e-5)


def test_train_clips_every_step(tmp_path, monkeypatch):
    seen = []
    real = T.optimizer_step

    def spy(model, opt, loss, max_grad_norm=T.GRAD_CLIP_NORM):
        pre = real(model, opt, loss * 1e3, max_grad_norm)  # blow the gradient up: clipping must engage
        seen.append(
            (
                pre,
                torch.linalg.vector_norm(
                    torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
                ).item(),
                max_grad_norm,
            )
        )
        return pre

    monkeypatch.setattr(T, "optimizer_step", spy)
    T.train(TINY, str(tmp_path), steps=2, batch_size=4, data=_data(), log=lambda m: None)
    assert len(seen) == 2
    for pre, post, max_norm in seen:
        assert max_norm == 1.0 and pre > 1 and post == pytest.approx(1.0, rel=1e-4)


def _states(path):
    ck = torch.load(path, weights_only=True)
    return ck["model"], ck["model_ema"], ck["opt"]["state"], ck


def test_cpu_training_is_deterministic_and_resumes_exactly(tmp_path):
    quiet = lambda m: None  # noqa: E731
    T.train(TINY, str(tmp_path / "a"), steps=4, batch_size=4, data=_data(), log=quiet, device="cpu")
    T.train(TINY, str(tmp_path / "b"), steps=2, batch_size=4, data=_data(), log=quiet, device="cpu")
    T.train(
        TINY, str(tmp_path / "b"), steps=4, batch_size=4, data=_data(), log=quiet, device="cpu", resume=True
    )
    T.train(TINY, str(tmp_path / "c"), steps=4, batch_size=4, data=_data(), log=quiet, device="cpu", seed=1)
    ma, ea, oa, cka = _states(tmp_path / "a" / "checkpoint.pth")
    mb, eb, ob, ckb = _states(tmp_path / "b" / "checkpoint.pth")
    mc, _, _, _ = _states(tmp_path / "c" / "checkpoint.pth")
    assert cka["recipe"] == T.RECIPE_VERSION and cka["step"] == ckb["step"] == 4
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
        assert torch.equal(ea[k], eb[k]), k
    for i in oa:
        for k in oa[i]:
            assert torch.equal(oa[i][k], ob[i][k]), (i, k)
    assert torch.equal(cka["rng"], ckb["rng"])
    assert any(not torch.equal(ma[k], mc[k]) for k in ma)  # another seed trains differently


def test_cpu_bf16_autocast_trains_with_finite_loss(tmp_path):
    if not torch.amp.is_autocast_available("cpu"):
        pytest.skip("this torch has no CPU autocast")
    logs = []
    r = T.train(
        TINY,
        str(tmp_path / "bf16"),
        steps=2,
        batch_size=4,
        data=_data(),
        log=logs.append,
        log_every=1,
        device="cpu",
        mixed_precision="bf16",
    )
    assert r["device"] == "cpu" and r["mixed_precision"] == "bf16" and math.isfinite(r["last_loss"])
    assert any("mixed precision: bf16" in m for m in logs)
    r32 = T.train(
        TINY,
        str(tmp_path / "fp32"),
        steps=2,
        batch_size=4,
        data=_data(),
        log=lambda m: None,
        log_every=1,
        device="cpu",
        mixed_precision="no",
    )
    # same seed and batches: the losses differ only through bf16 rounding, which proves autocast ran
    assert r32["mixed_precision"] == "no" and r["last_loss"] != r32["last_loss"]
    assert r["last_loss"] == pytest.approx(r32["last_loss"], rel=0.05)
    ck = torch.load(tmp_path / "bf16" / "checkpoint.pth", weights_only=True)
    assert all(v.dtype == torch.float32 for v in ck["model"].values() if v.is_floating_point())


def test_device_and_precision_options():
    assert T.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda, mps; got 'tpu'"):
        T.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            T.resolve_device("cuda")
        if not T._mps_available():
            assert T.resolve_device("auto") == torch.device("cpu")
    cpu = torch.device("cpu")
    assert T.resolve_precision("auto", cpu) is None and T.resolve_precision("no", cpu) is None
    with pytest.raises(ValueError, match="got 'fp16'"):
        T.resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        T.train(TINY, "unused", steps=1, batch_size=0, data=_data())
    for argv in (
        ["--out", "x", "--device", "tpu"],
        ["--out", "x", "--batch-size", "0"],
        ["--out", "x", "--mixed-precision", "fp16"],
        ["--out", "x", "--max-minutes", "nan"],
    ):
        with pytest.raises(SystemExit):
            _cli().main(argv)


def _cli():
    """scripts/hdit_train.py, the trainer's command line."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "hdit_train.py"
    spec = importlib.util.spec_from_file_location("hdit_train_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_trainer_optimizer_state_is_mapped_by_parameter(tmp_path):
    model = _perturbed_tiny()
    named = list(model.named_parameters())
    legacy_dec = [p for n, p in named if p.ndim >= 2 and "class_emb" not in n]
    legacy_rest = [p for n, p in named if not (p.ndim >= 2 and "class_emb" not in n)]
    legacy = torch.optim.AdamW(
        [{"params": legacy_dec, "weight_decay": 1e-3}, {"params": legacy_rest, "weight_decay": 0.0}],
        lr=5e-4,
        betas=(0.9, 0.95),
    )
    legacy.zero_grad()
    _tiny_loss(model).backward()
    legacy.step()
    torch.save(legacy.state_dict(), tmp_path / "opt.pth")
    saved = torch.load(tmp_path / "opt.pth", weights_only=True)
    opt = T.make_optimizer(model, TINY["optimizer"])
    logs = []
    T.load_optimizer_state(opt, model, saved, logs.append)
    assert any("mapped" in m for m in logs)
    for n, p in named:
        torch.testing.assert_close(opt.state[p]["exp_avg"], legacy.state[p]["exp_avg"], rtol=0, atol=0, msg=n)
        torch.testing.assert_close(
            opt.state[p]["exp_avg_sq"], legacy.state[p]["exp_avg_sq"], rtol=0, atol=0, msg=n
        )
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 5e-4, 5e-4 / 3, 5e-4 / 3])


RELAY_TINY = {
    **TINY,
    "dataset": {"num_classes": 0, "cond_dropout_rate": 0.0},
    "relay": {
        "patch": 4,
        "blur_sigma_max": 3.0,
        "prob_length": 0.93,
        "s_block": 0.15,
        "s_noise": 0.2,
        "truncation_sigma": 0.9,
        "rho": 7.0,
        "steps": 40,
        "low_res": [4, 4],
        "train": {"block_scale": 0.15, "truncate_sigma": 0.0075},
    },
}


def test_relay_objective_trains_resumes_bit_for_bit_and_exports_its_settings(tmp_path):
    """A config with a "relay" section trains with relay_training_loss; a resumed run equals an
    uninterrupted one exactly (every draw from the saved generator), and the export keeps the settings."""
    from ultrares.kernels import relay as R

    straight, split = tmp_path / "a", tmp_path / "b"
    export = tmp_path / "relay.safetensors"
    T.train(RELAY_TINY, str(straight), steps=4, batch_size=4, data=_data(), log=lambda m: None)
    T.train(RELAY_TINY, str(split), steps=2, batch_size=4, data=_data(), log=lambda m: None)
    T.train(
        RELAY_TINY,
        str(split),
        steps=4,
        batch_size=4,
        data=_data(),
        resume=True,
        export_path=str(export),
        log=lambda m: None,
    )
    a = torch.load(straight / "checkpoint.pth", weights_only=True)
    b = torch.load(split / "checkpoint.pth", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    _, cfg = hdit_format.load_checkpoint(str(export))
    rc = cfg.relay
    assert rc.settings.blur_sigma_max == 3.0 and rc.settings.patch == 4 and rc.low_res == (4, 4)
    assert T.relay_objective(RELAY_TINY)[0] == R.RelaySettings(
        patch=4, blur_sigma_max=3.0, prob_length=0.93, s_block=0.15, s_noise=0.2
    )
    assert T.relay_objective(TINY) == (None, {})


def test_relay_objective_differs_from_the_edm_objective(tmp_path):
    """Same data, seed and model: the relay objective (blurred inputs, its own weighting) moves the
    weights differently from the EDM objective, so the section is really read."""
    edm = {**RELAY_TINY}
    edm.pop("relay")
    T.train(RELAY_TINY, str(tmp_path / "r"), steps=1, batch_size=4, data=_data(), log=lambda m: None)
    T.train(edm, str(tmp_path / "e"), steps=1, batch_size=4, data=_data(), log=lambda m: None)
    r = torch.load(tmp_path / "r" / "checkpoint.pth", weights_only=True)["model"]
    e = torch.load(tmp_path / "e" / "checkpoint.pth", weights_only=True)["model"]
    assert any(not torch.equal(r[k], e[k]) for k in r)


def test_load_dataset_refuses_unknown_types():
    with pytest.raises(ValueError, match="dataset.type 'mnist' is unknown"):
        T.load_dataset({"type": "mnist"}, 64)

"""HDiT architecture: official k-diffusion key layout loads strictly, shapes, attention types, I/O."""

import json
import math

import pytest
import torch
from hdit_layout import SMALL, official_keys, random_official_state_dict, small_keys
from ultrares.kernels import hdit, hdit_format, schedules
from ultrares.kernels.hdit_format import HDiTLoadError


def test_official_layout_loads_strictly_and_runs():
    sd = random_official_state_dict(small_keys())
    cfg = hdit_format.parse_config(SMALL)
    model = hdit_format.build_model(cfg)
    assert set(model.state_dict()) == set(sd)
    hdit_format.load_state_dict_strict(model, sd)
    for k, v in sd.items():
        torch.testing.assert_close(model.state_dict()[k], v)
    x = torch.randn(2, 3, 32, 48)
    out = model(x, torch.tensor([0.5, 3.0]), class_cond=torch.tensor([1, 5]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the output depends on sigma and on the class (a broken mapping network would not)
    out2 = model(x, torch.tensor([0.5, 3.0]), class_cond=torch.tensor([2, 5]))
    assert (out - out2)[0].abs().max() > 1e-4 and torch.allclose(out[1], out2[1], atol=1e-5)


def test_defaults_match_kdiffusion_config():
    cfg = hdit_format.parse_config(
        {"model": {"type": "image_transformer_v2", "widths": [128, 256], "depths": [2, 2]}}
    )
    assert [lv.d_ff for lv in cfg.levels] == [384, 768]
    assert cfg.mapping.width == 256 and cfg.mapping.d_ff == 768 and cfg.mapping.depth == 2
    assert isinstance(cfg.levels[0].self_attn, hdit.NeighborhoodAttentionSpec)
    assert cfg.levels[0].self_attn.kernel_size == 7 and cfg.levels[0].self_attn.d_head == 64
    assert isinstance(cfg.levels[1].self_attn, hdit.GlobalAttentionSpec)
    assert cfg.num_classes == 0
    keys = official_keys([128, 256], [2, 2], [64, 64], 256, 2, [384, 768], 768, 0, (1, 1))
    assert {k: tuple(v.shape) for k, v in hdit_format.build_model(cfg).state_dict().items()} == keys


def test_mismatch_errors_name_the_problem():
    sd = random_official_state_dict(small_keys())
    model = hdit_format.build_model(SMALL)
    bad = dict(sd)
    bad.pop("merges.0.proj.weight")
    bad["foo.bar"] = torch.zeros(1)
    bad["out_norm.scale"] = torch.ones(7)
    with pytest.raises(HDiTLoadError) as e:
        hdit_format.load_state_dict_strict(model, bad, "x.safetensors")
    msg = str(e.value)
    assert (
        "merges.0.proj.weight" in msg
        and "foo.bar" in msg
        and "out_norm.scale" in msg
        and "x.safetensors" in msg
    )
    nan = dict(sd)
    nan["out_norm.scale"] = torch.full((32,), float("nan"))
    with pytest.raises(HDiTLoadError, match="NaN"):
        hdit_format.load_state_dict_strict(model, nan)


def test_prefixed_training_state_dict_loads():
    sd = random_official_state_dict(small_keys())
    model = hdit_format.build_model(SMALL)
    hdit_format.load_state_dict_strict(model, {"module.inner_model." + k: v for k, v in sd.items()})
    torch.testing.assert_close(model.state_dict()["patch_in.proj.weight"], sd["patch_in.proj.weight"])


def test_rope_freqs_and_rotation():
    rope = hdit.AxialRoPE(64 // 2, 4)
    assert rope.freqs.shape == (4, 8)
    flat = rope.freqs.T.reshape(-1)
    torch.testing.assert_close(flat[0], torch.tensor(math.pi))
    assert torch.all(flat[1:] > flat[:-1]) and flat[-1] < 10 * math.pi
    theta = rope(torch.tensor([[0.5, -0.25]]))
    assert theta.shape == (1, 4, 16)
    torch.testing.assert_close(theta[0, 0, :8], 0.5 * rope.freqs[0])
    torch.testing.assert_close(theta[0, 0, 8:], -0.25 * rope.freqs[0])
    x = torch.randn(3, 64)
    th = torch.rand(16)
    y = hdit.apply_rotary(x, th)
    # pairs (i, 16 + i) rotate, norms are kept, the second half of the head is untouched
    torch.testing.assert_close(y[:, 32:], x[:, 32:])
    torch.testing.assert_close(y[:, :16] ** 2 + y[:, 16:32] ** 2, x[:, :16] ** 2 + x[:, 16:32] ** 2)
    torch.testing.assert_close(y[:, 0], x[:, 0] * th[0].cos() - x[:, 16] * th[0].sin())


def test_axial_pos_aspect():
    pos = hdit.make_axial_pos(2, 4)
    assert pos.shape == (2, 4, 2)
    torch.testing.assert_close(pos[..., 1][0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    torch.testing.assert_close(pos[..., 0][:, 0], torch.tensor([-0.25, 0.25]))


def test_neighborhood_model_equals_global_when_kernel_covers_grid():
    """With the kernel as large as the token grid, neighborhood attention is global attention."""
    base = {
        "type": "image_transformer_v2",
        "input_size": [28, 28],
        "patch_size": [2, 2],
        "depths": [1, 1],
        "widths": [32, 64],
        "mapping_width": 32,
        "mapping_depth": 1,
    }
    m_na = hdit_format.build_model(
        {
            **base,
            "self_attns": [
                {"type": "global", "d_head": 16},
                {"type": "neighborhood", "d_head": 32, "kernel_size": 7},
            ],
        }
    )
    m_gl = hdit_format.build_model(
        {**base, "self_attns": [{"type": "global", "d_head": 16}, {"type": "global", "d_head": 32}]}
    )
    sd = {k: torch.randn_like(v) * 0.1 if v.ndim == 2 else v for k, v in m_na.state_dict().items()}
    m_na.load_state_dict(sd)
    m_gl.load_state_dict(sd)
    x = torch.randn(1, 3, 28, 28)  # mid level: 7x7 tokens, the 7x7 window is the whole grid
    with torch.no_grad():
        torch.testing.assert_close(
            m_na(x, torch.tensor([1.0])), m_gl(x, torch.tensor([1.0])), atol=1e-5, rtol=1e-4
        )
        x = torch.randn(1, 3, 40, 40)  # 10x10 tokens: the 7x7 neighborhood now differs from global
        assert (m_na(x, torch.tensor([1.0])) - m_gl(x, torch.tensor([1.0]))).abs().max() > 1e-4


def test_denoiser_scalings_and_loss():
    inner = hdit_format.build_model(SMALL)
    den = hdit.Denoiser(inner, sigma_data=0.5)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    cs, co, ci = den.scalings(sigma)
    torch.testing.assert_close(cs, 0.25 / (sigma**2 + 0.25))
    torch.testing.assert_close(co, sigma * 0.5 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(ci, 1 / (sigma**2 + 0.25).sqrt())
    x = torch.randn(3, 3, 16, 16)
    c = torch.tensor([0, 1, 5])
    # patch_out is zero-initialised: F = 0, so D = c_skip * x_in and loss = mean(target^2) * w
    d = den(x, sigma, class_cond=c)
    torch.testing.assert_close(d, x * cs[:, None, None, None])
    noise = torch.randn_like(x)
    loss = den.loss(x, noise, sigma, class_cond=c)
    target = (x - cs[:, None, None, None] * (x + noise * sigma[:, None, None, None])) / co[
        :, None, None, None
    ]
    w = (sigma * 0.5) ** 2 / (sigma**2 + 0.25) ** 2
    torch.testing.assert_close(loss, target.pow(2).flatten(1).mean(1) * w)


def test_inference_format_roundtrip_and_pth(tmp_path):
    sd = random_official_state_dict(small_keys(), seed=3)
    model = hdit_format.build_model(SMALL)
    hdit_format.load_state_dict_strict(model, sd)
    cfg = hdit_format.parse_config(SMALL)
    path = tmp_path / "m.safetensors"
    hdit_format.save_inference(model, cfg, str(path), dtype=torch.float32)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["config"])["model"]["widths"] == [32, 64, 64]
    loaded, cfg2 = hdit_format.load_checkpoint(str(path))
    assert cfg2.num_classes == 5 and cfg2.sigma_data == 0.5
    for k, v in sd.items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    # training checkpoint: model_ema is preferred over model
    pth = tmp_path / "train.pth"
    torch.save({"config": SMALL, "model": {k: v * 0 for k, v in sd.items()}, "model_ema": sd, "step": 3}, pth)
    loaded, _ = hdit_format.load_checkpoint(str(pth))
    torch.testing.assert_close(loaded.state_dict()["patch_in.proj.weight"], sd["patch_in.proj.weight"])
    # weights without config + a JSON beside them
    bare = tmp_path / "bare.pth"
    torch.save({"model_ema": sd}, bare)
    with pytest.raises(HDiTLoadError, match="bare.json"):
        hdit_format.load_checkpoint(str(bare))
    (tmp_path / "bare.json").write_text(json.dumps(SMALL))
    loaded, _ = hdit_format.load_checkpoint(str(tmp_path / "bare.json"))
    torch.testing.assert_close(loaded.state_dict()["splits.0.fac"], sd["splits.0.fac"])
    # corrupt file
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(HDiTLoadError, match="bad.safetensors"):
        hdit_format.load_checkpoint(str(bad))


def test_config_errors():
    with pytest.raises(HDiTLoadError, match="image_transformer_v2"):
        hdit_format.parse_config({"model": {"type": "image_v1"}})
    with pytest.raises(HDiTLoadError, match="self_attns"):
        hdit_format.parse_config(
            {
                "model": {
                    "type": "image_transformer_v2",
                    "widths": [8, 16],
                    "depths": [1, 1],
                    "self_attns": [{"type": "global"}],
                }
            }
        )
    with pytest.raises(HDiTLoadError, match="unknown"):
        hdit_format.parse_config(
            {
                "model": {
                    "type": "image_transformer_v2",
                    "widths": [8],
                    "depths": [1],
                    "self_attns": [{"type": "bogus"}],
                }
            }
        )


def test_size_check_and_sampler_runs():
    model = hdit_format.build_model(SMALL)
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.randn(1, 3, 20, 16), torch.tensor([1.0]), class_cond=torch.tensor([0]))
    den = hdit.Denoiser(model, 0.5)
    sig = schedules.karras_sigmas(4, 0.01, 80, convention="k-diffusion")
    assert (
        sig.shape == (5,) and sig[0] == pytest.approx(80) and sig[-2] == pytest.approx(0.01) and sig[-1] == 0
    )
    out = schedules.sample_dpmpp_2m(
        den, torch.randn(2, 3, 16, 16), sig, torch.tensor([0, 1]), cfg_scale=3.0, uncond_class=5
    )
    # zero-init output head: D(x) = c_skip x, so after the final step x is ~0 but finite
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def _rope_reference_f64(x: torch.Tensor, n: int, d_head: int, n_heads: int) -> torch.Tensor:
    """k-diffusion's axial RoPE written from its formula, in float64 with complex numbers: token
    centres of an n x n grid in [-1, 1]; n_heads * d_head / 8 frequencies log-spaced over [pi, 10 pi)
    laid out ``view(d_head / 8, n_heads).T``; channel pair (c, c + d_head/4) of head h is the complex
    number x_c + i x_{c + d_head/4}, multiplied by exp(i row f) for c < d_head/8, exp(i col f) after."""
    q = d_head // 8
    f = torch.logspace(math.log10(math.pi), math.log10(10 * math.pi), n_heads * q + 1, dtype=torch.float64)[
        :-1
    ]
    f = f.reshape(q, n_heads).T  # [heads, q]
    centre = (torch.arange(n, dtype=torch.float64) * 2 + 1) / n - 1
    row = centre[:, None, None, None] * f[None, None]  # [n, 1, heads, q]
    col = centre[None, :, None, None] * f[None, None]  # [1, n, heads, q]
    ang = torch.cat([row.expand(n, n, -1, -1), col.expand(n, n, -1, -1)], dim=-1).permute(
        2, 0, 1, 3
    )  # [heads, n, n, 2q]
    x = x.double()
    z = torch.complex(x[..., : 2 * q], x[..., 2 * q : 4 * q]) * torch.polar(torch.ones_like(ang), ang)
    return torch.cat([z.real, z.imag, x[..., 4 * q :]], dim=-1)


def test_rope_stays_float32_in_bfloat16_models():
    """At 512 tokens per side the bfloat16 angle rounding (1/8 rad near 30 rad) equals the step
    between neighbours; angles must be computed in float32 and only the rotated q/k rounded."""
    n, d_head, heads = 512, 16, 2
    blk = hdit.AttentionBlock(d_head * heads, 8, hdit.GlobalAttentionSpec(d_head)).to(torch.bfloat16)
    assert blk.pos_emb.freqs.dtype == torch.float32  # .to(bfloat16) keeps the RoPE frequencies exact
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, n, n, d_head, generator=g).to(torch.bfloat16)
    k = torch.randn(1, heads, n, n, d_head, generator=g).to(torch.bfloat16)
    pos = hdit.make_axial_pos(n, n)
    rq, rk = blk.rotate(q, k, pos)
    assert rq.dtype == torch.bfloat16
    for got, src in ((rq, q), (rk, k)):
        ref = _rope_reference_f64(src[0], n, d_head, heads)
        err = (got[0].double() - ref).abs()
        # only the final rounding to bfloat16 remains: half an ulp, 2**-9 relative (+ float32 noise)
        assert (err <= ref.abs() * 2**-8 + 1e-5).all(), float((err / (ref.abs() + 1e-3)).max())
    # and the block's forward feeds float32 positions/angles into the rotation
    seen = []
    blk.pos_emb.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
    x = torch.randn(1, 8, 8, d_head * heads).to(torch.bfloat16)
    out = blk(x, hdit.make_axial_pos(8, 8), torch.randn(1, 8).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and seen == [(torch.float32, torch.float32)]


# ----------------------------------------------------------------------------- loader hardening


def _write_small(path, config=SMALL, seed=0):
    from hdit_layout import write_official_safetensors

    return write_official_safetensors(path, config, seed=seed)


def _cfg(**model_changes):
    cfg = json.loads(json.dumps(SMALL))
    cfg["model"].update(model_changes)
    return cfg


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.makedirs, (self.marker,))


def test_unreadable_files_get_plain_messages(tmp_path):
    import struct

    big = tmp_path / "huge_header.safetensors"  # header length 2**40: safetensors' HeaderTooLarge
    big.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    rnd = tmp_path / "random.safetensors"
    rnd.write_bytes(
        bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8))
    )
    good = tmp_path / "good.safetensors"
    _write_small(good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for p in (big, rnd, cut):
        with pytest.raises(HDiTLoadError) as e:
            hdit_format.load_checkpoint(str(p), name=f"sub/{p.name}")
        msg = str(e.value)
        assert (
            f"sub/{p.name} is not a valid .safetensors file" in msg and "Download or export it again" in msg
        )
        assert str(tmp_path) not in msg and "HeaderTooLarge" not in msg and "Error" not in msg, msg

    # a pickle that would run code: refused without unpickling, without suggesting weights_only=False
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save(
        {"config": SMALL, "model_ema": random_official_state_dict(small_keys()), "x": _Evil(str(marker))},
        evil,
    )
    with pytest.raises(HDiTLoadError) as e:
        hdit_format.load_checkpoint(str(evil))
    msg = str(e.value)
    assert "evil.pth holds Python objects other than tensors" in msg and "safetensors" in msg
    assert "weights_only" not in msg and str(tmp_path) not in msg and not marker.exists()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02not a checkpoint" * 100)
    with pytest.raises(HDiTLoadError, match="junk.pth (is not|cannot be read as) a PyTorch checkpoint") as e:
        hdit_format.load_checkpoint(str(junk))
    assert "weights_only" not in str(e.value)
    ok = tmp_path / "ok.pth"
    torch.save({"config": SMALL, "model_ema": random_official_state_dict(small_keys())}, ok)
    half = tmp_path / "half.pth"
    half.write_bytes(ok.read_bytes()[: ok.stat().st_size // 2])
    with pytest.raises(HDiTLoadError, match="half.pth cannot be read as a PyTorch checkpoint"):
        hdit_format.load_checkpoint(str(half))
    with pytest.raises(HDiTLoadError, match=r"^HDiT file sub/nope.safetensors not found$"):
        hdit_format.load_checkpoint(str(tmp_path / "nope.safetensors"), name="sub/nope.safetensors")


@pytest.mark.parametrize(
    "changes,expect",
    [
        (
            {"d_ffs": [2**40, 192, 192]},
            r"model.d_ffs\[0\] = 1099511627776 is outside the supported range 1..65536",
        ),
        ({"widths": [32, "64", 64]}, r"model.widths\[1\] must be an integer; got '64'"),
        ({"widths": [32, 64, 2**31]}, r"model.widths\[2\] = 2147483648 is outside"),
        ({"depths": [1, None, 2]}, r"model.depths\[1\] must be an integer; got None"),
        ({"depths": [1, 1, 1000]}, r"model.depths\[2\] = 1000 is outside"),
        ({"patch_size": [2, 1000]}, r"model.patch_size\[1\] = 1000 is outside"),
        ({"patch_size": "2"}, r"model.patch_size must be an integer"),
        ({"mapping_width": 33}, r"mapping_width = 33 must be even"),
        ({"mapping_d_ff": 1.5}, r"model.mapping_d_ff must be an integer; got 1.5"),
        ({"input_channels": 0}, r"model.input_channels = 0 is outside"),
        ({"sigma_data": float("nan")}, r"model.sigma_data must be a finite number"),
        ({"sigma_min": 100.0}, r"sigma_min = 100.0 must be below model.sigma_max"),
        ({"dropout_rate": [0, 0, 2]}, r"model.dropout_rate\[2\] = 2.0 is outside"),
        (
            {
                "self_attns": [
                    {"type": "neighborhood", "d_head": 16, "kernal_size": 3},
                    {"type": "global", "d_head": 16},
                    {"type": "global", "d_head": 32},
                ]
            },
            r"self_attns\[0\] \(neighborhood\) has unknown keys \['kernal_size'\]",
        ),
        (
            {
                "self_attns": [
                    {"type": "neighborhood", "d_head": 12},
                    {"type": "global", "d_head": 16},
                    {"type": "global", "d_head": 32},
                ]
            },
            r"self_attns\[0\].d_head = 12 must be a multiple of 8",
        ),
        (
            {
                "self_attns": [
                    {"type": "neighborhood", "d_head": 16, "kernel_size": 4},
                    {"type": "global", "d_head": 16},
                    {"type": "global", "d_head": 32},
                ]
            },
            r"kernel_size = 4 must be odd",
        ),
        ({"self_attns": "global"}, r"model.self_attns must be a non-empty list"),
    ],
)
def test_invalid_config_values_are_named(tmp_path, changes, expect):
    """Bad sizes/types in a file's config are refused by name before anything is built (no TypeError,
    no attempt to allocate 2**40-wide layers)."""
    path = tmp_path / "m.safetensors"
    _write_small(path)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    save_file(sd, str(path), metadata={"config": json.dumps(_cfg(**changes))})
    with pytest.raises(HDiTLoadError, match=expect) as e:
        hdit_format.load_checkpoint(str(path), name="hd/m.safetensors")
    assert str(e.value).startswith("hd/m.safetensors: the config inside hd/m.safetensors is not usable: ")


def test_config_sizes_checked_against_header_before_loading(tmp_path, monkeypatch):
    """num_classes, patch size, widths or d_ff that disagree with the file are refused from the
    safetensors header alone: no tensor is read and no model is allocated."""
    path = tmp_path / "m.safetensors"
    _write_small(path)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}

    def no_tensor_reads(*a, **k):
        raise AssertionError("tensors were read before the shapes were checked")

    monkeypatch.setattr(hdit_format, "_safetensors_tensors", no_tensor_reads)
    cases = [
        ({"dataset": {"num_classes": 9}}, "class_emb.weight: file (6, 32) vs config (10, 32)"),
        ({"model": {"patch_size": [4, 4]}}, "patch_in.proj.weight: file (32, 12) vs config (32, 48)"),
        (
            {"model": {"d_ffs": [96, 192, 4096]}},
            "mid_level.0.ff.down_proj.weight: file (64, 192) vs config (64, 4096)",
        ),
        ({"model": {"num_classes": 0}, "dataset": {"num_classes": 0}}, "1 unexpected keys: class_emb.weight"),
    ]
    for change, expect in cases:
        cfg = json.loads(json.dumps(SMALL))
        for sec, kv in change.items():
            cfg[sec].update(kv)
        save_file(sd, str(path), metadata={"config": json.dumps(cfg)})
        with pytest.raises(HDiTLoadError) as e:
            hdit_format.load_checkpoint(str(path))
        assert "m.safetensors does not match its HDiT config" in str(e.value) and expect in str(e.value), str(
            e.value
        )
    assert hdit_format.expected_shapes(SMALL)["class_emb.weight"] == (6, 32)


def test_relay_section_is_parsed_once_at_load():
    """A relay-trained model's "relay" section becomes ``HDiTConfig.relay`` (a TrainedRelay) when the
    config is parsed; a model without one has None; a bad section is refused at load by name."""
    from ultrares.kernels import relay

    assert hdit_format.parse_config(SMALL).relay is None
    sec = {"patch": 4, "blur_sigma_max": 3.0, "steps": 30, "low_res": [16, 16]}
    cfg = hdit_format.parse_config({**SMALL, "relay": sec})
    assert cfg.relay == relay.relay_config({"relay": sec})
    assert (cfg.relay.settings.patch, cfg.relay.settings.blur_sigma_max, cfg.relay.steps) == (4, 3.0, 30)
    assert cfg.relay.low_res == (16, 16) and cfg.raw["relay"] == sec  # the raw section is kept for saving
    with pytest.raises(HDiTLoadError, match=r"relay.blur_sigma_max must be float.*'relay' section"):
        hdit_format.parse_config({**SMALL, "relay": {"blur_sigma_max": "3"}})

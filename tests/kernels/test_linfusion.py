"""LinFusion kernel: the module equals a direct evaluation of the formula; precision, chunking, cost."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from linfusion_reference import linear_attention_reference
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode
from ultrares.kernels import linfusion as lf
from ultrares.kernels import linfusion_format as fmt

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _layer(dim=64, heads=4, mid=None, seed=0):
    torch.manual_seed(seed)
    layer = lf.LinFusionAttention(dim, heads, mid)
    with torch.no_grad():  # make the low-rank branches matter (fresh init is small)
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return layer


def _direct(layer: lf.LinFusionAttention, x: torch.Tensor) -> torch.Tensor:
    """The published formula written out with explicit weights, float64, O(N^2)."""
    sd = {k: v.double() for k, v in layer.state_dict().items()}
    x = x.double()

    def branch(t, p):
        h = t @ sd[f"{p}.0.weight"].T + sd[f"{p}.0.bias"]
        h = F.layer_norm(h, (h.shape[-1],), sd[f"{p}.1.weight"], sd[f"{p}.1.bias"], eps=1e-5)
        h = F.leaky_relu(h, 0.01)
        return h @ sd[f"{p}.3.weight"].T + sd[f"{p}.3.bias"]

    q = (x + branch(x, "to_q_")) @ sd["to_q.weight"].T
    k = (x + branch(x, "to_k_")) @ sd["to_k.weight"].T
    v = x @ sd["to_v.weight"].T
    b, n, c = x.shape
    h = layer.heads
    q = q.view(b, n, h, c // h).transpose(1, 2)
    k = k.view(b, n, h, c // h).transpose(1, 2)
    v = v.view(b, n, h, c // h).transpose(1, 2)
    q = F.elu(q) + 1
    k = F.elu(k) + 1
    z = q @ k.mean(dim=2, keepdim=True).transpose(-1, -2) + 1e-4  # [b,h,n,1]
    kv = (k.transpose(-1, -2) / n**0.5) @ (v / n**0.5)
    out = (q @ kv / z).transpose(1, 2).reshape(b, n, c)
    return out @ sd["to_out.0.weight"].T + sd["to_out.0.bias"]


def test_module_equals_direct_formula():
    layer = _layer(64, 4, mid=16)
    x = torch.randn(2, 37, 64)
    got = layer(x)
    want = _direct(layer, x)
    assert got.shape == (2, 37, 64)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_core_equals_quadratic_reference():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 50, 32) * 2, torch.randn(2, 50, 32) * 2, torch.randn(2, 50, 32)
    got = lf.linear_attention(q, k, v, heads=4)
    want = linear_attention_reference(q, k, v, heads=4)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # cross attention (different token counts; N in the normaliser is the key count)
    k2, v2 = torch.randn(2, 23, 32), torch.randn(2, 23, 32)
    torch.testing.assert_close(
        lf.linear_attention(q, k2, v2, 4).double(),
        linear_attention_reference(q, k2, v2, 4),
        rtol=1e-5,
        atol=1e-5,
    )


def test_eps_matters_and_is_official():
    assert lf.EPS == 1e-4
    # with tiny features the eps term dominates the normaliser: output shrinks toward 0
    q = torch.full((1, 8, 4), -30.0)  # elu(-30)+1 ~ 1e-13
    k, v = torch.randn(1, 8, 4), torch.ones(1, 8, 4)
    out = lf.linear_attention(q, k, v, heads=1)
    assert out.abs().max() < 1e-3


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.bfloat16, 8e-2)])
def test_low_precision_close_to_fp32(dtype, tol):
    layer = _layer(64, 8)
    x = torch.randn(1, 4096, 64)
    ref = layer(x)
    low = layer.to(dtype)(x.to(dtype))
    assert low.dtype == dtype
    assert torch.isfinite(low).all()
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < tol, rel


def test_fp16_reductions_do_not_overflow():
    # large activations: an fp16 k^T v sum over many tokens would overflow (> 65504); fp32 does not
    torch.manual_seed(0)
    q = torch.randn(1, 20000, 16, dtype=torch.float16) * 4
    k = torch.randn(1, 20000, 16, dtype=torch.float16) * 4 + 6
    v = torch.randn(1, 20000, 16, dtype=torch.float16) * 50
    out = lf.linear_attention(q, k, v, heads=2)
    assert torch.isfinite(out).all()
    ref = lf.linear_attention(q.float(), k.float(), v.float(), heads=2)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("chunk", [3, 7, 64, 1000])
def test_chunked_equals_unchunked(chunk):
    layer = _layer(32, 4, mid=8)
    x = torch.randn(2, 300, 32)
    full = layer(x)
    torch.testing.assert_close(layer(x, chunk_size=chunk), full, rtol=1e-5, atol=1e-5)
    q, k, v = torch.randn(2, 300, 32), torch.randn(2, 300, 32), torch.randn(2, 300, 32)
    torch.testing.assert_close(
        lf.linear_attention(q, k, v, 4, chunk_size=chunk),
        lf.linear_attention(q, k, v, 4),
        rtol=1e-5,
        atol=1e-5,
    )


def test_external_value_and_output_projections():
    layer = _layer(32, 4)
    v_proj = torch.nn.Linear(32, 32, bias=False)
    out_proj = torch.nn.Linear(32, 32)
    x = torch.randn(1, 50, 32)
    got = layer(x, v_proj=v_proj, out_proj=out_proj)
    core = lf.linear_attention(layer.project_q(x), layer.project_k(x), v_proj(x), 4)
    torch.testing.assert_close(got, out_proj(core))
    assert not torch.allclose(got, layer(x))


def test_compute_dtype_casts_like_a_drop_in_attention():
    """compute_dtype: LinFusion's own layers see that dtype, external projections and the result
    the input's dtype (what the ComfyUI attn1 adapter relies on)."""
    layer = _layer(32, 4, mid=8)
    x = torch.randn(1, 40, 32).to(torch.bfloat16)
    got = layer(x, compute_dtype=torch.float32)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, layer(x.float()).to(torch.bfloat16))
    v_proj = torch.nn.Linear(32, 32, bias=False).to(torch.bfloat16)
    out_proj = torch.nn.Linear(32, 32).to(torch.bfloat16)
    got = layer(x, v_proj=v_proj, out_proj=out_proj, compute_dtype=torch.float32)
    core = lf.linear_attention(layer.project_q(x.float()), layer.project_k(x.float()), v_proj(x), 4)
    torch.testing.assert_close(got, out_proj(core.to(torch.bfloat16)))
    # chunk_projections=False chunks the reductions only: the same numbers as linear_attention's chunking
    chunked = layer(x.float(), chunk_size=7, chunk_projections=False)
    xf = x.float()
    want = layer.to_out[0](
        lf.linear_attention(layer.project_q(xf), layer.project_k(xf), layer.to_v(xf), 4, 7)
    )
    torch.testing.assert_close(chunked, want, rtol=0, atol=0)


def test_cost_is_linear_in_tokens():
    layer = _layer(64, 8)

    def flops(n):
        with FlopCounterMode(display=False) as counter:
            layer(torch.randn(1, n, 64))
        return counter.get_total_flops()

    ratio = flops(4096) / flops(1024)
    assert 3.9 < ratio < 4.1, ratio  # softmax attention would be ~16x for the attention part

    def softmax_flops(n):
        q = torch.randn(1, 8, n, 8)
        with FlopCounterMode(display=False) as counter:
            F.scaled_dot_product_attention(q, q, q)
        return counter.get_total_flops()

    assert softmax_flops(4096) / softmax_flops(1024) > 15


def test_init_from_attention_starts_at_plain_projections():
    layer = _layer(32, 4)
    to_q, to_k, to_v = (torch.nn.Linear(32, 32, bias=False) for _ in range(3))
    to_out = torch.nn.Linear(32, 32)
    layer.init_from_attention(to_q, to_k, to_v, to_out)
    x = torch.randn(1, 10, 32)
    torch.testing.assert_close(layer.project_q(x), to_q(x))
    torch.testing.assert_close(layer.project_k(x), to_k(x))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="divisible"):
        lf.LinFusionAttention(30, 4)
    with pytest.raises(ValueError, match=r"\[B, N, C\]"):
        lf.linear_attention(torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8), 2)


# ---------------------------------------------------------------------------------------------
# format


SD15_DIFFUSERS = (
    [f"down_blocks.{i}.attentions.{j}.transformer_blocks.0.attn1" for i in range(3) for j in range(2)]
    + ["mid_block.attentions.0.transformer_blocks.0.attn1"]
    + [f"up_blocks.{i}.attentions.{j}.transformer_blocks.0.attn1" for i in range(1, 4) for j in range(3)]
)


def test_name_mapping_sd15_by_hand():
    mapped = [fmt.diffusers_to_ldm(n) for n in SD15_DIFFUSERS]
    assert mapped[:6] == [f"input_blocks.{i}.1.transformer_blocks.0.attn1" for i in (1, 2, 4, 5, 7, 8)]
    assert mapped[6] == "middle_block.1.transformer_blocks.0.attn1"
    assert mapped[7:] == [f"output_blocks.{i}.1.transformer_blocks.0.attn1" for i in range(3, 12)]
    assert [fmt.ldm_to_diffusers(p) for p in mapped] == SD15_DIFFUSERS
    # per-level res block counts (a reduced UNet with one res block per level)
    assert fmt.diffusers_to_ldm("down_blocks.1.attentions.0.x", [1, 1]) == "input_blocks.3.1.x"
    assert fmt.diffusers_to_ldm("up_blocks.1.attentions.1.x", [1, 1]) == "output_blocks.3.1.x"
    assert fmt.ldm_to_diffusers("output_blocks.3.1.x", [1, 1]) == "up_blocks.1.attentions.1.x"
    with pytest.raises(fmt.LinFusionFormatError, match="not a diffusers"):
        fmt.diffusers_to_ldm("conv_in")


def _specs(dims=(32, 64), heads=4, mid=None):
    return [
        fmt.LayerSpec(f"down_blocks.{i}.attentions.0.transformer_blocks.0.attn1", d, heads, mid)
        for i, d in enumerate(dims)
    ]


def test_describe_specs_names_the_layout():
    sd15 = [fmt.LayerSpec(n, 320, 8) for n in SD15_DIFFUSERS[:2]]
    assert fmt.describe_specs(sd15) == "SD1.x layout (8 heads), 2 attn1 layers, widths [320]"
    sd2 = [fmt.LayerSpec(n, 320, 5) for n in SD15_DIFFUSERS[:2]]
    assert fmt.describe_specs(sd2).startswith("SD2.x layout (heads = width/64)")
    xl = [fmt.LayerSpec(n.replace("down_blocks.0.", "down_blocks.1."), 640, 10) for n in SD15_DIFFUSERS[:1]]
    assert fmt.describe_specs(xl).startswith("SDXL layout")
    assert fmt.describe_specs(_specs(heads=2)) == "custom layout (heads [2]), 2 attn1 layers, widths [32, 64]"


def test_roundtrip_single_file_and_folder(tmp_path):
    specs = _specs(mid=8)
    layers = [fmt.build_layer(s) for s in specs]
    single = fmt.save_linfusion(str(tmp_path / "lf.safetensors"), specs, layers, dtype=torch.float16)
    folder = fmt.save_linfusion(str(tmp_path / "lf_folder"), specs, layers, dtype=torch.float16)
    assert os.path.basename(folder) == fmt.WEIGHTS_NAME
    cfg = json.loads((tmp_path / "lf_folder" / "config.json").read_text())
    assert cfg["_class_name"] == "LinFusion" and cfg["modules_list"][1]["dim_n"] == 64
    for path in (single, str(tmp_path / "lf_folder"), str(tmp_path / "lf_folder" / "config.json"), folder):
        got_specs, got = fmt.load_linfusion(path)
        assert got_specs == specs
        assert set(got[0]) == set(fmt.param_shapes(specs[0]))
        assert got[0]["to_q_.0.weight"].shape == (8, 32)
        assert got[1]["to_q.weight"].dtype == torch.float16
        torch.testing.assert_close(got[1]["to_out.0.bias"].float(), layers[1].to_out[0].bias.half().float())


def test_official_key_layout(tmp_path):
    specs = _specs(dims=(32,))
    fmt.save_linfusion(str(tmp_path / "a.safetensors"), specs, [fmt.build_layer(specs[0])])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        keys = set(f.keys())
    want = {"0.to_q.weight", "0.to_k.weight", "0.to_v.weight", "0.to_out.0.weight", "0.to_out.0.bias"}
    want |= {f"0.{b}.{i}.{p}" for b in ("to_q_", "to_k_") for i in (0, 1, 3) for p in ("weight", "bias")}
    assert keys == want


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(fmt.LinFusionFormatError, match="does not exist"):
        fmt.load_linfusion(str(tmp_path / "nope.safetensors"))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(fmt.LinFusionFormatError, match="corrupt"):
        fmt.load_linfusion(str(corrupt))
    bare = tmp_path / "bare" / "weights.safetensors"
    bare.parent.mkdir()
    save_file({"0.to_q.weight": torch.zeros(4, 4)}, str(bare))
    with pytest.raises(fmt.LinFusionFormatError, match="no LinFusion config"):
        fmt.load_linfusion(str(bare))
    # truncated: a valid file cut in half
    specs = _specs(dims=(32,))
    good = fmt.save_linfusion(str(tmp_path / "good.safetensors"), specs, [fmt.build_layer(specs[0])])
    data = open(good, "rb").read()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(fmt.LinFusionFormatError, match="corrupt or incomplete"):
        fmt.load_linfusion(str(tmp_path / "cut.safetensors"))
    # wrong shape against the config
    sd = fmt.build_layer(specs[0]).state_dict()
    sd = {f"0.{k}": v for k, v in sd.items()}
    sd["0.to_q.weight"] = torch.zeros(16, 16)
    save_file(
        sd, str(tmp_path / "shape.safetensors"), metadata={"config": json.dumps(fmt.config_dict(specs))}
    )
    with pytest.raises(fmt.LinFusionFormatError, match=r"to_q.weight.*\(16, 16\)"):
        fmt.load_linfusion(str(tmp_path / "shape.safetensors"))
    # missing key
    del sd["0.to_q.weight"]
    save_file(sd, str(tmp_path / "miss.safetensors"), metadata={"config": json.dumps(fmt.config_dict(specs))})
    with pytest.raises(fmt.LinFusionFormatError, match="missing keys"):
        fmt.load_linfusion(str(tmp_path / "miss.safetensors"))
    # not a LinFusion config
    save_file(
        {"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"config": json.dumps({"a": 1})}
    )
    with pytest.raises(fmt.LinFusionFormatError, match="modules_list"):
        fmt.load_linfusion(str(tmp_path / "other.safetensors"))


# ---------------------------------------------------------------------------------------------
# the fast path (compiled core) and its automatic choice


def test_compile_core_equals_quadratic_reference():
    """The core the fast path compiles, run eagerly, against the float64 O(N^2) formula."""
    gen = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 50, 32, generator=gen), torch.randn(2, 70, 32, generator=gen)
    v = torch.randn(2, 70, 48, generator=gen)
    torch.testing.assert_close(
        lf._core(q, k, v, 4).double(), linear_attention_reference(q, k, v, 4), rtol=1e-5, atol=1e-5
    )
    assert lf._core(q.half(), k.half(), v.half(), 4).dtype == torch.float16


def test_auto_impl_is_reference_on_cpu_and_env_override(monkeypatch):
    assert lf.resolve_impl("auto", "cpu") == "reference"
    assert lf.resolve_impl("auto", "cuda") == ("reference" if lf._compile_failed else "compiled")
    monkeypatch.setenv("ULTRARES_LINFUSION_IMPL", "reference")
    assert lf.resolve_impl("auto", "cuda") == "reference"
    assert lf.resolve_impl("compiled", "cpu") == "compiled"
    monkeypatch.setenv("ULTRARES_LINFUSION_IMPL", "fast")
    with pytest.raises(ValueError, match="ULTRARES_LINFUSION_IMPL must be one of"):
        lf.resolve_impl("auto", "cpu")
    with pytest.raises(ValueError, match="impl must be one of"):
        lf.linear_attention(
            torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), 1, impl="triton"
        )


def test_compile_failure_falls_back_to_reference(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no Triton here\nsecond line")

    monkeypatch.setattr(lf, "_compiled_core", broken)
    monkeypatch.setattr(lf, "_compile_failed", False)
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 20, 16, generator=gen) for _ in range(3))
    out = lf.linear_attention(q, k, v, 2, impl="compiled")
    torch.testing.assert_close(out.double(), linear_attention_reference(q, k, v, 2), rtol=1e-5, atol=1e-5)
    assert "no Triton here" in caplog.text and "reference" in caplog.text
    assert lf.resolve_impl("auto", "cuda") == "reference"  # remembered


@pytest.mark.slow
def test_compiled_core_matches_reference_on_cpu():
    """torch.compile of the core (inductor C++ on the CPU; ~2 min to compile on 2 cores) equals the
    reference, also for a second shape (dynamic shapes, no recompilation error)."""
    gen = torch.Generator().manual_seed(6)
    for n in (64, 100):
        q, k, v = (torch.randn(2, n, 32, generator=gen) for _ in range(3))
        got = lf.linear_attention(q, k, v, 4, impl="compiled")
        torch.testing.assert_close(got.double(), linear_attention_reference(q, k, v, 4), rtol=1e-5, atol=1e-5)
    assert not lf._compile_failed


# ---------------------------------------------------------------- matching a file's layers to a UNet


class _Attn(torch.nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.to_q, self.heads = torch.nn.Linear(width, width, bias=False), heads


def _unet(widths=(32, 64), heads=4) -> torch.nn.Module:
    """input_blocks.<1 + 3 i>.1.transformer_blocks.0.attn1 per level (one res block per level), plus
    an attn2 that is not a self-attention."""
    root = torch.nn.Module()
    root.input_blocks = torch.nn.ModuleDict()
    for i, w in enumerate(widths):
        block = torch.nn.Module()
        block.transformer_blocks = torch.nn.ModuleList([torch.nn.Module()])
        block.transformer_blocks[0].attn1 = _Attn(w, heads)
        block.transformer_blocks[0].attn2 = _Attn(w, heads)
        root.input_blocks[str(1 + 2 * i)] = torch.nn.ModuleDict({"1": block})
    return root


def test_attn1_paths_and_layer_matching():
    unet = _unet()
    paths = fmt.attn1_paths(unet)
    assert paths == [
        "input_blocks.1.1.transformer_blocks.0.attn1",
        "input_blocks.3.1.transformer_blocks.0.attn1",
    ]
    modules = dict(unet.named_modules())
    bases = {p: modules[p] for p in paths}
    specs = _specs()
    layers = [{"w": torch.zeros(1)}, {"w": torch.ones(1)}]
    mapped = fmt.match_layers(specs, layers, bases, [1, 1], "MISMATCH")
    assert list(mapped) == paths and mapped[paths[1]] == (specs[1], layers[1])
    with pytest.raises(
        ValueError,
        match=r"^MISMATCH \(input_blocks.3.1.transformer_blocks.0.attn1: file width 48, model width 64\)$",
    ):
        fmt.match_layers(_specs(dims=(32, 48)), layers, bases, [1, 1], "MISMATCH")
    with pytest.raises(ValueError, match=r"^MISMATCH \(.*attn1: file has 2 heads, model has 4\)$"):
        fmt.match_layers(_specs(heads=2), layers, bases, [1, 1], "MISMATCH")
    with pytest.raises(
        ValueError,
        match=r"^MISMATCH \(the file does not cover 1 attn1 layers of the model, e.g. input_blocks.3",
    ):
        fmt.match_layers(specs[:1], layers[:1], bases, [1, 1], "MISMATCH")
    far = [fmt.LayerSpec("down_blocks.3.attentions.0.transformer_blocks.0.attn1", 32, 4)]
    with pytest.raises(
        ValueError, match=r"^MISMATCH \(the file's down_blocks.3.* -> input_blocks.5.1.* is not an attn1"
    ):
        fmt.match_layers(far, layers[:1], bases, [1, 1], "MISMATCH")
    with pytest.raises(ValueError, match=r"^MISMATCH \(.*not a diffusers"):
        fmt.match_layers([fmt.LayerSpec("conv_in", 32, 4)], layers[:1], bases, [1, 1], "MISMATCH")


def test_sd_sigmas_are_sd_noise_levels_and_shared_with_the_distillation():
    from ultrares.kernels import linfusion_distill as ld
    from ultrares.kernels import schedules

    assert ld.sd_sigmas is schedules.sd_sigmas
    s = schedules.sd_sigmas()
    assert s.shape == (1000,) and s.dtype == torch.float32 and bool((s[1:] > s[:-1]).all())
    # SD's scaled_linear betas, written out: beta_t = (sqrt(b0) + t (sqrt(b1) - sqrt(b0)) / 999)^2
    t = torch.arange(1000, dtype=torch.float64)
    betas = (0.00085**0.5 + t * (0.012**0.5 - 0.00085**0.5) / 999) ** 2
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(s, ((1 - abar) / abar).sqrt().float())
    assert float(s[0]) == pytest.approx(0.0292, abs=1e-4) and float(s[-1]) == pytest.approx(14.6146, abs=1e-3)

"""LinFusion distillation on the tiny SD1.5-architecture UNet: the per-layer attn1 error falls."""

from __future__ import annotations

import pytest
import torch
from ultrares.kernels import linfusion_distill as ld
from ultrares.kernels import linfusion_format as fmt


@pytest.fixture(autouse=True)
def one_thread():
    # tiny matrices: thread synchronisation costs more than it gains (and the machine is shared)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture()
def setup(tiny_sd15):
    import comfy.model_management as mm

    model = tiny_sd15[0].clone()
    # the shared model may still hold another clone's object patches (e.g. LinFusion) while it is
    # loaded: loading this unpatched clone makes ComfyUI restore the original modules
    mm.load_models_gpu([model])
    base = model.model
    unet = base.diffusion_model
    specs = ld.specs_for(unet, base.model_config.unet_config["num_res_blocks"])

    def denoiser(x, sigma, **cond):
        return base.apply_model(x, sigma, **cond)

    return base, unet, specs, denoiser


def test_specs_cover_every_attn1_with_official_names(setup):
    base, unet, specs, _ = setup
    assert len(specs) == 16  # SD1.5: down 6, mid 1, up 9
    assert specs["input_blocks.1.1.transformer_blocks.0.attn1"].module_name == "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert specs["output_blocks.11.1.transformer_blocks.0.attn1"].module_name == "up_blocks.3.attentions.2.transformer_blocks.0.attn1"
    assert {s.heads for s in specs.values()} == {8}
    assert all(s.projection_mid_dim is None for s in specs.values())


def test_official_objective_terms(setup):
    base, unet, specs, denoiser = setup
    torch.manual_seed(0)
    layers = ld.make_student_layers(unet, specs, "random")
    d = ld.Distiller(unet, denoiser, layers, sigmas=base.model_sampling.sigmas.float())
    x0 = torch.randn(1, 4, 8, 8)
    cond = {"c_crossattn": torch.randn(1, 77, 64)}
    terms = d.losses(x0, cond, torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in terms.values())
    torch.testing.assert_close(terms["loss"], terms["noise"] + 0.5 * terms["teacher"] + 0.5 * terms["feature"])
    assert terms["teacher"] > 0 and terms["feature"] > 0
    # the teacher's modules are restored after the student pass, and only LinFusion params train
    assert type(unet.input_blocks[1][1].transformer_blocks[0].attn1).__name__ == "CrossAttention"
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    w0 = layers["middle_block.1.transformer_blocks.0.attn1"].to_q.weight.clone()
    d.step(x0, cond, torch.Generator().manual_seed(1))
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert not torch.equal(w0, layers["middle_block.1.transformer_blocks.0.attn1"].to_q.weight)


def test_distillation_reduces_per_layer_attn1_error(setup, tmp_path):
    base, unet, specs, denoiser = setup
    torch.manual_seed(0)
    layers = ld.make_student_layers(unet, specs, "random")  # the official fresh init = untrained
    sigmas = base.model_sampling.sigmas.float()
    gen = torch.Generator().manual_seed(0)
    cond = {"c_crossattn": torch.randn(1, 77, 64, generator=gen)}
    # data-free: the teacher's own (short) samples as training latents
    x0 = ld.teacher_latents(denoiser, (1, 4, 16, 16), cond, sigmas, steps=2, generator=gen)
    levels = [float(sigmas[i]) for i in (100, 500, 900)]
    d = ld.Distiller(unet, denoiser, layers, sigmas=sigmas, config=ld.DistillConfig(lr=1e-3))
    before = d.layer_errors(x0, cond, levels)
    d.prefit(x0, cond, steps=24, inner=6, lr=3e-3, generator=gen)
    for _ in range(4):
        d.step(x0, cond, gen)
    after = d.layer_errors(x0, cond, levels)
    mean_before = sum(before.values()) / len(before)
    mean_after = sum(after.values()) / len(after)
    assert mean_after < 0.8 * mean_before, (mean_before, mean_after)
    improved = sum(after[p] < before[p] for p in before)
    assert improved >= 14, {p: (round(before[p], 3), round(after[p], 3)) for p in before}
    # written in the official format and read back: same layers, same errors
    path = fmt.save_linfusion(str(tmp_path / "distilled.safetensors"), list(specs.values()), [layers[p] for p in specs], dtype=None)
    got_specs, got = fmt.load_linfusion(path)
    assert got_specs == list(specs.values())
    reloaded = {p: fmt.build_layer(s, sd) for (p, s), sd in zip(specs.items(), got)}
    d2 = ld.Distiller(unet, denoiser, reloaded, sigmas=sigmas)
    again = d2.layer_errors(x0, cond, levels)
    assert all(abs(again[p] - after[p]) < 1e-5 for p in after)


def test_image_caption_pairs(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.jpg")
    (tmp_path / "a.txt").write_text("a red fox\n")
    assert ld.image_caption_pairs(str(tmp_path)) == [(str(tmp_path / "a.png"), "a red fox"), (str(tmp_path / "b.jpg"), "")]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        ld.image_caption_pairs(str(empty))


def test_cli_rejects_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _cli().main(["--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o.safetensors")])
    assert "does not exist" in capsys.readouterr().err


def _cli():
    """scripts/linfusion_distill.py, imported as a module."""
    import importlib.util

    from harness.paths import ROOT

    spec = importlib.util.spec_from_file_location("linfusion_distill_cli", ROOT / "scripts" / "linfusion_distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

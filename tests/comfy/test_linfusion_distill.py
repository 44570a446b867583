"""LinFusion distillation on the tiny SD1.5-architecture UNet: the per-layer attn1 error falls."""

from __future__ import annotations

import pytest
import torch
from ultrares.kernels import linfusion_distill as ld
from ultrares.kernels import linfusion_format as fmt

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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
    assert (
        specs["input_blocks.1.1.transformer_blocks.0.attn1"].module_name
        == "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    )
    assert (
        specs["output_blocks.11.1.transformer_blocks.0.attn1"].module_name
        == "up_blocks.3.attentions.2.transformer_blocks.0.attn1"
    )
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
    torch.testing.assert_close(
        terms["loss"], terms["noise"] + 0.5 * terms["teacher"] + 0.5 * terms["feature"]
    )
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
    path = fmt.save_linfusion(
        str(tmp_path / "distilled.safetensors"), list(specs.values()), [layers[p] for p in specs], dtype=None
    )
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
    assert ld.image_caption_pairs(str(tmp_path)) == [
        (str(tmp_path / "a.png"), "a red fox"),
        (str(tmp_path / "b.jpg"), ""),
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        ld.image_caption_pairs(str(empty))


def test_cli_rejects_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _cli().main(
            ["--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o.safetensors")]
        )
    assert "does not exist" in capsys.readouterr().err


def _cli():
    """scripts/linfusion_distill.py, imported as a module."""
    import importlib.util

    from harness.paths import ROOT

    spec = importlib.util.spec_from_file_location(
        "linfusion_distill_cli", ROOT / "scripts" / "linfusion_distill.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_model(family: str, dtype: torch.dtype, model_type=None):
    """A tiny-model MODEL built the way ComfyUI builds an ``dtype`` checkpoint: the model config's
    ``set_inference_dtype`` picks the ops and ``diffusion_model.dtype``; weights = the fixture's seeds.
    ``model_type``: a ``comfy.model_base.ModelType`` (default: the family's, epsilon)."""
    import sys

    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from harness.paths import TEST_PACKS

    sys.path.insert(0, str(TEST_PACKS / "ultrares_testing"))
    import tiny_models

    ref = tiny_models.build_model(family, 0)
    config = getattr(comfy.supported_models, tiny_models.CONFIG_CLASSES[family])(
        dict(tiny_models.UNETS[family])
    )
    config.set_inference_dtype(dtype, None)
    if model_type is None:
        base = config.get_model({}, "", device=torch.device("cpu"))
    else:
        base = comfy.model_base.BaseModel(config, model_type=model_type, device=torch.device("cpu"))
    base.diffusion_model.load_state_dict(ref.model.diffusion_model.state_dict())
    return comfy.model_patcher.ModelPatcher(
        base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def test_fp16_checkpoint_trains_without_dtype_mismatch():
    """An fp16 checkpoint (``diffusion_model.dtype`` fp16, as ComfyUI loads one on a GPU): the CLI's
    teacher keeps ComfyUI's dtype and the fp32 student layers train; the old ``.float()`` path fails."""
    model = _tiny_model("sd15", torch.float16)
    cli = _cli()
    base, unet, denoiser = cli.prepare_teacher(model)
    assert base.get_dtype() == torch.float16 and next(unet.parameters()).dtype == torch.float16
    assert cli.prediction_of(base) == "eps"
    specs = ld.specs_for(unet, base.model_config.unet_config["num_res_blocks"])
    layers = ld.make_student_layers(unet, specs, "teacher")
    assert {p.dtype for layer in layers.values() for p in layer.parameters()} == {torch.float32}
    d = ld.Distiller(unet, denoiser, layers, sigmas=base.model_sampling.sigmas.float())
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 8, 8, generator=gen)
    cond = {"c_crossattn": torch.randn(1, 77, 64, generator=gen)}
    w0 = layers["middle_block.1.transformer_blocks.0.attn1"].to_q_[3].weight.clone()
    terms = d.step(x0, cond, gen)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values()), terms
    assert not torch.equal(w0, layers["middle_block.1.transformer_blocks.0.attn1"].to_q_[3].weight)
    # the bug this guards against: casting the weights behind ComfyUI's back (dtype attribute still fp16)
    unet.float()
    with pytest.raises(RuntimeError, match="dtype"):
        base.apply_model(x0, torch.tensor([1.0]), c_crossattn=cond["c_crossattn"])
    with pytest.raises(SystemExit, match="built for torch.float16"):
        cli.prepare_teacher(model)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_noise_and_teacher_losses_in_the_models_prediction_space(prediction):
    """Independent check against the official formulas on the network's raw output (which *is*
    eps for an epsilon model and v for a v model): noise = MSE(raw_student, target) with target =
    eps or diffusers' v = sqrt(abar) eps - sqrt(1 - abar) x0, teacher = MSE(raw_student, raw_teacher)."""
    import comfy.model_base

    kind = comfy.model_base.ModelType.V_PREDICTION if prediction == "v" else comfy.model_base.ModelType.EPS
    model = _tiny_model("sd15", torch.float32, model_type=kind)
    cli = _cli()
    base, unet, denoiser = cli.prepare_teacher(model)
    assert cli.prediction_of(base) == prediction
    specs = ld.specs_for(unet, base.model_config.unet_config["num_res_blocks"])
    torch.manual_seed(0)
    layers = ld.make_student_layers(unet, specs, "random")
    d = ld.Distiller(
        unet,
        denoiser,
        layers,
        sigmas=base.model_sampling.sigmas.float(),
        config=ld.DistillConfig(prediction=prediction),
    )
    raw = []
    hook = unet.register_forward_hook(lambda m, a, out: raw.append(out.detach().double()))
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = {"c_crossattn": torch.randn(2, 77, 64, generator=torch.Generator().manual_seed(2))}
    try:
        terms = d.losses(x0, cond, torch.Generator().manual_seed(3))
    finally:
        hook.remove()
    # replay the draws of Distiller.losses: timestep indices, then the noise
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(0, len(d.sigmas), (2,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen).double()
    # SD's "scaled_linear" schedule as diffusers defines it (independent of ComfyUI's sigmas)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)[idx].view(-1, 1, 1, 1)
    target = eps if prediction == "eps" else abar.sqrt() * eps - (1 - abar).sqrt() * x0.double()
    teacher_raw, student_raw = raw
    torch.testing.assert_close(
        terms["noise"].double(), ((student_raw - target) ** 2).mean(), rtol=2e-4, atol=1e-6
    )
    torch.testing.assert_close(
        terms["teacher"].double(), ((student_raw - teacher_raw) ** 2).mean(), rtol=2e-4, atol=1e-6
    )
    with pytest.raises(ValueError, match="prediction must be one of"):
        ld.Distiller(unet, denoiser, layers, config=ld.DistillConfig(prediction="x0"))

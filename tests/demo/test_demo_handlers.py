"""The demo's tab handlers (``ultrares.demo.tabs``) and session (``ultrares.demo.session``) called
directly, in-process on the real ComfyUI (the `comfy` fixture),
with a small random-weight HDiT registered in the hdit models folder (and the embedded model when
it is there): shapes, determinism, the tile grid, PSNR, progress, Cancel, and the error messages."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_support import TEST_CLASSES, TEST_HDIT, hdit_registered
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[2] / "demo" / "examples"


@pytest.fixture(scope="module")
def S(comfy, tmp_path_factory):
    from ultrares.demo import session

    with hdit_registered(tmp_path_factory.mktemp("demo-models")):
        yield session


@pytest.fixture(scope="module")
def T(S):
    """The tab modules by name (T.hdit, T.tiled_diffusion, ...)."""
    from types import SimpleNamespace

    from ultrares.demo import tabs

    return SimpleNamespace(**{m.__name__.rsplit(".", 1)[-1]: m for m in tabs.modules()})


@pytest.fixture(scope="module")
def src(S):
    return S.HDIT_PREFIX + TEST_HDIT


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_sources_list_hdit_files_and_checkpoints(S, T, src):
    found = S.sources()
    assert src in found
    embedded = S.HDIT_PREFIX + S.EMBEDDED_HDIT
    if (Path(S.__file__).resolve().parents[1] / "models" / "hdit" / S.EMBEDDED_HDIT).exists():
        assert found[0] == embedded == S.default_source()
    # every checkpoint ComfyUI's loader offers is listed, after the HDiT files
    ckpts = [s for s in found if s.startswith(S.CKPT_PREFIX)]
    assert [c[len(S.CKPT_PREFIX) :] for c in ckpts] == S.checkpoint_files()
    assert not any(
        s.endswith(".json")
        for s in found
        if s.startswith(S.HDIT_PREFIX) and s[len(S.HDIT_PREFIX) : -5] + ".safetensors" in S.hdit_files()
    )
    bundle = S.load(src)
    assert bundle.kind == "hdit" and bundle.native == 64 and bundle.labels == [*TEST_CLASSES, S.UNCONDITIONAL]


def test_generate_is_seeded_and_reports_progress(S, T, src):
    seen = []
    img, info = T.hdit.generate(
        src, "squares", steps=3, seed=5, cfg=2.0, batch=2, report=lambda s, v, t: seen.append((s, v, t))
    )
    # a row of two 64x64 images, enlarged 4x (nearest) for viewing
    assert img.size == (2 * 256, 256)
    assert "2 x 64x64" in info and "squares" in info
    again, _ = T.hdit.generate(src, "squares", steps=3, seed=5, cfg=2.0, batch=2)
    other, _ = T.hdit.generate(src, "squares", steps=3, seed=6, cfg=2.0, batch=2)
    assert np.array_equal(pixels(img), pixels(again))
    assert np.abs(pixels(img) - pixels(other)).mean() > 1
    # ComfyUI's progress bar reached the demo: 3 sampler steps
    values = [(v, t) for s, v, t in seen if t == 3]
    assert values and values[-1] == (3, 3)


def test_class_choice_changes_the_image(S, T, src):
    a, _ = T.hdit.generate(src, "circles", steps=2, seed=1, batch=1)
    b, _ = T.hdit.generate(src, "stars", steps=2, seed=1, batch=1)
    assert np.abs(pixels(a) - pixels(b)).mean() > 0.5


def test_cancel_interrupts_sampling_and_the_next_run_works(S, T, src):
    import comfy.model_management

    def press_cancel(stage, value, total):
        if value == 1:
            S.cancel()

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        T.hdit.generate(src, "circles", steps=6, seed=0, batch=1, report=press_cancel)
    S.cancel()  # pressed while idle: must not stop the next run
    img, _ = T.hdit.generate(src, "circles", steps=2, seed=0, batch=1)
    assert img.size == (256, 256)


def test_any_size_draws_the_tile_grid_of_the_chosen_step(S, T, src):
    from ultrares.kernels.tiled_diffusion import TilePlanner

    image, grid, plain, info = T.tiled_diffusion.any_size(
        src, "stars", width=192, height=128, method="FSTD", steps=3, seed=3, show_step=1, compare=True
    )
    scale = image.width // 192
    assert image.size == (192 * scale, 128 * scale) and grid.size == image.size and plain.size == image.size
    # the planner of the node, at step 1: tiles of the model's native 64 px
    plan = TilePlanner("fstd", 128, 192, 64, 64, reset_interval=4, seed=3).plan(1)
    assert f"{len(plan.tiles)} tiles" in info and f"grid offset {plan.offset}" in info
    diff = np.abs(pixels(grid) - pixels(image)).sum(axis=-1) > 0
    for tile in plan.tiles:  # each tile's left edge is drawn
        x, y0, y1 = tile.x * scale, tile.y * scale, (tile.y + tile.h) * scale
        assert diff[y0 + 2 : y1 - 2, x].mean() > 0.9
    # tiled sampling really differs from untiled sampling at this size
    assert np.abs(pixels(image) - pixels(plain)).mean() > 0.5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(width=100), "multiple of 16"),
        (dict(method="Tiles"), "not one of"),
        (dict(method="MultiDiffusion", tile=64, overlap=64), "overlap"),
        (dict(show_step=3), "Show the tile grid of step"),
        (dict(width=5000), r"Width \(px\)=5000 is outside 16..2048"),  # refused, not clamped
        (dict(seed=-1), "Seed=-1 is outside"),
    ],
)
def test_any_size_refuses_bad_settings(S, T, src, kwargs, match):
    settings = dict(width=64, height=64, steps=3)
    settings.update(kwargs)
    with pytest.raises(S.UserError, match=match):
        T.tiled_diffusion.any_size(src, "stars", **settings)


def test_ui_handlers_stream_stages_and_refusals_are_status_messages(S, T, src):
    """The Run handlers yield each stage as it finishes, then the result with the updated time note;
    a refusal leaves the images as they were and puts the message in the status box (no exception,
    so no red error badge and no stack trace)."""
    import gradio as gr

    outs = list(T.tiled_diffusion.ui_any_size(src, "stars", "", 64, 64, "FSTD", 0, 16, 2, 0, 2.0, 1, True))
    assert len(outs) == 3  # the tiled image, then the untiled one, then the time note
    assert outs[0][2] is None and outs[1][2] is not None
    assert "Last run here" in outs[-1][-1]
    refused = list(
        T.tiled_diffusion.ui_any_size(src, "stars", "", 5000, 64, "FSTD", 0, 16, 2, 0, 2.0, 1, False)
    )
    assert len(refused) == 1
    *images, message, time_note = refused[0]
    assert all(isinstance(v, type(gr.skip())) for v in (*images, time_note))
    assert message.startswith("**Not run:**") and "Width (px)=5000" in message
    seeds = list(T.hdit.ui_generate(src, "stars", "", 1, -1, 2.0, 1, "euler", "normal"))
    assert "Seed=-1" in seeds[0][-2]


def test_defaults_file_states_how_seeds_were_picked(S, T):
    """demo/defaults.json (scripts/pick_demo_seeds.py): the tabs open on its seeds, each the best-scored
    of its candidates, and every tab that runs on the embedded models has a measured time."""
    from ultrares.demo import defaults

    data = defaults.load()
    for tab in ("hdit", "fstd"):
        entry = data[tab]
        best = min(entry["candidates"], key=lambda c: (c["worst"], c["seed"]))
        assert entry["seed"] == best["seed"] and entry["score"] == best["worst"]
    # the seeds were scored with the settings the tabs open on
    for tab, module in (("hdit", T.hdit), ("fstd", T.tiled_diffusion)):
        assert all(data[tab][k] == v for k, v in module.DEFAULTS.items()), tab
    for tab in ("hdit", "fstd"):
        assert defaults.seconds(tab) > 0


def test_relay_upscales_generated_and_uploaded_images(S, T, src):
    low, up, info = T.relay.relay(src, "circles", None, factor=2, steps=8, truncation_sigma=0.9, base_steps=2)
    assert low.size == up.size and up.width >= 128
    assert "relay x2 to 128x128" in info
    upload = Image.open(EXAMPLES / "apple.png")
    low2, up2, info2 = T.relay.relay(src, "circles", upload, factor=3, steps=8)
    assert "upload fitted to 64 px" in info2 and "192x192" in info2
    # the relay result is not just the nearest up-sampling of its input
    assert np.abs(pixels(low2) - pixels(up2)).mean() > 1


def test_digit_token_maps_of_an_image(S, T):
    seen, token_map, decoded, info = T.digit.digit_tokens(Image.open(EXAMPLES / "cat.png"), image_size=128)
    assert seen.size == token_map.size == decoded.size
    m = re.search(r"(\d+)x(\d+) tokens .* \(K = (\d+)\); (\d+) distinct", info)
    assert m and m.group(1) == m.group(2) == "8"
    assert 1 < int(m.group(4)) <= 64 and int(m.group(3)) >= int(m.group(4))
    # the token map is piecewise constant on the 8x8 token grid
    arr = pixels(token_map)
    cell = arr.shape[0] // 8
    block = arr[:cell, :cell]
    assert (block == block[0, 0]).all()


def test_inversion_reports_the_psnr_of_its_images(S, T, src):
    from ultrares.kernels.inversion import psnr

    inp, noise, rec, text = T.inversion.invert(
        src, "squares", Image.open(EXAMPLES / "rocket.png"), steps=6, level=0.5
    )
    assert inp.size == noise.size == rec.size
    value = float(re.search(r"PSNR\(reconstruction, input\) = ([-\d.]+) dB", text).group(1))
    a = torch.from_numpy(pixels(inp).astype(np.float32) / 255)
    b = torch.from_numpy(pixels(rec).astype(np.float32) / 255)
    assert value == pytest.approx(psnr(b, a), abs=0.2)  # same PSNR up to 8-bit rounding of the shown images
    # deterministic: the same inversion gives the same reconstruction
    _, _, rec2, _ = T.inversion.invert(
        src, "squares", Image.open(EXAMPLES / "rocket.png"), steps=6, level=0.5
    )
    assert np.array_equal(pixels(rec), pixels(rec2))


def test_linfusion_timing_on_a_text_model(S, T, tiny_sd15, tmp_path, monkeypatch):
    """A checkpoint from ComfyUI's checkpoints folder goes through the session's own loading (the file
    listed, CheckpointLoaderSimple, the native size, the cache); the loader is the one substitution the
    server tests make too: the test pack's stand-in, which builds the tiny SD1.5 for this name."""
    import folder_paths
    from ultrares.kernels import linfusion_distill as ld
    from ultrares.kernels import linfusion_format as fmt

    model, _, vae = tiny_sd15
    folder = tmp_path / "linfusion"
    folder.mkdir()
    specs = ld.specs_for(
        model.model.diffusion_model, model.model.model_config.unet_config["num_res_blocks"], None
    )
    torch.manual_seed(0)
    fmt.save_linfusion(
        str(folder / "lf-tiny.safetensors"),
        list(specs.values()),
        [fmt.build_layer(s) for s in specs.values()],
    )
    folder_paths.add_model_folder_path("linfusion", str(folder))
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "tiny-sd15.safetensors").write_bytes(b"")  # listed by name; the stand-in never reads it
    folder_paths.add_model_folder_path("checkpoints", str(ckpts))
    folder_paths.filename_list_cache.pop("checkpoints", None)
    run_node = S.run_node

    def loader_substituted(node_id, **inputs):
        if node_id == "CheckpointLoaderSimple":
            return run_node("UltraResTestCheckpointLoader", ckpt_name=inputs["ckpt_name"], seed=0)
        return run_node(node_id, **inputs)

    monkeypatch.setattr(S, "run_node", loader_substituted)
    source = S.CKPT_PREFIX + "tiny-sd15.safetensors"
    try:
        assert "lf-tiny.safetensors" in T.linfusion.linfusion_files()
        assert source in S.sources()
        bundle = S.load(source)
        assert bundle.kind == "checkpoint" and bundle.model.model is model.model  # the loader's clone
        assert bundle.vae is vae and bundle.clip is not None and bundle.native == 512
        assert S.load(source) is bundle  # cached
        base, lin, table = T.linfusion.linfusion_timing(
            source, "lf-tiny.safetensors", "a cat", width=64, height=64, steps=1
        )
    finally:
        for name, path in (("linfusion", folder), ("checkpoints", ckpts)):
            folder_paths.folder_names_and_paths[name][0].remove(str(path))
            folder_paths.filename_list_cache.pop(name, None)
    assert base.size == lin.size == (64, 64)
    assert "| softmax attention |" in table and "| LinFusion |" in table and "latent tokens" in table
    assert np.abs(pixels(base) - pixels(lin)).mean() > 0.1  # the attention really was replaced


def test_errors_say_what_to_do(S, T, src):
    with pytest.raises(S.UserError, match="make embedded-models"):
        T.hdit.generate(None)
    with pytest.raises(S.UserError, match="not in the hdit models folder"):
        S.load(S.HDIT_PREFIX + "nope.safetensors")
    with pytest.raises(S.UserError, match="upload an image"):
        T.digit.digit_tokens(None)
    with pytest.raises(S.UserError, match="Stable Diffusion checkpoint"):
        T.linfusion.linfusion_timing(src, "x.safetensors")
    with pytest.raises(S.UserError, match="not one of this model's classes"):
        T.hdit.generate(src, "dogs", steps=1)
    with pytest.raises(S.UserError, match="level"):
        T.inversion.invert(src, "squares", None, steps=2, level=1.5)
    with pytest.raises(S.UserError, match="steps=0"):
        T.hdit.generate(src, "circles", steps=0)
    with pytest.raises(S.UserError, match="Seed=-1 is outside"):
        T.hdit.generate(src, "circles", steps=1, seed=-1)
    # DDIM level 0 and a level the schedule cannot resolve: refused before any work, in the tab's terms
    for level in (0, 0.01):
        with pytest.raises(S.UserError, match=r"Level \(fraction of the schedule\)") as err:
            T.inversion.invert(src, "squares", None, steps=25, level=level)
        assert "sigma" not in str(err.value)
    # LinFusion speaks of LinFusion and of this tab's controls, not of the HDiT
    with pytest.raises(S.UserError, match="Checkpoint") as err:
        T.linfusion.linfusion_timing(src, "x.safetensors")
    assert "HDiT" not in str(err.value)


def test_demo_imports_no_test_code():
    """The demo must run from a plain install: nothing under tests/ may be imported by it."""
    import ultrares.demo.app  # noqa: F401

    demo_modules = [m for name, m in sys.modules.items() if name.startswith("ultrares.demo")]
    assert len(demo_modules) >= 3
    test_import = re.compile(r"^\s*(from|import)\s+(harness|demo_support|conftest|tests|tiny_models)\b", re.M)
    for module in demo_modules:
        assert not test_import.search(Path(module.__file__).read_text()), module.__name__


def test_app_without_any_model_says_how_to_get_one(S, T, monkeypatch):
    """A fresh machine whose embedded model is not built yet: the app still opens and says what to run."""
    from ultrares.demo import app

    monkeypatch.setattr(S, "hdit_files", lambda: [])
    monkeypatch.setattr(S, "checkpoint_files", lambda: [])
    assert S.sources() == [] and S.default_source() is None
    demo = app.build_app()
    texts = [c.get("props", {}).get("value") or "" for c in demo.config["components"]]
    note = next(t for t in texts if "is missing" in str(t))
    assert "make embedded-models" in note and "models/checkpoints" in note
    with pytest.raises(S.UserError, match="make embedded-models"):
        T.hdit.generate(S.default_source())


def test_command_line_defaults_and_bad_comfyui_path(monkeypatch, tmp_path):
    from ultrares.demo import app
    from ultrares.devtools import comfy_host

    args = app.parse_args([])
    assert (args.host, args.port, args.share, args.cpu) == ("127.0.0.1", 7860, False, False)
    assert app.parse_args(["--port", "7999", "--share"]).port == 7999
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    with pytest.raises(comfy_host.ComfyNotFound, match=f"{tmp_path}.*COMFYUI_PATH"):
        comfy_host.comfy_root()


def test_controls_take_their_ranges_from_the_node_schemas(S, T):
    """Sliders and number boxes show the nodes' own ranges (relay steps: the node's 2..10000, not a
    demo copy), and every seed box ComfyUI's seed range."""
    from ultrares.demo import app

    props = [c.get("props", {}) for c in app.build_app().config["components"]]

    def ranges(label: str) -> list[tuple]:
        return [(p.get("minimum"), p.get("maximum")) for p in props if p.get("label") == label]

    steps = S.input_range("UltraResRelayUpscale", "steps")
    assert (
        ranges("Grid steps (only those below the truncation run)") == [(steps.min, steps.max)] == [(2, 10000)]
    )
    level = S.input_range("UltraResDDIMInvert", "level")
    assert ranges("Level (fraction of the schedule)") == [(level.min, level.max)]
    seed_max = S.input_range("KSampler", "seed").max
    seeds = [
        (p.get("minimum"), p.get("maximum")) for p in props if str(p.get("label", "")).startswith("Seed")
    ]
    # one seed box per tab that samples (the relay emoji tab added the sixth)
    assert len(seeds) == 6 and set(seeds) == {(0, seed_max)}
    # the any-size grid is drawn with the node's own defaults (tile batch, FSTD reset interval)
    settings = S.tile_settings("FSTD", 64, 16, 0)
    defaults = S.node_defaults("UltraResTiledDiffusion")
    assert all(settings[k] == defaults[k] for k in ("tile_batch_size", "reset_interval"))


def test_linfusion_points_to_the_distillation_script(S, T, src):
    with pytest.raises(S.UserError, match="scripts/linfusion_distill.py"):
        T.linfusion.linfusion_timing(S.CKPT_PREFIX + "any.safetensors", None)
    root = Path(S.__file__).resolve().parent
    assert (root.parent / "scripts" / "linfusion_distill.py").exists()
    for path in root.rglob("*.py"):  # no stale module entry point anywhere in the demo
        assert "-m ultrares.kernels.linfusion_distill" not in path.read_text(), path
    for path in [root / "session.py", *(root / "tabs").glob("*.py")]:  # tabs reach nodes by id, not by module
        assert "sys.modules" not in path.read_text(), path


@pytest.mark.parametrize("streamed", [False, True])
def test_a_cancel_after_the_last_check_does_not_stop_later_work(S, streamed):
    """A Cancel that lands when the run has passed its last interruption check (the browser's Cancel
    racing the end of a run) is dropped when the run ends: the next sampling in this process, demo or
    not, runs (the flag used to stay set and stop the next model call anywhere in the process)."""
    import comfy.model_management as mm

    def handler():
        S.cancel()  # after the handler's last check
        return "done"

    def stages():
        yield "first"
        S.cancel()
        yield "second"

    if streamed:
        assert list(S.exclusive(stages)()) == ["first", "second"]
    else:
        assert S.exclusive(handler)() == "done"
    mm.throw_exception_if_processing_interrupted()  # raises InterruptProcessingException if it leaked

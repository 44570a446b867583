"""Test-only: what a tiled model really receives, per model evaluation, with each tile found in the latent.

``TileRecorder().attach(model)`` returns a clone with two recording wrappers (ComfyUI's wrapper API).
Attach it *before* UltraResTiledDiffusion (loader -> recorder -> Tiled Diffusion -> sampler): its
``CALC_COND_BATCH`` wrapper is then outside the tiled one and sees each evaluation's whole latent and
the blended result, and its ``APPLY_MODEL`` wrapper sees every batch of tiles the model itself gets.
Each tile entry is found in the whole latent by its values (circularly, so the tiles of a rolled
latent are found too: SpotDiffusion), so the record says where each tile came from without asking
the pack.

In a test server, link this file into ``custom_nodes`` (``link_into``): it is then the node
``UltraResTestTileRecorder`` (MODEL, record_name -> MODEL), which appends one JSON line per evaluation
to ``<output>/<record_name>.jsonl``: ``{"sigma", "latent_hw", "calls": [[[y, x, h, w] per batch entry]
per model call]}``. (The test pack's ``__init__`` does not load it: only a server that links it has it.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

RECORDER_KEY = "ultrares_test_tile_recorder"


def locate(latent: torch.Tensor, crop: torch.Tensor) -> tuple[int, int]:
    """(y, x) where ``crop`` [C, h, w] sits in ``latent`` [C, H, W], read circularly (rows y..y+h and
    columns x..x+w modulo H and W); LookupError when it is nowhere."""
    H, W = latent.shape[-2:]
    h, w = crop.shape[-2:]
    for y, x in (latent == crop[:, :1, :1]).all(0).nonzero().tolist():  # where its first pixel is
        rows, cols = torch.arange(y, y + h) % H, torch.arange(x, x + w) % W
        if torch.equal(latent[:, rows][:, :, cols], crop):
            return y, x
    raise LookupError(f"a {h}x{w} tile is not a crop of the {H}x{W} latent")


@dataclass
class Evaluation:
    """One model evaluation (one ``calc_cond_batch``) of a sampling run."""

    sigma: float
    latent: torch.Tensor  # [B, C, H, W] (a singleton frame axis dropped)
    inputs: list[torch.Tensor] = field(default_factory=list)  # per model call [N, C, h, w]
    outputs: list[torch.Tensor] = field(default_factory=list)  # per model call, what the model returned
    denoised: list = field(default_factory=list)  # calc_cond_batch's result, per cond group

    def boxes(self) -> list[list[tuple[int, int, int, int]]]:
        """Per model call, (y, x, h, w) of each batch entry in the latent; entry j is batch item j % B
        (tiles are stacked tile-major, cond groups one after the other)."""
        B = self.latent.shape[0]
        return [
            [(*locate(self.latent[j % B], entry), *entry.shape[-2:]) for j, entry in enumerate(x)]
            for x in self.inputs
        ]


def _frame(t: torch.Tensor) -> torch.Tensor:
    return t[:, :, 0] if t.ndim == 5 and t.shape[2] == 1 else t


class TileRecorder:
    """Records the evaluations of a run (``evaluations``), or with ``path`` appends each one's boxes
    to that JSON-lines file instead of keeping tensors."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self.evaluations: list[Evaluation] = []
        self._open: Evaluation | None = None

    def attach(self, model):
        import comfy.patcher_extension as pe

        m = model.clone()
        m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, RECORDER_KEY, self._evaluation)
        m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, RECORDER_KEY, self._model_call)
        return m

    def _evaluation(self, executor, model, conds, x_in, timestep, model_options):
        outer, self._open = (
            self._open,
            Evaluation(float(timestep.flatten()[0]), _frame(x_in).detach().clone()),
        )
        try:
            out = executor(model, conds, x_in, timestep, model_options)
            evaluation = self._open
            evaluation.denoised = [_frame(o).detach().clone() for o in out]
        finally:
            self._open = outer
        if self.path is None:
            self.evaluations.append(evaluation)
        else:
            line = {"sigma": evaluation.sigma, "latent_hw": list(evaluation.latent.shape[-2:])}
            line["calls"] = [[list(box) for box in call] for call in evaluation.boxes()]
            with self.path.open("a") as f:
                f.write(json.dumps(line) + "\n")
        return out

    def _model_call(self, executor, x, t, *args, **kwargs):
        out = executor(x, t, *args, **kwargs)
        if self._open is not None:
            self._open.inputs.append(_frame(x).detach().clone())
            self._open.outputs.append(_frame(out).detach().clone())
        return out


def link_into(custom_nodes: str | os.PathLike) -> None:
    """Make a ComfyUI whose custom node folder is ``custom_nodes`` load this file (start it afterwards)."""
    link = Path(custom_nodes) / "ultrares_tile_recorder.py"
    if not link.exists():
        link.symlink_to(Path(__file__).resolve())


def _node():
    import folder_paths
    from comfy_api.latest import io

    class UltraResTestTileRecorder(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="UltraResTestTileRecorder",
                display_name="Tile Recorder (UltraRes tests)",
                category="_for_testing/ultrares",
                description="Records where every tile the model receives comes from; put it before Tiled Diffusion.",
                inputs=[
                    io.Model.Input("model", tooltip="The model to record (before Tiled Diffusion)."),
                    io.String.Input("record_name", default="tiles", tooltip="<output>/<record_name>.jsonl"),
                ],
                outputs=[io.Model.Output(tooltip="The same model, recorded.")],
            )

        @classmethod
        def execute(cls, model, record_name: str) -> io.NodeOutput:
            path = Path(folder_paths.get_output_directory()) / f"{record_name}.jsonl"
            return io.NodeOutput(TileRecorder(path).attach(model))

    return UltraResTestTileRecorder


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    class _Extension(ComfyExtension):
        async def get_node_list(self):
            return [_node()]

    return _Extension()

"""Test-only ComfyUI pack: provides the reduced SD1.5/SDXL models under the same output types as
``CheckpointLoaderSimple`` (MODEL, CLIP, VAE), so workflows run unchanged except for the loader.
Loaded only by the tests (in-process and by the test server), never by the user's ComfyUI."""

from __future__ import annotations

import os
import sys

from comfy_api.latest import ComfyExtension, io

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_models  # noqa: E402


def family_for(ckpt_name: str) -> str:
    """The tiny family standing in for a real checkpoint name: "...flux..." -> flux, "...sd3..." -> sd3,
    "...inpaint..." -> the 9-channel SD1.5 inpaint UNet, "...xl..." -> sdxl, else sd15."""
    name = ckpt_name.lower()
    for key, family in (("flux", "flux"), ("sd3", "sd3"), ("inpaint", "sd15_inpaint"), ("xl", "sdxl")):
        if key in name:
            return family
    return "sd15"


class UltraResTestCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UltraResTestCheckpointLoader",
            display_name="Tiny Test Checkpoint (UltraRes tests)",
            category="_for_testing/ultrares",
            description="Reduced-width SD1.5/SDXL-architecture models with seeded random weights.",
            inputs=[
                io.String.Input(
                    "ckpt_name",
                    default="v1-5-pruned-emaonly.safetensors",
                    tooltip="Name of the checkpoint this stands in for; picks the family.",
                ),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Weight seed."),
            ],
            outputs=[
                io.Model.Output(tooltip="tiny diffusion model"),
                io.Clip.Output(tooltip="tiny text encoder"),
                io.Vae.Output(tooltip="tiny VAE"),
            ],
        )

    @classmethod
    def execute(cls, ckpt_name: str, seed: int = 0) -> io.NodeOutput:
        model, clip, vae = tiny_models.build(family_for(ckpt_name), seed)
        return io.NodeOutput(model.clone(), clip.clone(), vae)


class UltraResTestControlNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UltraResTestControlNetLoader",
            display_name="Tiny Test ControlNet (UltraRes tests)",
            category="_for_testing/ultrares",
            description="A real comfy.controlnet.ControlNet with the reduced SD1.5/SDXL UNet config and seeded weights.",
            inputs=[
                io.String.Input(
                    "control_net_name",
                    default="control_v11p_sd15_canny.safetensors",
                    tooltip="Name of the ControlNet this stands in for; picks the family (xl -> SDXL).",
                ),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Weight seed."),
            ],
            outputs=[io.ControlNet.Output(tooltip="tiny ControlNet")],
        )

    @classmethod
    def execute(cls, control_net_name: str, seed: int = 0) -> io.NodeOutput:
        family = "sdxl" if "xl" in control_net_name.lower() else "sd15"
        return io.NodeOutput(tiny_models.build_controlnet(family, seed))


class _Extension(ComfyExtension):
    async def get_node_list(self):
        return [UltraResTestCheckpointLoader, UltraResTestControlNetLoader]


async def comfy_entrypoint():
    return _Extension()

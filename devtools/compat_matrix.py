"""The compatibility matrix: which UltraRes node runs on which model family and with which add-on.

One declaration serves three places, so they cannot drift apart:
- ``tests/comfy/test_compat_matrix.py`` runs every cell (a cell marked ``works`` must sample a few
  steps with finite output; a cell marked ``refused`` must fail with a message containing its reason);
- ``scripts/compat_table.py`` renders the README table from it;
- ``test_readme_table_matches`` checks the README holds exactly that rendering.
"""

from __future__ import annotations

FAMILIES = {
    "sd15": "SD1.5",
    "sdxl": "SDXL",
    "sd3": "SD3 (MMDiT, flow)",
    "flux": "Flux (flow, guidance-distilled)",
    "pixel": "HDiT (pixel space, EDM)",
    # the 2026 image families (reduced models from the running ComfyUI's own classes; a family's cells
    # are skipped on a ComfyUI that does not have it)
    "qwen_image": "Qwen-Image (latent with a frame axis)",
    "flux2": "Flux.2 (16x latent)",
    "zimage": "Z-Image",
    "chroma": "Chroma",
    "chroma_radiance": "Chroma Radiance (pixel space)",
    "hidream": "HiDream",
    "hunyuan_image21": "HunyuanImage 2.1 (32x latent)",
}
NEW_FAMILIES = ("qwen_image", "flux2", "zimage", "chroma", "chroma_radiance", "hidream", "hunyuan_image21")
FRAME_AXIS_REFUSAL = "single-frame latent with a frame axis"
TILING_METHODS = ["FSTD", "FSTD (full coverage)", "MultiDiffusion", "Mixture of Diffusers", "SpotDiffusion"]

LINFUSION_REFUSAL = "LinFusion weights exist only for SD-family UNets"

# node row -> family -> "works" | "refused: <text the refusal contains>"
NODE_ROWS: dict[str, dict[str, str]] = {
    **{f"Tiled Diffusion: {m}": dict.fromkeys(FAMILIES, "works") for m in TILING_METHODS},
    # Relay needs [B, C, H, W]; Qwen-Image's latents carry a frame axis: refused by name of the shape
    "Relay Upscale": {**dict.fromkeys(FAMILIES, "works"), "qwen_image": f"refused: {FRAME_AXIS_REFUSAL}"},
    "DDIM Invert + Generate": {**dict.fromkeys(FAMILIES, "works")},
    "LinFusion Apply": {
        **dict.fromkeys(FAMILIES, f"refused: {LINFUSION_REFUSAL}"),
        "sd15": "works",
        "sdxl": "works",
    },
}

# CLEAR Apply: FLUX.1-architecture models (model_base.Flux: dev, schnell, Krea, Kontext, Fill) only.
CLEAR_REFUSAL = "CLEAR weights exist only for FLUX.1"
CLEAR_FAMILIES = ("flux", "flux_fill")
NODE_ROWS["CLEAR Apply"] = {
    f: "works" if f in CLEAR_FAMILIES else f"refused: {CLEAR_REFUSAL}" for f in FAMILIES
}
# What CLEAR Apply is run with in tests/comfy/test_compat_matrix.py (on the tiny FLUX, cfg 1 and 4):
CLEAR_ADDONS = (*TILING_METHODS, "Relay Upscale", "LoRA", "ControlNet", "batch size 2")

# Add-ons users wire around Tiled Diffusion -> (the families each is run on, the tiling methods).
# Each cell checks that a single tile covering the image equals untiled sampling with the add-on.
# Guidance add-ons and controls (which re-evaluate the model inside a step or carry per-tile hints)
# run with all five methods; conditioning add-ons, whose crops are shared by every method, with the
# three kinds of plan (FSTD's shifted grid with its reference, overlapping tiles, a rolled latent).
# cfg 1 and FluxGuidance are columns of the node table above (every Flux run uses FluxGuidance).
ALL, PLANS = tuple(TILING_METHODS), ("FSTD", "MultiDiffusion", "SpotDiffusion")
ADDONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ControlNet (real comfy.controlnet.ControlNet)": (("sd15", "sdxl"), ALL),
    "ControlNet, cfg 1": (("sd15",), ALL),
    "ControlNet chained with T2I-Adapter": (("sd15",), ALL),
    "T2I-Adapter": (("sd15",), PLANS),
    "Self-Attention Guidance": (("sd15",), ALL),
    "Perturbed-Attention Guidance": (("sd15", "sdxl"), ALL),
    "Skip Layer Guidance (SD3)": (("sd3",), ALL),
    "Skip Layer Guidance DiT": (("flux",), ALL),
    "PerpNeg guider": (("sd15",), ALL),
    "FreeU v2": (("sd15",), PLANS),
    "LoRA": (("sd15",), PLANS),
    "area conditioning": (("sd15",), PLANS),
    "mask conditioning": (("sd15",), PLANS),
    "timestep-range conditioning": (("sd15",), PLANS),
    "batch size 2": (("sd15", "flux"), PLANS),
    "img2img (denoise 0.5)": (("sd15", "sd3"), PLANS),
    "9-channel inpaint model": (("sd15_inpaint",), PLANS),
    # reference latents are handed whole to every tile; the inpaint concat and the VAE-encoded hint
    # are cut to each tile (the hint encoded once per run)
    "FLUX.1 Kontext reference latent (ReferenceLatent)": (("flux",), PLANS),
    "Qwen-Image-Edit reference latent (ReferenceLatent)": (("qwen_image",), PLANS),
    "Flux Fill (InpaintModelConditioning)": (("flux_fill",), PLANS),
    "Flux ControlNet with a VAE-encoded hint (InstantX)": (("flux",), PLANS),
    "ControlLoRA": (("sdxl",), PLANS),
}
ADDON_FAMILY_NAMES = {**FAMILIES, "sd15_inpaint": "SD1.5 inpaint (9 ch)", "flux_fill": "Flux Fill"}

# Sampler families, on SD1.5 and Flux, with the two methods whose plan depends on the step
# (FSTD's offsets and reference, SpotDiffusion's roll): first/second order, ancestral, SDE,
# multistep, predictor-corrector, LCM.
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc", "lcm"]
SAMPLER_METHODS = ("FSTD", "SpotDiffusion")


def status(row: str, family: str) -> str:
    return NODE_ROWS[row][family]


def markdown_table() -> str:
    """The README's compatibility tables (node x family, Tiled Diffusion x add-on)."""
    reasons: dict[str, int] = {}  # refusal text -> its note number (the table stays narrow)

    def cell(text: str) -> str:
        if not text.startswith("refused: "):
            return text
        n = reasons.setdefault(text.split(": ", 1)[1], len(reasons) + 1)
        return f"refused ({n})"

    lines = ["| node | " + " | ".join(FAMILIES.values()) + " |", "|---" * (len(FAMILIES) + 1) + "|"]
    for row, cells in NODE_ROWS.items():
        lines.append(f"| {row} | " + " | ".join(cell(cells[f]) for f in FAMILIES) + " |")
    lines += [
        "",
        "*works*: runs at cfg 1 (Flux with FluxGuidance) and at cfg > 1. *refused (n)*: stops before "
        "sampling with a message naming the model family and what to use instead; the message contains "
        + "; ".join(f'({n}) "{reason}"' for reason, n in reasons.items())
        + ". Every cell is a test, on ComfyUI 0.30.0 and on 0.3.75; Tiled Diffusion's cells also check "
        "that the model receives tiles of the requested pixel size in the family's own latent units.",
        "",
        "| add-on, with Tiled Diffusion | tested on | tiling methods |",
        "|---|---|---|",
    ]
    for addon, (families, methods) in ADDONS.items():
        shown = "all five" if methods == ALL else ", ".join(methods)
        lines.append(f"| {addon} | " + ", ".join(ADDON_FAMILY_NAMES[f] for f in families) + f" | {shown} |")
    lines += [
        "",
        f"Samplers run on SD1.5 and Flux with {' and '.join(SAMPLER_METHODS)}: " + ", ".join(SAMPLERS) + ".",
    ]
    return "\n".join(lines)


START, END = (
    "<!-- compat-matrix:start (generated by scripts/compat_table.py) -->",
    "<!-- compat-matrix:end -->",
)

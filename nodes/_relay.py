"""What the relay nodes (``nodes/relay.py``) share: their input definitions (one place for each
range, read from ``kernels/relay.py`` where the kernel owns the quantity, and each tooltip), the
schema frame of a relay node, the settings built from checked inputs, and the rule of the nodes that
take the sampler settings."""

from __future__ import annotations

from comfy_api.latest import io

from ..kernels import relay as R
from ._compat import schema_extras
from ._inputs import CheckedNode

CATEGORY = "UltraRes/relay"


TIPS = {
    "block_size": "Block size p of the block noise and of the per-block DCT blur: the up-scale factor between "
    "the two stages, in latent pixels (2 for 512->1024). Must divide the latent's height and width.",
    "s_block": "Weight of the block-noise component added to the i.i.d. noise (0.15 in the paper; 0 = plain noise).",
    "blur_sigma_max": "B_max: blur strength of the forward process at u = 1. Use the value the model was trained "
    "with (3.0 ImageNet, 2.0 CelebA); 0 for ordinary models (training-free relay hires fix).",
    "prob_length": "L: the share of the EDM log-normal noise distribution mapped onto u in [0, 1] "
    "(0.93 ImageNet, 0.89 CelebA). Only matters when blur_sigma_max > 0.",
    "s_noise": "Stochasticity of each relay step: the share of the next noise level that is fresh noise "
    "(0.2 in the paper; 0 = deterministic Heun).",
    "s_churn": "EDM churn (Karras et al. Algorithm 2) before each step, as in the heun sampler; 0 = off.",
    "s_churn_noise": "Scale of the churn noise (S_noise in EDM, 1.003 in the paper's stage one).",
    "steps": "Nominal steps of the full Karras grid; only the levels below truncation_sigma are run "
    "(the effective step count is shown nowhere else: about 40-50% of this for SD models).",
    "truncation_sigma": "Stage two starts at the first grid level below this sigma (0.9 in the paper for EDM pixel "
    "models; 0.9-2.0 suits SD latents). For flow models (SD3, Flux) it is the time t in (0, 1), "
    "e.g. 0.6. Higher = more freedom to add detail, more steps.",
    "rho": "Karras grid exponent (7 usual; the paper's ImageNet stage two uses 100). For flow models "
    "(SD3, Flux) use 1: a grid linear in t (with 7 nearly every level sits at small t).",
    "sigma_min": "Lowest grid level; 0 = the model's sigma_min.",
    "sigma_max": "Highest grid level (before truncation); 0 = the model's sigma_max.",
    "cfg": "Classifier-free guidance scale (ignored without negative conditioning). Flux: "
    "1 (its guidance comes from FluxGuidance on the positive conditioning).",
    "factor": "Integer up-scale factor; also the block size of the noise and of the DCT blur.",
    "relay_settings": "model: a relay-trained model (e.g. ultrares-emoji-relay256) brings the blur_sigma_max, "
    "prob_length, s_block and s_noise it was trained with, and these inputs are ignored; models without relay "
    "settings use the inputs. inputs: always use the values set here.",
}


def float_input(name: str, default: float, lo: float, hi: float, step: float, tip: str | None = None, **kw):
    return io.Float.Input(name, default=default, min=lo, max=hi, step=step, tooltip=tip or TIPS[name], **kw)


def block_size_input() -> io.Int.Input:
    lo, hi = R.BLOCK_SIZES
    return io.Int.Input("block_size", default=2, min=lo, max=hi, tooltip=TIPS["block_size"])


def s_block_input() -> io.Float.Input:
    return float_input("s_block", 0.15, 0.0, 2.0, 0.01)


def sampler_inputs() -> list:
    return [
        float_input("blur_sigma_max", 0.0, 0.0, 10.0, 0.05),
        float_input("prob_length", 0.93, 0.01, 1.0, 0.01),
        s_block_input(),
        float_input("s_noise", 0.2, 0.0, 1.0, 0.01),
        float_input("s_churn", 0.0, 0.0, 100.0, 0.1),
        float_input("s_tmin", 0.0, 0.0, 1000.0, 0.01, "Churn only at sigma >= s_tmin."),
        float_input("s_tmax", 1000.0, 0.0, 1000.0, 0.01, "Churn only at sigma <= s_tmax."),
        float_input("s_churn_noise", 1.0, 0.0, 2.0, 0.001),
    ]


def schedule_inputs() -> list:
    lo, hi = R.STEPS
    return [
        io.Int.Input("steps", default=30, min=lo, max=hi, tooltip=TIPS["steps"]),
        float_input("truncation_sigma", 0.9, 0.001, 1000.0, 0.01),
        float_input("rho", 7.0, 0.1, 200.0, 0.1),
    ]


SAMPLER_FIELDS = tuple(i.id for i in sampler_inputs())
"""The :class:`kernels.relay.RelaySettings` fields the relay nodes take as inputs (besides the block size)."""

SETTINGS_SOURCES = ("model", "inputs")


def settings_source_input() -> io.Combo.Input:
    tip = TIPS["relay_settings"]
    return io.Combo.Input(
        "relay_settings", options=list(SETTINGS_SOURCES), default="model", optional=True, tooltip=tip
    )


def relay_settings(v, patch: int) -> R.RelaySettings:
    """The :class:`kernels.relay.RelaySettings` of a node's checked inputs ``v`` with block size ``patch``."""
    return R.RelaySettings(patch=int(patch), **{f: v[f] for f in SAMPLER_FIELDS})


class RelaySamplerNode(CheckedNode):
    """A node taking the relay sampler settings (:func:`sampler_inputs`) and their rule."""

    @classmethod
    def rules(cls, v) -> bool | str:
        return R.churn_window_problem(v.s_tmin, v.s_tmax) or True


def schema(node_id: str, display_name: str, aliases: list[str], description: str, inputs, outputs):
    """A relay node's ``io.Schema``: its category, and search aliases after "relay", "relay diffusion"."""
    return io.Schema(
        node_id=node_id,
        **schema_extras(search_aliases=["relay", "relay diffusion", *aliases]),
        display_name=display_name,
        category=CATEGORY,
        description=description,
        inputs=inputs,
        outputs=outputs,
    )


def model_range(model_sampling) -> tuple[float, float]:
    """A model's noise range ``(sigma_min, sigma_max)`` from its ``model_sampling``, as the kernel takes it."""
    return float(model_sampling.sigma_min), float(model_sampling.sigma_max)


def prefixed(who: str, fn, *args, **kw):
    """``fn(*args, **kw)`` with a kernel's ``ValueError`` prefixed by the node's name ``who``."""
    try:
        return fn(*args, **kw)
    except ValueError as e:
        raise ValueError(f"{who}: {e}") from None

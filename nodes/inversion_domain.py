"""Unseen-domain nodes over inverted latents (UnseenDiffusion, arXiv 2310.09213): slerp, domain score,
domain Gaussian. Thin adapters over ``kernels/inversion.py`` (geometry and statistics),
``inversion_format.py`` (records, reference files) and ``inversion_report.py`` (report and plot); the
inversion itself is ``inversion.py``.
"""

from __future__ import annotations

import os

import comfy.model_management
from comfy_api.latest import io, ui
from comfy_execution.graph_utils import ExecutionBlocker

from ..kernels import inversion as kinv
from ..kernels import inversion_format as kfmt
from ..kernels import inversion_report as kreport
from . import _files
from ._common import seed_input
from ._compat import schema_extras
from ._inputs import CheckedNode

CATEGORY = "UltraRes/inversion"
META_KEY = kfmt.RECORD_KEY


def _latent(samples, record: dict | None) -> dict:
    """A LATENT of ``samples`` carrying a copy of the inversion ``record`` (none: no record)."""
    return {"samples": samples, **({META_KEY: dict(record)} if record else {})}


class UltraResLatentSlerp(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResLatentSlerp",
            **schema_extras(search_aliases=["slerp", "interpolate latents", "inversion"]),
            display_name="Latent Slerp (UltraRes)",
            category=CATEGORY,
            description="Spherical interpolation between two noise latents (the paper moves from an inverted "
            "out-of-domain latent towards a Gaussian sample this way). Without latent_b, a seeded Gaussian "
            "sample with latent_a's RMS is used.",
            inputs=[
                io.Latent.Input("latent_a", tooltip="Start latent (t = 0), e.g. from UltraResDDIMInvert."),
                io.Float.Input(
                    "t",
                    default=0.5,
                    min=-1.0,
                    max=2.0,
                    step=0.01,
                    tooltip="Fraction of the way from latent_a to latent_b (0 = a, 1 = b).",
                ),
                io.Int.Input(
                    "count",
                    default=1,
                    min=1,
                    max=256,
                    tooltip="Number of points: count = 1 gives the point at t; more gives count points "
                    "evenly spaced in (0, t], as a batch (point-major).",
                ),
                seed_input("Seed of the Gaussian sample used when latent_b is not connected."),
                io.Latent.Input(
                    "latent_b",
                    optional=True,
                    tooltip="End latent (t = 1), same shape as latent_a (or batch 1).",
                ),
            ],
            outputs=[
                io.Latent.Output(
                    "latent", tooltip="The interpolated noise latent(s); feed to UltraResDDIMGenerate."
                )
            ],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        latent_a, latent_b = v.latent_a, v.latent_b
        b = None if latent_b is None else latent_b["samples"]
        path = kinv.slerp_path(latent_a["samples"], b, v.t, v.count, v.seed)
        meta_a = kfmt.read_record(latent_a)
        meta_b = None if latent_b is None else kfmt.read_record(latent_b)
        if kfmt.sigmas_differ(meta_a, meta_b):
            raise ValueError(
                f"latent_a was inverted to sigma {meta_a['sigma']:.5g} and latent_b to "
                f"{meta_b['sigma']:.5g}; interpolate latents inverted with the same steps and level."
            )
        return io.NodeOutput(_latent(path, meta_a or meta_b))


NO_FILE = "(none)"


def _reference_files() -> list[str]:
    """The choices of ``reference_file``: (none) and the .safetensors files in output/ultrares/."""
    return [NO_FILE, *_files.list_files("output")]


def _old_reference_file(inputs: dict) -> dict:
    """Workflows saved before reference_file became a list hold an empty STRING: read it as (none)."""
    return {**inputs, "reference_file": NO_FILE} if inputs.get("reference_file") == "" else inputs


def _check_reference_inputs(reference_file, save_reference_as, overwrite) -> bool | str:
    """Queue-time file checks of UltraResDomainScore (the same ones execute repeats)."""
    try:
        if reference_file not in (None, "", NO_FILE):
            name = _files.check_name("reference_file", reference_file)
            path = _files.resolve(name, "output")
            if not os.path.isfile(path):
                return (
                    f"reference_file={reference_file!r}: {_files.shown('output', name)} does not exist. Pick "
                    "a file from the list (files saved with save_reference_as), or connect a reference latent."
                )
        if save_reference_as not in (None, ""):
            name = _files.check_name("save_reference_as", save_reference_as)
            _files.check_writable("save_reference_as", name, bool(overwrite), "output")
    except ValueError as err:
        return str(err)
    return True


class UltraResDomainScore(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResDomainScore",
            **schema_extras(search_aliases=["inversion", "domain score", "out of domain"]),
            display_name="Domain Score (UltraRes)",
            category=CATEGORY,
            description="How in-domain a set of inverted latents looks: fits the paper's Gaussian (per-dim mean, "
            "scalar variance) to a reference set of in-domain inverted latents and scores each latent by its "
            "normalised distance, mean distance and mean angle to the reference. Thresholds are percentiles "
            "of the reference set's own leave-one-out scores, never fixed numbers. The latents that pass go "
            "out on 'accepted' (e.g. slerp points towards a new domain, on to UltraResDDIMGenerate).",
            is_output_node=True,
            inputs=[
                io.Latent.Input(
                    "latents", tooltip="Inverted latents to score (a batch from UltraResDDIMInvert)."
                ),
                io.Float.Input(
                    "percentile",
                    default=95.0,
                    min=50.0,
                    max=99.9,
                    step=0.1,
                    tooltip="Acceptance percentile: about this share of fresh in-domain latents passes "
                    "each test.",
                ),
                io.Latent.Input(
                    "reference",
                    optional=True,
                    tooltip="In-domain inverted latents (at least 3, same model, size, steps and "
                    "level). Takes precedence over reference_file.",
                ),
                io.Combo.Input(
                    "reference_file",
                    options=_reference_files(),
                    default=NO_FILE,
                    optional=True,
                    tooltip="Saved reference, used when no reference latent is connected: a file in "
                    "ComfyUI's output/ultrares/ folder written by save_reference_as (refresh the page to "
                    "see new ones).",
                ),
                io.String.Input(
                    "save_reference_as",
                    default="",
                    optional=True,
                    tooltip="If set and a reference latent is connected, save it as output/ultrares/<name> "
                    "for later use as reference_file. A plain file name (no folders); .safetensors is "
                    "added when missing.",
                ),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    optional=True,
                    tooltip="Allow save_reference_as to replace a file that UltraRes did not write. Files "
                    "this node saved are replaced without it.",
                ),
            ],
            outputs=[
                io.String.Output(
                    "report", tooltip="Per-latent scores, p-values, verdicts and the thresholds."
                ),
                io.Image.Output(
                    "plot",
                    tooltip="Histogram of the reference distances with the threshold and the scored latents.",
                ),
                io.Latent.Output(
                    "accepted",
                    tooltip="The scored latents judged in-domain, in their input order (with the inversion "
                    "record of 'latents'): feed them to UltraResDDIMGenerate. Nodes downstream stop with a "
                    "message when none passes.",
                ),
            ],
        )

    @classmethod
    def combo_hints(cls) -> dict[str, str]:
        return {"reference_file": " (files saved with save_reference_as; or connect a reference latent)"}

    @classmethod
    def rules(cls, v) -> bool | str:
        return _check_reference_inputs(v.reference_file, v.save_reference_as, bool(v.overwrite))

    @classmethod
    def validate_inputs(cls, input_types: dict | None = None, **inputs) -> bool | str:
        return super().validate_inputs(input_types=input_types, **_old_reference_file(inputs))

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(_old_reference_file(inputs))
        latents, reference, reference_file = v.latents, v.reference, v.reference_file
        save_reference_as, overwrite = v.save_reference_as, v.overwrite
        test = latents["samples"].float().cpu()
        meta_test = kfmt.read_record(latents)
        if reference is not None:
            ref = reference["samples"].float().cpu()
            meta_ref = kfmt.read_record(reference)
            if save_reference_as:
                name = _files.check_name("save_reference_as", save_reference_as)
                _files.makedirs("output")
                path = _files.check_writable("save_reference_as", name, bool(overwrite), "output")
                kfmt.save_reference(path, ref, meta_ref, {_files.MARKER_KEY: "domain_reference"})
        elif reference_file not in (None, "", NO_FILE):
            name = _files.check_name("reference_file", reference_file)
            path = _files.resolve(name, "output")
            try:
                ref, meta_ref = kfmt.load_reference(path)
            except ValueError:
                raise ValueError(
                    f"reference_file: {_files.shown('output', name)} is not a reference saved by this node "
                    "(no readable 'latents' tensor); save one with save_reference_as."
                ) from None
        else:
            raise ValueError(
                "connect a reference latent (in-domain inverted latents) or pick a saved reference_file."
            )
        if kfmt.sigmas_differ(meta_test, meta_ref):
            raise ValueError(
                f"the latents were inverted to sigma {meta_test['sigma']:.5g} but the reference to "
                f"{meta_ref['sigma']:.5g}; invert both with the same model, steps and level."
            )
        kinv.check_same_shape(test, ref)
        reference_stats = kinv.domain_reference(ref, percentile=float(v.percentile))
        score = kinv.domain_score(test, reference_stats)
        report = kreport.domain_report(reference_stats, score)
        plot = kreport.domain_plot(reference_stats, score)
        preview = ui.PreviewImage(plot, cls=cls).as_dict()
        keep = score.in_domain.nonzero().flatten()
        if len(keep):
            accepted = _latent(latents["samples"][keep.to(latents["samples"].device)], meta_test)
        else:
            accepted = ExecutionBlocker(
                f"UltraResDomainScore accepted none of the {len(score.in_domain)} latents, so nothing was "
                "passed on. Lower the percentile's strictness (a higher percentile accepts more), use more "
                "slerp points closer to the reference (smaller t), or check the reference set."
            )
        return io.NodeOutput(report, plot, accepted, ui={**preview, "text": (report,)})


SPREADS = ("scalar (paper)", "per-dimension")


class UltraResDomainGaussian(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UltraResDomainGaussian",
            **schema_extras(search_aliases=["inversion", "gaussian latents", "sample latents"]),
            display_name="Fit & Sample Domain Gaussian (UltraRes)",
            category=CATEGORY,
            description="The paper's unseen-domain sampling: fits a Gaussian to a batch of inverted latents of "
            "a new domain (per-dimension mean and, as the official DiscoveryDiff code does, one scalar "
            "variance) and draws new starting latents from it (seeded, deterministic). Generate them with "
            "UltraResDDIMGenerate using the inversion's model, steps, level and scheduler.",
            inputs=[
                io.Latent.Input(
                    "latents",
                    tooltip="Inverted latents of the new domain (at least 2; a batch from UltraResDDIMInvert).",
                ),
                io.Int.Input(
                    "count",
                    default=4,
                    min=1,
                    max=256,
                    tooltip="How many new latents to draw (the output batch).",
                ),
                seed_input(
                    "Seed of the draw: the same seed and latents give the same samples on any device."
                ),
                io.Combo.Input(
                    "spread",
                    options=list(SPREADS),
                    default=SPREADS[0],
                    optional=True,
                    tooltip="'scalar (paper)': one variance pooled over every value (what the paper fits). "
                    "'per-dimension': a standard deviation per latent value (needs more latents to be "
                    "reliable).",
                ),
            ],
            outputs=[
                io.Latent.Output(
                    "latent",
                    tooltip="count new noise latents at the inversion's top sigma (with its inversion record).",
                )
            ],
        )

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        v = cls.checked(inputs)
        latents = v.latents
        samples = latents["samples"]
        kinv.check_domain_latents(samples)
        out = kinv.sample_domain_gaussian(
            samples.float().cpu(), v.count, v.seed, per_dimension=v.spread == SPREADS[1]
        )
        out = out.to(comfy.model_management.intermediate_device())
        return io.NodeOutput(_latent(out, kfmt.read_record(latents)))


NODES = [UltraResLatentSlerp, UltraResDomainScore, UltraResDomainGaussian]

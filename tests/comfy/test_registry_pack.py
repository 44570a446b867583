"""What the pack ships besides its nodes: node help pages, template thumbnails, registry metadata.

- every registered UltraRes node has web/docs/<NodeId>.md (the frontend's help-panel convention), whose
  generated Inputs/Outputs block matches the node's live schema (so a renamed input, a new default or a
  changed tooltip fails here until `scripts/node_help.py` is re-run), and whose prose has a wiring graph
  and a paper link; no page documents a node that does not exist;
- every workflows/<name>.json has the workflows/<name>.jpg thumbnail the template browser shows;
- pyproject.toml's requires-comfyui admits the tested versions and nothing outside their range; .comfyignore
  keeps development files out of the registry zip and the runtime files in.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from harness.workflows_util import workflow_names
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "web" / "docs"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_ultrares_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


node_help = _script("node_help")
thumbnails = _script("workflow_thumbnails")


def _inputs(info: dict) -> list[str]:
    return [name for section in ("required", "optional") for name in info["input"].get(section, {})]


# ------------------------------------------------------------------------------------ help pages
def test_every_node_has_a_help_page_matching_its_schema(comfy):
    assert comfy.pack_nodes, "no UltraRes node registered"
    problems = []
    for node_id in comfy.pack_nodes:
        path = DOCS / f"{node_id}.md"
        if not path.exists():
            problems.append(
                f"{node_id}: no help page web/docs/{node_id}.md (run scripts/node_help.py, then "
                "write its prose)"
            )
            continue
        text = path.read_text()
        info = node_help.schema_info(comfy.node_class(node_id), comfy.object_info(node_id))
        blocks = node_help.BLOCK_RE.findall(text)
        if blocks != [node_help.render_block(node_id, info)]:
            problems.append(
                f"{node_id}: the Inputs/Outputs block of web/docs/{node_id}.md differs from the "
                "node's schema: run `.venv/bin/python scripts/node_help.py`"
            )
        for name in _inputs(info):
            if f"`{name}`" not in text:
                problems.append(f"{node_id}: input {name!r} is not mentioned in its help page")
        prose = node_help.BLOCK_RE.sub("", text)
        if not prose.startswith(f"# {info['display_name']}\n"):
            problems.append(f"{node_id}: the page should start with '# {info['display_name']}'")
        if "## How to wire it" not in prose or "```text" not in prose:
            problems.append(f"{node_id}: no '## How to wire it' section with a graph")
        if not re.search(r"\(https://arxiv\.org/abs/\d{4}\.\d{4,5}\)", prose):
            problems.append(f"{node_id}: no paper link (https://arxiv.org/abs/...)")
    assert not problems, "\n".join(problems)


def _running_version(comfy) -> str:
    text = (Path(comfy.comfy_path) / "comfyui_version.py").read_text()
    return re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text).group(1)


def test_class_names_are_the_node_ids(comfy):
    """A node's Python class is named as its node id, so a traceback, a grep and a workflow agree."""
    assert comfy.pack_nodes
    wrong = {i: comfy.nodes[i].__name__ for i in comfy.pack_nodes if comfy.nodes[i].__name__ != i}
    assert not wrong, f"class name != node id: {wrong}"


def test_help_block_is_what_the_default_version_serves(comfy):
    """The pages are generated on the default ComfyUI (0.30.0) and checked on the floor too: the block's
    input comes from the live /object_info entry, with only the output names taken from our schema. On
    the default version that is exactly what the server serves; on the floor (0.3.75) the served names
    differ only where the schema names an output by id alone (0.3.75 serves its type there)."""
    from ultrares.devtools.comfy_host import DEFAULT_COMFYUI_VERSION

    default = _running_version(comfy) == DEFAULT_COMFYUI_VERSION
    for node_id in comfy.pack_nodes:
        cls, info = comfy.node_class(node_id), comfy.object_info(node_id)
        fixed = node_help.schema_info(cls, info)
        assert [k for k in fixed if fixed[k] != info[k]] in ([], ["output_name"]), node_id
        if default:
            assert fixed == info, f"{node_id}: its help block would differ from /object_info"
            continue
        outputs = cls.define_schema().outputs
        for served, ours, out in zip(info["output_name"], fixed["output_name"], outputs):
            if served != ours:
                assert out.display_name is None and out.id == ours and served == out.io_type, (
                    node_id,
                    served,
                )


def test_help_page_images_exist_and_are_small():
    found = 0
    for page in DOCS.glob("*.md"):
        for ref in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert not ref.startswith(("http:", "https:", "/")), (
                f"{page.name}: {ref} must be relative to web/docs"
            )
            image = DOCS / ref
            assert image.is_file(), f"{page.name}: image {ref} missing"
            assert image.stat().st_size < 100_000, f"{page.name}: image {ref} is {image.stat().st_size} bytes"
            Image.open(image).verify()
            found += 1
    assert found >= 1


def test_no_help_page_for_an_unknown_node(comfy):
    pages = {p.stem for p in DOCS.glob("*.md")}
    assert pages - set(comfy.pack_nodes) == set(), "help pages for nodes that are not registered"


def test_generated_block_follows_schema_changes(comfy):
    """Control for the drift check: a changed default, range, tooltip or a new input changes the block."""
    node_id = "UltraResTiledDiffusion"
    info = comfy.object_info(node_id)
    base = node_help.render_block(node_id, info)
    for edit in ("default", "max", "tooltip", "new input"):
        changed = copy.deepcopy(info)
        spec = changed["input"]["required"]["tile_width"][1]
        if edit == "default":
            spec["default"] += 8
        elif edit == "max":
            spec["max"] -= 8
        elif edit == "tooltip":
            spec["tooltip"] += " More."
        else:
            changed["input"].setdefault("optional", {})["extra_knob"] = [
                "INT",
                {"default": 1, "tooltip": "x"},
            ]
        assert node_help.render_block(node_id, changed) != base, edit


def test_pack_serves_web_directory(comfy):
    import nodes

    assert Path(__import__("ultrares").WEB_DIRECTORY).parts[-1] == "web"
    assert (ROOT / "web").resolve() in {Path(d).resolve() for d in nodes.EXTENSION_WEB_DIRS.values()}


# ------------------------------------------------------------------------------------ thumbnails
@pytest.mark.parametrize("name", workflow_names())
def test_every_workflow_has_a_thumbnail(name):
    path = ROOT / "workflows" / f"{name}.jpg"
    assert path.exists(), f"workflows/{name}.jpg missing: run .venv/bin/python scripts/workflow_thumbnails.py"
    assert path.stat().st_size < 60_000
    committed = Image.open(path)
    assert committed.format == "JPEG" and committed.size == thumbnails.SIZE
    fresh = Image.open(io.BytesIO(thumbnails.thumbnail_bytes(name)))
    diff = np.abs(np.asarray(committed, np.float32) - np.asarray(fresh, np.float32)).mean()
    assert diff < 2.0, (
        f"workflows/{name}.jpg is stale (mean diff {diff:.1f}): run scripts/workflow_thumbnails.py"
    )


def test_thumbnail_shows_the_graph():
    """Control: two different workflows give clearly different thumbnails, and a moved node changes one."""
    import json

    a, b = workflow_names()[:2]
    img_a = np.asarray(
        thumbnails.render(json.loads((ROOT / "workflows" / f"{a}.json").read_text()), a), np.float32
    )
    img_b = np.asarray(
        thumbnails.render(json.loads((ROOT / "workflows" / f"{b}.json").read_text()), b), np.float32
    )
    assert np.abs(img_a - img_b).mean() > 2.0
    wf = json.loads((ROOT / "workflows" / f"{a}.json").read_text())
    wf["nodes"][0]["pos"][1] += 800
    moved = np.asarray(thumbnails.render(wf, a), np.float32)
    assert np.abs(moved - img_a).mean() > 1.0


# ------------------------------------------------------------------------------------ registry metadata
def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_requires_comfyui_is_the_tested_range(comfy):
    """requires-comfyui admits exactly the tested range: the running ComfyUI, both tested versions, the
    releases between them, and nothing older than the floor or at/after the next untested minor."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
    from ultrares.devtools.comfy_host import TESTED_COMFYUI_VERSIONS

    spec = SpecifierSet(_pyproject()["tool"]["comfy"]["requires-comfyui"])
    running = (Path(comfy.comfy_path) / "comfyui_version.py").read_text()
    version = Version(re.search(r"__version__\s*=\s*['\"]([^'\"]+)", running).group(1))
    assert version in spec, f"requires-comfyui {spec} excludes the ComfyUI the suite runs ({version})"
    tested = sorted(Version(v) for v in TESTED_COMFYUI_VERSIONS)
    assert all(v in spec for v in tested), f"requires-comfyui {spec} excludes a tested version"
    newest, floor = tested[-1], tested[0]
    assert Version(f"{newest.major}.{newest.minor + 1}.0") not in spec, "upper bound missing"
    assert Version(f"{floor.major}.{floor.minor}.{floor.micro - 1}") not in spec, "lower bound missing"
    assert Version("0.3.48") not in spec


def test_classifiers_and_dependencies():
    project = _pyproject()["project"]
    classifiers = set(project["classifiers"])
    assert "Environment :: GPU :: NVIDIA CUDA" in classifiers
    assert any(c.startswith("Operating System ::") for c in classifiers)
    reqs = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert sorted(project["dependencies"]) == sorted(reqs), "pyproject dependencies != requirements.txt"
    assert not any(re.match(r"torch\b", d) for d in project["dependencies"]), "torch is ComfyUI's"


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)
def test_comfyignore_keeps_runtime_files_and_drops_development_files():
    """The registry zip is `git ls-files` minus .comfyignore (gitignore-style patterns): git's own
    matcher applies the file the same way here."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()  # lines: blueprint file names hold spaces
    probe = tracked + [
        "subgraphs/Relay Upscale x4.json",
        "subgraphs/_build.py",
        "web/docs/UltraResTiledDiffusion.md",
        "workflows/fstd_any_size.jpg",
        ".venv/bin/python",
        ".comfyui/0.30.0/ComfyUI/main.py",
        "bench_results/x.json",
        ".ci/run",
        "bench/bench_clear.py",
        "devtools/compat_matrix.py",
    ]
    out = subprocess.run(
        ["git", "-c", "core.excludesFile=.comfyignore", "check-ignore", "--no-index", "--stdin"],
        cwd=ROOT,
        input="\n".join(probe),
        capture_output=True,
        text=True,
    )
    ignored = set(out.stdout.splitlines())
    must_ship = [
        p
        for p in probe
        if p.split("/")[0] in ("nodes", "kernels", "models", "web")
        or p == "devtools/comfy_host.py"
        or re.fullmatch(r"workflows/[^/]+\.(json|jpg)", p)
        or re.fullmatch(r"subgraphs/[^/_][^/]*\.json", p)
        or p
        in (
            "__init__.py",
            "LICENSE",
            "README.md",
            "pyproject.toml",
            "requirements.txt",
            "scripts/linfusion_distill.py",
        )
    ]
    must_drop = [
        p
        for p in probe
        if p.split("/")[0] in ("tests", "docs", "demo", "bench", "bench_results", ".ci", ".venv", ".comfyui")
        or p.startswith(("workflows/specs/", "scripts/assets/"))
        or p in ("scripts/setup.sh", "subgraphs/_build.py", "devtools/compat_matrix.py")
    ]
    assert must_ship and must_drop
    assert [p for p in must_ship if p in ignored] == [], "runtime files left out of the registry zip"
    assert [p for p in must_drop if p not in ignored] == [], "development files shipped in the registry zip"

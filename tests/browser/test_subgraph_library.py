"""The pack's subgraph blueprints in the graph editor (headless Chromium), on both tested versions:
the node library's search finds each one under "Subgraph Blueprints" (0.30's frontend 1.47 files it
under the blueprint's category, "Subgraph Blueprints/UltraRes/upscale"; 0.3.75's 1.32 lists it there
directly), a click places it as a subgraph node, and the editor's own graphToPrompt expands it as
tests/server/test_subgraphs.py's expander does. ComfyUI without ``app/subgraph_manager.py`` serves no
pack blueprints: skipped there."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from demo_support import chromium
from harness.paths import ROOT, comfy_root
from playwright.sync_api import expect

pytestmark = [
    pytest.mark.browser,
    pytest.mark.floor,
    pytest.mark.skipif(
        not (comfy_root() / "app" / "subgraph_manager.py").exists(),
        reason="this ComfyUI serves no subgraph blueprints from packs (no app/subgraph_manager.py)",
    ),
]

NAMES = ("Tiled Upscale to 4K (UltraRes FSTD)", "Relay Upscale x4")

READY_JS = """() => window.app && window.app.graph && window.app.canvas && window.LiteGraph
    && Object.keys(window.LiteGraph.registered_node_types).length > 100"""

SEARCH = ".node-lib-search-box input"


@pytest.fixture(scope="module")
def editor(comfy_server):
    for key, value in (("Comfy.TutorialCompleted", True), ("Comfy.NodeLibrary.NewDesign", False)):
        status, body = comfy_server.request(f"/api/settings/{key}", value)
        assert status == 200, body
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
        page = context.new_page()
        page.goto(comfy_server.url)
        page.wait_for_function(READY_JS, timeout=180_000)
        page.locator(".node-library-tab-button").first.click()
        page.locator(SEARCH).first.wait_for(timeout=60_000)
        yield page
        context.close()


def comfy_version() -> tuple[int, ...]:
    text = (comfy_root() / "comfyui_version.py").read_text(encoding="utf-8")
    return tuple(int(p) for p in re.search(r'"([0-9.]+)"', text).group(1).split("."))


def sg_category(name: str) -> str:
    blueprint = json.loads((ROOT / "subgraphs" / f"{name}.json").read_text(encoding="utf-8"))
    return blueprint["definitions"]["subgraphs"][0]["category"]


def _server_test_module():
    """tests/server/test_subgraphs.py (its expander), loaded by path."""
    spec = importlib.util.spec_from_file_location(
        "_subgraph_expander", ROOT / "tests/server/test_subgraphs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PLACED_JS = """async (before) => {
    const placed = window.app.graph.nodes.filter((n) => !before.includes(n.id) && n.isSubgraphNode?.());
    const prompt = await window.app.graphToPrompt();
    return placed.map((n) => ({
        id: String(n.id),
        title: n.title,
        inner: n.subgraph.nodes.map((m) => m.type),
        inner_ids: n.subgraph.nodes.map((m) => String(m.id)),
        prompt: Object.fromEntries(Object.entries(prompt.output).filter(([k]) => k.startsWith(n.id + ":"))),
    }));
}"""


@pytest.mark.parametrize("name", NAMES)
def test_node_library_finds_and_places_the_blueprint(editor, comfy_server, name):
    """Found by the library's search in Subgraph Blueprints/UltraRes/upscale; a click places it; the
    editor's own graphToPrompt expands it to the inner nodes with the widget values
    tests/server/test_subgraphs.py's expander gives (the inputs left unconnected here aside)."""
    expand = _server_test_module().expand
    page = editor
    box = page.locator(SEARCH).first
    box.fill("zqxjv no such node")  # control: a search that matches nothing shows no blueprint
    expect(page.locator(".node-lib-node-container .tree-leaf", has_text=name)).to_have_count(
        0, timeout=30_000
    )
    box.fill(name)
    leaf = page.locator(".node-lib-node-container .tree-leaf", has_text=name).first
    leaf.wait_for(timeout=60_000)
    tree = page.locator(".p-tree").filter(has=leaf).last.inner_text()
    category = sg_category(name) if comfy_version() >= (0, 30) else ""  # 1.32 ignores the category
    for folder in ("Subgraph Blueprints", *filter(None, category.split("/"))):
        assert folder in tree.splitlines(), tree
    before = page.evaluate("() => window.app.graph.nodes.map((n) => n.id)")
    leaf.click()
    page.wait_for_function(
        "(before) => window.app.graph.nodes.some((n) => !before.includes(n.id) && n.isSubgraphNode?.())",
        arg=before,
        timeout=60_000,
    )
    (placed,) = page.evaluate(PLACED_JS, before)
    blueprint = json.loads((ROOT / "subgraphs" / f"{name}.json").read_text(encoding="utf-8"))
    sg = blueprint["definitions"]["subgraphs"][0]
    # the editor may renumber inner nodes (ids taken in the open graph): pair them up in order
    assert placed["inner"] == [n["type"] for n in sg["nodes"]]
    renumbered = {
        f"{placed['id']}:{new}": f"{placed['id']}:{n['id']}"
        for new, n in zip(placed["inner_ids"], sg["nodes"])
    }
    if comfy_version() < (0, 30):
        # frontend 1.32 (ComfyUI 0.3.75) lists and places pack blueprints but resolves widgets promoted
        # through subgraph inputs wrongly (e.g. ImageScale width <- the upscale_method value): the
        # queue-time validation refuses the values seen here (a str width, denoise 7): use 0.30 for them
        return
    ours, _ = expand(blueprint, comfy_server.object_info, placed["id"], sockets={})
    # what the editor queues for the inner nodes: the same nodes and, for every widget it sends, the same value
    assert placed["prompt"] and {renumbered[k] for k in placed["prompt"]} <= set(ours)
    for key, node in placed["prompt"].items():
        mine = ours[renumbered[key]]
        assert node["class_type"] == mine["class_type"]
        for input_name, value in node["inputs"].items():
            if isinstance(value, list):  # a link: renumbered ids
                assert [renumbered[f"{value[0]}"], value[1]] == mine["inputs"].get(input_name), (
                    key,
                    input_name,
                )
            else:
                assert mine["inputs"].get(input_name) == value, (key, input_name, value, mine["inputs"])
    box.fill("")

"""Every UltraRes node is registered on a real server, documented, and has a tooltip everywhere."""

import pytest

pytestmark = pytest.mark.server


def test_every_pack_node_is_served_with_tooltips(comfy, comfy_server):
    info = comfy_server.object_info()
    ours = {k: v for k, v in info.items() if k.startswith("UltraRes") and not k.startswith("UltraResTest")}
    assert set(ours) == set(comfy.pack_nodes), "server and in-process registries differ"
    assert ours, "no UltraRes node served"
    problems = []
    for node_id, node in ours.items():
        if not node.get("description"):
            problems.append(f"{node_id}: no description")
        if not node["display_name"].endswith("(UltraRes)"):
            problems.append(f"{node_id}: display name {node['display_name']!r} lacks '(UltraRes)'")
        if not node["category"].startswith("UltraRes"):
            problems.append(f"{node_id}: category {node['category']!r}")
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                if not opts.get("tooltip"):
                    problems.append(f"{node_id}.{name}: no tooltip")
        tips = node.get("output_tooltips") or []
        if len(tips) != len(node["output"]) or not all(tips):
            problems.append(f"{node_id}: outputs without tooltips ({tips})")
    assert not problems, "\n".join(problems)


def test_workflow_templates_are_served(comfy_server):
    templates = comfy_server.get_json("/workflow_templates")
    names = set(templates.get("ultrares", []))
    from harness.workflows_util import workflow_names

    assert names == set(workflow_names())


def test_help_pages_are_served_where_the_frontend_looks(comfy, comfy_server):
    """The frontend (1.32) fetches /extensions/<pack>/docs/<NodeId>/<locale>.md, then .../<NodeId>.md, with
    <pack> taken from the node's python_module ("custom_nodes.<pack>")."""
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "web" / "docs"
    info = comfy_server.object_info()
    problems = []
    for node_id in comfy.pack_nodes:
        module = info[node_id]["python_module"]
        if module != "custom_nodes.ultrares":
            problems.append(f"{node_id}: python_module {module!r}")
            continue
        status, body = comfy_server.request(f"/extensions/ultrares/docs/{node_id}.md")
        if status != 200 or body != (docs / f"{node_id}.md").read_bytes():
            problems.append(f"{node_id}: /extensions/ultrares/docs/{node_id}.md -> {status}")
    assert not problems, "\n".join(problems)
    status, _ = comfy_server.request("/extensions/ultrares/docs/UltraResNoSuchNode.md")
    assert status == 404  # the frontend falls back to the description on a miss: a miss must be a miss


def test_workflow_thumbnails_are_served(comfy_server):
    from harness.workflows_util import workflow_names

    for name in workflow_names():
        status, body = comfy_server.request(f"/api/workflow_templates/ultrares/{name}.jpg")
        assert status == 200, f"{name}.jpg -> {status}"
        assert body[:3] == b"\xff\xd8\xff", f"{name}.jpg is not a JPEG"

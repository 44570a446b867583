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


def test_bad_prompt_is_a_400_not_a_crash(comfy_server):
    status, body = comfy_server.post_prompt({"1": {"class_type": "UltraResNoSuchNode", "inputs": {}}})
    assert status == 400
    assert comfy_server.get_json("/system_stats")  # still serving

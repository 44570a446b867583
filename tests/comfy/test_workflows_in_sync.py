"""The committed UI and API workflow files are exactly what their specs build."""

import subprocess
import sys

from harness.paths import ROOT, WORKFLOWS


def test_every_workflow_has_both_formats_and_a_spec():
    ui = {p.stem for p in WORKFLOWS.glob("*.json")}
    api = {p.stem for p in (WORKFLOWS / "api").glob("*.json")}
    specs = {p.stem for p in (WORKFLOWS / "specs").glob("*.py") if not p.stem.startswith("_")}
    assert ui == api == specs


def test_committed_workflows_match_specs():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "workflow_builder.py"), "--check"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr

"""The README stays short and points at everything; the docs' links resolve.

- README.md is under 250 lines and links every page in docs/ (directly or through docs/README.md);
- every relative link in README.md and docs/ names a file that exists;
- every node's help page and every example workflow is linked from the README's node table;
- "add a technique" is one hop from the README.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(page.read_text(encoding="utf-8"))]


def _local_targets(page: Path) -> set[Path]:
    out = set()
    for target in _links(page):
        path = target.split("#")[0]
        if path and not re.match(r"[a-z]+:", path):
            out.add((page.parent / path).resolve())
    return out


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n < 250, f"README.md has {n} lines: move detail into docs/"


def test_every_relative_link_resolves():
    broken = [
        f"{page.relative_to(ROOT)} -> {t}"
        for page in _docs()
        for t in _links(page)
        if not re.match(r"[a-z]+:", t)
        and t.split("#")[0]
        and not (page.parent / t.split("#")[0]).resolve().exists()
    ]
    assert broken == []


def test_every_doc_is_reachable_from_the_readme():
    seen, todo = set(), [(ROOT / "README.md").resolve()]
    while todo:
        page = todo.pop()
        if page in seen or page.suffix != ".md" or not page.exists():
            continue
        seen.add(page)
        todo.extend(_local_targets(page))
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md")}
    assert sorted(str(p.relative_to(ROOT)) for p in pages - seen) == []


def test_node_table_links_every_help_page_and_workflow():
    readme = _local_targets(ROOT / "README.md")
    pages = {p.resolve() for p in (ROOT / "web" / "docs").glob("UltraRes*.md")}
    flows = {p.resolve() for p in (ROOT / "workflows").glob("*.json")}
    assert sorted(p.name for p in pages - readme) == [], "help pages missing from the README's node table"
    assert sorted(p.name for p in flows - readme) == [], "workflows missing from the README's node table"


def test_adding_a_technique_is_one_hop_away():
    arch = (ROOT / "docs" / "ARCHITECTURE.md").resolve()
    assert arch in _local_targets(ROOT / "README.md")
    assert "## Adding a technique" in arch.read_text(encoding="utf-8")

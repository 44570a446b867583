"""Render the compatibility matrix (devtools/compat_matrix.py) into README.md between its markers.

    .venv/bin/python scripts/compat_table.py          # print the table
    .venv/bin/python scripts/compat_table.py --write  # replace the README section
The table is checked against the README by tests/comfy/test_compat_matrix.py.
"""

from __future__ import annotations

import os
import re
import sys

from ultrares.devtools import compat_matrix as M  # "ultrares" is this checkout (make setup links it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    table = M.markdown_table()
    if "--write" not in sys.argv:
        print(table)
        return 0
    path = os.path.join(ROOT, "README.md")
    text = open(path, encoding="utf-8").read()
    pattern = re.escape(M.START) + r"\n(?:.*?\n)?" + re.escape(M.END)
    if not re.search(pattern, text, re.S):
        print(f"README.md has no section between {M.START!r} and {M.END!r}", file=sys.stderr)
        return 1
    text = re.sub(pattern, lambda _: f"{M.START}\n{table}\n{M.END}", text, flags=re.S)
    open(path, "w", encoding="utf-8").write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run every ``bench/bench_*.py`` and print its table; save ``bench_results/<name>.json``
(``bench_results/quick/<name>.json`` with ``--quick``, which git ignores).

Each bench module defines ``run(quick: bool) -> dict`` returning
``{"title": str, "columns": [str, ...], "rows": [[...], ...], "notes": [str, ...], "targets": {...}}``.
Times are only ever compared as ratios against a baseline measured in the same process.

Usage: ``python bench/run_all.py [--quick] [--only tiling,hdit]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # benches share bench/_common.py
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(ROOT, "bench_results")


def format_table(result: dict) -> str:
    cols = result["columns"]
    rows = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in result["rows"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--only", default="", help="comma-separated bench names (file name without bench_)")
    args = parser.parse_args()
    only = {n for n in args.only.split(",") if n}
    os.makedirs(RESULTS, exist_ok=True)
    names = sorted(f[6:-3] for f in os.listdir(HERE) if f.startswith("bench_") and f.endswith(".py"))
    if "gpu" not in only:  # the GPU bench has its own target (make bench-gpu) and needs CUDA
        names = [n for n in names if n != "gpu"]
    failed = 0
    for name in names:
        if only and name not in only:
            continue
        spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(HERE, f"bench_{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"\n## {name}", flush=True)
        start = time.perf_counter()
        try:
            result = module.run(quick=args.quick)
        except Exception as exc:  # one broken bench must not hide the others
            failed += 1
            print(f"bench {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "quick": args.quick}
        result["seconds"] = round(time.perf_counter() - start, 1)
        print(f"### {result['title']}\n{format_table(result)}")
        for note in result.get("notes", []):
            print(f"- {note}")
        folder = (
            os.path.join(RESULTS, "quick") if args.quick else RESULTS
        )  # a smoke run never replaces the figures
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            json.dump(result, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

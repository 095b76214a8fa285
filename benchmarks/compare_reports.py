"""Compare two diagnoses' ``report.json`` files, apart from what legitimately differs between runs.

Used to check that a refactor changed no number: build the same diagnosis before and after (same inputs,
same seed, same machine) and run::

    python benchmarks/compare_reports.py BEFORE/report.json AFTER/report.json [--rel 0]

Ignored: the wall-clock timings, the creation time, package versions and the embeddings' cache provenance
(``meta.timings``, ``meta.created``, ``meta.versions``, ``meta.diag_version``, ``meta.embeddings``, every
``seconds`` field). Everything else must match: keys, strings, and numbers to ``--rel`` (0 = bit for
bit). Exit status 0 when equal, 1 otherwise (each difference printed with its JSON path).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

IGNORED = {
    ("meta", "timings"),
    ("meta", "created"),
    ("meta", "versions"),
    ("meta", "diag_version"),
    ("meta", "embeddings"),
}
#: Wall-clock fields wherever they sit (each layer's shift records the seconds it took).
TIMING_KEYS = {"seconds", "wall_s"}


def differences(a: Any, b: Any, *, rel: float, path: tuple[str, ...] = ()) -> list[str]:
    """Every place where ``a`` and ``b`` differ, as ``"path: a != b"`` lines."""
    if path in IGNORED or (path and path[-1] in TIMING_KEYS):
        return []
    where = "/".join(path) or "<root>"
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: key {k!r} only in one report" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], rel=rel, path=(*path, str(k)))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: lengths {len(a)} != {len(b)}"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, rel=rel, path=(*path, str(i)))
        ]
    numbers = (int, float)
    if (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        same = a == b or math.isclose(a, b, rel_tol=rel, abs_tol=0.0) or (math.isnan(a) and math.isnan(b))
        return [] if same else [f"{where}: {a!r} != {b!r}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rel", type=float, default=0.0, help="relative tolerance on numbers (0: exact)")
    args = parser.parse_args(argv)
    a, b = (json.loads(p.read_text()) for p in (args.before, args.after))
    diffs = differences(a, b, rel=args.rel)
    for line in diffs:
        print(line)
    print(f"{len(diffs)} difference(s) between {args.before} and {args.after}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())

"""LP-FT beside the freeze depths of the truth tables: accuracy of LP-FT / the best depth's, per table.

LP-FT (Kumar, Raghunathan, Jones, Ma & Liang, "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution", ICLR 2022): train the head alone first, then every layer. Here: freeze
depth 0, 2 head-only epochs of the same 6-epoch budget (`--lp-ft 2`), seeds 0 and 1, everything else as
the table's sweep (`benchmarks/run_sweeps.sh`, the `lpft` runs). Second, on the tables where `diag
diagnose` recommends the ``lp-ft`` scheme, LP-FT at the recommended depth (what `diag finetune` and the
dashboard run when told to apply the whole recommendation) against the standard scheme at that depth.
Reads ``results/sweeps/lpft/NAME.json`` and ``results/sweeps/lpft-rec/NAME.json`` (the LP-FT sweeps) and
``results/sweeps/NAME.json`` (the table), writes ``results/lpft.json`` and prints Markdown tables::

    .venv/bin/python benchmarks/lpft_column.py
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "benchmarks" / "results" / "sweeps"


def _depth_means(table: dict[str, Any]) -> dict[int, float]:
    return {int(d["freeze"]): float(d["mean"]) for d in table["depths"] if not d.get("from_scratch")}


Sweep = tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], dict[int, float]]


def _lpft_sweeps(folder: str) -> Iterator[Sweep]:
    """Per LP-FT sweep in ``results/sweeps/FOLDER``: its table's name, the sweep, its pretrained run, the
    table, and the table's mean accuracy per freeze depth."""
    for path in sorted((SWEEPS / folder).glob("*.json")):
        sweep = json.loads(path.read_text())
        run = next(d for d in sweep["depths"] if not d.get("from_scratch"))
        table = json.loads((SWEEPS / path.name).read_text())
        yield path.stem, sweep, run, table, _depth_means(table)


def _markdown(
    header: str, rows: list[dict[str, Any]], cells: Callable[[dict[str, Any]], str], means: list[str]
) -> None:
    """A Markdown table of ``rows`` (one line each from ``cells``) and a last line with the mean of the
    ``means`` columns (the first in bold)."""
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        print(cells(r))
    if rows:
        avg = [sum(r[k] for r in rows) / len(rows) for k in means]
        shown = [f"**{avg[0]:.3f}**", *(f"{v:.3f}" for v in avg[1:])]
        print(f"| mean ({len(rows)} tables) | | | | {' | '.join(shown)} |")


def _seeds(r: dict[str, Any]) -> str:
    return ", ".join(f"{v:.3f}" for v in r["lpft_values"])


def main() -> int:
    rows = []
    for name, sweep, lp, table, depths in _lpft_sweeps("lpft"):
        best_k = max(depths, key=lambda k: depths[k])
        rows.append(
            {
                "table": name,
                "backbone": table["backbone"],
                "lpft_values": lp["values"],
                "lpft_mean": float(lp["mean"]),
                "best_k": best_k,
                "best_mean": depths[best_k],
                "tune_all_mean": depths.get(0),
                "linear_probe_mean": depths.get(max(depths)),  # every block frozen: the linear probe
                "lpft_over_best": float(lp["mean"]) / depths[best_k],
                "tune_all_over_best": None if 0 not in depths else depths[0] / depths[best_k],
                "lpft_wall_time_s": sweep.get("wall_time_s"),
            }
        )
    at_rec = []
    for name, _, run, _, depths in _lpft_sweeps("lpft-rec"):
        k, best = int(run["freeze"]), max(depths.values())
        at_rec.append(
            {
                "table": name,
                "depth": k,
                "lpft_values": run["values"],
                "lpft_mean": float(run["mean"]),
                "standard_mean": depths.get(k),
                "best_mean": best,
                "lpft_over_standard": None if k not in depths else float(run["mean"]) / depths[k],
                "lpft_over_best": float(run["mean"]) / best,
            }
        )
    out = ROOT / "benchmarks" / "results" / "lpft.json"
    out.write_text(json.dumps({"tune_all": rows, "at_recommended_depth": at_rec}, indent=1) + "\n")
    _markdown(
        "| table | best K (acc) | tune all | LP-FT (seeds) | LP-FT / best | tune all / best |",
        rows,
        lambda r: (
            f"| {r['table']} | {r['best_k']} ({r['best_mean']:.3f}) | {r['tune_all_mean']:.3f} | "
            f"{r['lpft_mean']:.3f} ({_seeds(r)}) | **{r['lpft_over_best']:.3f}** | "
            f"{r['tune_all_over_best']:.3f} |"
        ),
        ["lpft_over_best", "tune_all_over_best"],
    )
    print()
    _markdown(
        "| table | diag's K | standard at K | LP-FT at K (seeds) | LP-FT / standard | LP-FT / best |",
        at_rec,
        lambda r: (
            f"| {r['table']} | {r['depth']} | {r['standard_mean']:.3f} | "
            f"{r['lpft_mean']:.3f} ({_seeds(r)}) | **{r['lpft_over_standard']:.3f}** | "
            f"{r['lpft_over_best']:.3f} |"
        ),
        ["lpft_over_standard", "lpft_over_best"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

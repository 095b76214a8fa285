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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "benchmarks" / "results" / "sweeps"


def _depth_means(table: dict[str, Any]) -> dict[int, float]:
    return {int(d["freeze"]): float(d["mean"]) for d in table["depths"] if not d.get("from_scratch")}


def main() -> int:
    rows = []
    for path in sorted((SWEEPS / "lpft").glob("*.json")):
        lpft = json.loads(path.read_text())
        table = json.loads((SWEEPS / path.name).read_text())
        depths = _depth_means(table)
        best_k = max(depths, key=lambda k: depths[k])
        lp = next(d for d in lpft["depths"] if int(d["freeze"]) == 0 and not d.get("from_scratch"))
        probe_k = max(depths)  # every block frozen: the linear probe
        rows.append(
            {
                "table": path.stem,
                "backbone": table["backbone"],
                "lpft_values": lp["values"],
                "lpft_mean": float(lp["mean"]),
                "best_k": best_k,
                "best_mean": depths[best_k],
                "tune_all_mean": depths.get(0),
                "linear_probe_mean": depths.get(probe_k),
                "lpft_over_best": float(lp["mean"]) / depths[best_k],
                "tune_all_over_best": None if 0 not in depths else depths[0] / depths[best_k],
                "lpft_wall_time_s": lpft.get("wall_time_s"),
            }
        )
    at_rec = []
    for path in sorted((SWEEPS / "lpft-rec").glob("*.json")):
        lpft = json.loads(path.read_text())
        depths = _depth_means(json.loads((SWEEPS / path.name).read_text()))
        run = next(d for d in lpft["depths"] if not d.get("from_scratch"))
        k, best = int(run["freeze"]), max(depths.values())
        at_rec.append(
            {
                "table": path.stem,
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
    print("| table | best K (acc) | tune all | LP-FT (seeds) | LP-FT / best | tune all / best |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        seeds = ", ".join(f"{v:.3f}" for v in r["lpft_values"])
        print(
            f"| {r['table']} | {r['best_k']} ({r['best_mean']:.3f}) | {r['tune_all_mean']:.3f} | "
            f"{r['lpft_mean']:.3f} ({seeds}) | **{r['lpft_over_best']:.3f}** | "
            f"{r['tune_all_over_best']:.3f} |"
        )
    if rows:
        mean = sum(r["lpft_over_best"] for r in rows) / len(rows)
        tune = sum(r["tune_all_over_best"] for r in rows) / len(rows)
        print(f"| mean ({len(rows)} tables) | | | | **{mean:.3f}** | {tune:.3f} |")
    print()
    print("| table | diag's K | standard at K | LP-FT at K (seeds) | LP-FT / standard | LP-FT / best |")
    print("|---|---|---|---|---|---|")
    for r in at_rec:
        seeds = ", ".join(f"{v:.3f}" for v in r["lpft_values"])
        print(
            f"| {r['table']} | {r['depth']} | {r['standard_mean']:.3f} | {r['lpft_mean']:.3f} ({seeds}) | "
            f"**{r['lpft_over_standard']:.3f}** | {r['lpft_over_best']:.3f} |"
        )
    if at_rec:
        n = len(at_rec)
        print(
            f"| mean ({n} tables) | | | | **{sum(r['lpft_over_standard'] for r in at_rec) / n:.3f}** | "
            f"{sum(r['lpft_over_best'] for r in at_rec) / n:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The budgeted freeze search (``diag finetune --freeze search``), simulated from recorded training curves.

For each truth table whose sweep kept its runs (``runs/sweeps/v2/NAME/runs/freeze-K-seed-S/result.json``,
per-epoch validation accuracy), the per-epoch curves are saved to ``benchmarks/results/curves/NAME.json``
(committed) and the search is replayed on them with the same bookkeeping as the real one
(:func:`diag.train.search.successive_halving`): a trial stopped at epoch e of the full schedule scores the
best validation accuracy of epochs 1..e of that depth's recorded run, the winner's full run is its recorded
run. This is a *simulation*: exact for the truncated-schedule trials the search runs (same recipe, same
seed, stopped at the rung), up to the nondeterminism of resuming from a checkpoint. Candidates are
``search_candidates``'s (the rule's depth, the last two blocks tuned, every block tuned, the rule's
alternative), beside the previous design's (the rule's depth, its alternative and their neighbours); one
without a curve is dropped (and counted).

Reported per table and seed: the search's depth, accuracy / best depth's (the table's mean over seeds), the
rule's ratio, and the extra cost in full runs; at budgets 0.25, 0.5 and 1.

Usage::

    .venv/bin/python benchmarks/bench_search.py        # after bench_predict.py (reads predict.json)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from diag.train.search import DISPLACE_Z, search_candidates, successive_halving  # noqa: E402

CURVES = ROOT / "benchmarks" / "results" / "curves"
BUDGETS = (0.25, 0.5, 1.0)


#: The recipe fields a harvested run must share with the committed sweep (a re-run under another recipe, such
#: as the debates' runs at the text encoders' former learning rate, is not the same table).
RECIPE = ("epochs", "batch_size", "lr", "head_lr", "image_size", "max_length")


def harvest(
    name: str, sweep_root: Path, seeds: set[str] | None = None, recipe: dict | None = None
) -> dict | None:
    """Per-epoch validation accuracy of every run of a sweep: ``{"K": {"seed": [acc, ...]}}``.

    Read from the sweep's own runs (``v2/NAME``) and, for tables whose sweep predates kept runs, from the
    candidate depths re-run with the same recipe and seeds (``curves/NAME``, ``run_sweeps.sh``). ``seeds``:
    only those (the committed sweep's), so that a re-run adding seeds is not simulated before its table
    is; ``recipe``: the committed sweep's config, whose :data:`RECIPE` fields every run must match."""
    curves: dict[str, dict[str, list[float]]] = {}
    for runs in (sweep_root / "v2" / name / "runs", sweep_root / "curves" / name / "runs"):
        if not runs.is_dir():
            continue
        for d in sorted(runs.iterdir()):
            parts = d.name.split("-")
            if parts[0] != "freeze" or not (d / "result.json").exists():
                continue
            if seeds is not None and parts[3] not in seeds:
                continue
            res = json.loads((d / "result.json").read_text())
            if res.get("status") != "completed":
                continue
            if recipe is not None and any(res["config"].get(k) != recipe.get(k) for k in RECIPE):
                continue
            vals = [h["val_acc"] for h in res["history"] if h.get("val_acc") is not None]
            curves.setdefault(parts[1], {}).setdefault(parts[3], vals)
    return curves or None


def neighbour_candidates(depth: int, alternative: int | None, n_blocks: int) -> list[int]:
    """The candidates before 2026-11-30, kept for the comparison: the rule's depth, its alternative, then
    the depths one block deeper and one shallower (at most four)."""
    out: list[int] = []
    for k in (depth, alternative, depth + 1, depth - 1):
        if k is not None and 0 <= k <= n_blocks and k not in out:
            out.append(k)
    return out[:4]


def simulate(
    row: dict,
    curves: dict,
    budget: float,
    n_val: int | None,
    z: float = DISPLACE_Z,
    candidates: Callable[[int, int | None, int], list[int]] = search_candidates,
) -> dict:
    """The search on one table's curves; ``n_val`` validation items, ``z`` the incumbent's margin in
    standard errors (0: plain successive halving). The best depth is the sweep's, or a depth only the
    curves measured (re-runs of the same recipe) where that one is better."""
    acc = {int(k): float(v) for k, v in row["accuracy_by_depth"].items()}
    for k, runs in curves.items():  # depths the sweep did not measure: the mean of their best epochs
        if int(k) not in acc and len(runs) >= 2:
            acc[int(k)] = float(np.mean([max(v) for v in runs.values()]))
    best = max(acc.values())
    alt = row["freeze_evidence"].get("alternative_depth")
    cands_all = candidates(row["recommended_depth"], alt, row["n_blocks"])
    cands = [c for c in cands_all if str(c) in curves]
    seeds = sorted(set.intersection(*(set(curves[str(c)]) for c in cands))) if cands else []
    per_seed = []
    for s in seeds:
        epochs = len(curves[str(cands[0])][s])

        def train_to(c: int, e: int, s: str = s) -> float:
            return max(curves[str(c)][s][:e])

        res = successive_halving(cands, epochs, budget, train_to, n_val=n_val, z=z)
        per_seed.append(
            {
                "seed": s,
                "winner": res.winner,
                "accuracy": res.winner_score,
                "extra_cost": res.extra_cost,
                "candidates": res.candidates,
            }
        )
    rule_k = row["recommended_depth"]
    return {
        "budget": budget,
        "candidates": cands_all,
        "dropped_unmeasured": [c for c in cands_all if c not in cands],
        "per_seed": per_seed,
        "ratio_search": float(np.mean([p["accuracy"] for p in per_seed])) / best if per_seed else None,
        "ratio_rule": acc[rule_k] / best if rule_k in acc else None,
        "ratio_best_candidate": max(acc[c] for c in cands) / best if cands else None,
        "extra_cost": float(np.mean([p["extra_cost"] for p in per_seed])) if per_seed else None,
    }


def real(name: str, seeds: list[int], budget: float = 0.5) -> dict:
    """Run the search for real (``diag.train.search.freeze_search``) on one table's data and budget, from
    the rule's depth and alternative as recorded in predict.json; the winner's accuracy is measured."""
    import bench_predict

    from diag.predict.freeze import recommend_freeze
    from diag.train import FinetuneConfig
    from diag.train.search import freeze_search

    data = json.loads((ROOT / "benchmarks" / "results" / "predict.json").read_text())
    row = next(r for r in data["scenarios"] if r["name"] == name)
    sc = next(s for s in bench_predict.SCENARIOS if s["name"] == name)
    ev = row["freeze_evidence"]
    curve = {k: {"scores": {"linear_probe_accuracy": v}, "linear_probe_std": ev["tolerance"]}
             for k, v in ev["linear_probe"].items()}  # fmt: skip
    per_class = float(ev["examples_per_class"])
    rec = recommend_freeze(
        curve, row["blocks"], n_target=round(per_class * 1000), n_classes=1000, rgn=ev.get("rgn")
    )
    cands = search_candidates(rec.depth, rec.evidence["alternative_depth"], rec.n_blocks)
    acc = {int(k): float(v) for k, v in row["accuracy_by_depth"].items()}
    out = []
    for seed in seeds:
        # the sweep's own recipe (its config), this seed
        cfg = replace(FinetuneConfig.from_dict(_sweep(name)["config"]), seed=seed, from_scratch=False)
        t0 = time.perf_counter()
        res, found = freeze_search(
            sc["target"], sc["backbone"], cfg, out=ROOT / "runs" / "search" / name / f"seed-{seed}",
            candidates=cands, budget=budget, val=sc["val"],
        )  # fmt: skip
        out.append(
            {
                "seed": seed,
                "winner": found.winner,
                "accuracy": res.best_val_accuracy,
                "extra_cost": found.extra_cost,
                "rungs": found.to_dict()["rungs"],
                "wall_s": round(time.perf_counter() - t0, 1),
                "sweep_value_at_winner": next(
                    (d["values"][seed] for d in _sweep(name)["depths"] if d["freeze"] == found.winner), None
                ),
            }
        )
    best = max(acc.values())
    return {
        "real": True,
        "candidates": cands,
        "per_seed": out,
        "ratio_search": float(np.mean([p["accuracy"] for p in out])) / best,
        "ratio_rule": acc[rec.depth] / best if rec.depth in acc else None,
        "extra_cost": float(np.mean([p["extra_cost"] for p in out])),
    }


def agreement(sweep: dict, curves: dict) -> dict:
    """How well the curves' best epochs reproduce the committed sweep's values (the same runs, or re-runs
    of the same recipe and seed): the largest difference and how many (depth, seed) cells are equal."""
    diffs = []
    for d in sweep["depths"]:
        if d["from_scratch"] or str(d["freeze"]) not in curves:
            continue
        for seed, value in zip(d["seeds"], d["values"], strict=True):
            curve = curves[str(d["freeze"])].get(str(seed))
            if curve:
                diffs.append(abs(max(curve) - value))
    return {
        "cells": len(diffs),
        "equal": sum(x <= 5e-7 for x in diffs),  # the history keeps 6 decimals
        "max_abs_diff": max(diffs, default=None),
    }


def _sweep(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / "sweeps" / f"{name}.json").read_text())


def main() -> int:
    sweep_root = ROOT / "runs" / "sweeps"
    data = json.loads((ROOT / "benchmarks" / "results" / "predict.json").read_text())
    if len(sys.argv) > 2 and sys.argv[1] == "--real":  # --real NAME [NAME ...]: run it on these tables
        dst = ROOT / "benchmarks" / "results" / "search.json"
        for name in sys.argv[2:]:
            found = real(name, [0, 1])
            saved = json.loads(dst.read_text()) if dst.is_file() else {}
            saved.setdefault("real", {})[name] = found
            print(name, json.dumps(found))
            dst.write_text(json.dumps(saved, indent=1) + "\n")
        return 0
    CURVES.mkdir(parents=True, exist_ok=True)
    out: dict = {"simulated": True, "tables": {}}
    for row in data["scenarios"]:
        if row.get("nt_only") or row.get("negative_transfer_measured") or "accuracy_by_depth" not in row:
            continue
        path = CURVES / f"{row['name']}.json"
        sweep = _sweep(row["name"])
        committed = {str(x) for d in sweep["depths"] for x in d["seeds"]}
        curves = harvest(row["name"], sweep_root, committed, sweep["config"])
        if curves:
            path.write_text(json.dumps(curves, indent=0) + "\n")
        elif path.is_file():
            curves = json.loads(path.read_text())
        if not curves:
            continue
        val = sweep.get("val")
        n_val = row.get("val") or (val.get("n") if isinstance(val, dict) else None)
        table = out["tables"][row["name"]] = {str(b): simulate(row, curves, b, n_val) for b in BUDGETS}
        table["plain"] = {str(b): simulate(row, curves, b, n_val, z=0.0) for b in BUDGETS}
        table["neighbours"] = {
            str(b): simulate(row, curves, b, n_val, candidates=neighbour_candidates) for b in BUDGETS
        }
        table["curves_vs_sweep"] = agreement(sweep, curves)
    simulated = [t for t in out["tables"].values() if t["0.5"]["ratio_search"] is not None]
    for b in map(str, BUDGETS):
        rows = [t[b] for t in out["tables"].values() if t[b]["ratio_search"] is not None]
        out[f"budget_{b}"] = {
            "n_tables": len(rows),
            "mean_ratio_search": float(np.mean([r["ratio_search"] for r in rows])) if rows else None,
            "min_ratio_search": min((r["ratio_search"] for r in rows), default=None),
            "mean_ratio_rule": float(np.mean([r["ratio_rule"] for r in rows if r["ratio_rule"] is not None]))
            if rows
            else None,
            "mean_extra_cost": float(np.mean([r["extra_cost"] for r in rows])) if rows else None,
            "max_extra_cost": max((r["extra_cost"] for r in rows), default=None),
            "below_0.95": sum(r["ratio_search"] < 0.95 for r in rows),
            "mean_ratio_best_candidate": float(np.mean([r["ratio_best_candidate"] for r in rows])),
            "dropped_unmeasured": sum(len(r["dropped_unmeasured"]) for r in rows),
            "without_margin": {  # plain successive halving (z = 0), the same tables
                "mean_ratio_search": float(np.mean([t["plain"][b]["ratio_search"] for t in simulated])),
                "min_ratio_search": min(t["plain"][b]["ratio_search"] for t in simulated),
            },
            "neighbour_candidates": {  # the previous candidates: rule, alternative, rule ± 1 block
                k: float(np.mean([t["neighbours"][b][k] for t in simulated]))
                for k in ("ratio_search", "extra_cost", "ratio_best_candidate")
            }
            | {
                "below_0.95": sum(t["neighbours"][b]["ratio_search"] < 0.95 for t in simulated),
                "dropped_unmeasured": sum(len(t["neighbours"][b]["dropped_unmeasured"]) for t in simulated),
            },
            "curves_vs_sweeps": {  # (depth, seed) cells whose best epoch equals the committed sweep's value
                "cells": sum(t["curves_vs_sweep"]["cells"] for t in out["tables"].values()),
                "equal": sum(t["curves_vs_sweep"]["equal"] for t in out["tables"].values()),
                "differ": sorted(
                    n
                    for n, t in out["tables"].items()
                    if t["curves_vs_sweep"]["equal"] < t["curves_vs_sweep"]["cells"]
                ),
            },
        }
    for b in map(str, BUDGETS):
        out[f"budget_{b}"]["design_chosen_lofo"] = design_lofo(out["tables"], b)
        out[f"budget_{b}"]["gain_over_rule"] = gain_over_rule(out["tables"], b)
    dst = ROOT / "benchmarks" / "results" / "search.json"
    if dst.is_file():
        out["real"] = json.loads(dst.read_text()).get("real", {})
    dst.write_text(json.dumps(out, indent=1) + "\n")
    print("| table | rule K (ratio) | candidates | search K per seed (ratio) | extra cost | best candidate |")
    print("|---|---|---|---|---|---|")
    for name, t in out["tables"].items():
        r = t["0.5"]
        ks = ",".join(str(p["winner"]) for p in r["per_seed"])
        print(
            f"| {name} | {data_k(data, name)} ({r['ratio_rule']:.3f}) | {r['candidates']} | {ks} "
            f"({r['ratio_search']:.3f}) | {r['extra_cost']:.2f} | {r['ratio_best_candidate']:.3f} |"
        )
    for b in map(str, BUDGETS):
        print(b, out[f"budget_{b}"])
    print(f"wrote {dst}")
    return 0


def design_lofo(tables: dict, budget: str) -> dict:
    """The search's design chosen leave-one-family-out: for each family, the design (these candidates with
    the margin, the same without it, the rule's neighbours with it) with the best mean ratio on the other
    families, scored on the family held out (ties averaged) — whether choosing the design on these tables
    holds beyond the family it is scored on."""
    from predict_lofo import family

    designs = {
        "candidates, margin": {n: t[budget]["ratio_search"] for n, t in tables.items()},
        "candidates, no margin": {n: t["plain"][budget]["ratio_search"] for n, t in tables.items()},
        "neighbours, margin": {n: t["neighbours"][budget]["ratio_search"] for n, t in tables.items()},
    }
    held: dict[str, float] = {}
    chosen = {}
    for fam in sorted({family(n) for n in tables}):
        train = [n for n in tables if family(n) != fam]
        score = {k: float(np.mean([v[n] for n in train])) for k, v in designs.items()}
        top = [k for k, x in score.items() if x >= max(score.values()) - 1e-12]
        chosen[fam] = top
        for n in tables:
            if family(n) == fam:
                held[n] = float(np.mean([designs[k][n] for k in top]))
    values = list(held.values())
    return {
        "mean_ratio_search": float(np.mean(values)),
        "min_ratio_search": min(values),
        "below_0.95": sum(v < 0.95 for v in values),
        "chosen_elsewhere": {f: k for f, k in chosen.items() if k != ["candidates, margin"]},
    }


def gain_over_rule(tables: dict, budget: str, n_boot: int = 10_000, seed: int = 0) -> dict:
    """The search's ratio minus the rule's, per table: the mean, a paired bootstrap 95 % interval over the
    tables (percentile; ``n_boot`` resamples of the tables), and how many tables it is better / worse on."""
    d = np.array(
        [t[budget]["ratio_search"] - t[budget]["ratio_rule"] for t in tables.values()
         if t[budget]["ratio_search"] is not None and t[budget]["ratio_rule"] is not None]
    )  # fmt: skip
    if not len(d):
        return {}
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "n_tables": len(d),
        "mean": float(d.mean()),
        "ci95": [float(lo), float(hi)],
        "better": int((d > 1e-12).sum()),
        "worse": int((d < -1e-12).sum()),
    }


def data_k(data: dict, name: str) -> int:
    return next(r["recommended_depth"] for r in data["scenarios"] if r["name"] == name)


if __name__ == "__main__":
    sys.exit(main())

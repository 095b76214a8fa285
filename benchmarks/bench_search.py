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
rule's ratio, and the extra cost in full runs; at budgets 0.25, 0.5 and 1. Beside the shipped search, the
other designs of :data:`DESIGNS` (other candidates, rung scores, rungs, a gate, each seed's oracle), replayed
on the same curves and chosen among leave-one-family-out; and, from ``--loss-trials``' re-runs of the
trials, the search with its trials ranked by validation loss (:func:`loss_design`).

Usage::

    .venv/bin/python benchmarks/bench_search.py        # after bench_predict.py (reads predict.json)
    .venv/bin/python benchmarks/bench_search.py --loss-trials 0,1 [NAME ...]   # re-run the trials (minutes)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from diag.fileio import atomic_write_bytes  # noqa: E402
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


#: ``(rule's depth, its alternative, n_blocks) -> depths``, most trusted first
Candidates = Callable[[int, int | None, int], list[int]]


@dataclass(frozen=True)
class Design:
    """One way to run the search, replayed on the same curves. The shipped one is :data:`SHIPPED`; the others
    (:data:`DESIGNS`) are what was tried to reach the goal at half a run (0.99 of the best depth)."""

    label: str
    candidates: Candidates = search_candidates
    #: the incumbent's margin, in standard errors (0: plain successive halving)
    z: float = DISPLACE_Z
    #: a trial's score at a rung, from its validation accuracies so far (the real search: the best)
    score: Callable[[Sequence[float]], float] = max
    #: the fraction of candidates kept per rung is 1 / eta
    eta: int = 2
    #: search only on the tables where this is true of the predict.json row; elsewhere the rule alone
    gate: Callable[[dict], bool] | None = None
    #: no trials: each seed's best candidate after full runs of all of them (the selection's ceiling)
    oracle: bool = False


def _pair(second: Callable[[int, int | None, int], int | None]) -> Candidates:
    def candidates(depth: int, alternative: int | None, n_blocks: int) -> list[int]:
        k = second(depth, alternative, n_blocks)
        return [depth] if k is None or k == depth or not 0 <= k <= n_blocks else [depth, k]

    return candidates


def _last(v: Sequence[float]) -> float:
    return float(v[-1])


def _mean(v: Sequence[float]) -> float:
    return float(np.mean(v))


def _shallow_rule(row: dict) -> bool:
    return 2 * row["recommended_depth"] <= row["n_blocks"]


SHIPPED = Design("shipped: the rule's depth, the last two blocks, every block; margin 2 SE")
DESIGNS = (
    SHIPPED,
    Design("no margin (plain successive halving)", z=0.0),
    Design("the rule's neighbours (before 2026-11-30)", candidates=neighbour_candidates),
    Design("four candidates (adds the alternative)", candidates=partial(search_candidates, limit=4)),
    Design("pair: the rule's depth and the last two blocks", candidates=_pair(lambda d, a, n: n - 2)),
    Design("pair: the rule's depth and every block", candidates=_pair(lambda d, a, n: 0)),
    Design("pair: the rule's depth and its alternative", candidates=_pair(lambda d, a, n: a)),
    Design(
        "pair: the rule's depth and the far end (last two if it tunes half or more, else every block)",
        candidates=_pair(lambda d, a, n: n - 2 if 2 * d <= n else 0),
    ),
    Design("rung score: the last epoch's accuracy", score=_last),
    Design("rung score: the mean over the epochs so far", score=_mean),
    Design("one rung (eta 3: the best of three goes on)", eta=3),
    Design("gated: search only where the rule tunes half the blocks or more", gate=_shallow_rule),
    Design("oracle: each seed's best candidate after full runs (no trials)", oracle=True),
)


def _accuracy_by_depth(row: dict, curves: dict) -> dict[int, float]:
    """The sweep's mean accuracy per depth, and for a depth only the curves measured (re-runs of the same
    recipe), the mean of their best epochs."""
    acc = {int(k): float(v) for k, v in row["accuracy_by_depth"].items()}
    for k, runs in curves.items():
        if int(k) not in acc and len(runs) >= 2:
            acc[int(k)] = float(np.mean([max(v) for v in runs.values()]))
    return acc


def simulate(
    row: dict,
    curves: dict,
    budget: float,
    n_val: int | None,
    design: Design = SHIPPED,
) -> dict:
    """The search on one table's curves; ``n_val`` validation items. The best depth is the sweep's, or a
    depth only the curves measured (re-runs of the same recipe) where that one is better. A seed's accuracy
    is the best epoch of the winner's full run, whatever ``design.score`` ranked the trials by."""
    acc = _accuracy_by_depth(row, curves)
    best = max(acc.values())
    rule_k = row["recommended_depth"]
    alt = row["freeze_evidence"].get("alternative_depth")
    cands_all = design.candidates(rule_k, alt, row["n_blocks"])
    if design.gate is not None and not design.gate(row):
        cands_all = [rule_k]
    cands = [c for c in cands_all if str(c) in curves]
    seeds = sorted(set.intersection(*(set(curves[str(c)]) for c in cands))) if cands else []
    per_seed = []
    for s in seeds:
        epochs = len(curves[str(cands[0])][s])
        if design.oracle:
            winner = max(cands, key=lambda c, s=s: (max(curves[str(c)][s]), -cands.index(c)))
            extra, tried = float(len(cands) - 1), cands
        else:

            def train_to(c: int, e: int, s: str = s) -> float:
                return design.score(curves[str(c)][s][:e])

            res = successive_halving(cands, epochs, budget, train_to, n_val=n_val, z=design.z, eta=design.eta)
            winner, extra, tried = res.winner, res.extra_cost, res.candidates
        per_seed.append(
            {
                "seed": s,
                "winner": winner,
                "accuracy": max(curves[str(winner)][s]),
                "extra_cost": extra,
                "candidates": tried,
            }
        )
    if not per_seed and cands_all == [rule_k] and rule_k in acc:  # gated off, the rule without its curve
        per_seed = [{"seed": None, "winner": rule_k, "accuracy": acc[rule_k], "extra_cost": 0.0}]
    return {
        "budget": budget,
        "candidates": cands_all,
        "dropped_unmeasured": [c for c in cands_all if c not in cands],
        "per_seed": per_seed,
        "ratio_search": float(np.mean([p["accuracy"] for p in per_seed])) / best if per_seed else None,
        "ratio_rule": acc[rule_k] / best if rule_k in acc else None,
        "ratio_best_candidate": max(acc[c] for c in cands_all if c in acc) / best
        if any(c in acc for c in cands_all)
        else None,
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
        folder = f"seed-{seed}" if budget == 0.5 else f"budget-{budget:g}-seed-{seed}"
        res, found = freeze_search(
            sc["target"], sc["backbone"], cfg, out=ROOT / "runs" / "search" / name / folder,
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


LOSS_TRIALS = ROOT / "benchmarks" / "results" / "search-loss-trials.json"


def _shipped_candidates(row: dict, curves: dict) -> list[int]:
    """The shipped search's candidates for a predict.json row, those the curves measured."""
    alt = row["freeze_evidence"].get("alternative_depth")
    return [c for c in search_candidates(row["recommended_depth"], alt, row["n_blocks"]) if str(c) in curves]


def loss_trials(names: list[str], seeds: list[str]) -> None:
    """Re-run the trials of the shipped search at half a run (the candidates of :func:`search_candidates`,
    stopped at the last rung of ``plan_rungs(3, epochs, 0.5)``: epoch 2 of 6) to record what the curves do
    not keep: the validation *loss* per epoch. Each run is the sweep's recipe and seed, so its accuracies
    must equal the curve's (checked, and recorded as ``acc_matches_curve``). Saved per table to
    :data:`LOSS_TRIALS` (resumable); a table whose backbone is not on this machine (the checkpoints
    ``run_sweeps.sh`` trains) is skipped."""
    import bench_predict

    from diag.train import FinetuneConfig
    from diag.train.run import TrainJob, run_job
    from diag.train.search import _StopAfter, plan_rungs

    data = json.loads((ROOT / "benchmarks" / "results" / "predict.json").read_text())
    rows = {r["name"]: r for r in data["scenarios"]}
    saved = json.loads(LOSS_TRIALS.read_text()) if LOSS_TRIALS.is_file() else {}
    for name in names:
        row, sc, sweep = (
            rows[name],
            next(s for s in bench_predict.SCENARIOS if s["name"] == name),
            _sweep(name),
        )
        curves = json.loads((CURVES / f"{name}.json").read_text())
        cfg0 = FinetuneConfig.from_dict(sweep["config"])
        stop = plan_rungs(3, cfg0.epochs, 0.5)[1][-1]
        cands = _shipped_candidates(row, curves)
        try:
            job = TrainJob.open(sc["target"], sc["backbone"], sc["val"])
        except Exception as e:  # a table this machine cannot open: reported, skipped
            print(f"skip {name}: {e}")
            continue
        table = saved.setdefault(name, {})
        for seed in seeds:
            for k in cands:
                if seed in table.get(str(k), {}) or seed not in curves[str(k)]:
                    continue
                cfg = replace(cfg0, seed=int(seed), from_scratch=False, freeze=k)
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        res = run_job(job, cfg, Path(tmp), callbacks=[_StopAfter(stop)], resume=False)
                    except Exception as e:  # e.g. a checkpoint only run_sweeps.sh builds
                        print(f"skip {name} K {k} seed {seed}: {e}")
                        continue
                hist = [h for h in res.history if h.get("val_acc") is not None]
                acc = [h["val_acc"] for h in hist]
                table.setdefault(str(k), {})[seed] = {
                    "val_loss": [h["val_loss"] for h in hist],
                    "val_acc": acc,
                    "acc_matches_curve": all(
                        abs(a - b) <= 5e-7 for a, b in zip(acc, curves[str(k)][seed], strict=False)
                    ),
                }
                atomic_write_bytes(LOSS_TRIALS, (json.dumps(saved, indent=0) + "\n").encode())  # resumable
                print(name, k, seed, table[str(k)][seed])


#: What :func:`loss_design` compares: label, the incumbent's margin (standard errors), the trial's key.
RANKINGS = (("accuracy, margin 2 SE", DISPLACE_Z, "val_acc"), ("accuracy, no margin", 0.0, "val_acc"),
            ("loss", 0.0, "val_loss"))  # fmt: skip


def _trial_winner(cands: list[int], trial: dict, curve: dict, n_val: int | None, z: float, key: str) -> int:
    """The winner at half a run of one seed: ``trial[K][key]`` per epoch up to the last rung (accuracy:
    higher is better, loss: lower), ``curve[K]`` the full runs."""
    epochs = len(curve[str(cands[0])])

    def train_to(c: int, e: int) -> float:
        if e == epochs:
            return max(curve[str(c)])
        v = trial[str(c)][key][:e]
        return max(v) if key == "val_acc" else -min(v)

    return successive_halving(cands, epochs, 0.5, train_to, n_val=n_val, z=z).winner


def loss_design(
    rows: dict[str, dict], tables: dict, curves_by_table: dict[str, dict], n_vals: dict[str, int | None]
) -> dict:
    """The shipped search at half a run with its trials ranked by validation loss (lower is better) instead
    of accuracy, on the (table, seed) pairs of :data:`LOSS_TRIALS`; beside it the accuracy ranking on the
    same pairs."""
    if not LOSS_TRIALS.is_file():
        return {}
    trials = json.loads(LOSS_TRIALS.read_text())
    per_table = {}
    for name, tr in trials.items():
        if name not in tables:
            continue
        row, curves = rows[name], curves_by_table[name]
        cands = _shipped_candidates(row, curves)
        seeds = sorted(set.intersection(*(set(tr.get(str(c), {})) for c in cands)))
        if not seeds:
            continue
        best = max(_accuracy_by_depth(row, curves).values())
        found: dict[str, list[float]] = {label: [] for label, _, _ in RANKINGS}
        for s in seeds:
            trial = {str(c): tr[str(c)][s] for c in cands}
            curve = {str(c): curves[str(c)][s] for c in cands}
            for label, z, key in RANKINGS:
                winner = _trial_winner(cands, trial, curve, n_vals[name], z, key)
                found[label].append(max(curve[str(winner)]))
        per_table[name] = {k: float(np.mean(v)) / best for k, v in found.items()} | {"seeds": seeds}
    return {
        "n_tables": len(per_table),
        **{
            label: {
                "mean_ratio": float(np.mean([t[label] for t in per_table.values()])),
                "below_0.95": sum(t[label] < 0.95 for t in per_table.values()),
                "min": min(t[label] for t in per_table.values()),
            }
            for label, _, _ in RANKINGS
            if per_table
        },
        "trials_match_curves": all(
            x["acc_matches_curve"] for t in trials.values() for k in t.values() for x in k.values()
        ),
        "tables": per_table,
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
    if len(sys.argv) > 1 and sys.argv[1] == "--loss-trials":  # --loss-trials SEEDS [NAME ...]
        names = sys.argv[3:] or sorted(p.stem for p in CURVES.glob("*.json"))
        loss_trials(names, sys.argv[2].split(","))
        return 0
    if len(sys.argv) > 2 and sys.argv[1] == "--real":  # --real [--budget B] NAME [NAME ...]: run it for real
        dst = ROOT / "benchmarks" / "results" / "search.json"
        names, budget = sys.argv[2:], 0.5
        if names[0] == "--budget":
            budget, names = float(names[1]), names[2:]
        for name in names:
            found = real(name, [0, 1], budget)
            saved = json.loads(dst.read_text()) if dst.is_file() else {}
            sim = saved.get("tables", {}).get(name, {}).get(str(budget), {}).get("per_seed", [])
            found["simulated_winners"] = {p["seed"]: p["winner"] for p in sim if p["seed"] in ("0", "1")}
            saved.setdefault("real", {})[name if budget == 0.5 else f"{name} @ budget {budget:g}"] = found
            print(name, json.dumps(found))
            atomic_write_bytes(dst, (json.dumps(saved, indent=1) + "\n").encode())
        return 0
    CURVES.mkdir(parents=True, exist_ok=True)
    out: dict = {"simulated": True, "tables": {}}
    seen_curves: dict[str, dict] = {}
    n_vals: dict[str, int | None] = {}
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
        seen_curves[row["name"]], n_vals[row["name"]] = curves, n_val
        table = out["tables"][row["name"]] = {str(b): simulate(row, curves, b, n_val) for b in BUDGETS}
        table["designs"] = {  # kept short: the ratio, the cost, each seed's winner
            d.label: {str(b): _brief(simulate(row, curves, b, n_val, d)) for b in BUDGETS}
            for d in DESIGNS[1:]
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
            "designs": design_summary(simulated, b),
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
    rows = {r["name"]: r for r in data["scenarios"]}
    out["loss_trials"] = loss_design(rows, out["tables"], seen_curves, n_vals)
    if out["loss_trials"]:
        print(
            "rung score by validation loss, at half a run:",
            {k: v for k, v in out["loss_trials"].items() if k != "tables"},
        )
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
        print(b, {k: v for k, v in out[f"budget_{b}"].items() if k != "designs"})
    print("\n| design | " + " | ".join(f"budget {b}: ratio (below 0.95), extra cost" for b in BUDGETS) + " |")
    print("|---|" + "---|" * len(BUDGETS))
    for d in DESIGNS:
        cells = []
        for b in map(str, BUDGETS):
            x = out[f"budget_{b}"]["designs"][d.label]
            cells.append(f"{x['mean_ratio_search']:.3f} ({x['below_0.95']}), {x['mean_extra_cost']:.2f}")
        print(f"| {d.label} | " + " | ".join(cells) + " |")
    for b in map(str, BUDGETS):
        print(f"chosen leave-one-family-out at {b}:", out[f"budget_{b}"]["design_chosen_lofo"])
    print(f"wrote {dst}")
    return 0


def _brief(sim: dict) -> dict:
    return {
        "candidates": sim["candidates"],
        "winners": [p["winner"] for p in sim["per_seed"]],
        **{k: sim[k] for k in ("ratio_search", "ratio_rule", "ratio_best_candidate", "extra_cost")},
    }


def _replayed(table: dict, design: Design, budget: str) -> dict:
    """A table's simulation of ``design`` at ``budget`` (the shipped one is kept whole, the others brief)."""
    return table[budget] if design is SHIPPED else table["designs"][design.label][budget]


def _design_ratios(tables: dict, budget: str) -> dict[str, dict[str, float]]:
    """Per design (:data:`DESIGNS`), per table: the search's ratio at ``budget``."""
    return {d.label: {n: _replayed(t, d, budget)["ratio_search"] for n, t in tables.items()} for d in DESIGNS}


def design_summary(tables: list[dict], budget: str) -> dict[str, dict]:
    """Per design, over the tables it could be replayed on: the mean ratio, the worst, how many below 0.95,
    the mean and largest extra cost."""
    out = {}
    for d in DESIGNS:
        rows = [r for r in (_replayed(t, d, budget) for t in tables) if r["ratio_search"] is not None]
        out[d.label] = {
            "n_tables": len(rows),
            "mean_ratio_search": float(np.mean([r["ratio_search"] for r in rows])),
            "min_ratio_search": min(r["ratio_search"] for r in rows),
            "below_0.95": sum(r["ratio_search"] < 0.95 for r in rows),
            "mean_extra_cost": float(np.mean([r["extra_cost"] for r in rows])),
            "max_extra_cost": max(r["extra_cost"] for r in rows),
        }
    return out


def design_lofo(tables: dict, budget: str) -> dict:
    """The search's design chosen leave-one-family-out: for each family, the design (any of :data:`DESIGNS`
    but the oracle) with the best mean ratio on the other families, scored on the family held out (ties
    averaged) — whether choosing the design on these tables holds beyond the family it is scored on."""
    from predict_lofo import family

    oracles = {d.label for d in DESIGNS if d.oracle}
    designs = {k: v for k, v in _design_ratios(tables, budget).items() if k not in oracles}
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
        "chosen_elsewhere": {f: k for f, k in chosen.items() if k != [SHIPPED.label]},
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

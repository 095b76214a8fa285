"""Leave-one-family-out (LOFO) evaluation of diag's freeze-depth and negative-transfer rules.

Every truth table of ``bench_predict.py`` belongs to a *family* (a kind of target or damage, ``FAMILY``).
For each family, every constant of the freeze rule (:class:`diag.predict.freeze.FreezeRule`) and of the
negative-transfer rule (head start at 30 per class, its shrink per doubling, the gradient-reach floor, the
lost-plasticity weight scale) is
refit on the other families only, by the procedure that set them in-sample: a grid over the constants,
keeping those with the best mean ratio (freeze) or balanced accuracy (negative transfer) on the training
families; the held-out family is then scored. Constants the training families cannot tell apart (a tie)
are averaged over: the held-out figure is the mean over the tied constants (and their worst is kept).

Evidence comes from ``results/predict.json`` (each table's probe curve, gradient norms, negative-transfer
signals) and the committed ``sweep.json`` accuracies: no model is run here. A depth a refit rule picks that
the table never measured is *unmeasured*; for fitting it counts as the lower of its measured neighbours
(pessimistic), and held-out figures say how many such cells they contain.

Usage::

    .venv/bin/python benchmarks/predict_lofo.py        # reads and updates benchmarks/results/predict.json
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CALIBRATION = ROOT / "diag" / "predict" / "freeze_calibration.json"

from diag.predict.freeze import FreezeRecommendation, FreezeRule, recommend_freeze  # noqa: E402

#: The family of every table: the kind of target (or of damage to the backbone) it tests.
FAMILY = {
    "mnist-uci": "digits",
    "mnist-opencv": "digits",
    "lite1-uci": "digits",
    "lite2-uci": "digits",
    "mnist-uci-30ep": "digits",
    "mnist-uci-large-30ep": "digits",
    "mnist-uci-inverted": "input corruption",
    "mnist-opencv-noisy": "input corruption",
    "mnist-uci-parity": "relabelled",
    "mnist-uci-10pc": "small target",
    "mnist-opencv-10pc": "small target",
    "mnist-uci-inverted-10pc": "small target",
    "lite1-uci-10pc": "small target",
    "damaged-light-uci": "damaged checkpoint",
    "damaged-uci": "damaged checkpoint",
    "memorizer-uci": "damaged checkpoint",
    "noise-memorizer-uci": "damaged checkpoint",
    "memorizer-uci-30ep": "damaged checkpoint",
    "noise-memorizer-uci-30ep": "damaged checkpoint",
    "hot-memorizer-uci": "too-high learning rate",
    "sgd-hot-uci": "too-high learning rate",
    "sgd-hot-random-uci": "too-high learning rate",
    "hot-pretrained-uci": "too-high learning rate",
    "hot-mnist-uci": "too-high learning rate",
    "sgd-half-random-uci": "too-high learning rate",
    "hot-adam-mnist-uci": "too-high learning rate",
    "sgd-mild-uci": "damaged checkpoint",
    "adam-nowd-mnist-uci": "fine-tuned elsewhere",
    "dead40-uci": "dead units",
    "dead60-uci": "dead units",
    "dead-uci": "dead units",
    "speeches-debates": "text",
    "debates-role": "text",
    "rt-sentiment": "text",
    "speeches-party": "text",
    "tex-lite0": "textures",
    "tex-lite1": "textures",
    "tex-lite2": "textures",
    "tex-10pc": "textures",
    "tex-20pc": "textures",
    "tex-noise1": "input corruption",
    "tex-noise3": "input corruption",
    "tex-noise5": "input corruption",
    "tex-blur3": "input corruption",
    "tex-contrast3": "input corruption",
    "tex-jpeg3": "input corruption",
    **{f"tex-{c}{k}": "input corruption" for c in ("blur", "contrast", "jpeg") for k in (1, 5)},
    **{f"opencv-noise{k}": "input corruption" for k in (1, 3, 5)},
    "shuffled-uci": "shuffled weights",
    "shuffled-tex": "shuffled weights",
    **{f"tex64-{b}": "64 px" for b in ("lite0", "lite1", "lite2")},
    **{n: "64 px" for n in ("uci64-lite0", "uci64-lite2", "opencv64-lite0")},
    **{f"sci-{b}": "science images" for b in ("lite0", "lite1", "lite2")},
    **{f"sci-{c}{k}": "input corruption" for c in ("noise", "blur", "contrast", "jpeg") for k in (1, 3, 5)},
    **{
        f"{t}-{b}": "input corruption"
        for t in ("tex-noise3", "tex-noise5", "sci-noise3", "sci-noise5")
        for b in ("lite1", "lite2")
    },
    **{
        f"synth-{k}-{b}": "synthetic patterns"
        for k in ("spectra", "orient")
        for b in ("lite0", "lite1", "lite2")
    },
    "tiny001-uci": "collapsed signal",
    "tiny01-uci": "collapsed signal",
    "gamma0-uci": "collapsed signal",
    "gratings-uci": "far synthetic source",
    "big-uci": "large weights",
    "big-shuffled-uci": "large weights",
    "big10-shuffled-uci": "large weights",
    "big-random-uci": "large weights",
    "big-shuffled-tex": "large weights",
    "big10-shuffled-tex": "large weights",
    "big10-deep-shuffled-uci": "large weights",
    "big10-deep-uci": "large weights",
    "big10-deep-shuffled-tex": "large weights",
    "tiny001-tex": "collapsed signal",
}

#: The freeze rule's constants and the values the grid tries (diag's default among them). The flat-curve
#: step has none (flat = within the probe's fold spread; tune from Auto-RGN's argmax), nor has the
#: first-layer-peak step; the lost-plasticity threshold is the negative-transfer rule's (refit there).
FREEZE_GRID: dict[str, tuple[float, ...]] = {
    "small_target": (10, 15, 20, 25, 31, 40),  # 10 = no small-target step; 31 catches 30 per class
    "min_tuned": (0, 1, 2, 3),
    "peak_offset": (-1, 0, 1),
}
#: The negative-transfer rule's constants: head start at 30 per class, its shrink per doubling, the
#: gradient-reach floor (p = sigmoid(20(-a - head_start) + 0.5 shift + 8 blocked), high above 0.6) and the
#: weight scale above which plasticity is lost (then p = sigmoid(-20 a_final); diag's value √10 is set from
#: the physics, the grid spans 2 to 100 times the He-initialisation scale and "never"), read at the median
#: layer and, with ``top_tenth``, at the largest tenth of the layers too (diag: on; set after the first five
#: tables of the too-high learning rate family were seen).
NT_DEFAULT = {
    "head_start_30": 0.30,
    "per_doubling": 0.04,
    "reach_min": 0.1,
    "scale_max": math.sqrt(10.0),
    "top_tenth": 1.0,
}
NT_GRID: dict[str, tuple[float, ...]] = {
    "head_start_30": (0.1, 0.2, 0.3, 0.4, 0.5),
    "per_doubling": (0.0, 0.02, 0.04, 0.08),
    "reach_min": (0.0, 0.05, 0.1, 0.15, 0.2, 0.3),
    "scale_max": (2.0, math.sqrt(10.0), 10.0, 30.0, 100.0, math.inf),
    # 1: the largest tenth of the layers is tested too (weight_scale_top), 0: the median only
    "top_tenth": (0.0, 1.0),
}


def family(name: str) -> str:
    """The family of a truth table (``FAMILY``). A table with none is an error, not a family of its own: it
    would otherwise be scored as "other" and held out alone, outside the family it belongs to."""
    try:
        return FAMILY[name]
    except KeyError:
        raise KeyError(
            f"truth table {name!r} has no family: add it to FAMILY in benchmarks/predict_lofo.py"
        ) from None


def freeze_recommendation(row: dict, rule: FreezeRule) -> FreezeRecommendation:
    """diag's freeze rule (``recommend_freeze``) with other constants, on the evidence a table kept."""
    ev = row["freeze_evidence"]
    curve = {
        k: {"scores": {"linear_probe_accuracy": v}, "linear_probe_std": ev["tolerance"]}
        for k, v in ev["linear_probe"].items()
    }
    per_class = float(ev["examples_per_class"])
    scale = (row.get("nt_signals") or {}).get("weight_scale")
    return recommend_freeze(
        curve, row["blocks"], n_target=round(per_class * 1000), n_classes=1000, rgn=ev.get("rgn"),
        weight_scale=scale, rule=rule,
    )  # fmt: skip


def freeze_depth(row: dict, rule: FreezeRule) -> int:
    return freeze_recommendation(row, rule).depth


def decided_by(rows: list[dict], basis: str) -> list[dict]:
    """The tables (with sweeps and freeze evidence) whose depth diag's constants decide by ``basis``."""
    return [
        r
        for r in rows
        if r.get("accuracy_by_depth")
        and r.get("freeze_evidence")
        and freeze_recommendation(r, FreezeRule()).evidence["basis"] == basis
    ]


def first_layer_peak_support(rows: list[dict]) -> dict[str, Any]:
    """The structural step with no constant (a probe peak at the first probed layer: tune everything,
    K 0) cannot be refit, so its support is listed instead: every table it decides with diag's constants,
    negative-transfer and two-depth tables included, with tune-all against freezing the first block (K 1,
    what the probe step gave before), each as a ratio to the best measured depth (None: not measured)."""
    out = {}
    for r in decided_by(rows, "first-layer peak"):
        acc = r["accuracy_by_depth"]
        best = max(acc.values())
        out[r["name"]] = {
            "family": family(r["name"]),
            "judged_for_freeze": r in freeze_rows([r]),
            "k0": acc["0"] / best if "0" in acc else None,
            "k1": acc["1"] / best if "1" in acc else None,
            "best_depth": r["best_depth"],
            "depths_measured": sorted(int(k) for k in acc),
        }
    return out


def lost_plasticity_support(rows: list[dict]) -> dict[str, Any]:
    """The lost-plasticity step (weights above ``scale_max`` times He's scale: a linear probe, K = n) on
    every table it decides with diag's constants. Those checkpoints were swept at two depths (tune-all and
    the linear probe, ``nt_only``), so they are not among the tables judged by ratio: listed here with the
    linear probe's and tune-all's ratio to the better of the two, the depth the rule gave without the step
    (``without``; its ratio None where unmeasured), and the thresholds of the negative-transfer grid
    (``NT_GRID``) under which the step still decides each table."""
    out = {}
    for r in decided_by(rows, "lost plasticity"):
        acc, n = r["accuracy_by_depth"], r["n_blocks"]
        best = max(acc.values())
        k_without = freeze_depth(r, FreezeRule(scale_max=math.inf))
        grid = [v for v in NT_GRID["scale_max"] if r["nt_signals"]["weight_scale"] > v]
        out[r["name"]] = {
            "family": family(r["name"]),
            "judged_for_freeze": r in freeze_rows([r]),
            "weight_scale": r["nt_signals"]["weight_scale"],
            "linear_probe_ratio": acc[str(n)] / best if str(n) in acc else None,
            "tune_all_ratio": acc["0"] / acc[str(n)] if "0" in acc and str(n) in acc else None,
            "linear_probe_won": str(n) in acc and acc[str(n)] >= best,
            "without": {
                "depth": k_without,
                "ratio": acc[str(k_without)] / best if str(k_without) in acc else None,
            },
            "decides_at_scale_max": grid,
        }
    return out


def ratio_at(row: dict, k: int | None) -> tuple[float | None, bool]:
    """(accuracy at depth k / best, measured?); an unmeasured k takes the lower of its measured
    neighbours (pessimistic)."""
    return ratio_in({int(d): float(a) for d, a in row["accuracy_by_depth"].items()}, k)


def ratio_in(acc: dict[int, float], k: int | None) -> tuple[float | None, bool]:
    """:func:`ratio_at` on accuracies by depth ``acc``."""
    if k is None:
        return None, False
    best = max(acc.values())
    if k in acc:
        return acc[k] / best, True
    lo = [d for d in acc if d < k]
    hi = [d for d in acc if d > k]
    near = [acc[max(lo)]] if lo else []
    near += [acc[min(hi)]] if hi else []
    return min(near) / best, False


def rgn_argmax(row: dict) -> int | None:
    """Auto-RGN's argmax: tune from the block the target pulls hardest on."""
    rgn = row["freeze_evidence"].get("rgn")
    if not rgn:
        return None
    blocks = row["blocks"]
    top = max(rgn, key=lambda b: rgn[b])
    return blocks.index(top) if top in blocks else None


def _grid(grid: dict[str, tuple[float, ...]]) -> list[dict[str, float]]:
    return [dict(zip(grid, v, strict=True)) for v in itertools.product(*grid.values())]


def nt_probability(sig: dict, c: dict[str, float]) -> float:
    """The negative-transfer probability from a table's stored signals, with constants ``c`` (the formula
    of :func:`diag.predict.negative.negative_transfer`, written out)."""
    scale, final = sig.get("weight_scale"), sig.get("final_advantage")
    top = sig.get("weight_scale_top") if c["top_tenth"] else None
    lost = final is not None and any(x is not None and x > c["scale_max"] for x in (scale, top))
    if lost:
        return 1.0 / (1.0 + math.exp(max(-700.0, min(700.0, 20.0 * float(final)))))
    per_class = float(sig["examples_per_class"])
    start = max(0.0, c["head_start_30"] - c["per_doubling"] * math.log2(max(per_class, 1e-9) / 30.0))
    reach = sig.get("gradient_reach")
    blocked = 0.0 if reach is None or c["reach_min"] <= 0 else max(0.0, 1.0 - reach / c["reach_min"])
    adv = float(sig["feature_advantage"])
    if blocked > 0 and final is not None and float(final) < adv:  # the head sees the final features
        adv += blocked * (float(final) - adv)
    z = 20.0 * (-adv - start) + 0.5 * float(sig["shift_excess"]) + 8.0 * blocked
    return 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, z))))


def auroc(scores: list[float], positive: list[bool]) -> float | None:
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    if not pos or not neg:
        return None
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def balanced_accuracy(pred: list[bool], truth: list[bool]) -> float | None:
    pos = [p for p, t in zip(pred, truth, strict=True) if t]
    neg = [not p for p, t in zip(pred, truth, strict=True) if not t]
    parts = [float(np.mean(x)) for x in (pos, neg) if x]
    return float(np.mean(parts)) if parts else None


def _mean(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return float(np.mean(v)) if v else None


def freeze_rows(rows: list[dict]) -> list[dict]:
    """Tables the freeze rule is judged on: transfer helps and the depths were swept."""
    return [
        r
        for r in rows
        if r.get("accuracy_by_depth") and not r.get("nt_only") and not r.get("negative_transfer_measured")
    ]


def lofo_freeze(rows: list[dict]) -> dict[str, Any]:
    rows = freeze_rows(rows)
    combos = _grid(FREEZE_GRID)
    # depth and ratio of every combo on every table (computed once)
    table = np.empty((len(combos), len(rows)))
    measured = np.zeros((len(combos), len(rows)), dtype=bool)
    depth = np.zeros((len(combos), len(rows)), dtype=int)
    for i, c in enumerate(combos):
        rule = FreezeRule(**c)  # type: ignore[arg-type]
        for j, r in enumerate(rows):
            k = freeze_depth(r, rule)
            q, m = ratio_at(r, k)
            table[i, j], measured[i, j], depth[i, j] = q, m, k
    default = FreezeRule()
    fams = sorted({family(r["name"]) for r in rows})
    fam_of = np.array([family(r["name"]) for r in rows])

    def fit(train: np.ndarray) -> np.ndarray:
        """Indices of the combos with the best mean ratio on the training tables (ties kept)."""
        score = table[:, train].mean(axis=1)
        return np.flatnonzero(score >= score.max() - 1e-12)

    per_table: dict[str, dict[str, Any]] = {}
    chosen_all = fit(np.ones(len(rows), dtype=bool))
    for j, r in enumerate(rows):
        k0 = freeze_depth(r, default)
        q0, m0 = ratio_at(r, k0)
        per_table[r["name"]] = {
            "family": str(fam_of[j]),
            "shipped_depth": k0,
            "shipped_ratio": q0 if m0 else None,
            "refit_all_ratio": float(table[chosen_all, j].mean()),
            "tune_all": ratio_at(r, 0)[0] if "0" in r["accuracy_by_depth"] else None,
            "linear_probe": ratio_at(r, r["n_blocks"])[0]
            if str(r["n_blocks"]) in r["accuracy_by_depth"]
            else None,
            "rgn_argmax": (
                lambda k: ratio_at(r, k)[0] if k is not None and str(k) in r["accuracy_by_depth"] else None
            )(rgn_argmax(r)),
            "best_depth": r["best_depth"],
            "best_accuracy": r["best_accuracy"],
        }
    folds: dict[str, Any] = {}
    for fam in fams:
        train = fam_of != fam
        held = np.flatnonzero(~train)
        chosen = fit(train)
        for j in held:
            q = table[chosen, j]
            name = rows[j]["name"]
            per_table[name]["lofo_ratio"] = float(q.mean())
            per_table[name]["lofo_worst"] = float(q.min())
            per_table[name]["lofo_depths"] = sorted({int(x) for x in depth[chosen, j]})
            ks, counts = np.unique(depth[chosen, j], return_counts=True)
            per_table[name]["lofo_depth_share"] = {
                str(int(k)): float(c / len(chosen)) for k, c in zip(ks, counts, strict=True)
            }
            per_table[name]["lofo_unmeasured_share"] = float(1 - measured[chosen, j].mean())
            per_table[name]["lofo_regret_points"] = float((1 - q.mean()) * rows[j]["best_accuracy"] * 100)
        consts = {
            k: sorted({combos[i][k] for i in chosen}) for k in FREEZE_GRID
        }  # the values the tied constants span
        folds[fam] = {
            "n_tied_constants": len(chosen),
            "constants": consts,
            "tables": [rows[j]["name"] for j in held],
        }
    by_family = {}
    for fam in fams:
        names = [n for n, t in per_table.items() if t["family"] == fam]
        by_family[fam] = {
            "n_tables": len(names),
            **{
                key: _mean([per_table[n].get(key) for n in names])
                for key in (
                    "shipped_ratio",
                    "refit_all_ratio",
                    "lofo_ratio",
                    "lofo_worst",
                    "tune_all",
                    "linear_probe",
                    "rgn_argmax",
                    "lofo_regret_points",
                )
            },
            "lofo_min": min(per_table[n]["lofo_ratio"] for n in names),
        }
    overall = {
        key: _mean([t.get(key) for t in per_table.values()])
        for key in (
            "shipped_ratio",
            "refit_all_ratio",
            "lofo_ratio",
            "lofo_worst",
            "tune_all",
            "linear_probe",
            "rgn_argmax",
            "lofo_regret_points",
        )
    }
    overall["family_mean_lofo"] = _mean([b["lofo_ratio"] for b in by_family.values()])
    overall["lofo_min"] = min(t["lofo_ratio"] for t in per_table.values())
    overall["n_below_0.95"] = sum(t["lofo_ratio"] < 0.95 for t in per_table.values())
    return {
        "tables": per_table,
        "by_family": by_family,
        "overall": overall,
        "folds": folds,
        "refit_all_constants": {k: sorted({combos[i][k] for i in chosen_all}) for k in FREEZE_GRID},
        "support": constant_support(rows, fam_of),
    }


def constant_support(rows: list[dict], fam_of: np.ndarray) -> dict[str, Any]:
    """For each freeze constant: the families whose tables change depth when it moves over its grid
    (others at diag's values), and those where diag's value is among the best. A constant that only one
    family supports is a defect."""
    out = {}
    base = FreezeRule()
    for key, values in FREEZE_GRID.items():
        moved: set[str] = set()
        best_here: dict[str, bool] = {}
        for fam in sorted(set(fam_of)):
            idx = np.flatnonzero(fam_of == fam)
            scores = {}
            depths = set()
            for v in values:
                rule = FreezeRule(**{**base.__dict__, key: v})
                ks = [freeze_depth(rows[j], rule) for j in idx]
                depths.add(tuple(ks))
                scores[v] = float(np.mean([ratio_at(rows[j], k)[0] for j, k in zip(idx, ks, strict=True)]))
            if len(depths) > 1:
                moved.add(fam)
                best_here[fam] = scores[getattr(base, key)] >= max(scores.values()) - 1e-12
        out[key] = {
            "diag_value": getattr(base, key),
            "families_it_moves": sorted(str(x) for x in moved),
            "families_where_diag_value_is_best": sorted(str(x) for x, b in best_here.items() if b),
            "defect": len(moved) <= 1,
        }
    return out


def tie_truth(rows: list[dict]) -> list[bool]:
    """ "Scratch wins or ties" as the truth: negative when the best pretrained depth beats scratch by less
    than 2 standard errors of the difference of two accuracies on the table's validation set,
    2 sqrt(2 p (1 - p) / n) (p the best accuracy; n its items, 66 for the debates' split). A check beside
    the headline, whose truth is the sign of the gap."""
    out = []
    for r in rows:
        p, n = float(r["best_accuracy"]), int(r.get("val") or 66)
        out.append(bool(r["measured_gap"] < 2.0 * math.sqrt(2.0 * p * (1.0 - p) / n)))
    return out


def lofo_negative(rows: list[dict]) -> dict[str, Any]:
    rows = [r for r in rows if "measured_gap" in r and r.get("nt_signals")]
    truth = [bool(r["measured_gap"] < 0) for r in rows]
    fam_of = np.array([family(r["name"]) for r in rows])
    combos = _grid(NT_GRID)
    probs = np.array([[nt_probability(r["nt_signals"], c) for r in rows] for c in combos])

    def fit(train: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        t = [x for x, m in zip(truth, train, strict=True) if m]
        score = np.array([balanced_accuracy(list(p[train] > 0.6), t) or 0.0 for p in probs])
        if allowed is not None:
            score[~allowed] = -1.0
        return np.flatnonzero(score >= score.max() - 1e-12)

    shipped = [nt_probability(r["nt_signals"], NT_DEFAULT) for r in rows]
    stored = [r.get("probability") for r in rows]
    lofo_p = np.zeros(len(rows))
    # The same, with the lost-plasticity threshold held at diag's value (set from physics, not fitted).
    physics = np.array([c["scale_max"] == NT_DEFAULT["scale_max"] for c in combos])
    lofo_p_physics = np.zeros(len(rows))
    folds = {}
    for fam in sorted(set(fam_of)):
        train = fam_of != fam
        chosen = fit(train)
        held = np.flatnonzero(~train)
        lofo_p[held] = probs[np.ix_(chosen, held)].mean(axis=0)
        lofo_p_physics[held] = probs[np.ix_(fit(train, physics), held)].mean(axis=0)
        folds[fam] = {
            "n_tied_constants": len(chosen),
            "constants": {  # "never" for an infinite threshold (JSON has no infinity)
                k: [v if math.isfinite(v) else "never" for v in sorted({combos[i][k] for i in chosen})]
                for k in NT_GRID
            },
            "tables": [rows[j]["name"] for j in held],
            "negatives_in_training": int(sum(t for t, m in zip(truth, train, strict=True) if m)),
        }
    all_fit = fit(np.ones(len(rows), dtype=bool))
    refit_p = probs[all_fit].mean(axis=0)

    def summary(p: list[float] | np.ndarray, truth: list[bool] = truth) -> dict[str, Any]:
        pred = [bool(x > 0.6) for x in p]
        return {
            "auroc": auroc(list(map(float, p)), truth),
            "balanced_accuracy": balanced_accuracy(pred, truth),
            "correct": int(sum(a == b for a, b in zip(pred, truth, strict=True))),
            "n": len(truth),
        }

    ties = tie_truth(rows)

    return {
        "n_tables": len(rows),
        "n_negative": int(sum(truth)),
        "negative_families": sorted({family(r["name"]) for r, t in zip(rows, truth, strict=True) if t}),
        "shipped": summary(shipped),
        "refit_all": summary(refit_p),
        "lofo": summary(lofo_p),
        "lofo_scale_max_held": summary(lofo_p_physics),
        "with_ties": {
            "n_negative": int(sum(ties)),
            "ties": [r["name"] for r, t in zip(rows, ties, strict=True) if t and r["measured_gap"] >= 0],
            "shipped": summary(shipped, ties),
            "lofo": summary(lofo_p, ties),
        },
        "support": _nt_support(rows, fam_of),
        "reproduces_stored_probability": all(
            s is None or abs(a - s) < 1e-3 for a, s in zip(shipped, stored, strict=True)
        ),
        "tables": {
            r["name"]: {
                "family": family(r["name"]),
                "gap": r["measured_gap"],
                "negative": t,
                "p_shipped": round(float(a), 4),
                "p_lofo": round(float(b), 4),
                "p_lofo_scale_max_held": round(float(c), 4),
                "weight_scale": r["nt_signals"].get("weight_scale"),
            }
            for r, t, a, b, c in zip(rows, truth, shipped, lofo_p, lofo_p_physics, strict=True)
        },
        "folds": folds,
    }


def _nt_support(rows: list[dict], fam_of: np.ndarray) -> dict[str, Any]:
    """Per constant of the negative-transfer rule: the families whose verdicts (p > 0.6) change when it
    moves over its grid, the others at diag's values. One family or none: a defect (issue 15)."""
    out = {}
    for key, values in NT_GRID.items():
        pred = np.array(
            [[nt_probability(r["nt_signals"], {**NT_DEFAULT, key: v}) > 0.6 for r in rows] for v in values]
        )
        moved = sorted({str(fam_of[j]) for j in range(len(rows)) if len(set(pred[:, j])) > 1})
        out[key] = {"diag_value": NT_DEFAULT[key], "families_it_moves": moved, "defect": len(moved) <= 1}
    return out


def seed_values(sweep: dict) -> dict[int, dict[int, float]]:
    """Per seed, the best validation accuracy of each pretrained depth of a sweep (``sweep.json``):
    ``{seed: {K: accuracy}}``, over the depths every seed finished."""
    runs: dict[int, dict[int, float]] = {}
    for d in sweep["depths"]:
        if d["from_scratch"]:
            continue
        for s, v in zip(d["seeds"], d["values"], strict=True):
            if v is not None:
                runs.setdefault(int(s), {})[int(d["freeze"])] = float(v)
    common = set.intersection(*(set(v) for v in runs.values())) if runs else set()
    return {s: {k: v[k] for k in sorted(common)} for s, v in sorted(runs.items())}


def split_half(values: dict[int, dict[int, float]], depth_share: dict[int, float]) -> dict[str, Any] | None:
    """How well a depth can be told at the measurement noise of half the seeds.

    For every split of the seeds into halves A and B (every A of ``m // 2`` seeds, B the rest): the
    depth with the best mean accuracy on A — an oracle that ran the whole sweep — and the rule's depths
    (``depth_share``: depth -> weight, e.g. the tied refits of a leave-one-family-out fold) are scored on
    B as a ratio to B's best depth (an unmeasured depth takes the lower of its measured neighbours, as in
    :func:`ratio_at`). Both are measured with the same noise, so the oracle's figure is what any rule can
    be expected to reach at that noise, and the rule's is comparable to it. None with fewer than 2 seeds.
    """
    seeds = sorted(values)
    if len(seeds) < 2:
        return None
    depths = list(values[seeds[0]])  # seed_values keeps the depths every seed finished
    oracle, rule = [], []
    for a in itertools.combinations(seeds, len(seeds) // 2):
        b = [s for s in seeds if s not in a]
        mean_a = {k: float(np.mean([values[s][k] for s in a])) for k in depths}
        mean_b = {k: float(np.mean([values[s][k] for s in b])) for k in depths}
        pick = max(depths, key=lambda k: mean_a[k])  # ties: the first (shallowest) depth
        oracle.append(mean_b[pick] / max(mean_b.values()))
        rule.append(sum(w * float(ratio_in(mean_b, k)[0] or 0.0) for k, w in depth_share.items()))
    return {
        "n_seeds": len(seeds),
        "n_splits": len(oracle),
        "oracle": float(np.mean(oracle)),
        "rule": float(np.mean(rule)),
    }


def noise_ceiling(tables: dict[str, dict[str, Any]], sweeps: Path) -> dict[str, Any]:
    """:func:`split_half` on every judged table (its committed ``sweep.json`` under ``sweeps``), the
    rule's depths being its leave-one-family-out ones; grouped by how many seeds a table has."""
    per: dict[str, Any] = {}
    for name, t in tables.items():
        path = sweeps / f"{name}.json"
        if not path.is_file() or "lofo_depth_share" not in t:
            continue
        share = {int(k): w for k, w in t["lofo_depth_share"].items()}
        found = split_half(seed_values(json.loads(path.read_text())), share)
        if found is not None:
            per[name] = found
    groups: dict[str, Any] = {}
    for m in sorted({v["n_seeds"] for v in per.values()}):
        names = [n for n, v in per.items() if v["n_seeds"] == m]
        groups[f"{m}_seeds"] = {
            "n_tables": len(names),
            "half": m // 2,
            **{
                k: {
                    "mean": float(np.mean([per[n][k] for n in names])),
                    "min": min(per[n][k] for n in names),
                    "below_0.95": sum(per[n][k] < 0.95 for n in names),
                }
                for k in ("oracle", "rule")
            },
        }
    return {"tables": per, "by_seeds": groups}


#: The commit that added the freeze rule's "no feature advantage" step, withdrawn after the tables built
#: after it (``built_after``) were swept.
WITHDRAWN_STEP = "26505f5"


def built_after_check(rows: list[dict], tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The tables built after the "no feature advantage" step was added to the freeze rule (a row's
    ``built_after``: commit 26505f5) to check it out of sample; the step was withdrawn after them. Per table:
    the step of the shipped rule that decides it, its depth and ratio; whether the withdrawn step fired (the
    best-layer advantage over the random-init twin within the probe's fold spread, on a table the probe or
    ceiling step decides) and the ratio at its depth (the last two blocks tuned, K = n - 2); tuning
    everything; the leave-one-family-out ratio."""
    out: dict[str, Any] = {}
    for r in freeze_rows(rows):
        if r.get("built_after") != WITHDRAWN_STEP:
            continue
        rec = freeze_recommendation(r, FreezeRule())
        adv = (r.get("nt_signals") or {}).get("feature_advantage")
        fires = (
            adv is not None
            and abs(adv) <= rec.evidence["tolerance"]
            and rec.evidence["basis"] in ("probe", "probe ceiling")
        )
        k_step = r["n_blocks"] - 2 if fires else rec.depth
        out[r["name"]] = {
            "built_after": r["built_after"],
            "basis": rec.evidence["basis"],
            "depth": rec.depth,
            "ratio": ratio_at(r, rec.depth)[0],
            "withdrawn_step_fires": fires,
            "withdrawn_step_depth": k_step,
            "withdrawn_step_ratio": ratio_at(r, k_step)[0],
            "tune_all": ratio_at(r, 0)[0],
            "best_depth": r["best_depth"],
            "lofo_ratio": tables[r["name"]]["lofo_ratio"],
        }
    fired = [t for t in out.values() if t["withdrawn_step_fires"]]
    if out:
        out["mean"] = {
            k: _mean([t[k] for t in out.values()])
            for k in ("ratio", "withdrawn_step_ratio", "tune_all", "lofo_ratio")
        }
        out["where_the_withdrawn_step_fires"] = {
            "n_tables": len(fired),
            **{k: _mean([t[k] for t in fired]) for k in ("ratio", "withdrawn_step_ratio")},
        }
    return out


def evaluate(rows: list[dict], sweeps: Path = ROOT / "benchmarks" / "results" / "sweeps") -> dict[str, Any]:
    freeze = lofo_freeze(rows)
    freeze["built_after"] = built_after_check(rows, freeze["tables"])
    freeze["first_layer_peak"] = first_layer_peak_support(rows)
    freeze["lost_plasticity"] = lost_plasticity_support(rows)
    freeze["noise_ceiling"] = noise_ceiling(freeze["tables"], sweeps)
    return {"freeze": freeze, "negative_transfer": lofo_negative(rows)}


def write_calibration(rows: list[dict], res: dict[str, Any], path: Path = CALIBRATION) -> dict[str, Any]:
    """The package's ``diag/predict/freeze_calibration.json``: per family, the leave-one-family-out ratio
    of each table, and which step of the rule decided its tables (what ``diag diagnose`` matches on)."""
    from diag.fileio import atomic_write_bytes

    by_name = {r["name"]: r for r in rows}
    fams: dict[str, dict[str, Any]] = {}
    for name, t in res["freeze"]["tables"].items():
        r = by_name[name]
        fam = fams.setdefault(
            t["family"],
            {
                "modality": "text" if r["backbone"] == "minilm" else "image",
                "input_level": t["family"] == "input corruption",
                "bases": [],
                "lofo_by_table": {},
                "basis_by_table": {},
            },
        )
        basis = freeze_recommendation(r, FreezeRule()).evidence["basis"]  # diag's rule as it is now
        if basis not in fam["bases"]:
            fam["bases"].append(basis)
        fam["lofo_by_table"][name] = round(t["lofo_ratio"], 4)
        fam["basis_by_table"][name] = basis
    for fam in fams.values():
        v = list(fam["lofo_by_table"].values())
        fam.update(n_tables=len(v), lofo_mean=round(float(np.mean(v)), 4), lofo_min=min(v), lofo_max=max(v))
    cal = {
        "what": "ratio of the freeze rule's depth to the best depth's accuracy, leave-one-family-out "
        "(benchmarks/predict_lofo.py; constants refit on the other families, ties averaged)",
        "families": dict(sorted(fams.items())),
        "overall": {k: res["freeze"]["overall"][k] for k in ("lofo_ratio", "lofo_min", "shipped_ratio")},
        "lost_plasticity": {  # two depths per table (tune-all, linear probe): not scored by ratio above
            "what": "checkpoints above the lost-plasticity weight scale: tune-all / linear probe accuracy",
            "tables": {
                name: {
                    "family": t["family"],
                    "weight_scale": round(t["weight_scale"], 2),
                    "tune_all_ratio": round(t["tune_all_ratio"], 4),
                    "linear_probe_won": t["linear_probe_won"],
                }
                for name, t in res["freeze"].get("lost_plasticity", {}).items()
                if t["tune_all_ratio"] is not None
            },
        },
    }
    atomic_write_bytes(path, (json.dumps(cal, indent=1) + "\n").encode())
    return cal


def f(v: float | None, d: int = 3) -> str:
    return "—" if v is None else f"{v:.{d}f}"


def _family_row(label: str, n: int, b: dict) -> str:
    cells = [
        label,
        str(n),
        f(b["shipped_ratio"]),
        f(b["refit_all_ratio"]),
        f"**{f(b['lofo_ratio'])}** ({f(b['lofo_worst'])})",
        f(b["lofo_min"]),
        f(b["lofo_regret_points"], 1),
        f(b["tune_all"]),
        f(b["linear_probe"]),
        f(b["rgn_argmax"]),
    ]
    return "| " + " | ".join(cells) + " |"


def print_tables(res: dict[str, Any]) -> None:
    fr = res["freeze"]
    head = ["family", "tables", "diag (in-sample)", "refit on all", "**LOFO** (worst tie)", "LOFO min"]
    head += ["regret (pts)", "tune all", "linear probe", "RGN argmax"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for fam, b in fr["by_family"].items():
        print(_family_row(fam, b["n_tables"], b))
    print(_family_row("mean over tables", len(fr["tables"]), fr["overall"]))
    print()
    print("| table | family | best K | diag K (ratio) | LOFO K (ratio; unmeasured share) |")
    print("|---|---|---|---|---|")
    for n, t in fr["tables"].items():
        lofo = (
            f"{','.join(map(str, t['lofo_depths']))} ({f(t['lofo_ratio'])}; {t['lofo_unmeasured_share']:.2f})"
        )
        print(
            f"| {n} | {t['family']} | {t['best_depth']} | {t['shipped_depth']} ({f(t['shipped_ratio'])}) | "
            f"{lofo} |"
        )
    print()
    for k, v in fr["support"].items():
        print(k, v)
    print("first-layer peak (K 0):", json.dumps(fr.get("first_layer_peak", {})))
    print("lost plasticity (K n):", json.dumps(fr.get("lost_plasticity", {})))
    print("noise ceiling (split halves of the seeds):", json.dumps(fr["noise_ceiling"]["by_seeds"]))
    print("built after a step was fixed:", json.dumps(fr.get("built_after", {})))
    print(json.dumps(fr["folds"], indent=None))
    nt = res["negative_transfer"]
    keys = ("n_tables", "n_negative", "negative_families", "shipped", "refit_all", "lofo")
    keys += ("lofo_scale_max_held", "support")
    print(json.dumps({k: nt[k] for k in keys}))
    print(json.dumps(nt["folds"]))


def main() -> int:
    path = ROOT / "benchmarks" / "results" / "predict.json"
    data = json.loads(path.read_text())
    res = evaluate(data["scenarios"])
    data["summary"]["leave_one_family_out"] = res
    write_calibration(data["scenarios"], res)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print_tables(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark helpers whose figures ``benchmarks/README.md`` quotes: the family of each truth table
(``predict_lofo.family``), the search's paired bootstrap against the rule (``bench_search.gain_over_rule``)
and the out-of-sample check of the withdrawn freeze step (``predict_lofo.built_after_check``). The ``lofo``
and ``rows`` fixtures are in ``conftest.py``."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench(lofo: ModuleType) -> Iterator[tuple[ModuleType, ModuleType]]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_search

        yield lofo, bench_search
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_every_truth_table_has_a_family_and_an_unknown_one_is_an_error(bench, rows) -> None:
    lofo, _ = bench
    assert {lofo.family(r["name"]) for r in rows} <= set(lofo.FAMILY.values())
    with pytest.raises(KeyError, match="'no-such-table' has no family: add it to FAMILY"):
        lofo.family("no-such-table")


def _tables(diffs: list[float]) -> dict[str, dict]:
    return {f"t{i}": {"0.5": {"ratio_search": 0.9 + d, "ratio_rule": 0.9}} for i, d in enumerate(diffs)}


def test_gain_over_rule_is_the_mean_paired_difference_with_a_percentile_interval(bench) -> None:
    _, search = bench
    # every table gains the same: each resample's mean is that gain, so the interval collapses onto it
    same = search.gain_over_rule(_tables([0.02] * 7), "0.5", n_boot=500)
    assert same["n_tables"] == 7 and same["better"] == 7 and same["worse"] == 0
    assert same["mean"] == pytest.approx(0.02, abs=1e-12)
    assert same["ci95"] == pytest.approx([0.02, 0.02], abs=1e-12)

    diffs = [0.05, -0.01, 0.0, 0.02, -0.03, 0.04, 0.01, 0.0]
    res = search.gain_over_rule(_tables(diffs), "0.5", n_boot=20_000, seed=3)
    assert res["mean"] == pytest.approx(np.mean(diffs), abs=1e-12)
    assert (res["better"], res["worse"]) == (4, 2)
    # the bootstrap mean of n draws has the standard deviation s / sqrt(n) (s with divisor n); the 95 %
    # percentile interval is about mean ± 1.96 of it — within the Monte Carlo error of 20 000 resamples
    se = np.std(diffs) / np.sqrt(len(diffs))
    lo, hi = res["ci95"]
    assert lo < res["mean"] < hi
    assert (hi - lo) / (2 * 1.96 * se) == pytest.approx(1.0, abs=0.08)
    # a table without a search figure is left out, not counted as zero
    tables = _tables(diffs) | {"none": {"0.5": {"ratio_search": None, "ratio_rule": 0.9}}}
    assert search.gain_over_rule(tables, "0.5", n_boot=100)["n_tables"] == len(diffs)
    assert search.gain_over_rule({}, "0.5") == {}


def test_built_after_check_scores_the_withdrawn_step_where_its_condition_holds(bench, rows) -> None:
    lofo, _ = bench
    rows = copy.deepcopy(rows)
    after = [r for r in lofo.freeze_rows(rows) if r.get("built_after") == lofo.WITHDRAWN_STEP]
    assert after, "the tables built after the withdrawn step are in predict.json"
    row = next(
        r for r in after if lofo.freeze_recommendation(r, lofo.FreezeRule()).evidence["basis"] == "probe"
    )
    rec = lofo.freeze_recommendation(row, lofo.FreezeRule())
    tol = rec.evidence["tolerance"]
    tables = {r["name"]: {"lofo_ratio": 0.5} for r in lofo.freeze_rows(rows)}
    acc = {int(k): float(v) for k, v in row["accuracy_by_depth"].items()}
    best, n = max(acc.values()), row["n_blocks"]

    row["nt_signals"]["feature_advantage"] = -0.999 * tol  # within the fold spread: the step fires
    fired = lofo.built_after_check(rows, tables)[row["name"]]
    assert fired["withdrawn_step_fires"] and fired["withdrawn_step_depth"] == n - 2
    assert fired["withdrawn_step_ratio"] == pytest.approx(acc[n - 2] / best, rel=1e-12)
    assert fired["depth"] == rec.depth and fired["ratio"] == pytest.approx(acc[rec.depth] / best, rel=1e-12)
    assert fired["tune_all"] == pytest.approx(acc[0] / best, rel=1e-12)
    assert fired["lofo_ratio"] == 0.5  # taken from the leave-one-family-out table it is given

    row["nt_signals"]["feature_advantage"] = 1.001 * tol  # beyond it: the rule's own depth
    held = lofo.built_after_check(rows, tables)[row["name"]]
    assert not held["withdrawn_step_fires"]
    assert held["withdrawn_step_depth"] == rec.depth and held["withdrawn_step_ratio"] == held["ratio"]


def _row(rule: int, n_blocks: int = 9, alternative: int | None = None) -> dict:
    return {
        "recommended_depth": rule,
        "n_blocks": n_blocks,
        "freeze_evidence": {"alternative_depth": alternative},
        "accuracy_by_depth": {},
    }


def test_the_replay_scores_the_winners_best_epoch_and_the_oracle_each_seeds_best_candidate(bench) -> None:
    _, search = bench
    # three candidates (the rule's K 4, the last two blocks K 7, every block K 0), two seeds, 6 epochs
    curves = {
        "4": {"0": [0.30, 0.40, 0.50, 0.60, 0.70, 0.70], "1": [0.30, 0.40, 0.50, 0.60, 0.62, 0.64]},
        "7": {"0": [0.50, 0.55, 0.60, 0.62, 0.64, 0.65], "1": [0.50, 0.55, 0.60, 0.62, 0.64, 0.66]},
        "0": {"0": [0.10, 0.20, 0.40, 0.60, 0.80, 0.75], "1": [0.10, 0.20, 0.30, 0.40, 0.50, 0.60]},
    }
    row = _row(4)
    row["accuracy_by_depth"] = {"4": 0.67, "7": 0.655, "0": 0.70}  # the sweep's means: K 0 is the best
    oracle = search.simulate(row, curves, 0.5, None, search.DESIGNS[-1])
    assert search.DESIGNS[-1].oracle
    assert [p["winner"] for p in oracle["per_seed"]] == [0, 7]  # seed 0: 0.80 at K 0; seed 1: 0.66 at K 7
    assert oracle["ratio_search"] == pytest.approx((0.80 + 0.66) / 2 / 0.70)
    assert oracle["extra_cost"] == 2.0  # the two losers' full runs
    # without a margin, successive halving at half a run (rungs at epochs 1 and 2) keeps K 7, then K 4 or
    # K 7: K 7 leads both rungs on both seeds, so it wins and scores its full run's best epoch
    plain = search.simulate(row, curves, 0.5, None, search.Design("plain", z=0.0))
    assert [p["winner"] for p in plain["per_seed"]] == [7, 7]
    assert plain["ratio_search"] == pytest.approx((0.65 + 0.66) / 2 / 0.70)
    assert plain["extra_cost"] == pytest.approx(3 / 6)  # one epoch of one loser, two of the other
    assert plain["ratio_rule"] == pytest.approx(0.67 / 0.70)


def test_a_pair_adds_one_challenger_and_a_gate_leaves_the_rule_alone(bench) -> None:
    _, search = bench
    far_end = next(d for d in search.DESIGNS if d.label.startswith("pair: the rule's depth and the far end"))
    assert far_end.candidates(3, None, 9) == [3, 7]  # tunes 6 of 9 blocks: challenged by the last two
    assert far_end.candidates(6, None, 9) == [6, 0]  # tunes 3 of 9: challenged by every block
    alternative = next(d for d in search.DESIGNS if d.label == "pair: the rule's depth and its alternative")
    assert alternative.candidates(5, None, 9) == [5]  # no alternative: nothing to try
    gated = next(d for d in search.DESIGNS if d.gate is not None)
    curves = {"6": {"0": [0.5] * 6}, "7": {"0": [0.9] * 6}, "0": {"0": [0.9] * 6}}
    row = _row(6)
    row["accuracy_by_depth"] = {"6": 0.5, "7": 0.9, "0": 0.9}
    off = search.simulate(row, curves, 1.0, None, gated)  # the rule tunes 3 of 9 blocks: no search
    assert off["candidates"] == [6] and off["extra_cost"] == 0.0
    assert off["ratio_search"] == pytest.approx(0.5 / 0.9)


def test_a_trial_ranked_by_loss_keeps_the_lower_loss(bench) -> None:
    _, search = bench
    trial = {
        "4": {"val_acc": [0.50, 0.60], "val_loss": [2.0, 1.9]},
        "7": {"val_acc": [0.40, 0.55], "val_loss": [1.5, 1.2]},  # less accurate, lower loss
        "0": {"val_acc": [0.30, 0.35], "val_loss": [2.2, 2.1]},
    }
    curve = {"4": [0.5, 0.6, 0.7, 0.7, 0.7, 0.7], "7": [0.4, 0.55, 0.6, 0.6, 0.6, 0.6], "0": [0.3] * 6}
    assert search._trial_winner([4, 7, 0], trial, curve, None, 0.0, "val_acc") == 4
    assert search._trial_winner([4, 7, 0], trial, curve, None, 0.0, "val_loss") == 7


def test_a_borrowed_scratch_accuracy_is_refreshed_with_its_gap_and_verdict(bench) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_predict
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    scenarios = [{"name": "borrows", "scratch_from": "other"}, {"name": "owns"}]
    row = {
        "name": "borrows", "alternative_rules": {}, "accuracy_by_depth": {"0": 0.50, "5": 0.54},
        "best_accuracy": 0.54, "scratch": 0.53, "risk": "low", "measured_gap": 0.01,
        "measured_gap_tune_all": -0.03, "negative_transfer_measured": False,
        "negative_transfer_correct": True,
    }  # fmt: skip
    own = {**row, "name": "owns"}
    out = bench_predict.refresh_borrowed_scratch([row, own], lambda sc: 0.56, scenarios)
    # the other table's scratch runs now reach 0.56: transfer (0.54) loses, and the "low" risk is wrong
    assert out[0]["scratch"] == 0.56
    assert out[0]["measured_gap"] == pytest.approx(-0.02)
    assert out[0]["measured_gap_tune_all"] == pytest.approx(-0.06)
    assert out[0]["negative_transfer_measured"] is True and out[0]["negative_transfer_correct"] is False
    assert out[1] is own  # no scratch_from: its own sweep's value stands
    assert row["scratch"] == 0.53  # the input row is not modified
    assert bench_predict.refresh_borrowed_scratch([row], lambda sc: None, scenarios)[0] is row

"""The committed truth tables (``benchmarks/results/predict.json``) against diag's rules as they are now.

Every figure of the leave-one-family-out evaluation (``benchmarks/predict_lofo.py``) is recomputed from the
evidence each row stored — the probe curve, gradient norms and negative-transfer signals — rather than by
running ``diag diagnose`` again. That is only sound while diag's rules, applied to that evidence, give what
the diagnosis gave: a rule change that moves a stored depth or probability must come with the rows
re-diagnosed. These tests fail when it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from diag.predict.freeze import FreezeRule

ROOT = Path(__file__).resolve().parents[2]
PREDICT = ROOT / "benchmarks" / "results" / "predict.json"


def test_the_shipped_freeze_rule_reproduces_every_stored_depth(lofo, rows) -> None:
    judged = [r for r in rows if r.get("freeze_evidence") and "recommended_depth" in r]
    assert len(judged) >= 40
    now = {r["name"]: (r["recommended_depth"], lofo.freeze_depth(r, FreezeRule())) for r in judged}
    moved = {name: pair for name, pair in now.items() if pair[0] != pair[1]}
    assert moved == {}, f"stored depth -> diag's depth now (re-diagnose these rows): {moved}"


def test_the_refit_formula_reproduces_every_stored_probability(lofo, rows) -> None:
    """predict_lofo writes diag's negative-transfer formula out to refit its constants; with diag's
    constants it must give the probability ``diagnose`` stored."""
    with_nt = [r for r in rows if r.get("nt_signals")]
    assert len(with_nt) >= 40 and sum(r["measured_gap"] < 0 for r in with_nt) >= 8
    now = {
        r["name"]: (float(r["probability"]), lofo.nt_probability(r["nt_signals"], lofo.NT_DEFAULT))
        for r in with_nt
    }
    off = {name: (a, round(b, 4)) for name, (a, b) in now.items() if abs(a - b) > 1e-3}
    assert off == {}, f"stored p -> the formula's p now: {off}"


def test_split_half_scores_the_oracle_and_the_rule_on_the_held_out_half(lofo) -> None:
    """Two seeds, two depths, worked by hand: each seed picks the depth the other seed scores."""
    values = {0: {0: 0.80, 5: 0.90}, 1: {0: 0.85, 5: 0.80}}
    found = lofo.split_half(values, {5: 1.0})
    # A = seed 0 picks K 5, scored on seed 1: 0.80 / 0.85; A = seed 1 picks K 0, scored on seed 0: 0.80 / 0.90
    assert found["n_splits"] == 2
    assert found["oracle"] == pytest.approx((0.80 / 0.85 + 0.80 / 0.90) / 2, abs=1e-12)
    # the rule's K 5 on seed 1 then seed 0: 0.80 / 0.85 and 0.90 / 0.90
    assert found["rule"] == pytest.approx((0.80 / 0.85 + 1.0) / 2, abs=1e-12)
    # an unmeasured depth (K 3) takes the lower of its measured neighbours; weights average tied depths
    half = lofo.split_half(values, {3: 0.5, 0: 0.5})
    assert half["rule"] == pytest.approx(
        0.5 * (0.80 / 0.85 + 0.80 / 0.90) / 2 + 0.5 * (0.85 / 0.85 + 0.80 / 0.90) / 2, abs=1e-12
    )
    assert lofo.split_half({0: {0: 0.5}}, {0: 1.0}) is None


def test_split_half_over_four_seeds_averages_the_six_splits_into_two(lofo) -> None:
    """Four seeds: each of the 6 choices of 2 seeds picks on them and scores on the other 2; with one
    depth better on every seed, the oracle is exact and a rule at the other depth scores its mean ratio."""
    values = {s: {0: 0.7 + 0.01 * s, 4: 0.8 + 0.01 * s} for s in range(4)}
    found = lofo.split_half(values, {0: 1.0})
    assert found["n_seeds"] == 4 and found["n_splits"] == 6
    assert found["oracle"] == 1.0
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    want = sum((1.4 + 0.01 * (6 - a - b)) / (1.6 + 0.01 * (6 - a - b)) for a, b in pairs) / 6
    assert found["rule"] == pytest.approx(want, abs=1e-12)


def test_seed_values_keeps_the_depths_every_seed_finished(lofo) -> None:
    sweep = {
        "depths": [
            {"freeze": 0, "from_scratch": False, "seeds": [0, 1], "values": [0.5, 0.6]},
            {"freeze": 3, "from_scratch": False, "seeds": [0, 1], "values": [0.7, None]},
            {"freeze": 0, "from_scratch": True, "seeds": [0, 1], "values": [0.1, 0.2]},
        ]
    }
    assert lofo.seed_values(sweep) == {0: {0: 0.5}, 1: {0: 0.6}}

"""The committed truth tables (``benchmarks/results/predict.json``) against diag's rules as they are now.

Every figure of the leave-one-family-out evaluation (``benchmarks/predict_lofo.py``) is recomputed from the
evidence each row stored — the probe curve, gradient norms and negative-transfer signals — rather than by
running ``diag diagnose`` again. That is only sound while diag's rules, applied to that evidence, give what
the diagnosis gave: a rule change that moves a stored depth or probability must come with the rows
re-diagnosed. These tests fail when it does not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from diag.predict.freeze import FreezeRule

ROOT = Path(__file__).resolve().parents[2]
PREDICT = ROOT / "benchmarks" / "results" / "predict.json"


@pytest.fixture(scope="module")
def lofo():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import predict_lofo

        yield predict_lofo
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return json.loads(PREDICT.read_text())["scenarios"]


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

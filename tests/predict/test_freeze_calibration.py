"""The freeze rule's constants as parameters, its "about as defensible" alternative, and the shipped
leave-one-family-out calibration quoted in the rationale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import diag.predict
from diag.predict.freeze import FreezeRule, calibration, recommend_freeze
from tests.predict.test_predict import BLOCKS, curve

SHIPPED = Path(diag.predict.__file__).parent / "freeze_calibration.json"


def test_rule_constants_move_the_depth_as_documented() -> None:
    pre = curve([0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88])  # peak at blocks.4: K 6
    assert recommend_freeze(pre, BLOCKS, n_target=300, n_classes=10, rule=FreezeRule()).depth == 6
    assert (
        recommend_freeze(pre, BLOCKS, n_target=300, n_classes=10, rule=FreezeRule(peak_offset=1)).depth == 7
    )
    assert (
        recommend_freeze(pre, BLOCKS, n_target=300, n_classes=10, rule=FreezeRule(peak_offset=-1)).depth == 5
    )
    # 30 per class counts as a small target once the step reaches past it
    small = recommend_freeze(pre, BLOCKS, n_target=300, n_classes=10, rule=FreezeRule(small_target=31))
    assert small.depth == 8 and small.evidence["basis"] == "small target"
    rising = curve([0.1 * i for i in range(1, 10)])
    for tuned in (0, 1, 2, 3):
        rec = recommend_freeze(rising, BLOCKS, n_target=300, n_classes=10, rule=FreezeRule(min_tuned=tuned))
        assert rec.depth == len(BLOCKS) - tuned


def test_alternative_depth_is_the_shallowest_layer_near_the_peak() -> None:
    pre = curve([0.5, 0.55, 0.7, 0.8, 0.93, 0.94, 0.95, 0.9, 0.88], std=0.03)
    rec = recommend_freeze(pre, BLOCKS, n_target=1000, n_classes=10)
    assert rec.depth == 7 and rec.evidence["alternative_depth"] == 5  # through blocks.3
    assert "The alternative, K = 5 (freezing through blocks.3), is about as defensible" in " ".join(
        rec.rationale
    )
    clear = recommend_freeze(
        curve([0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88]), BLOCKS, n_target=300, n_classes=10
    )
    assert clear.evidence["alternative_depth"] is None


def test_rationale_quotes_the_shipped_calibration_of_similar_families() -> None:
    shipped = json.loads(SHIPPED.read_text())
    assert calibration() == shipped
    # image target decided by the probe step: every image family with probe-decided tables
    probe = [f for f, v in shipped["families"].items() if "probe" in v["bases"] and v["modality"] == "image"]
    ratios = [r for f in probe for r in shipped["families"][f]["lofo_by_table"].values()]
    rec = recommend_freeze(
        curve([0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88]), BLOCKS, n_target=300, n_classes=10
    )
    cal = rec.evidence["calibration"]
    assert cal["families"] == sorted(probe) and cal["n_tables"] == len(ratios)
    assert cal["lofo_mean"] == pytest.approx(sum(ratios) / len(ratios))
    assert cal["lofo_min"] == min(ratios) and cal["lofo_max"] == max(ratios)
    line = next(x for x in rec.rationale if x.startswith("How sure"))
    assert f"{sum(ratios) / len(ratios):.3f}" in line and f"{min(ratios):.3f}" in line
    # a 10-per-class target is matched to the small-target family only
    small = recommend_freeze(
        curve([0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88]), BLOCKS, n_target=100, n_classes=10
    )
    assert small.evidence["calibration"]["families"] == ["small target"]
    # below 10 per class no table was measured: the rationale says so
    tiny = recommend_freeze(
        curve([0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88]), BLOCKS, n_target=50, n_classes=10
    )
    assert "unmeasured" in " ".join(tiny.rationale) and tiny.evidence["calibration"]["families"] == []

"""diag.report.sections: typed sections that write back exactly the JSON they read."""

from __future__ import annotations

import json

import pytest

from diag.report.schema import Report
from diag.report.sections import (
    ClassConditionalSection,
    FreezeSection,
    LayerSection,
    ShiftVerdictSection,
    TransferabilitySection,
)

LAYER = {
    "name": "blocks.0",
    "index": 1,
    "dim": 16,
    "kind": "block",
    "shift": {
        "mmd2": 0.5, "p_value": 0.001, "p_adjusted": 0.002, "c2st_auc": 0.9, "c2st_auc_ci": [0.85, 0.95],
        "c2st_p_value": 0.001, "proxy_a_distance": 1.6, "frechet": 3.0, "frechet_relative": 0.2,
        "coral": 1e-3, "ood_median": None, "ood_p90": None, "ood_far": None, "bandwidths": [1.0],
        "method": "exact", "seconds": 0.1,
    },
    "transfer": {"pretrained": {"logme": 0.3, "note": "x"}, "random_init": {"logme": 0.1}},
}  # fmt: skip
VERDICT = {
    "is_shift": True, "p_value": 0.003, "alpha": 0.05,
    "effect": {"name": "c2st_auc", "layer": "blocks.0", "value": 0.9, "ci": [0.85, 0.95]},
    "peak": {"name": "c2st_auc", "layer": "blocks.0", "value": 0.9, "ci": [0.85, 0.95]},
    "onset_layer": "blocks.0", "first_significant_layer": "blocks.0", "level": "feature-level",
    "significant_layers": ["blocks.0"], "summary": "A shift.", "rules": {"p_value": "Bonferroni"},
}  # fmt: skip


def test_a_section_writes_back_the_same_keys_in_the_same_order() -> None:
    lay = LayerSection.from_dict(LAYER)
    assert json.dumps(lay.to_dict()) == json.dumps(LAYER)
    assert lay.shift.c2st_auc == 0.9 and lay.transfer is not None
    assert lay.transfer.scores("pretrained") == {"logme": 0.3}  # numbers only
    verdict = ShiftVerdictSection.from_dict(VERDICT)
    assert json.dumps(verdict.to_dict()) == json.dumps(VERDICT)


def test_unknown_keys_survive_and_absent_optional_fields_stay_absent() -> None:
    raw = {"depth": 2, "n_blocks": 5, "future_field": {"a": 1}}
    fr = FreezeSection.from_dict(raw)
    assert fr.depth == 2 and fr.tune is None and fr.extra == {"future_field": {"a": 1}}
    assert fr.to_dict() == raw and list(fr) == ["depth", "n_blocks", "future_field"]
    assert TransferabilitySection.from_dict({"skipped": "no labels"}).to_dict() == {"skipped": "no labels"}
    # The two shapes of the class-conditional section keep their key order.
    skipped = {"skipped": "no class names in common", "layers": {}}
    assert list(ClassConditionalSection.from_dict(skipped).to_dict()) == ["skipped", "layers"]
    done = {"layers": {"pooled": [{"label": "a", "n_source": 3, "n_target": 4, "mmd2": 0.1,
                                   "p_value": 0.5, "p_adjusted": 1.0}]}, "n_permutations": 1000}  # fmt: skip
    cc = ClassConditionalSection.from_dict(done)
    assert cc.to_dict() == done and cc.rows("pooled")[0].label == "a" and cc.rows("stem") == []


def test_a_section_reads_like_the_dict_it_came_from() -> None:
    verdict = ShiftVerdictSection.from_dict(VERDICT)
    assert verdict["onset_layer"] == "blocks.0" and verdict.get("nope") is None
    assert verdict == VERDICT and dict(verdict) == VERDICT
    assert verdict != {**VERDICT, "summary": "No shift."}
    with pytest.raises(KeyError):
        verdict["nope"]
    fr = FreezeSection.from_dict({"depth": 2})
    assert "tune" not in fr and len(fr) == 1
    lay = LayerSection.from_dict(LAYER)
    assert {**lay, "transfer": None}["name"] == "blocks.0"  # ** works, as on the dict


def test_a_report_types_the_dicts_it_is_built_from() -> None:
    kw = {
        "backbone": {"name": "toy"}, "source": {"name": "s"}, "target": {"name": "t"}, "n_source": 4,
        "n_target": 4, "meta": {"seed": 0},
    }  # fmt: skip
    a = Report(**kw, layers=[LAYER], shift=VERDICT).with_sections(
        freeze={"depth": 1}, ranking=[{"backbone": "toy", "rank": 1}]
    )
    b = Report(
        **kw, layers=[LayerSection.from_dict(LAYER)], shift=ShiftVerdictSection.from_dict(VERDICT)
    ).with_sections(freeze=FreezeSection.from_dict({"depth": 1}), ranking=[{"backbone": "toy", "rank": 1}])
    assert isinstance(a.layers[0], LayerSection) and isinstance(a.shift, ShiftVerdictSection)
    assert a.freeze is not None and a.freeze.depth == 1 and a.negative_transfer is None
    assert a.sections["ranking"] == [{"backbone": "toy", "rank": 1}]  # unknown: kept as it is
    assert a.to_json() == b.to_json()
    d = json.loads(a.to_json())
    assert d["layers"] == [LAYER] and d["shift"] == VERDICT and d["freeze"] == {"depth": 1}
    assert Report.from_dict(d).to_json() == a.to_json()

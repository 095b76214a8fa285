"""The freeze rule's constants as parameters, its "about as defensible" alternative, and the shipped
leave-one-family-out calibration quoted in the rationale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import diag.predict
from diag.predict.freeze import FreezeRule, calibration, recommend_freeze
from diag.predict.negative import SCALE_MAX
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
    # only the tables the probe step decided (a family may hold tables another step decided)
    ratios = [
        r
        for f in probe
        for t, r in shipped["families"][f]["lofo_by_table"].items()
        if shipped["families"][f]["basis_by_table"][t] == "probe"
    ]
    assert len(ratios) < sum(len(shipped["families"][f]["lofo_by_table"]) for f in probe)
    rec = recommend_freeze(
        curve([0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88]), BLOCKS, n_target=300, n_classes=10
    )
    cal = rec.evidence["calibration"]
    assert cal["families"] == sorted(probe) and cal["n_tables"] == len(ratios)
    assert cal["lofo_mean"] == pytest.approx(sum(ratios) / len(ratios))
    assert cal["lofo_min"] == min(ratios) and cal["lofo_max"] == max(ratios)
    line = next(x for x in rec.rationale if x.startswith("How sure"))
    assert f"{sum(ratios) / len(ratios):.3f}" in line and f"{min(ratios):.3f}" in line
    # a 10-per-class target is matched to the tables the small-target step decided: digits and textures
    small = recommend_freeze(
        curve([0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88]), BLOCKS, n_target=100, n_classes=10
    )
    assert small.evidence["calibration"]["families"] == ["small target", "textures"]
    decided = {
        t: r
        for f in ("small target", "textures")
        for t, r in shipped["families"][f]["lofo_by_table"].items()
        if shipped["families"][f]["basis_by_table"][t] == "small target"
    }
    assert "tex-10pc" in decided and "tex-lite0" not in decided
    assert small.evidence["calibration"]["n_tables"] == len(decided)
    # below 10 per class no table was measured: the rationale says so
    tiny = recommend_freeze(
        curve([0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88]), BLOCKS, n_target=50, n_classes=10
    )
    assert "unmeasured" in " ".join(tiny.rationale) and tiny.evidence["calibration"]["families"] == []


#: Measured probe curves (``benchmarks/results/predict.json``, Lite0 on UCI digits at 30 per class):
#: Lite0's ImageNet weights shuffled within each tensor (best K 0: 0.586, K 1: 0.429) and a shuffled-label
#: memoriser (best K 3: 0.725, K 0: 0.652).
SHUFFLED_UCI = [0.733, 0.623, 0.62, 0.637, 0.69, 0.65, 0.63, 0.58, 0.54]
MEMORIZER_UCI = [0.703, 0.683, 0.717, 0.617, 0.603, 0.55, 0.437, 0.273, 0.213]


def test_a_peak_at_the_first_probed_layer_tunes_everything() -> None:
    pre = curve(SHUFFLED_UCI, std=0.017)
    rec = recommend_freeze(pre, BLOCKS, n_target=300, n_classes=10)
    assert rec.depth == 0 and rec.frozen == [] and rec.tune == BLOCKS
    assert rec.evidence["basis"] == "first-layer peak" and rec.evidence["peak_layer"] == "stem"
    assert rec.evidence["alternative_depth"] is None
    why = rec.rationale[1]
    assert "first probed layer, stem (0.73)" in why and "tune every block (K = 0)" in why
    assert "nothing worth keeping frozen" in why
    # "how sure" quotes the families whose tables this step decided (shuffled weights, in the shipped file)
    shipped = json.loads(SHIPPED.read_text())["families"]
    first = sorted(
        f for f, v in shipped.items() if "first-layer peak" in v["bases"] and v["modality"] == "image"
    )
    # shuffled weights, where the step was set, and input corruption since ImageNet Lite1/Lite2 on heavy noise
    assert first == ["input corruption", "shuffled weights"]
    assert rec.evidence["calibration"]["families"] == first
    # structural, with no constant: the offset from the peak and the blocks always tuned do not move it
    for rule in (FreezeRule(peak_offset=1), FreezeRule(peak_offset=-1), FreezeRule(min_tuned=0)):
        assert recommend_freeze(pre, BLOCKS, n_target=300, n_classes=10, rule=rule).depth == 0
    # the steps before it still come first: 15 per class tunes the last block, 5 per class the head alone
    assert recommend_freeze(pre, BLOCKS, n_target=150, n_classes=10).depth == len(BLOCKS) - 1
    assert recommend_freeze(pre, BLOCKS, n_target=50, n_classes=10).depth == len(BLOCKS)


def test_a_peak_past_the_first_layer_keeps_the_probe_step() -> None:
    # The memoriser peaks at blocks.1 with the stem within the fold spread: freeze through the peak (K 3),
    # the stem alone (K 1) is the alternative, never K 0 (measured 0.90 of the best there).
    rec = recommend_freeze(curve(MEMORIZER_UCI, std=0.033), BLOCKS, n_target=300, n_classes=10)
    assert rec.depth == 3 and rec.evidence["basis"] == "probe" and rec.evidence["alternative_depth"] == 1
    assert rec.evidence["shallowest_near_peak"] == "stem"
    # a flat curve (range within the fold spread) whose top is the first layer says nothing about depth:
    # without gradient norms the probe fallback, K 1; with a tighter spread it is a first-layer peak, K 0
    flat = curve([0.80, 0.79, 0.78, 0.79, 0.78, 0.78, 0.79, 0.78, 0.77], std=0.035)
    sharp = curve([0.80, 0.79, 0.78, 0.79, 0.78, 0.78, 0.79, 0.78, 0.77], std=0.02)
    assert recommend_freeze(sharp, BLOCKS, n_target=300, n_classes=10).depth == 0
    weak = recommend_freeze(flat, BLOCKS, n_target=300, n_classes=10)
    assert weak.depth == 1 and weak.evidence["basis"] == "probe" and "weak signal" in weak.rationale[1]
    # one point more at blocks.3 than at the stem moves the peak off the first layer: K 5 again
    moved = [*SHUFFLED_UCI[:4], 0.75, *SHUFFLED_UCI[5:]]
    assert recommend_freeze(curve(moved, std=0.017), BLOCKS, n_target=300, n_classes=10).depth == 5


#: Measured (``benchmarks/results/predict.json``, big-uci): Lite0's ImageNet weights with every conv weight
#: × 100 and BatchNorm's running statistics scaled to match, on UCI digits at 30 per class — the forward
#: pass is ImageNet Lite0's (probe peak at blocks.3), the weight scale 75.8 times He's. Measured: tune-all
#: 0.455, linear probe 0.749.
BIG_UCI = [0.74, 0.77, 0.817, 0.877, 0.96, 0.943, 0.933, 0.917, 0.847]


def test_lost_plasticity_recommends_the_linear_probe() -> None:
    pre = curve(BIG_UCI, std=0.025)
    # without the weight scale (or with a healthy one) the probe step: freeze through blocks.3, K 5
    for scale in (None, 0.80, 3.0):
        rec = recommend_freeze(pre, BLOCKS, n_target=300, n_classes=10, weight_scale=scale)
        assert rec.depth == 5 and rec.evidence["basis"] == "probe"
        assert not any("He-initialisation" in x for x in rec.rationale)
    n = len(BLOCKS)
    for scale in (75.8, 7.58, SCALE_MAX + 1e-6):
        rec = recommend_freeze(pre, BLOCKS, n_target=300, n_classes=10, weight_scale=scale)
        assert rec.depth == n and rec.frozen == BLOCKS and rec.tune == []
        assert rec.evidence["basis"] == "lost plasticity" and rec.evidence["alternative_depth"] is None
    why = recommend_freeze(pre, BLOCKS, n_target=300, n_classes=10, weight_scale=75.8).rationale[1]
    assert "75.8× the He-initialisation scale (above 3.16)" in why and "lr/|w|" in why
    assert f"K = {n}, a linear probe" in why and "some 76 times less" in why
    # the threshold is the rule's constant (shared with the negative-transfer rule)
    assert FreezeRule().scale_max == SCALE_MAX
    at_100 = recommend_freeze(
        pre, BLOCKS, n_target=300, n_classes=10, weight_scale=75.8, rule=FreezeRule(scale_max=100)
    )
    assert at_100.depth == 5
    # it comes before every other step: a first-layer peak, a small target, fewer than 10 per class
    for values, n_target in ((SHUFFLED_UCI, 300), (BIG_UCI, 150), (BIG_UCI, 50)):
        rec = recommend_freeze(curve(values), BLOCKS, n_target=n_target, n_classes=10, weight_scale=75.8)
        assert rec.depth == n and rec.evidence["basis"] == "lost plasticity"


def test_lost_plasticity_how_sure_quotes_the_large_weight_checkpoints() -> None:
    lost = json.loads(SHIPPED.read_text())["lost_plasticity"]["tables"]
    # the shipped evidence: seven checkpoints whose median layer is above the threshold (six re-scaled,
    # one trained by SGD at learning rate 1), the linear probe won on every one
    assert len(lost) == 7 and all(t["weight_scale"] > SCALE_MAX for t in lost.values())
    assert all(t["linear_probe_won"] and t["tune_all_ratio"] < 1.0 for t in lost.values())
    rec = recommend_freeze(curve(BIG_UCI, std=0.025), BLOCKS, n_target=300, n_classes=10, weight_scale=75.8)
    families = ["large weights", "too-high learning rate"]
    assert rec.evidence["calibration"] == {"families": families, "n_tables": 7}
    line = next(x for x in rec.rationale if x.startswith("How sure"))
    lo = min(t["tune_all_ratio"] for t in lost.values())
    hi = max(t["tune_all_ratio"] for t in lost.values())
    assert "the linear probe won on 7 of 7" in line and f"{lo:.2f}-{hi:.2f}" in line


def test_freeze_auto_reads_the_weight_scale_of_the_checkpoint(tmp_path: Path, lite0) -> None:
    """``diag finetune --freeze auto`` without a report: Lite0 with every conv weight × 10 and BatchNorm's
    running statistics scaled to match (the forward pass unchanged) gets the linear probe, ImageNet Lite0
    on the same target does not."""
    import copy

    import torch
    from safetensors.torch import save_file

    from diag.pipeline import recommend_for_target
    from tests.conftest import write_digit_folder

    model = copy.deepcopy(lite0.model)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.mul_(10.0)
            elif isinstance(mod, torch.nn.BatchNorm2d) and mod.running_mean is not None:
                assert mod.running_var is not None
                mod.running_mean.mul_(10.0)
                mod.running_var.mul_(100.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "big.safetensors"))
    folder = write_digit_folder(tmp_path / "d", per_class=10, classes=("0", "1", "2", "3"))
    big = recommend_for_target(folder, f"efficientnet_lite0@{tmp_path / 'big.safetensors'}", rgn=False)
    assert big.evidence["basis"] == "lost plasticity" and big.depth == big.n_blocks
    assert "× the He-initialisation scale" in big.rationale[1]
    plain = recommend_for_target(folder, lite0, rgn=False)
    assert plain.evidence["basis"] != "lost plasticity" and plain.depth < plain.n_blocks


#: Measured (``benchmarks/results/predict.json``): Lite2 on the texture target (scikit-image photos' crops,
#: 30 per class) — the probe at its ceiling from blocks.2 to blocks.6 (fold spread 0.022). Swept: K 4
#: (through the argmax, blocks.2) 0.770, K 6 (through blocks.4) 0.843, the best.
TEX_LITE2 = [0.913, 0.85, 0.937, 0.99, 0.983, 0.98, 0.977, 0.973, 0.523]


def test_a_probe_at_its_ceiling_freezes_through_the_middle_of_the_span() -> None:
    rec = recommend_freeze(curve(TEX_LITE2, std=0.022), BLOCKS, n_target=300, n_classes=10)
    # the span within the fold spread of the peak: blocks.2 .. blocks.6 (positions 3..7); middle blocks.4
    assert rec.evidence["basis"] == "probe ceiling" and rec.evidence["peak_layer"] == "blocks.2"
    assert rec.depth == 6 and rec.frozen == BLOCKS[:6]
    assert rec.evidence["alternative_depth"] == 4  # the argmax's depth
    why = " ".join(rec.rationale)
    assert "ceiling: 0.99 at blocks.2" in why and "5 layers from blocks.2 to blocks.6" in why
    # an even span takes the deeper middle: blocks.2 .. blocks.5 (positions 3..6) -> blocks.4, K 6
    even = [*TEX_LITE2[:7], 0.90, 0.52]
    assert recommend_freeze(curve(even, std=0.022), BLOCKS, n_target=300, n_classes=10).depth == 6
    # the span, not its members: a dip inside it does not move the middle
    dip = [*TEX_LITE2[:5], 0.90, *TEX_LITE2[6:]]
    assert recommend_freeze(curve(dip, std=0.022), BLOCKS, n_target=300, n_classes=10).depth == 6
    # below the ceiling (peak + fold spread < 1) the argmax decides: the same shape at 0.95
    lower = [v - 0.04 for v in TEX_LITE2]
    rec = recommend_freeze(curve(lower, std=0.022), BLOCKS, n_target=300, n_classes=10)
    assert rec.evidence["basis"] == "probe" and rec.depth == 4
    # a single layer at the ceiling: its middle is itself, the argmax's depth, no alternative
    sharp = [0.5, 0.6, 0.7, 0.8, 0.995, 0.9, 0.85, 0.8, 0.7]
    rec = recommend_freeze(curve(sharp, std=0.01), BLOCKS, n_target=300, n_classes=10)
    assert rec.depth == 5 and rec.evidence["alternative_depth"] is None


TEXT_BLOCKS = ["embeddings", *[f"layer.{i}" for i in range(6)]]


def _text_curve(std: float) -> dict[str, dict]:
    """A MiniLM-like probe curve peaking at layer.3 (K 5), with fold spread ``std``."""
    values = [0.60, 0.70, 0.80, 0.86, 0.88, 0.84, 0.80]
    return {
        name: {"scores": {"linear_probe_accuracy": v}, "linear_probe_std": std}
        for name, v in zip(TEXT_BLOCKS, values, strict=True)
    }


def test_an_unmeasured_step_with_an_alternative_points_to_the_search_once(monkeypatch) -> None:
    # A text backbone decided by the probe step, with a calibration in which no text table was (only an
    # image family): "How sure" says unmeasured, and the alternative names the search.
    import diag.predict.freeze as freeze_module

    shipped = json.loads(SHIPPED.read_text())
    image_only = {
        **shipped,
        "families": {f: v for f, v in shipped["families"].items() if v.get("modality") != "text"},
    }
    monkeypatch.setattr(freeze_module, "calibration", lambda: image_only)
    pre = _text_curve(std=0.03)
    rec = recommend_freeze(pre, TEXT_BLOCKS, n_target=1000, n_classes=2)
    assert rec.evidence["basis"] == "probe" and rec.depth == 5 and rec.evidence["alternative_depth"] == 4
    line = next(x for x in rec.rationale if x.startswith("How sure"))
    assert "(unmeasured)." in line and line.count("--freeze search") == 1
    # K 5 already tunes the last two blocks: the search's third candidate is the alternative
    assert "(`--freeze 4` trains it)" in line
    assert "checks K = 5 against tuning every block and the alternative for about one run more" in line
    # without an alternative the unmeasured line itself points to the search
    rec = recommend_freeze(_text_curve(std=0.01), TEXT_BLOCKS, n_target=1000, n_classes=2)
    line = next(x for x in rec.rationale if x.startswith("How sure"))
    assert rec.evidence["alternative_depth"] is None and line.count("--freeze search") == 1
    assert "checks the depth for a fraction of a run" in line


def test_a_text_target_decided_by_the_probe_step_quotes_the_text_tables() -> None:
    # the shipped calibration holds text tables the probe step decided (Rotten Tomatoes sentiment, ...): a
    # text target it decides is measured against those, and only those
    shipped = json.loads(SHIPPED.read_text())
    text = {
        t: r
        for f, v in shipped["families"].items()
        if v["modality"] == "text"
        for t, r in v["lofo_by_table"].items()
        if v["basis_by_table"][t] == "probe"
    }
    assert text, "the shipped calibration has a text table decided by the probe step"
    rec = recommend_freeze(_text_curve(std=0.01), TEXT_BLOCKS, n_target=1000, n_classes=2)
    cal = rec.evidence["calibration"]
    assert rec.evidence["basis"] == "probe" and cal["families"] == ["text"]
    assert cal["n_tables"] == len(text) and cal["lofo_mean"] == pytest.approx(sum(text.values()) / len(text))
    assert cal["lofo_min"] == min(text.values())

"""Negative-transfer verdict, freeze-depth recommendation and backbone ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diag.errors import DataError
from diag.predict.freeze import recommend_freeze
from diag.predict.layers import layer_transfer
from diag.predict.negative import negative_transfer
from tests.predict.test_profile import make_embeddings

BLOCKS = ["stem", *[f"blocks.{i}" for i in range(7)], "pooled"]


def curve(values: list[float], std: float = 0.01) -> dict[str, dict]:
    return {
        name: {"scores": {"linear_probe_accuracy": v, "logme": v - 1}, "linear_probe_std": std}
        for name, v in zip(BLOCKS, values, strict=True)
    }


def test_freeze_depth_keeps_blocks_up_to_the_probe_peak() -> None:
    pre = curve([0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88])
    rec = recommend_freeze(pre, BLOCKS, n_target=1000, n_classes=10)
    assert rec.depth == 6  # peak at blocks.4 (index 5): freeze stem..blocks.4
    assert rec.frozen == BLOCKS[:6] and rec.tune == ["blocks.5", "blocks.6", "pooled"]
    assert rec.n_blocks == 9 and rec.lr_scheme == "standard"
    assert "blocks.4" in rec.rationale[1] and "0.95" in rec.rationale[1]
    assert rec.evidence["peak_layer"] == "blocks.4" and rec.evidence["basis"] == "probe"
    # The target size does not move the depth (measured: one block more at 30 per class lost on 6 of 10
    # sweeps), except below 10 per class (a linear probe).
    assert recommend_freeze(pre, BLOCKS, n_target=300, n_classes=10).depth == 6


def test_freeze_depth_names_the_shallowest_layer_near_the_peak() -> None:
    # blocks.3 is within one fold spread (0.03) of the best (blocks.5): the rationale says so.
    pre = curve([0.5, 0.55, 0.7, 0.8, 0.93, 0.94, 0.95, 0.9, 0.88], std=0.03)
    rec = recommend_freeze(pre, BLOCKS, n_target=1000, n_classes=10)
    assert rec.depth == 7 and rec.evidence["shallowest_near_peak"] == "blocks.3"
    assert "blocks.3 (0.93) is within the fold spread (0.03)" in rec.rationale[1]


def test_freeze_depth_edge_cases_stay_in_range() -> None:
    rising = curve([0.1 * i for i in range(1, 10)])
    rec = recommend_freeze(rising, BLOCKS, n_target=300, n_classes=10)
    assert rec.depth == len(BLOCKS) - 2  # peak at the top: still tune the last two blocks
    tiny = recommend_freeze(rising, BLOCKS, n_target=50, n_classes=10)
    assert tiny.depth == len(BLOCKS) and tiny.tune == []  # 5 per class: a linear probe
    assert "examples per class" in tiny.rationale[1]
    # 10 to 19 per class: only the last block is tuned, wherever the probe peaks.
    peaked = curve([0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88])
    for n_target in (100, 190):
        small = recommend_freeze(peaked, BLOCKS, n_target=n_target, n_classes=10)
        assert small.depth == len(BLOCKS) - 1 and small.tune == ["pooled"]
        assert small.evidence["basis"] == "small target" and "blocks.4" in small.rationale[1]
    assert recommend_freeze(peaked, BLOCKS, n_target=200, n_classes=10).depth == 6  # 20 per class: the peak
    shift = {
        "is_shift": True,
        "effect": {"name": "c2st_auc", "layer": "pooled", "value": 0.97, "ci": [0.95, 0.99]},
        "onset_layer": "stem",
        "level": "input-level",
    }
    good = curve([0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88])
    rec = recommend_freeze(good, BLOCKS, n_target=300, n_classes=10, shift=shift)
    # LP-FT lost to the standard recipe on every truth table where it would apply: named, not recommended.
    assert rec.lr_scheme == "standard"
    assert any("surgical" in r for r in rec.rationale)
    assert any("LP-FT" in r and "not recommended" in r for r in rec.rationale)
    for values in (rising, good, curve([0.9] * 9)):
        assert 0 <= recommend_freeze(values, BLOCKS, n_target=300, n_classes=10).depth <= len(BLOCKS)


def test_negative_transfer_risk_follows_the_feature_advantage_and_data_size() -> None:
    from diag.predict.negative import head_start

    strong = curve([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88])
    weak = curve([0.5, 0.6, 0.7, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85])
    low = negative_transfer(strong, weak, n_target=300, n_classes=10)
    assert low.risk == "low" and low.probability < 0.05
    assert low.signals["feature_advantage"] == pytest.approx(0.10)
    assert low.signals["head_start"] == pytest.approx(0.30)
    assert "0.95" in low.evidence[0] and "0.85" in low.evidence[0]
    # Features far worse than random ones (a backbone that memorised noise): scratch training wins.
    broken = curve([0.3, 0.35, 0.4, 0.45, 0.5, 0.5, 0.45, 0.4, 0.35])
    high = negative_transfer(broken, strong, n_target=300, n_classes=10)
    assert high.risk == "high" and high.probability > 0.9  # a = -0.45, 0.15 beyond the head start
    assert high.drivers[0] == "feature advantage"
    # Closed form: p = sigmoid(20 (-a - head_start)), head start 0.30 - 0.04 log2(per class / 30).
    assert head_start(30) == pytest.approx(0.30) and head_start(120) == pytest.approx(0.22)
    assert head_start(1e6) == 0.0
    mid = negative_transfer(broken, strong, n_target=1200, n_classes=10)
    assert mid.probability == pytest.approx(1 / (1 + np.exp(-20 * (0.45 - 0.22))), abs=1e-4)
    # Monotone: less advantage, more data -> more risk.
    p = [
        negative_transfer(curve([0.2] * 8 + [0.85 + a]), weak, n_target=300, n_classes=10).probability
        for a in (-0.5, -0.3, -0.1, 0.1)
    ]
    assert p == sorted(p, reverse=True) and p[0] > 0.9 > 0.1 > p[-1]
    same = curve([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88])
    q = [
        negative_transfer(same, strong, n_target=n, n_classes=10).probability for n in (300, 30000, 3_000_000)
    ]
    assert q == sorted(q) and q[-1] == pytest.approx(0.5)  # equal features, scratch fully caught up


def test_layer_transfer_needs_labels_with_two_classes() -> None:
    rng = np.random.default_rng(0)
    unlabelled = make_embeddings({"a": rng.standard_normal((30, 4))})
    with pytest.raises(DataError, match="no labels"):
        layer_transfer(unlabelled)
    one = make_embeddings({"a": rng.standard_normal((30, 4))}, labels=np.zeros(30, int), classes=("x",))
    with pytest.raises(DataError, match="single class"):
        layer_transfer(one)


def test_layer_transfer_on_separable_features() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 20)
    sep = rng.standard_normal((60, 5)) + 4 * np.eye(5)[y]
    noise = rng.standard_normal((60, 5))
    emb = make_embeddings({"noise": noise, "sep": sep}, labels=y, classes=("a", "b", "c"))
    res = layer_transfer(emb)
    assert res["sep"]["scores"]["linear_probe_accuracy"] > 0.9
    assert res["noise"]["scores"]["linear_probe_accuracy"] < 0.6
    assert res["sep"]["scores"]["logme"] > res["noise"]["scores"]["logme"]
    assert "linear_probe_std" in res["sep"]


def test_rank_is_deterministic_and_pretrained_beats_its_twin(tmp_path: Path) -> None:
    from diag.pipeline import rank_backbones
    from diag.predict.rank import write_ranking
    from tests.conftest import write_digit_folder

    folder = write_digit_folder(tmp_path / "d", per_class=10, classes=("0", "1", "2", "3"))
    a = rank_backbones(folder, ["efficientnet_lite0"], image_size=32, n_bootstrap=30, seed=1)
    b = rank_backbones(folder, ["efficientnet_lite0"], image_size=32, n_bootstrap=30, seed=1)
    assert [r["backbone"] for r in a.rows] == [r["backbone"] for r in b.rows]
    assert [r["score"] for r in a.rows] == [r["score"] for r in b.rows]
    assert a.stability == b.stability
    assert a.top == "efficientnet_lite0"
    assert a.rows[0]["score"] > a.rows[1]["score"]
    assert 0.5 <= a.stability <= 1.0
    assert sum(r["top_frequency"] for r in a.rows) == pytest.approx(1.0)
    path = write_ranking(a, tmp_path / "out")
    assert path.is_file() and '"diag.rank"' in path.read_text()


def test_finetune_freeze_auto_runs_with_the_recommended_depth(tmp_path: Path, capsys) -> None:
    import json

    from tests.conftest import run_finetune_cli

    out, printed = run_finetune_cli(tmp_path, capsys, "auto", epochs=1)
    assert "--freeze auto: K = " in printed and "Linear-probe accuracy of the target by layer" in printed
    assert "Auto-RGN" in printed  # the gradient norms are evidence here too
    k = int(printed.split("--freeze auto: K = ")[1].split()[0])
    result = json.loads((out / "result.json").read_text())
    assert result["freeze"] == k and 0 <= k <= result["n_blocks"]


def test_a_flat_probe_curve_hands_the_depth_to_the_gradient_norms() -> None:
    """MiniLM on the debates (measured): every layer probes at 0.774-0.795, within the probe's fold spread
    0.026, so the curve cannot place K; the target's relative gradient norms (0.30, 0.60, 0.64, 0.77,
    0.95, 1.00, 0.90) pull hardest on layer.4 (Auto-RGN's argmax): tune from there."""
    blocks = ["embeddings", *[f"layer.{i}" for i in range(6)]]
    pre = {
        b: {"scores": {"linear_probe_accuracy": v}, "linear_probe_std": 0.026}
        for b, v in zip(blocks, [0.795, 0.774, 0.792, 0.783, 0.780, 0.780, 0.789], strict=True)
    }
    rgn = dict(zip(blocks, [0.30, 0.60, 0.64, 0.77, 0.95, 1.00, 0.90], strict=True))
    rec = recommend_freeze(pre, blocks, n_target=332, n_classes=2, rgn=rgn)
    assert rec.depth == 5 and rec.tune == ["layer.4", "layer.5"]
    assert rec.evidence["basis"] == "rgn" and rec.evidence["probe_range"] == pytest.approx(0.021)
    assert "flat" in rec.rationale[1] and "pulls hardest on layer.4" in rec.rationale[1]
    # A range just over the fold spread is informative: its peak is the first layer, so K 0.
    sharp = {b: {**v, "linear_probe_std": 0.02} for b, v in pre.items()}
    peaked = recommend_freeze(sharp, blocks, n_target=332, n_classes=2, rgn=rgn)
    assert peaked.depth == 0 and peaked.evidence["basis"] == "first-layer peak"
    # Without gradient norms the flat curve falls back to the probe rule, and says it is weak evidence.
    plain = recommend_freeze(pre, blocks, n_target=332, n_classes=2)
    assert plain.depth == 1 and plain.evidence["basis"] == "probe" and "weak signal" in plain.rationale[1]
    # An informative curve ignores the gradient norms for the depth but reports them.
    steep = curve([0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88])
    flat_rgn = dict.fromkeys(BLOCKS, 1.0)
    rec2 = recommend_freeze(steep, BLOCKS, n_target=1000, n_classes=10, rgn=flat_rgn)
    assert rec2.depth == 6 and rec2.evidence["rgn"] == flat_rgn and "Auto-RGN" in rec2.rationale[-1]


def test_a_blocked_gradient_raises_the_risk_whatever_the_features_probe() -> None:
    from diag.predict.negative import gradient_reach

    healthy = dict(zip(BLOCKS, [0.5, 0.8, 0.6, 0.4, 0.35, 0.45, 0.4, 1.0, 0.1], strict=True))
    blocked = dict(zip(BLOCKS, [0.0, 0.01, 0.02, 0.01, 0.06, 0.1, 0.2, 1.0, 0.95], strict=True))
    assert gradient_reach(healthy) == pytest.approx((0.5 + 0.8 + 0.6 + 0.4 + 0.35) / 5)
    assert gradient_reach(blocked) == pytest.approx(0.1 / 5)
    pre = curve([0.5, 0.55, 0.7, 0.75, 0.77, 0.75, 0.77, 0.78, 0.76])
    twin = curve([0.6, 0.65, 0.7, 0.8, 0.83, 0.8, 0.77, 0.77, 0.75])
    ok = negative_transfer(pre, twin, n_target=300, n_classes=10, rgn=healthy)
    bad = negative_transfer(pre, twin, n_target=300, n_classes=10, rgn=blocked)
    assert ok.risk == "low" and ok.signals["gradient_reach"] == pytest.approx(0.53)
    assert bad.risk == "high" and bad.drivers[0] == "gradient reach"
    # Closed form: z = 20 (0.05 - 0.30) + 8 (1 - 0.02 / 0.1)
    assert bad.probability == pytest.approx(1 / (1 + np.exp(-(20 * (0.05 - 0.30) + 8 * 0.8))), abs=1e-4)


def test_a_blocked_gradient_judges_the_final_features_the_head_sees() -> None:
    """Lite0 x 0.01 on UCI (measured): the probe at blocks.3 beats the twin's best (0.94 vs 0.83), but the
    deep blocks collapsed (final probe 0.10 vs the twin's 0.75) and no gradient reaches the input side;
    scratch training won by 0.44. The advantage moves to the final layer's by the blocked fraction."""
    pre = curve([0.6, 0.7, 0.85, 0.94, 0.5, 0.3, 0.2, 0.12, 0.10])
    twin = curve([0.6, 0.65, 0.7, 0.83, 0.8, 0.8, 0.78, 0.76, 0.75])
    healthy = dict(zip(BLOCKS, [0.5, 0.8, 0.6, 0.4, 0.35, 0.45, 0.4, 1.0, 0.1], strict=True))
    dead = dict(zip(BLOCKS, [0.0] * 7 + [1.0, 0.5], strict=True))
    half = dict(zip(BLOCKS, [0.05] * 5 + [0.3, 0.5, 1.0, 0.5], strict=True))  # reach 0.05: blocked 0.5
    sig = 1.0 / (1.0 + np.exp(-np.array([15.0, 20 * (0.27 - 0.30) + 8 * 0.5, 20 * (-0.11 - 0.30)])))
    bad = negative_transfer(pre, twin, n_target=300, n_classes=10, rgn=dead)
    assert bad.signals["feature_advantage"] == pytest.approx(0.11)
    assert bad.signals["advantage_used"] == pytest.approx(-0.65) and bad.risk == "high"
    # z = 20 (0.65 - 0.30) + 8 · 1
    assert bad.probability == pytest.approx(sig[0], abs=1e-4)
    assert "advantage counted is -0.65" in " ".join(bad.evidence)
    part = negative_transfer(pre, twin, n_target=300, n_classes=10, rgn=half)
    # a = 0.11 + 0.5 (-0.65 - 0.11) = -0.27
    assert part.signals["advantage_used"] == pytest.approx(-0.27)
    assert part.probability == pytest.approx(sig[1], abs=1e-4)
    ok = negative_transfer(pre, twin, n_target=300, n_classes=10, rgn=healthy)  # the gradient reaches
    assert ok.signals["advantage_used"] == pytest.approx(0.11) and ok.risk == "low"
    assert ok.probability == pytest.approx(sig[2], abs=1e-4)
    # final features better than the best layer's: the advantage is not raised
    good_final = negative_transfer(twin, pre, n_target=300, n_classes=10, rgn=dead)
    assert good_final.signals["advantage_used"] == pytest.approx(-0.11)


def test_a_high_negative_transfer_risk_is_part_of_the_freeze_rule() -> None:
    pre = curve([0.5, 0.55, 0.7, 0.8, 0.9, 0.95, 0.93, 0.9, 0.88])
    twin = curve([0.6, 0.7, 0.8, 0.9, 0.97, 0.99, 0.99, 0.98, 0.97])
    dead = dict(zip(BLOCKS, [0.0] * 5 + [0.5, 0.8, 1.0, 0.9], strict=True))  # no gradient reach
    risky = negative_transfer(pre, twin, n_target=3000, n_classes=10, rgn=dead)
    assert risky.risk == "high"
    plain = recommend_freeze(pre, BLOCKS, n_target=300, n_classes=10)
    warned = recommend_freeze(pre, BLOCKS, n_target=300, n_classes=10, negative=risky)
    assert warned.depth == plain.depth and warned.rationale[:-1] == plain.rationale
    assert warned.rationale[-1].startswith(f"Negative-transfer risk is high (p = {risky.probability:.2f})")
    assert warned.evidence == {**plain.evidence, "negative_transfer_risk": "high"}
    low = negative_transfer(pre, pre, n_target=300, n_classes=10)
    assert low.risk != "high"
    assert recommend_freeze(pre, BLOCKS, n_target=300, n_classes=10, negative=low) == plain

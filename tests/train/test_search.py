"""Budgeted freeze search: the rung plan and its cost (exact, in epochs), successive-halving bookkeeping,
and the real search's plumbing on a tiny random-init EfficientNet at 32 px."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from diag.errors import ConfigError
from diag.models import load
from diag.train import FinetuneConfig, FinetuneResult
from diag.train.search import (
    freeze_search,
    incumbent_margin,
    plan_rungs,
    search_candidates,
    successive_halving,
)
from tests.conftest import run_finetune_cli, write_digit_folder

TINY = "timm:test_efficientnet"


def test_plan_rungs_hand_computed() -> None:
    # 6 epochs, budget 0.5 = 3 epochs for the losers. Three candidates at rungs 1, 2: one loses after
    # epoch 1 (1 epoch), one after epoch 2 (2 epochs) = 3. Four would cost 2x1 + 1x2 = 4 > 3.
    assert plan_rungs(4, 6, 0.5) == (3, [1, 2])
    # 30 epochs, 15 for the losers: four candidates at rungs 3, 6 cost 2x3 + 1x6 = 12; at 4, 8: 16 > 15.
    assert plan_rungs(4, 30, 0.5) == (4, [3, 6])
    # two candidates: one rung, the loser trains at most 3 of 6 epochs
    assert plan_rungs(2, 6, 0.5) == (2, [3])
    assert plan_rungs(4, 4, 0.5) == (2, [2])
    assert plan_rungs(4, 6, 0.0) == (1, [])  # no budget: the rule's depth alone
    assert plan_rungs(1, 6, 2.0) == (1, [])
    with pytest.raises(ConfigError, match="search_budget"):
        plan_rungs(3, 6, -0.1)
    with pytest.raises(ConfigError, match="epochs"):
        plan_rungs(3, 0, 0.5)


def test_search_candidates() -> None:
    """The rule's depth, the last two blocks tuned, every block tuned, the alternative, then neighbours."""
    assert search_candidates(5, 4, 9) == [5, 7, 0]
    assert search_candidates(5, 4, 9, limit=4) == [5, 7, 0, 4]
    assert search_candidates(5, None, 9, limit=4) == [5, 7, 0, 6]
    assert search_candidates(7, 4, 9) == [7, 0, 4]  # the rule already tunes the last two blocks
    assert search_candidates(0, None, 9) == [0, 7, 1]
    assert search_candidates(9, None, 9, limit=4) == [9, 7, 0, 8]
    assert search_candidates(8, 5, 9, limit=2) == [8, 7]
    assert search_candidates(1, None, 1) == [1, 0]  # one block: no "last two"
    with pytest.raises(ConfigError, match="depth"):
        search_candidates(10, None, 9)


@pytest.mark.parametrize(
    ("n", "epochs", "budget"), list(itertools.product([2, 3, 4, 5], [1, 3, 6, 10], [0.25, 0.5, 1.0]))
)
def test_successive_halving_spends_what_it_says(n: int, epochs: int, budget: float) -> None:
    """The cost is recounted from the calls made (the deepest epoch asked of each depth), not from the
    plan; it never exceeds the budget; the winner has the best score at the last rung."""
    curves = {c: [0.1 * c + 0.01 * e * (-1) ** c for e in range(epochs + 1)] for c in range(n)}
    calls: list[tuple[int, int]] = []

    def train_to(c: int, e: int) -> float:
        assert 1 <= e <= epochs
        calls.append((c, e))
        return max(curves[c][1 : e + 1])

    res = successive_halving(list(range(n)), epochs, budget, train_to)
    deepest = {c: max(e for cc, e in calls if cc == c) for c, _ in calls}
    assert deepest[res.winner] == epochs and calls[-1] == (res.winner, epochs)
    assert res.epochs_trained == deepest
    lost = sum(e for c, e in deepest.items() if c != res.winner)
    assert res.extra_cost == pytest.approx(lost / epochs, abs=1e-12)
    assert res.total_cost == pytest.approx(sum(deepest.values()) / epochs, abs=1e-12)
    assert res.extra_cost <= budget + 1e-12
    if res.rungs:
        last = res.rungs[-1]
        assert res.winner == max(last["scores"], key=lambda c: (last["scores"][c], -c))
        # halving: each rung keeps ceil(alive / 2)
        alive = len(res.candidates)
        for rung in res.rungs:
            assert len(rung["scores"]) == alive
            alive = math.ceil(alive / 2)
            assert len(rung["kept"]) == alive
    else:
        assert res.candidates == [0] and res.extra_cost == 0


def test_ties_go_to_the_more_trusted_candidate() -> None:
    res = successive_halving([7, 6, 8], 6, 0.5, lambda c, e: 0.5)
    assert res.winner == 7 and res.rungs[0]["kept"] == [7, 6] and res.rungs[1]["kept"] == [7]
    assert res.epochs_trained == {7: 6, 6: 2, 8: 1} and res.extra_cost == 0.5


def test_a_challenger_displaces_the_rules_depth_only_beyond_the_validation_noise() -> None:
    # two standard errors of the difference of two accuracies at p = 0.8 on 500 items: 2 sqrt(0.32 / 500)
    assert incumbent_margin(0.8, 500) == pytest.approx(2 * math.sqrt(2 * 0.8 * 0.2 / 500), rel=1e-12)
    assert incumbent_margin(0.8, 500) == pytest.approx(0.050596, abs=1e-6)
    assert incumbent_margin(0.8, None) == 0.0 and incumbent_margin(0.8, 500, z=0) == 0.0
    assert incumbent_margin(1.0, 500) == 0.0
    assert incumbent_margin(0.5, 100, z=1) == pytest.approx(math.sqrt(0.005))
    # 2 candidates, 6 epochs, budget 0.5: one rung at epoch 3
    lead = {5: 0.80, 6: 0.84}  # the challenger leads by 0.04 < 0.0506: the rule's depth stays
    res = successive_halving([5, 6], 6, 0.5, lambda c, e: lead[c], n_val=500)
    assert res.winner == 5 and res.rungs[0]["incumbent_margin"] == pytest.approx(0.050596, abs=1e-6)
    assert successive_halving([5, 6], 6, 0.5, lambda c, e: lead[c]).winner == 6  # plain halving
    far = {5: 0.80, 6: 0.86}  # by 0.06: displaced
    assert successive_halving([5, 6], 6, 0.5, lambda c, e: far[c], n_val=500).winner == 6
    # a depth that freezes fewer blocks is not handicapped (early epochs favour freezing more): it only
    # has to lead
    assert successive_halving([5, 4], 6, 0.5, lambda c, e: {5: 0.80, 4: 0.81}[c], n_val=500).winner == 4
    assert successive_halving([5, 4], 6, 0.5, lambda c, e: {5: 0.80, 4: 0.80}[c], n_val=500).winner == 5
    # the handicap is the deeper depths' at every comparison: K 8's 0.74 ranks as 0.74 - 0.058 (the margin
    # at the incumbent's 0.70) = 0.682, below the incumbent's 0.70 and K 6's 0.72
    three = {7: 0.70, 6: 0.72, 8: 0.74}
    res3 = successive_halving([7, 6, 8], 6, 0.5, lambda c, e: three[c], n_val=lambda: 500)
    assert res3.rungs[0]["incumbent_margin"] == pytest.approx(2 * math.sqrt(2 * 0.7 * 0.3 / 500), rel=1e-12)
    assert res3.rungs[0]["kept"] == [6, 7] and res3.winner == 6


@pytest.mark.usefixtures("one_torch_thread")
def test_freeze_search_trains_trials_and_the_winner(tmp_path: Path) -> None:
    """Plumbing on a tiny random-init model: 4 epochs, budget 0.5 -> two candidates, one rung at epoch 2;
    the loser's run stops after 2 epochs, the winner resumes to 4; a rerun trains nothing."""
    digits = write_digit_folder(tmp_path / "digits", per_class=6)
    tiny = load(TINY, pretrained=False, image_size=32, seed=0)
    cfg = FinetuneConfig(epochs=4, batch_size=6, image_size=32, val_fraction=0.34)
    res, found = freeze_search(digits, tiny, cfg, out=tmp_path / "run", candidates=[3, 5, 4], budget=0.5)
    assert found.candidates == [3, 5] and [r["epochs"] for r in found.rungs] == [2]
    trials = {k: FinetuneResult.load(tmp_path / "run" / "trials" / f"freeze-{k}") for k in (3, 5)}
    loser = 5 if found.winner == 3 else 3
    assert trials[found.winner].status == "completed" and trials[found.winner].epochs_completed == 4
    assert [h["epoch"] for h in trials[found.winner].history] == [1, 2, 3, 4]
    assert trials[loser].status == "stopped" and trials[loser].epochs_completed == 2
    assert (tmp_path / "run" / "trials" / f"freeze-{loser}" / "last.pt").exists()  # could resume
    assert res.freeze == found.winner and res.best_val_accuracy == pytest.approx(found.winner_score, abs=1e-6)
    # measured from the run files: the loser's epochs over one run's
    assert found.extra_cost == trials[loser].epochs_completed / 4 == 0.5
    assert found.rungs[0]["scores"][loser] == max(h["val_acc"] for h in trials[loser].history)
    saved = json.loads((tmp_path / "run" / "search.json").read_text())
    assert saved["winner"] == found.winner and saved["extra_cost"] == 0.5
    assert FinetuneResult.load(tmp_path / "run") == trials[found.winner]
    again, found2 = freeze_search(digits, tiny, cfg, out=tmp_path / "run", candidates=[3, 5, 4], budget=0.5)
    assert found2 == found and again == res


@pytest.mark.usefixtures("one_torch_thread")
def test_cli_freeze_search_prints_its_rungs_and_trains_the_winner(tmp_path: Path, capsys) -> None:
    """``diag finetune --freeze search`` end to end (Lite0 at 32 px, 2 epochs, budget 0.5: two candidates,
    one rung at epoch 1): the rung line names the incumbent's margin, the winner's run is the output."""
    out, printed = run_finetune_cli(tmp_path, capsys, "search", epochs=2)
    found = json.loads((out / "search.json").read_text())
    result = json.loads((out / "result.json").read_text())
    first, rung = found["candidates"][0], found["rungs"][0]
    assert len(found["candidates"]) == 2 and [r["epochs"] for r in found["rungs"]] == [1]
    # the margin is the incumbent's score's, on the run's own validation items
    margin = incumbent_margin(rung["scores"][str(first)], result["n_val"])
    assert rung["incumbent_margin"] == pytest.approx(margin, rel=1e-12)
    assert "rung at epoch 1: " in printed and f"--freeze search: K = {found['winner']}" in printed
    if margin > 0:  # 0 only when the incumbent scored 0 or 1 at the rung (nothing to print then)
        assert f"(a depth freezing more than K {first} must beat it by {margin:.3f})" in printed
    assert result["freeze"] == found["winner"] and result["epochs_completed"] == 2
    assert found["extra_cost"] == 0.5

"""SFDA and the k-NN accuracy as scores of ``diag rank``: accepted, computed, bootstrapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diag.config import RankConfig
from diag.errors import ConfigError
from diag.predict.rank import RANK_SCORES, bootstrap_top_frequency, rank_candidates
from diag.stats.transfer import sfda_score


def test_sfda_and_knn_are_rank_scores() -> None:
    assert {"sfda", "knn_accuracy"} <= set(RANK_SCORES)
    assert RankConfig(by="sfda").by == "sfda"
    with pytest.raises(ConfigError, match="by must be one of"):
        RankConfig(by="sfda2")


def test_sfda_bootstrap_prefers_the_informative_features() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 20)
    good = 0.3 * (rng.normal(size=(60, 6)) + 2.5 * np.eye(6)[y])
    noise = 0.3 * rng.normal(size=(60, 6))
    freq = bootstrap_top_frequency({"good": good, "noise": noise}, y, "sfda", 20, seed=0)
    assert freq["good"] == 1.0 and freq["noise"] == 0.0
    rows = [
        {"backbone": k, "pretrained": True, "num_params": 1, "score": sfda_score(f, y)}
        for k, f in (("noise", noise), ("good", good))
    ]
    ranking = rank_candidates(
        rows, {"good": good, "noise": noise}, y, by="sfda", n_bootstrap=10, seed=0, seconds=0
    )
    assert ranking.top == "good" and ranking.stability == 1.0 and ranking.n_bootstrap == 10


@pytest.mark.slow  # embeds 40 images with two backbones (about 10 s alone, 35 s on 2 busy cores)
def test_rank_backbones_by_sfda_records_sfda_and_knn(tmp_path: Path) -> None:
    from diag.pipeline import rank_backbones
    from tests.conftest import write_digit_folder

    folder = write_digit_folder(tmp_path / "d", per_class=10, classes=("0", "1", "2", "3"))
    ranking = rank_backbones(folder, ["efficientnet_lite0"], image_size=32, by="sfda", n_bootstrap=5, seed=1)
    assert ranking.by == "sfda" and ranking.n_bootstrap == 5
    for row in ranking.rows:
        assert row["score"] == row["scores"]["sfda"] and row["score"] <= 0.0
        assert 0.0 <= row["scores"]["knn_accuracy"] <= 1.0

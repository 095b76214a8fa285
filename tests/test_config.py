"""DiagnoseConfig and RankConfig: one set of defaults, help text, validation, and the keywords over them."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest

from diag.config import DiagnoseConfig, RankConfig, help_text
from diag.engine.extract import ExtractConfig
from diag.errors import ConfigError
from diag.pipeline import diagnose
from tests.predict.test_profile import make_embeddings


def test_defaults_are_the_documented_ones_and_every_field_has_help() -> None:
    cfg = DiagnoseConfig()
    assert cfg.n_permutations == 2000 and cfg.alpha == 0.05 and cfg.seed == 0
    assert cfg.transfer and cfg.rgn and cfg.use_cache and cfg.pretrained
    assert cfg.extract == ExtractConfig()
    assert cfg.data_options == {"text_column": "text", "label_column": "label", "on_bad_rows": "skip"}
    strict = DiagnoseConfig(strict=True, image_column="path", hf_split="train").data_options
    assert strict == {
        "text_column": "text", "label_column": "label", "on_bad_rows": "error", "image_column": "path",
        "hf_split": "train",
    }  # fmt: skip
    for config in (DiagnoseConfig, RankConfig):
        text = help_text(config)
        assert set(text) == {f.name for f in fields(config)} and all(text.values())
    assert RankConfig().by == "logme" and RankConfig().n_bootstrap == 200


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_permutations", 0, "n_permutations must be an integer >= 1; got 0."),
        ("n_permutations", 10.0, "n_permutations must be an integer >= 1; got 10.0."),
        ("alpha", 1.0, "alpha must be in (0, 1); got 1.0."),
        ("alpha", True, "alpha must be in (0, 1); got True."),
        ("seed", -1, "seed must be an integer >= 0; got -1."),
        ("image_size", 0, "image_size must be an integer >= 1, or None; got 0."),
        ("transfer", "yes", "transfer must be True or False; got 'yes'."),
        ("label_column", "", "label_column must be a non-empty column name; got ''."),
        ("extract", "cpu", "extract must be an ExtractConfig; got 'cpu'."),
    ],
)
def test_diagnose_config_is_validated_on_construction(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        DiagnoseConfig(**{field: value})
    assert str(err.value) == message
    with pytest.raises(ConfigError):  # a changed copy is checked again
        replace(DiagnoseConfig(), **{field: value})


def test_rank_config_is_validated_on_construction() -> None:
    with pytest.raises(ConfigError, match="by must be one of logme, h_score_shrinkage"):
        RankConfig(by="leep")
    with pytest.raises(ConfigError, match="n_bootstrap must be an integer >= 0"):
        RankConfig(n_bootstrap=-1)


def _pair() -> tuple:
    rng = np.random.default_rng(0)
    src = make_embeddings({"a": rng.normal(size=(40, 4)), "b": rng.normal(size=(40, 3))}, backbone="s")
    tgt = make_embeddings({"a": rng.normal(size=(40, 4)) + 2, "b": rng.normal(size=(40, 3))}, backbone="s")
    return src, tgt


def test_diagnose_takes_the_config_and_keywords_override_it() -> None:
    src, tgt = _pair()
    cfg = DiagnoseConfig(n_permutations=99, alpha=0.01, transfer=False)
    by_config = diagnose(src, tgt, "unused", cfg)
    assert by_config.meta["config"]["shift"]["n_permutations"] == 99
    by_keywords = diagnose(src, tgt, "unused", n_permutations=99, alpha=0.01, transfer=False)

    def stats(rep: object) -> list[dict]:
        return [{k: v for k, v in x["shift"].items() if k != "seconds"} for x in rep.to_dict()["layers"]]

    assert stats(by_config) == stats(by_keywords)
    overridden = diagnose(src, tgt, "unused", cfg, n_permutations=49)
    assert overridden.meta["config"]["shift"]["n_permutations"] == 49
    assert overridden.meta["config"]["extract"] == by_config.meta["config"]["extract"]
    with pytest.raises(ConfigError, match="alpha must be in"):  # before any statistic runs
        diagnose(src, tgt, "unused", alpha=2.0)

"""diag.predict.streaming: the profile above the size threshold, against the exact path on the same data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from diag.config import DiagnoseConfig
from diag.errors import ConfigError
from diag.predict.profile import shift_profile
from diag.predict.streaming import (
    C2ST_PER_SIDE,
    OOD_INDEX,
    STREAMING_ABOVE,
    layer_fields,
    streaming_layer,
    streaming_sizes,
)
from diag.report.schema import Report, load_report
from diag.report.tables import shift_table_note
from diag.stats.shift import c2st, mmd_test
from tests.predict.test_profile import gaussian_layers, make_embeddings


def test_streaming_profile_matches_the_exact_one_where_it_computes_the_same_thing() -> None:
    rng = np.random.default_rng(0)
    src = make_embeddings(gaussian_layers(rng, 500, [0.0, 0.0, 1.0], d=6))
    tgt = make_embeddings(
        gaussian_layers(rng, 400, [0.0, 0.0, 1.0], d=6) | {"layer2": rng.normal(size=(400, 6))}
    )
    exact = shift_profile(src, tgt, n_permutations=300, streaming_above=None)
    stream = shift_profile(src, tgt, n_permutations=300, streaming_above=450)
    assert exact.config["streaming"] is None
    assert stream.config["streaming"] == streaming_sizes(500, 400, above=450)
    for a, b in zip(exact.layers, stream.layers, strict=True):
        assert (a.name, a.index, a.dim, a.kind) == (b.name, b.index, b.dim, b.kind)
        assert b.method == "streaming" and len(b.bandwidths) == 3
        # Moments of every row: the same numbers as on the rows.
        assert b.frechet == pytest.approx(a.frechet, rel=1e-6)
        assert b.coral == pytest.approx(a.coral, rel=1e-6)
        assert b.frechet_relative == pytest.approx(a.frechet_relative, rel=1e-6)
        # Below the subsample caps the C2ST and the OOD index see every row: identical numbers.
        assert (b.c2st_auc, b.c2st_auc_ci, b.c2st_p_value) == (a.c2st_auc, a.c2st_auc_ci, a.c2st_p_value)
        np.testing.assert_array_equal(stream.ood_scores[b.name], exact.ood_scores[a.name])
        assert b.ood_median == pytest.approx(a.ood_median, rel=1e-6)
        # The random-feature MMD² estimates the same kernel's MMD² (512 frequencies: error ~ 1/sqrt(512)/n).
        assert b.mmd2 == pytest.approx(a.mmd2, abs=0.01)
    assert [x.p_value <= 0.01 for x in stream.layers] == [False, False, True]
    assert stream.verdict.is_shift and exact.verdict.is_shift
    assert stream.verdict.onset_layer == exact.verdict.onset_layer == "layer2"


def test_the_report_keeps_and_states_where_each_number_came_from(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    src = make_embeddings(gaussian_layers(rng, 60, [0.0, 0.5], d=4))
    tgt = make_embeddings(gaussian_layers(rng, 50, [0.0, 0.5], d=4))
    prof = shift_profile(src, tgt, n_permutations=100, streaming_above=55)
    rep = Report(
        backbone={"name": "toy"}, source={"name": "s"}, target={"name": "t"}, n_source=60, n_target=50,
        layers=[x.to_dict() for x in prof.layers], shift=prof.verdict.to_dict(),
        meta={"config": {"shift": prof.config}},
    )  # fmt: skip
    rep.save(tmp_path / "r", source=src, target=tgt, ood_scores=prof.ood_scores)
    back = load_report(tmp_path / "r")
    assert back.meta["config"]["shift"]["streaming"]["c2st"]["n_source"] == 60
    assert back.layer("layer1").to_dict()["shift"]["method"] == "streaming"
    note = shift_table_note(back)
    assert "Streaming path (over 55 items a side)" in note and "subsample of 60 + 50" in note
    assert "Streaming" not in shift_table_note(replace(rep, meta={"config": {"shift": {"streaming": None}}}))


def test_the_threshold_is_a_diagnose_option() -> None:
    assert DiagnoseConfig().streaming_above == 20_000 == STREAMING_ABOVE
    with pytest.raises(ConfigError, match="streaming_above must be an integer >= 0; got -1"):
        DiagnoseConfig(streaming_above=-1)


def test_sizes_name_the_subsamples_above_the_caps() -> None:
    sizes = streaming_sizes(100_000, 30_000, above=20_000)
    assert sizes["c2st"]["n_source"] == sizes["c2st"]["n_target"] == C2ST_PER_SIDE
    assert sizes["ood"] == {**sizes["ood"], "n_target": 30_000, "index": OOD_INDEX}
    assert sizes["mmd"]["n_source"] == 100_000 and sizes["frechet_coral"]["n_target"] == 30_000


def _decisions(n: int, n_permutations: int, effect: float) -> list[tuple[bool, bool]]:
    rng = np.random.default_rng(3)
    out = []
    for shift in (0.0, effect):
        x = rng.standard_normal((n, 8)).astype(np.float32)
        y = rng.standard_normal((n, 8)).astype(np.float32)
        y[:, 0] += shift
        stats, scores = streaming_layer(x, y, random_state=1)
        assert scores.shape == (n,)
        exact = mmd_test(x, y, n_permutations=n_permutations, random_state=1)
        out.append((stats["p_value"] <= 0.05, exact.p_value <= 0.05))
    return out


def test_streaming_mmd_decides_like_the_exact_test_at_2k_per_side() -> None:
    assert _decisions(2000, 200, 0.2) == [(False, False), (True, True)]


@pytest.mark.slow
def test_streaming_mmd_decides_like_the_exact_test_at_10k_per_side() -> None:
    """The exact test holds the 20k x 20k kernel matrix here (1.6 GB)."""
    assert _decisions(10_000, 200, 0.12) == [(False, False), (True, True)]


def test_layer_fields_summarise_finite_ood_scores_and_refuse_to_summarise_others() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((60, 3)), rng.standard_normal((60, 3)) + 1.0
    clf = c2st(x, y, n_permutations=20, random_state=0)
    distances = {"frechet": 3.0, "frechet_relative": 0.5, "coral": 0.25}
    scores = np.array([0.5, 1.0, 1.5, 2.5, 4.0], dtype=np.float32)
    fields = layer_fields(0.1, 0.01, [1.0, 2.0], "exact", clf, distances, scores)
    assert fields["ood_median"] == 1.5 and fields["ood_far"] == 0.4  # 2 of 5 above OOD_FAR = 2
    assert fields["ood_p90"] == pytest.approx(4.0 - 0.4 * 1.5)  # linear interpolation between 2.5 and 4
    assert fields["c2st_auc"] == clf.auc and fields["frechet_relative"] == 0.5
    assert fields["bandwidths"] == [1.0, 2.0] and fields["method"] == "exact"
    for bad in (np.inf, np.nan):
        broken = layer_fields(0.1, 0.01, [1.0], "exact", clf, distances, np.append(scores, bad))
        assert broken["ood_median"] is None and broken["ood_p90"] is None and broken["ood_far"] is None

"""The per-layer shift profile and its verdict, on synthetic embeddings with a known shift structure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diag.engine.embeddings import Embeddings
from diag.errors import ConfigError, DataError
from diag.models import ProbePoint
from diag.predict.profile import (
    check_compatible,
    check_permutations,
    class_conditional_shift,
    holm,
    min_permutations,
    shift_profile,
)
from diag.report.schema import Report, load_report


def make_embeddings(
    layers: dict[str, np.ndarray],
    *,
    labels: np.ndarray | None = None,
    classes: tuple[str, ...] = (),
    backbone: str = "toy",
    modality: str = "image",
) -> Embeddings:
    n = next(iter(layers.values())).shape[0]
    probes = tuple(
        ProbePoint(name, i, arr.shape[1], "block", "gap") for i, (name, arr) in enumerate(layers.items())
    )
    manifest = {
        "backbone": {"name": backbone, "weights_sha256": backbone * 3, "modality": modality},
        "data": {"name": f"{backbone}-data", "n": n},
    }
    return Embeddings(
        features={k: v.astype(np.float32) for k, v in layers.items()},
        logits=None,
        labels=labels,
        classes=classes,
        ids=tuple(str(i) for i in range(n)),
        probes=probes,
        manifest=manifest,
    )


def gaussian_layers(
    rng: np.random.Generator, n: int, shifts: list[float], d: int = 8
) -> dict[str, np.ndarray]:
    """One layer per entry of ``shifts``: N(shift · e_1, I) in d dims."""
    out = {}
    for i, s in enumerate(shifts):
        x = rng.standard_normal((n, d))
        x[:, 0] += s
        out[f"layer{i}"] = x
    return out


def test_holm_matches_hand_computed_values() -> None:
    # p sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.5 (x1 = 0.5): monotone step-down.
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.04, 0.3]) == pytest.approx([0.08, 0.3])
    assert holm([0.03, 0.04]) == pytest.approx([0.06, 0.06])  # 0.04 x 1 is raised to keep the order
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # never above 1


def test_no_shift_between_samples_of_one_distribution() -> None:
    rng = np.random.default_rng(0)
    src = make_embeddings(gaussian_layers(rng, 120, [0, 0, 0, 0]))
    tgt = make_embeddings(gaussian_layers(rng, 100, [0, 0, 0, 0]))
    prof = shift_profile(src, tgt, n_permutations=300, random_state=1)
    v = prof.verdict
    assert not v.is_shift and v.p_value > 0.05
    assert v.onset_layer is None and v.level is None
    assert v.summary.startswith("No shift detected")
    assert [x.name for x in prof.layers] == ["layer0", "layer1", "layer2", "layer3"]
    assert all(abs(x.c2st_auc - 0.5) < 0.15 for x in prof.layers)
    assert prof.n_source == 120 and prof.n_target == 100
    # OOD scores of target samples drawn from the source's distribution are ~1.
    assert 0.85 < np.median(prof.ood_scores["layer3"]) < 1.15


def test_onset_is_where_the_shift_appears_in_depth() -> None:
    rng = np.random.default_rng(1)
    shifts = [0.0, 0.0, 0.0, 3.0, 3.0, 3.0]
    src = make_embeddings(gaussian_layers(rng, 150, [0.0] * 6))
    tgt = make_embeddings(gaussian_layers(rng, 150, shifts))
    prof = shift_profile(src, tgt, n_permutations=500, random_state=0)
    v = prof.verdict
    assert v.is_shift and v.p_value <= 6 / 501 + 1e-12  # Bonferroni floor: L / (B + 1)
    assert v.onset_layer == "layer3"
    assert v.first_significant_layer == "layer3"
    assert v.significant_layers == ["layer3", "layer4", "layer5"]
    assert v.level == "feature-level"  # 4th of 6 probes: middle third
    assert v.effect["layer"] == "layer5" and v.effect["value"] > 0.9
    assert "layer3" in v.summary and "feature-level" in v.summary
    for lay in prof.layers[:3]:
        assert lay.p_adjusted > 0.05
    assert prof.layers[4].ood_median > 1.3  # target 3σ away along one axis: farther than source to itself


def test_shift_only_in_the_last_layers_is_semantic_and_first_layer_input_level() -> None:
    rng = np.random.default_rng(2)
    src = make_embeddings(gaussian_layers(rng, 100, [0.0] * 6), modality="text")
    tgt = make_embeddings(gaussian_layers(rng, 100, [0, 0, 0, 0, 0, 3.0]), modality="text")
    v = shift_profile(src, tgt, n_permutations=300).verdict
    assert v.onset_layer == "layer5" and v.level == "semantic"
    assert "what is said" in v.summary  # the text wording
    tgt2 = make_embeddings(gaussian_layers(rng, 100, [3.0, 3.0, 2.0, 2.0, 1.0, 1.0]))
    v2 = shift_profile(src, tgt2, n_permutations=300).verdict
    assert v2.onset_layer == "layer0" and v2.level == "input-level"
    assert v2.peak["layer"] in ("layer0", "layer1")


def test_onset_ignores_a_significant_but_tiny_early_difference() -> None:
    """With many samples a small early difference is significant; onset waits for a shift that matters."""
    rng = np.random.default_rng(3)
    n = 1000
    src = make_embeddings(gaussian_layers(rng, n, [0.0, 0.0, 0.0, 0.0]))
    tgt = make_embeddings(gaussian_layers(rng, n, [0.3, 0.3, 3.0, 3.0]))
    v = shift_profile(src, tgt, n_permutations=200).verdict
    assert v.first_significant_layer == "layer0"
    assert v.onset_layer == "layer2"


def test_class_conditional_view_separates_moved_classes_from_label_shift() -> None:
    rng = np.random.default_rng(4)
    ys = np.repeat([0, 1, 2], 40)
    yt = np.repeat([0, 1, 2], [60, 30, 30])  # label shift too
    xs = rng.standard_normal((120, 6)) + ys[:, None]
    xt = rng.standard_normal((120, 6)) + yt[:, None]
    xt[yt == 2, 0] += 4.0  # only class 2 moved
    rows = class_conditional_shift(xs, ys, xt, yt, ["a", "b", "c"], n_permutations=400)
    by = {r.label: r for r in rows}
    assert by["c"].p_adjusted < 0.01
    assert by["a"].p_value > 0.05 and by["b"].p_value > 0.05
    src = make_embeddings({"l0": xs, "l1": xs}, labels=ys, classes=("a", "b", "c"))
    tgt = make_embeddings({"l0": xt, "l1": xt}, labels=yt, classes=("a", "b", "c"))
    prof = shift_profile(src, tgt, n_permutations=300)
    assert prof.label_shift is not None
    assert prof.label_shift["total_variation"] == pytest.approx(0.5 - 1 / 3)
    assert prof.class_conditional is not None and "l1" in prof.class_conditional["layers"]


def test_class_conditional_maps_labels_by_name_not_index() -> None:
    """Each side's labels index its own class list: the same name at different indices is one class."""
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((60, 4))
    ys = np.repeat([0, 1], 30)  # classes ("cat", "dog")
    xt = xs + rng.standard_normal((60, 4)) * 0.01
    yt = 1 - ys  # classes ("dog", "cat"): same items, same names
    src = make_embeddings({"l0": xs}, labels=ys, classes=("cat", "dog"))
    tgt = make_embeddings({"l0": xt}, labels=yt, classes=("dog", "cat"))
    prof = shift_profile(src, tgt, n_permutations=200)
    assert prof.label_shift is not None and prof.label_shift["total_variation"] == pytest.approx(0.0)


def test_incompatible_embeddings_get_clear_errors() -> None:
    rng = np.random.default_rng(6)
    a = make_embeddings(gaussian_layers(rng, 20, [0, 0]), backbone="net-a")
    b = make_embeddings(gaussian_layers(rng, 20, [0, 0]), backbone="net-b")
    with pytest.raises(ConfigError, match="different backbone"):
        check_compatible(a, b)
    c = make_embeddings(
        {"layer0": rng.standard_normal((20, 8)), "layer1": rng.standard_normal((20, 5))}, backbone="net-a"
    )
    with pytest.raises(ConfigError, match="probe points or dims"):
        check_compatible(a, c)
    few = make_embeddings(gaussian_layers(rng, 3, [0, 0]), backbone="net-a")
    with pytest.raises(DataError, match="at least 5"):
        check_compatible(a, few)
    bad = gaussian_layers(rng, 20, [0, 0])
    bad["layer1"][7, 2] = np.nan
    with pytest.raises(DataError, match="NaN/inf"):
        check_compatible(a, make_embeddings(bad, backbone="net-a"))
    with pytest.raises(ConfigError, match="layers"):
        shift_profile(a, a, layers=["nope"])
    with pytest.raises(ConfigError, match="alpha"):
        shift_profile(a, a, alpha=1.5)


def test_profile_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(7)
    src = make_embeddings(gaussian_layers(rng, 60, [0, 0, 0]))
    tgt = make_embeddings(gaussian_layers(rng, 60, [0, 0.5, 1]))
    a = shift_profile(src, tgt, n_permutations=200, random_state=3)
    b = shift_profile(src, tgt, n_permutations=200, random_state=3)
    strip = [{k: v for k, v in x.to_dict()["shift"].items() if k != "seconds"} for x in a.layers]
    assert strip == [{k: v for k, v in x.to_dict()["shift"].items() if k != "seconds"} for x in b.layers]
    assert a.verdict == b.verdict


def test_report_round_trips_and_keeps_unknown_sections(tmp_path) -> None:
    rng = np.random.default_rng(8)
    src = make_embeddings(gaussian_layers(rng, 40, [0, 1]))
    tgt = make_embeddings(gaussian_layers(rng, 40, [0, 1.5]))
    prof = shift_profile(src, tgt, n_permutations=200)
    rep = Report(
        backbone={"name": "toy"},
        source={"name": "s"},
        target={"name": "t"},
        n_source=40,
        n_target=40,
        layers=[x.to_dict() for x in prof.layers],
        shift=prof.verdict.to_dict(),
        meta={"seed": 0, "weird": float("nan")},
    ).with_sections(transferability={"logme": 1.5})
    saved = rep.save(tmp_path / "r", source=src, target=tgt, ood_scores=prof.ood_scores)
    raw = json.loads((tmp_path / "r" / "report.json").read_text())
    assert raw["schema_version"] == 1 and raw["kind"] == "diag.report"
    assert raw["meta"]["weird"] is None  # NaN is not JSON: stored as null
    assert raw["transferability"] == {"logme": 1.5}
    back = load_report(tmp_path / "r")
    assert back.layers == json.loads(json.dumps([x.to_dict() for x in rep.layers]))
    assert back.shift == rep.shift and back.shift.onset_layer == rep.shift["onset_layer"]
    assert back.sections["transferability"] == {"logme": 1.5}
    assert back.to_dict()["transferability"] == {"logme": 1.5}  # unknown sections survive a round trip
    np.testing.assert_array_equal(back.ood_scores()["layer1"], prof.ood_scores["layer1"])
    np.testing.assert_array_equal(back.embeddings("target")["layer1"], tgt["layer1"])
    assert saved.folder == tmp_path / "r"


def test_load_report_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(DataError, match="no report here"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable report"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"kind": "diag.report", "schema_version": 99}))
    with pytest.raises(DataError, match="lacks"):
        load_report(tmp_path)


def test_a_dead_layer_gets_no_ood_scores_but_the_profile_goes_on() -> None:
    """A checkpoint with dead units gives constant features at some layers (measured: EfficientNet-Lite0
    with 90 % of its ReLU6 channels dead): the k-NN scores cannot be normalised there, the rest can."""
    rng = np.random.default_rng(0)
    src = make_embeddings({"a": rng.normal(size=(60, 8)), "dead": np.zeros((60, 4))})
    tgt = make_embeddings({"a": rng.normal(1.0, 1.0, size=(50, 8)), "dead": np.zeros((50, 4))})
    prof = shift_profile(src, tgt, n_permutations=100)
    a, dead = prof.layers
    assert a.ood_median is not None and np.isfinite(prof.ood_scores["a"]).all()
    assert dead.ood_median is None and dead.ood_far is None
    assert np.isnan(prof.ood_scores["dead"]).all() and prof.ood_scores["dead"].shape == (50,)
    assert dead.c2st_auc == pytest.approx(0.5, abs=0.1)  # identical features: no shift seen


@pytest.mark.parametrize(
    ("n_layers", "alpha", "need"), [(9, 0.05, 179), (7, 0.05, 139), (1, 0.05, 19), (2, 0.01, 199)]
)
def test_min_permutations_is_the_first_b_whose_bonferroni_floor_reaches_alpha(
    n_layers: int, alpha: float, need: int
) -> None:
    assert min_permutations(n_layers, alpha) == need
    assert n_layers * (1 / (need + 1)) <= alpha < n_layers * (1 / need)  # the verdict's own arithmetic
    check_permutations(need, n_layers, alpha)
    with pytest.raises(ConfigError, match=rf"^n_permutations must be at least {need} for {n_layers} layers"):
        check_permutations(need - 1, n_layers, alpha)


def test_too_few_permutations_never_call_a_separable_shift_small() -> None:
    """Issue 18: 9 layers, 100 permutations: "No shift detected ... AUC 1.00 ... a small difference"."""
    rng = np.random.default_rng(0)
    layers = {f"l{i}": rng.normal(size=(40, 3)) for i in range(9)}
    src = make_embeddings(layers)
    tgt = make_embeddings({k: v + 6.0 for k, v in layers.items()})  # separable at every layer
    v = shift_profile(src, tgt, n_permutations=100).verdict
    assert not v.is_shift and v.p_value == pytest.approx(9 / 101)
    assert v.effect["value"] > 0.95
    assert "small" not in v.summary and "a large difference" in v.summary
    assert "use at least 179 permutations" in v.summary
    enough = shift_profile(src, tgt, n_permutations=179).verdict
    assert enough.is_shift and "permutations" not in enough.summary

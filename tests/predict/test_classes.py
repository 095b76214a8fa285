"""diag.predict.classes: the class-conditional view, exact and (for large classes) from mean embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from diag.predict.classes import class_conditional_shift, holm
from diag.stats.shift import mmd_test


def _classes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ys, yt = np.repeat([0, 1], n), np.repeat([0, 1], n)
    xs = rng.standard_normal((2 * n, 4)) + 3.0 * ys[:, None]
    xt = rng.standard_normal((2 * n, 4)) + 3.0 * yt[:, None]
    xt[yt == 1, 0] += 1.5  # only class "b" moved
    return xs, ys, xt, yt


def test_small_classes_use_the_exact_permutation_test() -> None:
    xs, ys, xt, yt = _classes(60, 0)
    rows = class_conditional_shift(xs, ys, xt, yt, ["a", "b"], n_permutations=200, streaming_above=1000)
    exact = mmd_test(xs[ys == 1], xt[yt == 1], n_permutations=200, random_state=1)
    by = {r.label: r for r in rows}
    assert by["b"].mmd2 == exact.mmd2 and by["b"].p_value == exact.p_value
    assert by["b"].p_adjusted == holm([by["a"].p_value, by["b"].p_value])[1]


def test_large_classes_are_tested_from_mean_embeddings_with_the_same_decisions() -> None:
    xs, ys, xt, yt = _classes(3000, 1)
    rows = class_conditional_shift(xs, ys, xt, yt, ["a", "b"], n_permutations=200, streaming_above=2000)
    by = {r.label: r for r in rows}
    assert (by["a"].n_source, by["b"].n_target) == (3000, 3000)
    assert by["b"].p_value < 1e-6 and by["b"].mmd2 > 0.01  # the moved class
    assert by["a"].p_value > 0.01  # the unmoved class (null: rejected at 0.01 in 1% of seeds at most)


def test_exact_class_tests_see_at_most_max_per_side_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import diag.predict.classes as classes

    xs, ys, xt, yt = _classes(300, 2)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = classes.mmd_test

    def spy(a: np.ndarray, b: np.ndarray, **kw: object) -> object:
        seen.append((a, b))
        return real(a, b, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(classes, "mmd_test", spy)
    rows = class_conditional_shift(xs, ys, xt, yt, ["a", "b"], n_permutations=200, max_per_side=80)
    assert [(len(a), len(b)) for a, b in seen] == [(80, 80), (80, 80)]
    for (a, b), c in zip(seen, (0, 1), strict=True):  # rows of their own class, each at most once
        for part, whole in ((a, xs[ys == c]), (b, xt[yt == c])):
            pos = [int(np.flatnonzero((whole == row).all(axis=1))[0]) for row in part]
            assert len(set(pos)) == len(pos)
    by = {r.label: r for r in rows}
    assert (by["a"].n_source, by["b"].n_target) == (300, 300)  # the class's items, not the sample's
    assert by["b"].p_value < 0.01 and by["a"].p_value > 0.01  # the moved class still found on 80 a side


def test_the_streaming_profile_bounds_every_exact_class_test(monkeypatch: pytest.MonkeyPatch) -> None:
    # The regression this guards: above the threshold the layers were streamed but each class still got
    # the exact test on all its rows (10 classes of 10k per side: twenty 20k x 20k kernels). The test
    # itself is replaced by a stub here: only the rows it is handed are checked.
    import diag.predict.classes as classes
    from diag.predict.profile import shift_profile
    from diag.predict.streaming import CLASS_PER_SIDE
    from diag.stats.shift import MMDResult
    from tests.predict.test_profile import make_embeddings

    rng = np.random.default_rng(4)
    n = CLASS_PER_SIDE + 500  # per class and side
    labels = np.repeat([0, 1], n)
    sides = [make_embeddings({"l0": rng.standard_normal((2 * n, 2))}, labels=labels, classes=("a", "b"))]
    sides.append(make_embeddings({"l0": rng.standard_normal((2 * n, 2))}, labels=labels, classes=("a", "b")))
    seen: list[tuple[int, int]] = []

    def stub(a: np.ndarray, b: np.ndarray, **kw: object) -> MMDResult:
        seen.append((len(a), len(b)))
        return MMDResult(0.0, 0.5, 10, [1.0], "exact", len(a), len(b))

    monkeypatch.setattr(classes, "mmd_test", stub)
    prof = shift_profile(*sides, n_permutations=100, streaming_above=3 * n // 2, random_state=0)
    assert prof.config["streaming"] is not None and prof.class_conditional is not None
    assert seen == [(CLASS_PER_SIDE, CLASS_PER_SIDE)] * 2
    assert prof.class_conditional["max_per_side"] == CLASS_PER_SIDE
    assert [r["n_source"] for r in prof.class_conditional["layers"]["l0"]] == [n, n]
    seen.clear()  # below the threshold: every row, as before
    prof = shift_profile(*sides, n_permutations=100, streaming_above=None, random_state=0)
    assert seen == [(n, n)] * 2 and "max_per_side" not in (prof.class_conditional or {})

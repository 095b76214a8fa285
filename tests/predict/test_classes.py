"""diag.predict.classes: the class-conditional view, exact and (for large classes) from mean embeddings."""

from __future__ import annotations

import numpy as np

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

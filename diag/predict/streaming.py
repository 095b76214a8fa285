"""The shift profile's statistics for one layer from summaries and bounded samples (large data sets).

Above :data:`STREAMING_ABOVE` items on a side, :func:`diag.predict.profile.shift_profile` computes each
layer here instead of with the exact tests (whose pooled kernel matrix, per-row permutations and full
pairwise k-NN grow with the square of the sample). What each number comes from, and on how many items,
is recorded in the profile's ``config["streaming"]`` (:func:`streaming_sizes`):

* **MMD² and its p-value** — every item: random-Fourier-feature mean embeddings of both sides (the same
  width-averaged Gaussian kernel as the exact test, widths from the median heuristic on 1000 pooled
  items) and the asymptotic null of :func:`diag.stats.streaming.linear_mmd_test`, its scale estimated on
  at most :data:`COVARIANCE_ROWS` items per side. Calibration measured in ``tests/predict/
  test_streaming.py`` (null splits at 20k per side).
* **Fréchet and CORAL** — every item: the two sides' moments (:class:`diag.stats.summaries.Moments`),
  the same numbers as on the rows up to rounding.
* **C2ST** — a seeded uniform subsample of at most :data:`C2ST_PER_SIDE` items per side
  (:func:`diag.stats.shift.c2st`): the AUC, its CI and its p-value are those of the subsample (the CI is
  wider than the full data's would be).
* **OOD scores** — every target item, against a source index of at most :data:`OOD_INDEX` items (exact
  k-NN in blocks, :func:`diag.stats.shift.knn_shift_scores`; the typical source distance is measured in
  the same index, so ``~1`` still means "as close as a typical source item").
* **Per-class MMD** (:mod:`diag.predict.classes`) — a class with more than ``streaming_above`` items on
  a side from its mean embeddings, as a layer; a smaller one by the exact permutation test on a seeded
  uniform subsample of at most :data:`CLASS_PER_SIDE` of its items per side (the exact test's cost grows
  with the square of the class, and with 10 classes of 10k per side it was 20 tests of a 20k² kernel).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diag.errors import DataError
from diag.stats.shift import C2STResult, c2st, knn_shift_scores, median_distance
from diag.stats.streaming import (
    BLOCK_ROWS,
    FourierMap,
    KernelSummary,
    LinearMMDResult,
    covariance_distances,
    linear_mmd_test,
    moments_in_blocks,
    stratified_rows,
)

__all__ = [
    "C2ST_PER_SIDE",
    "CLASS_PER_SIDE",
    "COVARIANCE_ROWS",
    "OOD_FAR",
    "OOD_INDEX",
    "STREAMING_ABOVE",
    "layer_fields",
    "streaming_layer",
    "streaming_mmd",
    "streaming_sizes",
]

#: Above this many items on either side the profile takes the streaming path.
STREAMING_ABOVE = 20_000
#: Items per side the classifier two-sample test is fitted and tested on.
C2ST_PER_SIDE = 5_000
#: Items per side of a class the exact per-class MMD test sees on the streaming path: what a 10-class
#: data set at the threshold (20k per side) has per class, so crossing it does not shrink the test.
CLASS_PER_SIDE = 2_000
#: Source items in the OOD index every target item is scored against.
OOD_INDEX = 5_000
#: Items per side whose random features estimate the covariance of the MMD null distribution.
COVARIANCE_ROWS = 4_096
#: Random Fourier frequencies (each a cosine and a sine feature), as in the exact test's RFF mode.
N_FREQUENCIES = 512
# Pooled items the median heuristic looks at (as in the exact test).
_MEDIAN_POINTS = 1000
#: A target sample whose k-NN distance to the source is this many times the typical source one is "far"
#: (both paths; :mod:`diag.predict.profile` re-exports it).
OOD_FAR = 2.0


def streaming_layer(
    x: np.ndarray, y: np.ndarray, *, k: int = 10, random_state: int = 0, device: str = "auto"
) -> tuple[dict[str, Any], np.ndarray]:
    """The profile's statistics at one layer (module docstring), and the target's OOD scores.

    Parameters
    ----------
    x, y : ndarray of shape (m, d), (n, d)
        Source and target features of the layer.
    k : int, default 10
        Neighbours of the OOD score (at most the index size minus one).
    random_state : int
        Seeds the kernel widths' subsample, the random features and every subsample.
    device : str
        Where the k-NN search runs.

    Returns
    -------
    stats : dict
        The keys of a :class:`diag.predict.profile.LayerShift` but ``name``, ``index``, ``dim``, ``kind``,
        and ``p_adjusted``; ``method`` is ``"streaming"``.
    scores : ndarray of shape (n,), float32
        Every target item's OOD score.
    """
    t0 = time.perf_counter()
    m, n = len(x), len(y)
    mmd, widths = streaming_mmd(x, y, random_state=random_state)

    rs, rt = stratified_rows([m, n], C2ST_PER_SIDE, random_state + 2)
    clf = c2st(x[rs], y[rt], random_state=random_state)
    centre = x[rs].mean(axis=0, dtype=np.float64)
    distances = covariance_distances(moments_in_blocks(x, centre=centre), moments_in_blocks(y, centre=centre))

    index = stratified_rows([m], OOD_INDEX, random_state + 3)[0]
    try:
        scores = knn_shift_scores(x[index], y, k=max(1, min(k, len(index) - 1)), device=device)
    except DataError:  # a degenerate layer (most source rows the same): no scores, as on the exact path
        scores = np.full(n, np.nan)
    scores = scores.astype(np.float32)
    stats = layer_fields(mmd.mmd2, mmd.p_value, widths, "streaming", clf, distances, scores)
    return {**stats, "seconds": round(time.perf_counter() - t0, 4)}, scores


def layer_fields(
    mmd2: float,
    p_value: float,
    bandwidths: Sequence[float],
    method: str,
    clf: C2STResult,
    distances: dict[str, float],
    scores: np.ndarray,
) -> dict[str, Any]:
    """The statistics of one layer's record, as both paths of the profile write them.

    ``distances``: ``frechet``, ``frechet_relative`` and ``coral``. The OOD summaries are None when a
    score is not finite (a degenerate layer gives NaN scores; a target item at a positive distance
    from a source whose items coincide gives ``inf``): a median or share over such scores would mislead.
    """
    finite = bool(np.isfinite(scores).all())
    return {
        "mmd2": float(mmd2),
        "p_value": float(p_value),
        "c2st_auc": float(clf.auc),
        "c2st_auc_ci": [float(v) for v in clf.auc_ci],
        "c2st_p_value": float(clf.p_value),
        "proxy_a_distance": float(clf.proxy_a_distance),
        **{key: float(distances[key]) for key in ("frechet", "frechet_relative", "coral")},
        "ood_median": float(np.median(scores)) if finite else None,
        "ood_p90": float(np.quantile(scores, 0.9)) if finite else None,
        "ood_far": float(np.mean(scores > OOD_FAR)) if finite else None,
        "bandwidths": [float(b) for b in bandwidths],
        "method": method,
    }


def streaming_mmd(
    x: np.ndarray, y: np.ndarray, *, random_state: int = 0
) -> tuple[LinearMMDResult, list[float]]:
    """The streaming MMD test of one layer (module docstring) and its kernel widths.

    Widths: 0.5, 1 and 2 times the median pooled distance (on 1000 pooled items), as in
    :func:`diag.stats.shift.mmd_test`; each side summarised in blocks of rows, the covariance of the
    features estimated on a uniform sample of :data:`COVARIANCE_ROWS` items per side.
    """
    m, n = len(x), len(y)
    rng = np.random.default_rng(random_state)
    pick = np.sort(rng.choice(m + n, size=min(m + n, _MEDIAN_POINTS), replace=False))
    pooled = np.concatenate([x[pick[pick < m]], y[pick[pick >= m] - m]]).astype(np.float64)
    med = median_distance(torch.from_numpy(pooled), rng, max_points=_MEDIAN_POINTS)
    fmap = FourierMap(x.shape[1], (0.5 * med, med, 2.0 * med), N_FREQUENCIES, seed=random_state)
    cov_rows = stratified_rows([m, n], COVARIANCE_ROWS, random_state + 1)
    sides = []
    for arr, rows in zip((x, y), cov_rows, strict=True):
        summary = KernelSummary(fmap.n_features, COVARIANCE_ROWS)
        for start in range(0, len(arr), BLOCK_ROWS):
            summary.update(fmap(arr[start : start + BLOCK_ROWS]), keep=False)
        summary.sample = fmap(arr[rows])  # a uniform sample, whatever the order of the rows
        sides.append(summary)
    return linear_mmd_test(*sides), [float(w) for w in fmap.widths]


def streaming_sizes(n_source: int, n_target: int, *, above: int) -> dict[str, Any]:
    """What each statistic of a streaming profile was computed from, and on how many items."""
    c2st_sizes = [min(n_source, C2ST_PER_SIDE), min(n_target, C2ST_PER_SIDE)]
    return {
        "path": "streaming",
        "above": above,
        "mmd": {
            "from": "random-feature mean embeddings of every item; asymptotic p-value (Imhof)",
            "n_source": n_source,
            "n_target": n_target,
            "n_frequencies": N_FREQUENCIES,
            "covariance_rows_per_side": min(max(n_source, n_target), COVARIANCE_ROWS),
        },
        "frechet_coral": {"from": "moments of every item", "n_source": n_source, "n_target": n_target},
        "c2st": {
            "from": "uniform subsample of each side; the AUC, CI and p-value are the subsample's",
            "n_source": c2st_sizes[0],
            "n_target": c2st_sizes[1],
        },
        "ood": {
            "from": "every target item against a uniform source index (exact k-NN)",
            "n_target": n_target,
            "index": min(n_source, OOD_INDEX),
        },
        "class_conditional": {
            "from": f"a class above {above} items on a side: mean embeddings of every item; a smaller one: "
            "the exact permutation test on a uniform subsample of each side",
            "max_per_side": CLASS_PER_SIDE,
        },
    }

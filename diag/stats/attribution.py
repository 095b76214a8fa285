"""Which target samples drive a shift, and a graded size of the shift: pure statistics over arrays.

=============================  ===============================================  ========================
function                       what it gives                                    reads
=============================  ===============================================  ========================
:func:`domain_probabilities`   out-of-fold P(target | sample) of a domain        0.5 ⇒ looks like source
                               classifier, for every source and target row
:func:`mmd_witness`            the MMD witness function at every target row      > 0 ⇒ target-only region
:func:`energy_effect`          relative energy distance with a 95% interval     0 ⇒ no shift; grows
:func:`kmeans_clusters`        k-means of the target, k chosen by silhouette    —
=============================  ===============================================  ========================

Source features ``x`` have shape ``(m, d)``, target features ``y`` shape ``(n, d)``, as in
:mod:`diag.stats.shift`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from threadpoolctl import threadpool_limits

from diag.device import resolve_device
from diag.errors import param_error
from diag.stats.common import Result, check_int, numeric_matrix, require_finite, to_tensor

__all__ = [
    "DomainScores",
    "EnergyEffect",
    "domain_probabilities",
    "energy_effect",
    "kmeans_clusters",
    "mmd_witness",
]

log = logging.getLogger(__name__)

_Z95 = 1.959963984540054
# BLAS/OpenMP threads of the scikit-learn steps: their problems are small, and on a loaded machine more
# threads than cores made k-means and the classifier 20-30 times slower (15 s against 0.5 s, measured).
_THREADS = 1
# Rows of one block of a kernel or distance matrix (times the other side's rows) kept in memory.
_BLOCK_ELEMS = 1 << 22


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = numeric_matrix(x, "x"), numeric_matrix(y, "y")
    if xa.shape[1] != ya.shape[1]:
        raise param_error("y", f"must have {xa.shape[1]} columns like x", ya.shape)
    if len(xa) < 2 or len(ya) < 2:
        raise param_error("x, y", "need at least 2 rows each", (len(xa), len(ya)))
    require_finite(xa, "x", needed_by="drift attribution")
    require_finite(ya, "y", needed_by="drift attribution")
    return xa.astype(np.float64, copy=False), ya.astype(np.float64, copy=False)


# --------------------------------------------------------------------------------------------------
# Domain classifier, cross-fitted


@dataclass(frozen=True)
class DomainScores(Result):
    """Out-of-fold domain-classifier probabilities (:func:`domain_probabilities`).

    ``source`` and ``target`` hold P(target | row) for each row of ``x`` and ``y``, each predicted by a
    classifier that did not see that row; ``auc`` is their pooled ROC AUC (target positive).
    """

    source: np.ndarray
    target: np.ndarray
    auc: float
    n_components: int
    n_splits: int


def domain_probabilities(
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_splits: int = 5,
    max_components: int = 128,
    c: float = 1.0,
    random_state: int = 0,
) -> DomainScores:
    """P(target | row) for every row, from a cross-fitted logistic-regression domain classifier.

    The classifier of the classifier two-sample test (Lopez-Paz & Oquab, ICLR 2017), used per sample:
    the pooled sample is standardised and, above ``max_components`` features, projected on its leading
    principal components (label-free steps); then stratified K-fold cross-fitting of an L2-regularised
    logistic regression with balanced class weights, so that 0.5 means "looks as much like the source
    as like the target" whatever the sizes. Each row's probability comes from the fold that held it out
    (Chernozhukov et al., "Double/debiased machine learning", Econometrics J. 21 (2018): cross-fitting),
    so a sample is never scored by a model that learnt it.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    xa, ya = _pair(x, y)
    check_int("n_splits", n_splits, minimum=2)
    check_int("max_components", max_components, minimum=1)
    if n_splits > min(len(xa), len(ya)):
        raise param_error(
            "n_splits", f"must be at most the smaller sample size ({min(len(xa), len(ya))})", n_splits
        )
    if not isinstance(c, (int, float)) or isinstance(c, bool) or not 0 < c < math.inf:
        raise param_error("c", "must be a positive finite number (inverse L2 strength)", c)
    z = np.concatenate([xa, ya])
    labels = np.r_[np.zeros(len(xa), dtype=int), np.ones(len(ya), dtype=int)]
    sd = z.std(axis=0)
    z = (z - z.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    k = min(max_components, z.shape[1], z.shape[0] - 1)
    if k < z.shape[1]:
        with threadpool_limits(limits=_THREADS):
            z = PCA(n_components=k, svd_solver="randomized", random_state=random_state).fit_transform(z)
    prob = np.empty(len(z))
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    with threadpool_limits(limits=_THREADS):
        for train, test in folds.split(z, labels):
            clf = LogisticRegression(C=float(c), class_weight="balanced", max_iter=1000)
            clf.fit(z[train], labels[train])
            prob[test] = clf.predict_proba(z[test])[:, 1]
    auc = float(roc_auc_score(labels, prob))
    return DomainScores(
        source=prob[: len(xa)],
        target=prob[len(xa) :],
        auc=auc,
        n_components=int(z.shape[1]),
        n_splits=n_splits,
    )


# --------------------------------------------------------------------------------------------------
# MMD witness


def mmd_witness(
    x: ArrayLike,
    y: ArrayLike,
    bandwidths: Sequence[float],
    *,
    max_reference: int | None = 4000,
    random_state: int = 0,
    device: str | torch.device = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """The empirical MMD witness at every source and target row (target minus source mean embedding).

    Gretton et al., "A Kernel Two-Sample Test", JMLR 13 (2012), sec. 2.3: the witness of the MMD is
    ``f(z) ∝ μ_Q(z) - μ_P(z)``, here unnormalised, ``f(z) = mean_j k(z, y_j) - mean_i k(z, x_i)`` with
    ``P`` the source, ``Q`` the target and ``k`` the mean of Gaussian kernels
    ``exp(-||a - b||² / (2σ²))`` over ``bandwidths`` (those of :func:`diag.stats.shift.mmd_test`).
    Positive where the target has mass the source lacks. A row is left out of its own side's mean
    (``k(z, z) = 1`` would add ``1/n`` to every target row), so that
    ``mean_j f(y_j) - mean_i f(x_i)`` is the unbiased MMD² of the same kernel.

    Parameters
    ----------
    x, y : array-like of shape (m, d), (n, d)
    bandwidths : sequence of float
        Gaussian widths σ.
    max_reference : int or None, default 4000
        Means over at most this many (seeded random) rows per side; every row still gets its value.
        Rows outside the reference are then not left out of anything.
    random_state : int, default 0
    device : str, default "auto"

    Returns
    -------
    (witness at the source rows, witness at the target rows), float64 arrays of shape (m,) and (n,)
    """
    xa, ya = _pair(x, y)
    widths = [float(w) for w in bandwidths]
    if not widths or not all(math.isfinite(w) and w > 0 for w in widths):
        raise param_error("bandwidths", "must be one or more positive finite widths", bandwidths)
    rng = np.random.default_rng(random_state)
    dev = resolve_device(device)

    def ref_rows(n: int) -> np.ndarray:
        if max_reference is None or n <= max_reference:
            return np.arange(n)
        return np.sort(rng.choice(n, size=max_reference, replace=False))

    rx, ry = ref_rows(len(xa)), ref_rows(len(ya))
    nx, ny = len(rx), len(ry)
    ref = to_tensor(np.concatenate([xa[rx], ya[ry]]), dev, torch.float64)
    rn = (ref * ref).sum(1)
    inv = torch.tensor([-0.5 / (w * w) for w in widths], dtype=torch.float64, device=dev)
    step = max(1, _BLOCK_ELEMS // max(1, ref.shape[0] * len(widths)))

    def sums(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Σ_i k(q, x_i) and Σ_j k(q, y_j) over the reference rows, for every row of ``q``."""
        sx, sy = np.empty(len(q)), np.empty(len(q))
        for s in range(0, len(q), step):
            qt = to_tensor(q[s : s + step], dev, torch.float64)
            d2 = ((qt * qt).sum(1)[:, None] + rn[None, :] - 2.0 * qt @ ref.T).clamp_min(0.0)
            kern = torch.exp(d2[..., None] * inv).mean(-1)
            sx[s : s + step] = kern[:, :nx].sum(1).cpu().numpy()
            sy[s : s + step] = kern[:, nx:].sum(1).cpu().numpy()
        return sx, sy

    def own_mean(total: np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
        """Mean over the own side's reference rows, leaving the row itself out where it is one of them."""
        mean = total / count
        if count > 1:
            mean[rows] = (total[rows] - 1.0) / (count - 1)
        return mean

    xs, xt = sums(xa)
    ys, yt = sums(ya)
    wx = xt / ny - own_mean(xs, rx, nx)
    wy = own_mean(yt, ry, ny) - ys / nx
    log.debug("mmd_witness: m=%d n=%d reference %d+%d", len(xa), len(ya), nx, ny)
    return wx, wy


# --------------------------------------------------------------------------------------------------
# A graded effect: relative energy distance


@dataclass(frozen=True)
class EnergyEffect(Result):
    """Outcome of :func:`energy_effect`.

    Attributes
    ----------
    value : float
        ``energy / scale``: 0 in expectation without a shift (it can be slightly negative), and it keeps
        growing with the distance between the distributions (it does not saturate like an AUC).
    ci : list of float
        ``[low, high]`` 95% interval (first-order U-statistic variance; too narrow near 0, where the
        first-order term vanishes: read the p-value of the MMD test there).
    energy : float
        The unbiased energy distance ``2 E||X-Y|| - E||X-X'|| - E||Y-Y'||``, in feature units.
    scale : float
        ``E||X-X'||``, the source's mean pairwise distance.
    n_x, n_y : int
        Rows used (at most ``max_points`` per side).
    """

    value: float
    ci: list[float]
    energy: float
    scale: float
    n_x: int
    n_y: int


def energy_effect(
    x: ArrayLike,
    y: ArrayLike,
    *,
    max_points: int | None = 1000,
    random_state: int = 0,
    device: str | torch.device = "auto",
) -> EnergyEffect:
    """The relative energy distance between source and target, with a 95% interval.

    The energy distance (Székely & Rizzo, "Energy statistics", J. Stat. Plan. Inference 143 (2013)),
    ``E = 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||``, is the MMD² of the distance-induced kernel
    (Sejdinovic et al., "Equivalence of distance-based and RKHS-based statistics in hypothesis testing",
    Ann. Statist. 41 (2013)); it is zero iff the distributions are equal. Unlike a Gaussian-kernel MMD²
    or a classifier's AUC, which stop growing once the domains no longer overlap, it keeps growing
    (linearly in a mean shift). Estimated by the unbiased U-statistic (self-pairs left out), divided by
    the source's mean pairwise distance so that it has no units and compares across layers.

    The interval is ``value ± 1.96 SE`` with the first-order (Hoeffding) variance of a two-sample
    U-statistic, ``Var ψ_x / m + Var ψ_y / n``, where ``ψ_x(x_i) = 2 mean_j ||x_i - y_j|| -
    2 mean_{i'≠i} ||x_i - x_i'||`` and ``ψ_y`` alike (Lee, "U-Statistics", 1990, ch. 3); the scale is
    treated as known.

    Parameters
    ----------
    x, y : array-like of shape (m, d), (n, d)
    max_points : int or None, default 1000
        Use at most this many seeded random rows per side (the cost is ``(m + n)² d``).
    random_state : int, default 0
    device : str, default "auto"
    """
    xa, ya = _pair(x, y)
    if max_points is not None:
        check_int("max_points", max_points, minimum=2)
        rng = np.random.default_rng(random_state)
        if len(xa) > max_points:
            xa = xa[np.sort(rng.choice(len(xa), size=max_points, replace=False))]
        if len(ya) > max_points:
            ya = ya[np.sort(rng.choice(len(ya), size=max_points, replace=False))]
    dev = resolve_device(device)
    m, n = len(xa), len(ya)
    z = to_tensor(np.concatenate([xa, ya]), dev, torch.float64)
    sq = (z * z).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp_min(0.0).sqrt().cpu().numpy()
    dxx, dyy, dxy = dist[:m, :m], dist[m:, m:], dist[:m, m:]
    within_x = dxx.sum(1) / (m - 1)  # the diagonal is 0
    within_y = dyy.sum(1) / (n - 1)
    a, b, c = float(dxy.mean()), float(within_x.mean()), float(within_y.mean())
    energy = 2.0 * a - b - c
    psi_x = 2.0 * dxy.mean(1) - 2.0 * within_x
    psi_y = 2.0 * dxy.mean(0) - 2.0 * within_y
    se = math.sqrt(float(np.var(psi_x, ddof=1)) / m + float(np.var(psi_y, ddof=1)) / n)
    if b <= 0:
        return EnergyEffect(value=0.0, ci=[0.0, 0.0], energy=energy, scale=b, n_x=m, n_y=n)
    value = energy / b
    half = _Z95 * se / b
    return EnergyEffect(value=value, ci=[value - half, value + half], energy=energy, scale=b, n_x=m, n_y=n)


# --------------------------------------------------------------------------------------------------
# Clusters of the target


def kmeans_clusters(
    z: ArrayLike,
    *,
    k_range: tuple[int, int] = (2, 10),
    pca_dims: int | None = 50,
    max_silhouette_rows: int = 2000,
    random_state: int = 0,
) -> tuple[np.ndarray, int, float]:
    """k-means of the rows of ``z`` with ``k`` chosen by the mean silhouette (Rousseeuw, J. Comput. Appl.
    Math. 20 (1987)) over ``k_range`` (inclusive).

    The rows are projected on at most ``pca_dims`` principal components first (k-means in a thousand
    dimensions is mostly noise); the silhouette is computed on at most ``max_silhouette_rows`` seeded
    random rows. Returns ``(labels, k, silhouette)``; ``k`` is capped at ``n - 1``, and with fewer than
    3 rows every row is cluster 0.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    za = numeric_matrix(z, "z").astype(np.float64, copy=False)
    require_finite(za, "z", needed_by="k-means clusters")
    lo, hi = k_range
    if not (isinstance(lo, int) and isinstance(hi, int) and 2 <= lo <= hi):
        raise param_error("k_range", "must be two integers 2 <= low <= high", k_range)
    n = len(za)
    if n < 3:
        return np.zeros(n, dtype=np.int64), 1, 0.0
    best: tuple[float, int, np.ndarray] | None = None
    sample = min(n, max_silhouette_rows)
    with threadpool_limits(limits=_THREADS):
        if pca_dims is not None and za.shape[1] > pca_dims and n > pca_dims:
            za = PCA(n_components=pca_dims, random_state=random_state).fit_transform(za)
        for k in range(lo, min(hi, n - 1) + 1):
            labels = KMeans(n_clusters=k, n_init=4, random_state=random_state).fit_predict(za)
            if len(np.unique(labels)) < 2:
                continue
            score = float(silhouette_score(za, labels, sample_size=sample, random_state=random_state))
            if best is None or score > best[0]:
                best = (score, k, labels)
    if best is None:
        return np.zeros(n, dtype=np.int64), 1, 0.0
    score, k, labels = best
    return labels.astype(np.int64), k, score

"""Two-sample shift statistics: how far is the target sample from the source sample?

Every function here is a pure statistic over arrays: source features ``x`` of shape ``(m, d)`` and
target features ``y`` of shape ``(n, d)`` go in (one probe point of a backbone, say), and a number or
a frozen result with JSON-native fields comes out. Nothing touches a model or a file. Features are used
as given: nothing is standardised silently (only the classifier test standardises and projects the
pooled sample, as its recipe says).

=========================  ==================================================  ==========================
function                   what it measures                                     better / closer
=========================  ==================================================  ==========================
:func:`mmd_test`           kernel MMD² with a permutation p-value               p small ⇒ shift
:func:`c2st`               held-out AUC of a domain classifier, d_A             AUC 0.5 ⇒ no shift
:func:`frechet_distance`   Fréchet (2-Wasserstein) distance of Gaussian fits    0 ⇒ same moments
:func:`coral_distance`     squared distance of covariances (Deep CORAL)         0 ⇒ same covariance
:func:`knn_shift_scores`   per-target-sample k-NN distance, relative to source  ~1 ⇒ typical of source
:func:`label_shift`        class proportions, total variation, chi-square test  p small ⇒ label shift
=========================  ==================================================  ==========================

With large samples every shift is "significant": read the effect sizes (``mmd2``, AUC and its CI,
distances) next to the p-values. The kernel statistics run in torch, on CUDA when ``device`` says so
(``"auto"``: CUDA when present); random draws come from NumPy, so a ``random_state`` gives the same
permutations on every device.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch
from numpy.typing import ArrayLike
from scipy import stats
from threadpoolctl import threadpool_limits

from diag.device import resolve_device
from diag.errors import DataError, param_error
from diag.stats.common import (
    Result,
    check_int,
    ledoit_wolf_shrinkage,
    nearest_neighbors,
    numeric_matrix,
    require_finite,
    to_tensor,
)

__all__ = [
    "MIN_SAMPLES",
    "C2STResult",
    "MMDResult",
    "c2st",
    "coral_distance",
    "frechet_distance",
    "knn_shift_scores",
    "label_shift",
    "median_distance",
    "mmd_test",
]

log = logging.getLogger(__name__)

#: Fewest rows per side any statistic here accepts.
MIN_SAMPLES = 5

# Elements per temporary block (row chunks of distance matrices, permutation batches): 16M elements is
# 128 MiB in float64, small next to a 20k x 20k kernel matrix and fine on any GPU.
_CHUNK_ELEMS = 1 << 24
# The median heuristic looks at the pairwise distances of at most this many pooled points.
_MEDIAN_SUBSAMPLE = 1000
# Above this many pooled points the exact kernel matrix is kept in float32 (20k points: 1.6 GB).
_FLOAT64_MAX_POINTS = 8192
# Random Fourier frequencies in all (split evenly over the bandwidths); each gives a cos and a sin
# feature, so 100k + 100k points hold a 200k x 1024 float32 feature matrix (0.8 GB).
_RFF_FREQUENCIES = 512

RandomState = int | np.random.Generator | None


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class MMDResult(Result):
    """Outcome of :func:`mmd_test`.

    Attributes
    ----------
    mmd2 : float
        Unbiased estimate of MMD² between the two distributions under the (averaged) Gaussian kernel,
        or under its random-feature approximation when ``method`` is ``"rff"``. Zero in expectation when
        there is no shift, so it can be slightly negative.
    p_value : float
        Permutation p-value, ``(count(stat_perm >= mmd2) + 1) / (n_permutations + 1)``.
    n_permutations : int
    bandwidths : list of float
        The Gaussian kernel widths σ used, ``k(a, b) = exp(-||a - b||² / (2σ²))``; the kernel is the mean
        of one such kernel per width.
    method : str
        ``"exact"`` (full kernel matrix) or ``"rff"`` (random Fourier features, for large samples).
    n_x, n_y : int
        Sample sizes.
    """

    mmd2: float
    p_value: float
    n_permutations: int
    bandwidths: list[float]
    method: str
    n_x: int
    n_y: int

    def is_shift(self, alpha: float = 0.05) -> bool:
        """Whether the test rejects "same distribution" at level ``alpha`` (``p_value <= alpha``)."""
        _check_alpha(alpha)
        return self.p_value <= alpha


@dataclass(frozen=True)
class C2STResult(Result):
    """Outcome of :func:`c2st`.

    Attributes
    ----------
    auc : float
        Held-out ROC AUC of the domain classifier (target = positive class): the mean over folds of each
        fold's held-out AUC, weighted by ``m_k n_k``. 0.5: no shift.
    auc_ci : list of float
        ``[low, high]`` 95% interval of the AUC: DeLong variance of the held-out AUCs, widened by
        ``variance_inflation`` for the dependence between folds; clipped to [0, 1].
    accuracy : float
        Held-out *balanced* accuracy (mean of the per-domain accuracies), so that chance level is 0.5
        whatever the sizes.
    proxy_a_distance : float
        ``2 (1 - 2 ε)`` with ε = 1 - ``accuracy``; 0 at chance, 2 for perfectly separable domains
        (slightly negative values are chance level).
    p_value : float
        Exact permutation p-value, ``(count(stat_perm >= auc) + 1) / (n_permutations + 1)``, over
        relabellings within folds with the classifier refitted for each.
    n_x, n_y : int
    n_splits : int
    n_permutations : int
    n_components : int
        Features the classifier saw: ``d``, or the principal components kept when ``d`` was larger.
    variance_inflation : float
        Permutation variance of the AUC over its independent-folds value (at least 1; about 2 for a
        linear classifier): the factor applied to the DeLong variance for ``auc_ci``.
    """

    auc: float
    auc_ci: list[float]
    accuracy: float
    proxy_a_distance: float
    p_value: float
    n_x: int
    n_y: int
    n_splits: int
    n_permutations: int = 0
    n_components: int = 0
    variance_inflation: float = 1.0

    def is_shift(self, alpha: float = 0.05) -> bool:
        """Whether the test rejects "same distribution" at level ``alpha`` (``p_value <= alpha``)."""
        _check_alpha(alpha)
        return self.p_value <= alpha


# --------------------------------------------------------------------------------------------------
# MMD


def mmd_test(
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_permutations: int = 1000,
    bandwidths: Sequence[float] | float | None = None,
    random_state: RandomState = None,
    device: str | torch.device = "auto",
    max_exact: int = 20000,
) -> MMDResult:
    """Kernel two-sample test with the unbiased MMD² statistic and a permutation p-value.

    The statistic is the unbiased estimator of Gretton et al., "A Kernel Two-Sample Test", JMLR 13
    (2012), eq. (3)::

        MMD²_u = 1/(m(m-1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n-1)) Σ_{i≠j} k(y_i, y_j) - 2/(mn) Σ_{i,j} k(x_i, y_j)

    with a Gaussian kernel. Its width comes from the median heuristic (the median pairwise Euclidean
    distance of the pooled sample, on a random subsample of at most 1000 points), and the kernel is the
    mean of the Gaussian kernels at 0.5, 1 and 2 times that median, which is more robust than any one
    width. The p-value is ``(count(stat_perm >= stat_obs) + 1) / (B + 1)`` over ``B`` random
    reassignments of the pooled points to the two sides.

    The pooled kernel matrix ``K`` is computed once. With ``a`` the 0/1 indicator of the points a
    permutation assigns to ``x``, every term of MMD²_u follows from ``aᵀKa``, ``aᵀK1`` and ``aᵀdiag K``,
    so a batch of permutations costs one matrix product ``K @ A``. Above ``max_exact`` pooled points the
    kernel is replaced by random Fourier features (Rahimi & Recht, "Random Features for Large-Scale Kernel
    Machines", NIPS 2007), ``k(a, b) ≈ φ(a)ᵀφ(b)``; then ``K = ΦΦᵀ`` is never formed and the same
    sums come from ``Φᵀ A``. The permutation test stays exact in level for the random-feature kernel.

    Parameters
    ----------
    x : array-like of shape (m, d)
        Source sample.
    y : array-like of shape (n, d)
        Target sample.
    n_permutations : int, default 1000
        Number of random permutations ``B``; the smallest attainable p-value is ``1 / (B + 1)``.
    bandwidths : sequence of float, float or None
        Gaussian widths σ to average over, in the units of the features. ``None``: the median
        heuristic times (0.5, 1, 2).
    random_state : int, numpy Generator or None
        Seeds the median subsample, the random features and the permutations.
    device : str or torch.device, default "auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    max_exact : int, default 20000
        Largest ``m + n`` handled with the exact kernel matrix (``(m + n)²`` entries in memory).

    Returns
    -------
    MMDResult
    """
    xa, ya = _check_pair(x, y)
    check_int("n_permutations", n_permutations, minimum=1)
    check_int("max_exact", max_exact, minimum=0)
    widths = _check_bandwidths(bandwidths)
    dev = resolve_device(device)
    rng = np.random.default_rng(random_state)

    m, n = xa.shape[0], ya.shape[0]
    total = m + n
    dtype = torch.float64 if total <= _FLOAT64_MAX_POINTS else torch.float32
    z = _pooled(xa, ya, dev, dtype)
    if widths is None:
        median = median_distance(z, rng)
        widths = [0.5 * median, median, 2.0 * median]

    method = "exact" if total <= max_exact else "rff"
    if method == "exact":
        sums = _exact_sums(_gaussian_kernel_matrix(z, widths))
    else:
        sums = _rff_sums(_fourier_features(z, widths, rng))
    del z

    def statistic(assign_idx: np.ndarray) -> torch.Tensor:
        a = _indicator(assign_idx, total, dtype, dev)
        return _unbiased_mmd2(*sums(a), m, n)

    observed = float(statistic(np.arange(m)[None, :])[0])
    # Rounding can put a permutation that is a mere reordering of the observed split a hair below it;
    # counting near-ties as exceedances keeps the test conservative.
    tol = 10.0 * torch.finfo(dtype).eps * max(1.0, abs(observed))
    batch = max(1, min(n_permutations, _CHUNK_ELEMS // total))
    exceed = 0
    done = 0
    while done < n_permutations:
        b = min(batch, n_permutations - done)
        perms = rng.permuted(np.tile(np.arange(total), (b, 1)), axis=1)[:, :m]
        exceed += int((statistic(perms) >= observed - tol).sum())
        done += b
    p_value = (exceed + 1) / (n_permutations + 1)
    log.debug("mmd_test: method=%s m=%d n=%d mmd2=%.3g p=%.3g", method, m, n, observed, p_value)
    return MMDResult(
        mmd2=observed,
        p_value=float(p_value),
        n_permutations=int(n_permutations),
        bandwidths=[float(w) for w in widths],
        method=method,
        n_x=int(m),
        n_y=int(n),
    )


# The sums every MMD² term is built from, for a batch of assignments A (N, b) with 0/1 columns:
# (aᵀKa, aᵀK1, aᵀdiag K) per column, in float64, plus the constants 1ᵀK1 and tr K.
_Sums = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]]


def _unbiased_mmd2(
    s_xx: torch.Tensor, a_r: torch.Tensor, t_x: torch.Tensor, total: float, trace: float, m: int, n: int
) -> torch.Tensor:
    """MMD²_u from the indicator sums; ``b = 1 - a`` gives the y-side and cross terms without a 2nd product.

    With ``r = K1``: ``Σ_xy = aᵀr - aᵀKa`` and ``Σ_yy = 1ᵀK1 - 2aᵀr + aᵀKa``; the diagonal terms
    ``aᵀdiag K`` and ``tr K - aᵀdiag K`` are removed from the within-sample sums (the i ≠ j of the formula).
    """
    s_xy = a_r - s_xx
    s_yy = total - 2.0 * a_r + s_xx
    t_y = trace - t_x
    return (s_xx - t_x) / (m * (m - 1)) + (s_yy - t_y) / (n * (n - 1)) - 2.0 * s_xy / (m * n)


def _exact_sums(k: torch.Tensor) -> _Sums:
    row = torch.cat([block.sum(dim=1) for block in _float64_row_blocks(k)])
    diag = torch.diagonal(k).to(torch.float64)
    total, trace = float(row.sum()), float(diag.sum())

    def sums(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
        ka = (k @ a).to(torch.float64)
        a64 = a.to(torch.float64)
        return (a64 * ka).sum(dim=0), a64.T @ row, a64.T @ diag, total, trace

    return sums


def _rff_sums(phi: torch.Tensor) -> _Sums:
    col = torch.zeros(phi.shape[1], dtype=torch.float64, device=phi.device)  # Φᵀ1, so K1 = Φ col
    diag_blocks = []
    for block in _float64_row_blocks(phi):
        col += block.sum(dim=0)
        diag_blocks.append((block * block).sum(dim=1))
    diag = torch.cat(diag_blocks)
    total, trace = float(col @ col), float(diag.sum())

    def sums(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
        s = (phi.T @ a).to(torch.float64)  # (F, b): Φᵀa per column
        return (s * s).sum(dim=0), s.T @ col, a.to(torch.float64).T @ diag, total, trace

    return sums


def _float64_row_blocks(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """Row blocks of ``t`` as float64, for exact reductions without a float64 copy of all of ``t``."""
    step = max(1, _CHUNK_ELEMS // t.shape[1])
    for start in range(0, t.shape[0], step):
        yield t[start : start + step].to(torch.float64)


def _indicator(assign_idx: np.ndarray, total: int, dtype: torch.dtype, dev: torch.device) -> torch.Tensor:
    """``(total, b)`` 0/1 matrix whose column j marks the points ``assign_idx[j]`` gives to x."""
    idx = torch.as_tensor(assign_idx, dtype=torch.int64, device=dev)
    a = torch.zeros((idx.shape[0], total), dtype=dtype, device=dev)
    a.scatter_(1, idx, 1.0)
    return a.T


def _gaussian_kernel_matrix(z: torch.Tensor, widths: Sequence[float]) -> torch.Tensor:
    """Mean over ``widths`` of ``exp(-||z_i - z_j||² / (2σ²))``, built in row blocks to bound the peak."""
    count = z.shape[0]
    k = torch.empty((count, count), dtype=z.dtype, device=z.device)
    sq = (z * z).sum(dim=1)
    step = max(1, _CHUNK_ELEMS // count)
    for start in range(0, count, step):
        stop = min(count, start + step)
        d2 = _sq_dists(z[start:stop], z, sq[start:stop], sq)
        rows = torch.arange(stop - start, device=z.device)
        d2[rows, rows + start] = 0.0  # k(z, z) = 1 exactly, whatever the rounding of the expansion
        block = k[start:stop]
        block.zero_()
        for w in widths:
            block.add_(torch.exp(d2 * (-0.5 / (w * w))))
        block.div_(len(widths))
    return k


def _fourier_features(z: torch.Tensor, widths: Sequence[float], rng: np.random.Generator) -> torch.Tensor:
    """``Φ (N, 2F)`` with ``Φ Φᵀ ≈`` the width-averaged Gaussian kernel; ``||φ(z)||² = 1`` exactly.

    Rahimi & Recht (2007): ``exp(-||δ||²/(2σ²)) = E_w cos(wᵀδ)`` for ``w ~ N(0, I/σ²)``, and
    ``cos(wᵀ(a - b)) = cos(wᵀa)cos(wᵀb) + sin(wᵀa)sin(wᵀb)``; F frequencies split evenly over the widths.
    """
    dim = z.shape[1]
    per_width = max(1, _RFF_FREQUENCIES // len(widths))
    freqs = np.concatenate([rng.standard_normal((dim, per_width)) / w for w in widths], axis=1)
    w_t = torch.as_tensor(freqs, dtype=z.dtype, device=z.device)
    n_freq = w_t.shape[1]
    scale = 1.0 / math.sqrt(n_freq)
    phi = torch.empty((z.shape[0], 2 * n_freq), dtype=z.dtype, device=z.device)
    step = max(1, _CHUNK_ELEMS // (2 * n_freq))
    for start in range(0, z.shape[0], step):
        proj = z[start : start + step] @ w_t
        phi[start : start + step, :n_freq] = torch.cos(proj) * scale
        phi[start : start + step, n_freq:] = torch.sin(proj) * scale
    return phi


def median_distance(
    z: torch.Tensor, rng: np.random.Generator, *, max_points: int = _MEDIAN_SUBSAMPLE
) -> float:
    """Median pairwise Euclidean distance of the rows of ``z`` (the kernel-width median heuristic), on at
    most ``max_points`` of them drawn with ``rng``."""
    if z.shape[0] > max_points:
        pick = np.sort(rng.choice(z.shape[0], size=max_points, replace=False))
        z = z[torch.as_tensor(pick, device=z.device)]
    count = z.shape[0]
    iu = torch.triu_indices(count, count, offset=1, device=z.device)
    dist = _sq_dists(z, z)[iu[0], iu[1]].sqrt().cpu().numpy()
    median = float(np.median(dist))
    if median > 0:
        return median
    # Over half the pairs are duplicates: the median of the distinct distances still sets a scale, and
    # when every point is the same any width gives the same (constant) kernel.
    positive = dist[dist > 0]
    return float(np.median(positive)) if positive.size else 1.0


# --------------------------------------------------------------------------------------------------
# Classifier two-sample test


def c2st(
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_splits: int = 5,
    n_permutations: int = 1000,
    max_components: int = 128,
    ridge: float = 0.03,
    n_bootstrap: int | None = None,
    random_state: RandomState = None,
    n_threads: int | None = 1,
) -> C2STResult:
    """Classifier two-sample test: can a domain classifier tell target from source out of fold?

    Lopez-Paz & Oquab, "Revisiting Classifier Two-Sample Tests", ICLR 2017, with the p-value of a
    permutation test that re-runs the whole cross-validation for every relabelling (Ojala & Garriga,
    "Permutation Tests for Studying Classifier Performance", JMLR 11 (2010), test 1). The recipe:

    1. Label-free preprocessing of the pooled sample: each feature standardised with the pooled mean and
       standard deviation; above ``max_components`` features, projection onto the top principal subspace
       of the pooled sample, found by randomized subspace iteration (Halko, Martinsson & Tropp, SIAM
       Review 53 (2011), alg. 4.4) on at most 4096 pooled rows.
    2. Stratified K-fold cross-fitting of a least-squares linear classifier (ridge regression of the
       0/1 domain label with an unpenalised intercept, which is regularised Fisher discriminant analysis),
       minimising ``(1/t) Σ (a_i - b - wᵀz_i)² + ridge ||w||²`` over the ``t`` training rows.
    3. Statistic: the held-out AUC of each fold (its Mann–Whitney U / (m_k n_k)), averaged with weights
       ``m_k n_k``; reported as ``auc``.
    4. p-value: ``(1 + #{b: T_b >= T}) / (B + 1)`` over ``B`` relabellings that permute the domain labels
       within each fold, each with every fold's classifier refitted. The refit is free: the ridge
       direction is linear in the label vector, ``w_k = (X̃ᵀX̃ + t·ridge·I)⁻¹ X̃ᵀ a``, so a batch of
       relabellings costs two matrix products. Everything before step 2 ignores the labels and step 2
       treats the rows of a fold alike, so the relabelled statistics are exchangeable with the observed
       one under "same distribution" and the test is exact at any sample size (Hemerik & Goeman, "Exact
       testing with random permutations", TEST 27 (2018)).
    5. Interval: the AUC ± 1.96 standard errors, clipped to [0, 1]. The variance is the DeLong
       (DeLong, DeLong & Clarke-Pearson, Biometrics 44 (1988)) variance of each fold's held-out AUC,
       combined over folds as if independent and then multiplied by ``variance_inflation``: the
       permutation variance of the statistic over its independent-folds null variance
       ``Σ w_k² (m_k + n_k + 1) / (12 m_k n_k)`` (at least 1). Folds are not independent (each fold's
       classifier was trained on the others' held-out rows); for a linear classifier every pair of folds
       enters the statistic twice, and the measured inflation is about 2.
    6. ``accuracy``: balanced held-out accuracy with each fold's threshold halfway between the two
       training class means of its score (the equal-priors Fisher rule), and the proxy A-distance
       ``d_A = 2 (1 - 2 ε)`` of Ben-David et al., "Analysis of Representations for Domain Adaptation",
       NIPS 2007, with ε = 1 - ``accuracy``.

    Why this design, measured (``benchmarks/bench_shift.py``; 150 vs 150 random halves of MNIST
    embeddings at three probe points and Gaussian samples): the former version (logistic regression,
    per-fold Mann–Whitney tests combined by Bonferroni, bootstrap interval of the pooled out-of-fold
    AUC) rejected 2.5-6.5% of same-distribution splits at α = 0.05 and its interval covered 0.5 in only
    80-92% of them, because out-of-fold scores are dependent. This version rejected 3.8-5.3% (400 splits
    per setting), its interval covered 0.5 in 93.5-96% of them and the true AUC in 97-99% of runs under
    Gaussian mean shifts (slightly conservative there: the cross-fold term shrinks as the shift grows,
    while the inflation is measured under the null). Refitting per permutation is what makes the level
    exact; a least-squares classifier makes the refits matrix products, where logistic regression would
    need ``K·B`` fits. A small ridge matters: pixel noise shifts the stem features of EfficientNet-Lite0
    along low-variance directions, which ``ridge = 1`` missed (power 0.17) and ``ridge <= 0.03`` found
    (1.00), as logistic regression with C = 1 did. With 128 components the test was more powerful than
    with 64 or 256 on the noisy-digit embeddings (0.35 against 0.28 and 0.10 on the 1280-d pooled
    features at noise σ = 0.001, 40 splits; the former version: 0.15).

    Cost, measured (``benchmarks/bench_peers.py``: one BLAS thread, 1280-d EfficientNet-Lite0 features
    of MNIST against UCI digits, medians of 3 runs on this project's 2-core machine, nearly idle, load
    average 2-5): 0.22 s at 1,000 per side, 0.56 s at 5,000, 1.33 s at 10,000, and 0.18 s on two halves
    of MNIST at 1,000 per side. At 5,000 per side about 60 % of it is the permutations (drawing the
    within-fold relabellings, sorting the held-out scores for the AUC, the products), the rest the
    preprocessing (principal subspace, standardising and projecting every row). The permutations run in
    float32, the observed labelling among them so that both are computed alike. The whole test runs on
    ``n_threads`` BLAS threads, default 1: two threads were no faster on the idle machine (0.29 / 0.58 /
    1.48 s) and several times slower when the second core was busy (3.5-8.2 s under load 6-9).
    alibi-detect's ``ClassifierDrift`` (one logistic regression, no permutations) is compared in
    ``benchmarks/README.md``.

    The interval is for the AUC that the fitted fold classifiers have on new data (the mean of their
    conditional AUCs), not for the AUC of a classifier trained on all the data (which is higher).

    Parameters
    ----------
    x : array-like of shape (m, d)
        Source sample (label 0).
    y : array-like of shape (n, d)
        Target sample (label 1).
    n_splits : int, default 5
        Folds of the stratified K-fold; at most ``min(m, n)``.
    n_permutations : int, default 1000
        Relabellings ``B``; the smallest attainable p-value is ``1 / (B + 1)``.
    max_components : int, default 128
        Principal components kept when ``d`` is larger (also at most ``m + n - 1``).
    ridge : float, default 0.03
        L2 penalty of the least-squares classifier per training row, on the standardised scale.
    n_bootstrap : None
        Deprecated and ignored (the interval is no longer a bootstrap); passing it warns.
    random_state : int, numpy Generator or None
        Seeds the folds, the principal-subspace iteration and the permutations.
    n_threads : int or None, default 1
        BLAS threads for the duration of the call (threadpoolctl); None leaves the libraries' default.

    Returns
    -------
    C2STResult
    """
    xa, ya = _check_pair(x, y)
    m, n = xa.shape[0], ya.shape[0]
    check_int("n_splits", n_splits, minimum=2)
    if n_splits > min(m, n):
        raise param_error("n_splits", f"must be at most the smaller sample size ({min(m, n)})", n_splits)
    check_int("n_permutations", n_permutations, minimum=1)
    check_int("max_components", max_components, minimum=1)
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not 0.0 < ridge < math.inf:
        raise param_error("ridge", "must be a positive finite number", ridge)
    if n_bootstrap is not None:
        warnings.warn(
            "c2st: n_bootstrap is deprecated and ignored; the AUC interval is now analytic (DeLong, "
            "widened for cross-fitting). Drop the argument.",
            FutureWarning,
            stacklevel=2,
        )
    if n_threads is not None:
        check_int("n_threads", n_threads, minimum=1)
    rng = np.random.default_rng(random_state)
    with threadpool_limits(limits=n_threads):
        return _c2st(xa, ya, n_splits, n_permutations, max_components, float(ridge), rng)


def _c2st(
    xa: np.ndarray,
    ya: np.ndarray,
    n_splits: int,
    n_permutations: int,
    max_components: int,
    ridge: float,
    rng: np.random.Generator,
) -> C2STResult:
    m, n = xa.shape[0], ya.shape[0]
    fit = _fit_cross(xa, ya, n_splits, max_components, ridge, rng)
    labels = fit.labels
    scores = fit.held_out_scores()
    weights = np.array([float(np.sum(labels[s] == 0) * np.sum(labels[s] == 1)) for _, s in fit.folds])
    weights /= weights.sum()
    fold_auc, fold_var, null_var = [], [], 0.0
    for w, (_, test) in zip(weights, fit.folds, strict=True):
        auc_k, var_k = _delong(scores[test][labels[test] == 0], scores[test][labels[test] == 1])
        fold_auc.append(auc_k)
        fold_var.append(var_k)
        m_k, n_k = int(np.sum(labels[test] == 0)), int(np.sum(labels[test] == 1))
        null_var += w * w * (m_k + n_k + 1) / (12.0 * m_k * n_k)
    auc = float(weights @ np.array(fold_auc))
    var = float(weights**2 @ np.array(fold_var))

    observed, permuted = _permutation_test(fit, n_permutations, rng)
    # Near-ties count as exceedances: the permutation that happens to equal the observed labelling must
    # not fall a rounding error below it.
    exceed = int(np.sum(permuted >= observed - 1e-12))
    p_value = (exceed + 1) / (n_permutations + 1)
    inflation = max(1.0, float(np.var(permuted, ddof=1)) / null_var) if n_permutations > 1 else 1.0
    half = _Z95 * math.sqrt(inflation * var)

    thresholds = fit.thresholds()
    correct = np.zeros(2)
    for k, (_, test) in enumerate(fit.folds):
        lab = labels[test]
        correct[0] += np.sum(scores[test][lab == 0] < thresholds[k])
        correct[1] += np.sum(scores[test][lab == 1] >= thresholds[k])
    balanced_accuracy = 0.5 * (correct[0] / m + correct[1] / n)
    error = 1.0 - balanced_accuracy
    log.debug("c2st: m=%d n=%d dims=%d auc=%.3f p=%.3g", m, n, fit.features.shape[1], auc, p_value)
    return C2STResult(
        auc=auc,
        auc_ci=[max(0.0, auc - half), min(1.0, auc + half)],
        accuracy=float(balanced_accuracy),
        proxy_a_distance=float(2.0 * (1.0 - 2.0 * error)),
        p_value=float(p_value),
        n_x=int(m),
        n_y=int(n),
        n_splits=int(n_splits),
        n_permutations=int(n_permutations),
        n_components=int(fit.features.shape[1]),
        variance_inflation=float(inflation),
    )


# The two-sided 95% normal quantile.
_Z95 = 1.959963984540054
# The principal subspace of the C2ST is found on at most this many pooled rows, with this many
# power iterations (each a product with the rows and one with their transpose).
_PCA_ROWS = 4096
_POWER_ITERATIONS = 2
# Largest row for which _row_aucs sums ranks in float32: s (s + 1) / 2 < 2^24.
_FLOAT32_RANKS = 5792


@dataclass(frozen=True, eq=False)
class _CrossFit:
    """A cross-fitted least-squares domain classifier over label-free features (see :func:`c2st`).

    ``features`` are the pooled rows of ``[x; y]`` after standardising (``center``, ``scale``) and
    projecting onto ``basis`` (None: no projection), reordered so that each fold's held-out rows are
    contiguous: row i is ``[x; y][order[i]]``, ``bounds[k]`` the start and stop of fold k, and ``labels``
    (0: x, 1: y) follow the same order. Per fold, ``solvers[k]`` is ``(X̃ᵀX̃ + λI)⁻¹`` of the centred
    training features and ``train_means[k]`` their mean, so the ridge direction for any 0/1 labelling
    ``a`` is ``solvers[k] @ (Xᵀa_train - n1 · mean)``, with ``n1`` the positives among the training rows:
    linear in ``a`` for every relabelling that keeps the per-fold counts. Labellings are passed as the
    rows of a ``(b, N)`` array.
    """

    center: np.ndarray
    scale: np.ndarray
    basis: np.ndarray | None
    features: np.ndarray
    labels: np.ndarray
    order: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    solvers: list[np.ndarray]
    train_means: list[np.ndarray]
    # float32 copies for the permutations (a float32 labelling matrix selects them): half the time.
    features32: np.ndarray
    solvers32: list[np.ndarray]
    train_means32: list[np.ndarray]

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return [(int(test[0]), int(test[-1]) + 1) for _, test in self.folds]

    def _arrays(self, a: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        if a.dtype == np.float32:
            return self.features32, self.solvers32, self.train_means32
        return self.features, self.solvers, self.train_means

    def directions(self, a: np.ndarray) -> list[np.ndarray]:
        """Per fold, the ridge directions ``(b, r)`` for the labellings in the rows of ``a (b, N)``."""
        z, solvers, means = self._arrays(a)
        # aᵀX of each fold's held-out rows; a fold's training part is their total minus its own part
        # (one pass over the rows, where a product with all of them and one per fold would be two).
        parts = [a[:, start:stop] @ z[start:stop] for start, stop in self.bounds]
        total = np.sum(parts, axis=0)
        out = []
        for (train, _), part, solver, mean in zip(self.folds, parts, solvers, means, strict=True):
            n1 = float(np.sum(self.labels[train]))  # the same for every within-fold relabelling
            out.append((total - part - n1 * mean) @ solver)  # solver is symmetric
        return out

    def statistic(self, a: np.ndarray) -> np.ndarray:
        """The C2ST statistic (weighted mean of held-out AUCs) of each labelling row of ``a (b, N)``.

        ``a`` in float32 runs the products in float32 (the AUC ranks float32 scores in any case).
        """
        z, _, means = self._arrays(a)
        stat = np.zeros(a.shape[0])
        weight = 0.0
        for (start, stop), w, mean in zip(self.bounds, self.directions(a), means, strict=True):
            n1 = float(np.sum(self.labels[start:stop]))
            n0 = stop - start - n1
            # Scores of the centred held-out rows, one labelling per row: C-contiguous for the sort.
            scores = w @ (z[start:stop] - mean).T
            stat += n0 * n1 * _row_aucs(scores, a[:, start:stop])
            weight += n0 * n1
        return stat / weight

    def held_out_scores(self) -> np.ndarray:
        """``(N,)`` score of every row under the classifier of the fold that held it out."""
        scores = np.empty(self.labels.size)
        w = self.directions(self.labels[None, :])
        for (start, stop), w_k, mean in zip(self.bounds, w, self.train_means, strict=True):
            scores[start:stop] = (self.features[start:stop] - mean) @ w_k[0]
        return scores

    def thresholds(self) -> np.ndarray:
        """Per fold, the midpoint of the two training classes' mean scores (the equal-priors rule)."""
        # The mean score of a class is the score of its mean row (the score is affine): class sums over
        # all rows minus the fold's own block give the training class means.
        w = self.directions(self.labels[None, :])
        ones = self.labels @ self.features
        zeros = self.features.sum(axis=0) - ones
        out = []
        for (train, _), (start, stop), w_k, mean in zip(
            self.folds, self.bounds, w, self.train_means, strict=True
        ):
            lab, block = self.labels[start:stop], self.features[start:stop]
            n1 = float(np.sum(self.labels[train]))
            mean1 = (ones - lab @ block) / n1
            mean0 = (zeros - (1.0 - lab) @ block) / (train.size - n1)
            out.append(float((0.5 * (mean0 + mean1) - mean) @ w_k[0]))
        return np.array(out)

    def raw_directions(self) -> np.ndarray:
        """``(K, d)``: fold k scores a raw feature row ``v`` as ``raw_directions()[k] @ v`` + a constant."""
        w = np.concatenate(self.directions(self.labels[None, :]))
        if self.basis is not None:
            w = w @ self.basis.T
        return np.asarray(w / self.scale)


def _fit_cross(
    xa: np.ndarray, ya: np.ndarray, n_splits: int, max_components: int, ridge: float, rng: np.random.Generator
) -> _CrossFit:
    m, n, dim = xa.shape[0], ya.shape[0], xa.shape[1]
    total = m + n
    center = (xa.sum(axis=0, dtype=np.float64) + ya.sum(axis=0, dtype=np.float64)) / total
    sq = np.zeros(dim)
    if xa.dtype == ya.dtype == np.float32:  # float32 data: float32 deviations, float64 sums
        c32 = center.astype(np.float32)
        for arr in (xa, ya):
            for start in range(0, arr.shape[0], _CHUNK_ELEMS // 4 // dim + 1):
                dev = arr[start : start + _CHUNK_ELEMS // 4 // dim + 1] - c32
                sq += np.einsum("ij,ij->j", dev, dev, dtype=np.float64)
    else:
        for block in _row_blocks(xa, ya, dim):
            sq += np.sum((block - center) ** 2, axis=0)
    scale = np.sqrt(sq / total)
    scale[scale <= 1e-12 * max(1.0, float(np.abs(center).max(initial=0.0)))] = 1.0  # constant columns
    rank = min(max_components, total - 1)
    basis = None
    if dim > rank:
        if total > _PCA_ROWS:
            rows = np.sort(rng.choice(total, size=_PCA_ROWS, replace=False))
            sample = np.concatenate([xa[rows[rows < m]], ya[rows[rows >= m] - m]])
        else:
            sample = np.concatenate([xa, ya])
        # float32 halves the cost; the basis only needs to span roughly the right subspace. float32 data
        # is standardised in float32 (no float64 copy of the sample).
        if sample.dtype == np.float32:
            sample -= center.astype(np.float32)
            sample *= (1.0 / scale).astype(np.float32)
        else:
            sample = ((sample - center) / scale).astype(np.float32)
        basis = _principal_basis(sample, rank, rng)
    # Standardise and project in one product per row block: ((v - c) / s) B = v (B / s) - (c / s) B,
    # in float32 when both samples are float32 (half the time of the largest product here).
    proj = np.diag(1.0 / scale) if basis is None else basis / scale[:, None]
    offset = (center / scale) if basis is None else (center / scale) @ basis
    work = np.float32 if xa.dtype == ya.dtype == np.float32 else np.float64
    blocks = _row_blocks(xa, ya, proj.shape[1], dtype=work)
    features = np.concatenate([block @ proj.astype(work) for block in blocks]).astype(np.float64) - offset

    labels = np.concatenate([np.zeros(m), np.ones(n)])
    fold_of = np.empty(total, dtype=np.int64)
    start = 0
    for idx in (np.arange(m), np.arange(m, total)):
        # Deal each class round robin; the second class starts where the first stopped, so fold sizes
        # differ by at most one.
        fold_of[rng.permutation(idx)] = (start + np.arange(idx.size)) % n_splits
        start = (start + idx.size) % n_splits
    order = np.argsort(fold_of, kind="stable")  # each fold's rows contiguous
    features, labels, fold_of = features[order], labels[order], fold_of[order]
    folds, solvers, means = [], [], []
    dims = features.shape[1]
    # Each fold's training sums are the totals minus its own contiguous held-out block: one Gram of all
    # rows and one per block (2 N r² flops) instead of one per training part ((K - 1) N r²).
    total_sum, total_gram = features.sum(axis=0), features.T @ features
    for k in range(n_splits):
        train, test = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        block = features[test[0] : test[-1] + 1]
        mean = (total_sum - block.sum(axis=0)) / train.size
        gram = total_gram - block.T @ block - train.size * np.outer(mean, mean)
        gram[np.diag_indices(dims)] += ridge * train.size
        folds.append((train, test))
        solvers.append(np.linalg.inv(gram))
        means.append(mean)
    return _CrossFit(
        center,
        scale,
        basis,
        features,
        labels,
        order,
        folds,
        solvers,
        means,
        features.astype(np.float32),
        [s.astype(np.float32) for s in solvers],
        [m.astype(np.float32) for m in means],
    )


def _row_blocks(
    xa: np.ndarray, ya: np.ndarray, width: int, dtype: type[np.floating] = np.float64
) -> Iterator[np.ndarray]:
    """Row blocks of ``[x; y]`` as ``dtype``, never concatenated whole: ``(rows, width)`` blocks, small."""
    step = max(1, (_CHUNK_ELEMS // 4) // max(width, xa.shape[1]))
    for arr in (xa, ya):
        for start in range(0, arr.shape[0], step):
            yield arr[start : start + step].astype(dtype, copy=False)


def _principal_basis(z: np.ndarray, rank: int, rng: np.random.Generator) -> np.ndarray:
    """``(d, rank)`` orthonormal basis of the approximate top-``rank`` principal subspace of rows ``z``.

    Randomized subspace iteration (Halko et al. 2011, alg. 4.4). Only the subspace matters (the ridge
    classifier is rotation invariant within it), so no SVD of the small matrix is needed.
    """
    omega = rng.standard_normal((z.shape[1], rank)).astype(z.dtype)
    v = _orthonormal(z.T @ (z @ omega))
    for _ in range(_POWER_ITERATIONS):
        u = _orthonormal(z @ v.astype(z.dtype))
        v = _orthonormal(z.T @ u.astype(z.dtype))
    return v


def _orthonormal(a: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of ``a`` (tall), by CholeskyQR2, with Householder QR as fallback.

    CholeskyQR2 (Fukaya et al., 2014) is two Cholesky factorisations of ``aᵀa``: matrix products only. On a
    busy 2-core machine OpenBLAS's multithreaded Householder QR of a 1200 x 74 matrix took 1 s (3 ms on
    one thread); the fallback is for rank-deficient input only.
    """
    q = a = a.astype(np.float64)
    try:
        for _ in range(2):
            chol = np.linalg.cholesky(q.T @ q)
            q = scipy.linalg.solve_triangular(chol, q.T, lower=True).T
        if np.allclose(q.T @ q, np.eye(q.shape[1]), atol=1e-8):
            return np.asarray(q)
    except np.linalg.LinAlgError:
        pass
    return np.asarray(np.linalg.qr(a)[0])


def _permutation_test(
    fit: _CrossFit, n_permutations: int, rng: np.random.Generator
) -> tuple[float, np.ndarray]:
    """The observed statistic and its values under ``n_permutations`` relabellings within every fold.

    Both come from the same float32 products (the observed labelling is an extra first row of the first
    batch), so the comparison ``T_b >= T`` is between values computed alike. Each relabelling shuffles
    every fold's labels (as bytes: a third faster than float64).
    """
    total = fit.labels.size
    batch = max(1, min(n_permutations, (_CHUNK_ELEMS // 4) // total))
    labels = fit.labels.astype(np.uint8)
    out = np.empty(n_permutations + 1)
    out[0] = np.nan
    done = 0
    while done < n_permutations:
        b = min(batch, n_permutations - done)
        first = 1 if done == 0 else 0
        a = np.empty((b + first, total), dtype=np.float32)
        if first:
            a[0] = fit.labels
        for start, stop in fit.bounds:
            a[first:, start:stop] = rng.permuted(np.tile(labels[start:stop], (b, 1)), axis=1)
        out[done + 1 - first : done + 1 + b] = fit.statistic(a)
        done += b
    return float(out[0]), out[1:]


def _row_aucs(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUC of each row of ``scores (b, s)`` against the 0/1 ``labels (b, s)``, in O(s log s) per row.

    Each score is rounded to float32 and its lowest mantissa bit replaced by the label, so one plain sort
    (SIMD in NumPy, ~20x faster than argsort here) yields the labels in score order; exact ties are then
    broken by label. The result is a fixed function of the (score, label) pairs, whatever their order,
    as the permutation test needs; it differs from the midrank AUC only at ties of float32 scores.
    """
    keys = scores.astype(np.float32)  # a C-contiguous copy
    bits = keys.view(np.uint32)
    bits &= np.uint32(0xFFFFFFFE)
    bits |= labels.astype(np.uint32)
    keys.sort(axis=1)
    # Rank sums are integers up to s(s+1)/2, every partial sum too: exact in float32 below 2^24.
    exact = np.float32 if scores.shape[1] <= _FLOAT32_RANKS else np.float64
    ordered = (keys.view(np.uint32) & np.uint32(1)).astype(exact)
    n1 = ordered.sum(axis=1, dtype=np.float64)
    n0 = scores.shape[1] - n1
    rank_sum = (ordered @ np.arange(1, scores.shape[1] + 1, dtype=exact)).astype(np.float64)
    return np.asarray((rank_sum - n1 * (n1 + 1.0) / 2.0) / (n0 * n1))


def _delong(s0: np.ndarray, s1: np.ndarray) -> tuple[float, float]:
    """AUC of positives ``s1`` over negatives ``s0`` (midranks) and its DeLong et al. (1988) variance."""
    m, n = s0.size, s1.size
    ranks = stats.rankdata(np.concatenate([s0, s1]))
    v10 = (ranks[m:] - stats.rankdata(s1)) / m  # per positive: share of negatives below it (ties: half)
    v01 = 1.0 - (ranks[:m] - stats.rankdata(s0)) / n  # per negative: share of positives above it
    var = (np.var(v10, ddof=1) / n if n > 1 else 0.0) + (np.var(v01, ddof=1) / m if m > 1 else 0.0)
    return float(v10.mean()), float(var)


# --------------------------------------------------------------------------------------------------
# Moment distances


def frechet_distance(x: ArrayLike, y: ArrayLike, *, shrinkage: str | float | None = None) -> float:
    """Fréchet distance between Gaussian fits of the two samples (as in FID).

    Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
    NeurIPS 2017::

        ||μ_x - μ_y||² + Tr(Σ_x + Σ_y - 2 (Σ_x Σ_y)^½)

    with sample means and covariances (``ddof=1``). ``Tr (Σ_x Σ_y)^½`` is the sum of the square roots of
    the eigenvalues of the symmetric PSD matrix ``Σ_x^½ Σ_y Σ_x^½`` (tiny negative eigenvalues from
    rounding are clipped to 0), which avoids the non-symmetric ``sqrtm`` and its failures on singular
    covariances. When ``d > m + n`` both covariances live in the span of the centred rows (plus a
    multiple of the identity when shrunk), so the work happens in an orthonormal basis of that span,
    ``(m + n) x (m + n)``, and the orthogonal complement is added in closed form.

    Parameters
    ----------
    x : array-like of shape (m, d)
    y : array-like of shape (n, d)
    shrinkage : "ledoit-wolf", float in [0, 1] or None
        Shrink each covariance towards ``(Tr Σ / d) I``: ``(1 - α) Σ + α (Tr Σ / d) I``. ``"ledoit-wolf"``
        picks α per sample by the formula of Ledoit & Wolf, "A well-conditioned estimator for
        large-dimensional covariance matrices", J. Multivariate Anal. 2004 (the coefficient of
        :func:`sklearn.covariance.ledoit_wolf_shrinkage`); a float uses that α for both.

    Returns
    -------
    float
        The distance (≥ 0), in squared feature units.
    """
    xa, ya = _check_pair(x, y)
    if shrinkage is not None and shrinkage != "ledoit-wolf":
        is_number = isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool)
        if not is_number or not 0.0 <= float(shrinkage) <= 1.0:
            raise param_error("shrinkage", "must be None, 'ledoit-wolf' or a number in [0, 1]", shrinkage)
    # The distance is symmetric; so is this code, by construction: the two samples are put in a canonical
    # order first, so that (x, y) and (y, x) run the very same floating-point operations on any BLAS.
    if (xa.shape[0], xa.tobytes()) > (ya.shape[0], ya.tobytes()):
        xa, ya = ya, xa
    m, n, dim = xa.shape[0], ya.shape[0], xa.shape[1]
    mu_x, mu_y = xa.mean(axis=0, dtype=np.float64), ya.mean(axis=0, dtype=np.float64)
    xc, yc = xa - mu_x, ya - mu_y
    if shrinkage == "ledoit-wolf":
        alpha_x, alpha_y = _ledoit_wolf_of(xc), _ledoit_wolf_of(yc)
    else:
        alpha_x = alpha_y = float(shrinkage or 0.0)

    if dim > m + n:
        basis, _ = np.linalg.qr(np.concatenate([xc, yc]).T)  # (d, m + n), spans every centred row
        xc, yc = xc @ basis, yc @ basis
    rank = xc.shape[1]
    cov_x = xc.T @ xc / (m - 1)
    cov_y = yc.T @ yc / (n - 1)
    # The shrinkage target uses the full trace over d dimensions; the projection keeps every trace.
    ridge_x = alpha_x * np.trace(cov_x) / dim
    ridge_y = alpha_y * np.trace(cov_y) / dim
    cov_x = (1.0 - alpha_x) * cov_x + ridge_x * np.eye(rank)
    cov_y = (1.0 - alpha_y) * cov_y + ridge_y * np.eye(rank)
    # On the (d - rank)-dimensional complement the covariances are ridge_x I and ridge_y I.
    complement = (dim - rank) * (math.sqrt(ridge_x) - math.sqrt(ridge_y)) ** 2
    mean_term = float(np.sum((mu_x - mu_y) ** 2))
    root_x = _covariance_factor(xc, cov_x, ridge_x, alpha_x)
    root_y = _covariance_factor(yc, cov_y, ridge_y, alpha_y)
    # Tr (Σx Σy)^½ = ||Lxᵀ Ly||_* for any factors Σ = L Lᵀ: the eigenvalues of Σx Σy are the squared
    # singular values of Lxᵀ Ly. Singular values carry an absolute error of about eps ||Lxᵀ Ly||, whereas
    # square roots of the eigenvalues of Σx^½ Σy Σx^½ turn rounding noise at a zero eigenvalue into
    # errors of order sqrt(eps) (what made the d > n case differ by 1e-9 between BLAS kernels).
    trace_root = float(np.linalg.svd(root_x.T @ root_y, compute_uv=False).sum())
    value = mean_term + np.trace(cov_x) + np.trace(cov_y) - 2.0 * trace_root
    return max(0.0, float(value + complement))


def _covariance_factor(centred: np.ndarray, cov: np.ndarray, ridge: float, alpha: float) -> np.ndarray:
    """A factor ``L`` with ``L Lᵀ = cov``, shape ``(rank, k)``.

    A rank-deficient sample covariance (fewer rows than dimensions, no ridge) is factored by its own
    centred rows, exactly; otherwise by its eigen-decomposition, whose eigenvalues are then bounded away
    from zero.
    """
    count = centred.shape[0]
    if ridge == 0.0 and count - 1 < cov.shape[0]:
        return centred.T * math.sqrt((1.0 - alpha) / (count - 1))
    w, v = np.linalg.eigh(cov)
    return v * np.sqrt(np.clip(w, 0.0, None))


def _ledoit_wolf_of(xc: np.ndarray) -> float:
    """:func:`~diag.stats.common.ledoit_wolf_shrinkage` of centred data ``(n, d)``, ``||S||²_F`` from the
    smaller of the ``d x d`` and ``n x n`` Grams."""
    count, dim = xc.shape
    sq_norms = np.einsum("ij,ij->i", xc, xc)
    mu = sq_norms.sum() / count / dim
    return ledoit_wolf_shrinkage(sq_norms, _cross_sq_frobenius(xc, xc) / count**2, mu, dim)


def coral_distance(x: ArrayLike, y: ArrayLike) -> float:
    """CORAL distance: squared Frobenius distance of the covariances, ``||C_x - C_y||²_F / (4 d²)``.

    Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV Workshops 2016
    (the CORAL loss), with sample covariances (``ddof=1``). When ``d > m + n`` the d x d covariances are
    not formed: with centred data ``X̃, Ỹ``,
    ``||C_x - C_y||²_F = ||X̃X̃ᵀ||²_F/(m-1)² + ||ỸỸᵀ||²_F/(n-1)² - 2 ||X̃Ỹᵀ||²_F / ((m-1)(n-1))``,
    where ``⟨X̃ᵀX̃, ỸᵀỸ⟩_F = ||X̃Ỹᵀ||²_F`` is an ``m x n`` cross Gram, taken in row blocks.

    Parameters
    ----------
    x : array-like of shape (m, d)
    y : array-like of shape (n, d)

    Returns
    -------
    float
        The distance (≥ 0), in squared-feature² units over ``4 d²``.
    """
    xa, ya = _check_pair(x, y)
    m, n, dim = xa.shape[0], ya.shape[0], xa.shape[1]
    xc = xa - xa.mean(axis=0, dtype=np.float64)
    yc = ya - ya.mean(axis=0, dtype=np.float64)
    if dim <= m + n:
        diff = xc.T @ xc / (m - 1) - yc.T @ yc / (n - 1)
        fro2 = float(np.sum(diff * diff))
    else:
        fro2 = (
            _cross_sq_frobenius(xc, xc) / (m - 1) ** 2
            + _cross_sq_frobenius(yc, yc) / (n - 1) ** 2
            - 2.0 * _cross_sq_frobenius(xc, yc) / ((m - 1) * (n - 1))
        )
    return max(0.0, fro2) / (4.0 * dim * dim)


def _cross_sq_frobenius(a: np.ndarray, b: np.ndarray) -> float:
    """``||a bᵀ||²_F = ⟨aᵀa, bᵀb⟩_F`` for ``a (p, d)``, ``b (q, d)``, via the smaller of d x d and p x q."""
    dim = a.shape[1]
    if dim * dim <= a.shape[0] * b.shape[0]:
        return float(np.sum((a.T @ a) * (b.T @ b)))
    step = max(1, (_CHUNK_ELEMS // 4) // b.shape[0])
    total = 0.0
    for start in range(0, a.shape[0], step):
        block = a[start : start + step] @ b.T
        total += float(np.sum(block * block))
    return total


# --------------------------------------------------------------------------------------------------
# Per-sample shift


def knn_shift_scores(
    source: ArrayLike, target: ArrayLike, *, k: int = 10, device: str | torch.device = "auto"
) -> np.ndarray:
    """Per-target-sample out-of-distribution score from k-nearest-neighbour distances to the source.

    The k-NN distance as an OOD score follows Sun et al., "Out-of-Distribution Detection with Deep
    Nearest Neighbors", ICML 2022 (here the mean over the k nearest, on the features as given). For each
    target sample: the mean Euclidean distance to its ``k`` nearest source samples, divided by the median
    over source samples of the same quantity computed leave-one-out (each source sample's ``k`` nearest
    *other* source samples). So ``~1`` means as close to the source as a typical source sample is, and
    ``2`` twice as far. Distances are computed in float32 in row blocks, so 50k x 50k never holds more than
    a block of the distance matrix.

    Parameters
    ----------
    source : array-like of shape (m, d)
    target : array-like of shape (n, d)
    k : int, default 10
        Neighbours per sample; at most ``m - 1``.
    device : str or torch.device, default "auto"

    Returns
    -------
    ndarray of shape (n,), float64
        The score of each target sample, in target order.
    """
    src, tgt = _check_pair(source, target, names=("source", "target"))
    check_int("k", k, minimum=1)
    if k > src.shape[0] - 1:
        raise param_error(
            "k", f"must be at most the number of source samples minus one ({src.shape[0] - 1})", k
        )
    dev = resolve_device(device)
    # Distances are translation invariant; centring limits the rounding of ||a||² + ||b||² - 2abᵀ.
    center = src.mean(axis=0, dtype=np.float64)
    s = to_tensor(src - center, dev, torch.float32)
    t = to_tensor(tgt - center, dev, torch.float32)
    reference = float(np.median(_mean_knn_distance(s, s, k, leave_one_out=True)))
    if reference <= 0.0:
        raise DataError(
            f"source: most source samples have at least k={k} exact duplicates, so the typical source "
            "k-NN distance is 0 and the scores cannot be normalised; deduplicate the source or raise k."
        )
    return _mean_knn_distance(t, s, k, leave_one_out=False) / reference


def _mean_knn_distance(query: torch.Tensor, ref: torch.Tensor, k: int, *, leave_one_out: bool) -> np.ndarray:
    """Mean distance of each query row to its k nearest ``ref`` rows (``query is ref`` with leave-one-out)."""
    d2, _ = nearest_neighbors(query, ref, k, leave_one_out=leave_one_out, block_elems=_CHUNK_ELEMS)
    return d2.clamp_min(0.0).sqrt().mean(dim=1, dtype=torch.float64).cpu().numpy()


# --------------------------------------------------------------------------------------------------
# Label shift


def label_shift(y_source: ArrayLike, y_target: ArrayLike, classes: Sequence[Any]) -> dict[str, Any]:
    """Class proportions on each side, their total variation distance and a chi-square test.

    The test is Pearson's chi-square test of homogeneity on the 2 x C table of counts (no continuity
    correction; classes absent on both sides are left out), e.g. Agresti, "Categorical Data Analysis",
    §3.2. Total variation is ``½ Σ_c |p_c - q_c|`` (0: same proportions, 1: disjoint classes).

    Parameters
    ----------
    y_source : array-like of shape (m,)
    y_target : array-like of shape (n,)
        Labels: values from ``classes``, or integer indices into ``classes`` when ``classes`` holds names
        (the convention of :class:`diag.Embeddings`, whose ``labels`` index its ``classes``).
    classes : sequence
        Every class, in the order of the output lists.

    Returns
    -------
    dict
        JSON-native: ``classes``, ``source_counts``, ``target_counts``, ``source_proportions``,
        ``target_proportions`` (lists in class order), ``total_variation``, ``chi2``, ``dof``,
        ``p_value``, ``n_source``, ``n_target``.
    """
    names = [c.item() if isinstance(c, np.generic) else c for c in classes]
    if not names:
        raise param_error("classes", "must name at least one class", classes)
    if len(set(names)) != len(names):
        raise param_error("classes", "must not repeat a class", classes)
    codes_s = _encode_labels(y_source, names, "y_source")
    codes_t = _encode_labels(y_target, names, "y_target")
    counts_s = np.bincount(codes_s, minlength=len(names))
    counts_t = np.bincount(codes_t, minlength=len(names))
    p, q = counts_s / counts_s.sum(), counts_t / counts_t.sum()
    table = np.stack([counts_s, counts_t])[:, (counts_s + counts_t) > 0]
    if table.shape[1] < 2:
        chi2, dof, p_value = 0.0, 0, 1.0
    else:
        res = stats.chi2_contingency(table, correction=False)
        chi2, dof, p_value = float(res.statistic), int(res.dof), float(res.pvalue)
    return {
        "classes": [c if isinstance(c, (str, int, float, bool)) else str(c) for c in names],
        "source_counts": [int(c) for c in counts_s],
        "target_counts": [int(c) for c in counts_t],
        "source_proportions": [float(v) for v in p],
        "target_proportions": [float(v) for v in q],
        "total_variation": float(0.5 * np.abs(p - q).sum()),
        "chi2": chi2,
        "dof": dof,
        "p_value": p_value,
        "n_source": int(codes_s.size),
        "n_target": int(codes_t.size),
    }


def _encode_labels(labels: ArrayLike, names: list[Any], what: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"{what} must be a 1-D array of labels; got shape {arr.shape}.")
    if arr.size == 0:
        raise DataError(f"{what} is empty; label shift needs at least one label per side.")
    by_index = arr.dtype.kind in "iu" and not any(isinstance(c, (int, float)) for c in names)
    if by_index:
        bad = (arr < 0) | (arr >= len(names))
        if bad.any():
            raise DataError(
                f"{what} holds {int(bad.sum())} labels outside 0..{len(names) - 1}, the indices of "
                f"classes={names!r}; e.g. {arr[bad][:5].tolist()}."
            )
        return arr.astype(np.int64)
    uniques, inverse = np.unique(arr, return_inverse=True)
    lookup = {c: i for i, c in enumerate(names)}
    mapped = [lookup.get(u.item() if isinstance(u, np.generic) else u) for u in uniques]
    unknown = [u for u, code in zip(uniques.tolist(), mapped, strict=True) if code is None]
    if unknown:
        raise DataError(
            f"{what} holds labels that are not in classes={names!r}: {unknown[:5]!r}"
            f"{' …' if len(unknown) > 5 else ''}. Pass every class in classes."
        )
    return np.asarray(mapped, dtype=np.int64)[inverse.reshape(-1)]


# --------------------------------------------------------------------------------------------------
# Shared helpers


def _as_matrix(data: ArrayLike, name: str) -> np.ndarray:
    """A validated ``(rows, d)`` float32/float64 view or copy of ``data``."""
    arr = numeric_matrix(data, name)
    if arr.shape[0] < MIN_SAMPLES:
        raise DataError(
            f"{name} has {arr.shape[0]} samples; the shift statistics need at least {MIN_SAMPLES} per side "
            "(fewer than a handful gives no usable estimate). Provide more samples."
        )
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    return arr


def _check_pair(
    x: ArrayLike, y: ArrayLike, *, names: tuple[str, str] = ("x", "y")
) -> tuple[np.ndarray, np.ndarray]:
    """Validate both samples: 2-D, same number of columns, at least MIN_SAMPLES rows, finite values."""
    xa, ya = _as_matrix(x, names[0]), _as_matrix(y, names[1])
    if xa.shape[1] != ya.shape[1]:
        raise DataError(
            f"{names[0]} and {names[1]} must have the same number of features (columns); got {names[0]} "
            f"of shape {xa.shape} and {names[1]} of shape {ya.shape}."
        )
    for name, arr in ((names[0], xa), (names[1], ya)):
        require_finite(arr, name, needed_by="the statistics need finite features")
    return xa, ya


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise param_error("alpha", "must be in (0, 1)", alpha)


def _check_bandwidths(bandwidths: Sequence[float] | float | None) -> list[float] | None:
    if bandwidths is None:
        return None
    values = [bandwidths] if isinstance(bandwidths, (int, float, np.number)) else list(bandwidths)
    if not values or not all(
        isinstance(v, (int, float, np.number)) and math.isfinite(v) and v > 0 for v in values
    ):
        raise param_error("bandwidths", "must be None or one or more positive finite numbers", bandwidths)
    return [float(v) for v in values]


def _pooled(x: np.ndarray, y: np.ndarray, dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[x; y]`` on the device, minus the pooled mean (distances do not change; rounding does)."""
    z = torch.cat([to_tensor(x, dev, dtype), to_tensor(y, dev, dtype)])
    z -= z.mean(dim=0, keepdim=True)
    return z


def _sq_dists(
    a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor | None = None, b_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared Euclidean distances ``(len(a), len(b))`` as ``||a||² + ||b||² - 2abᵀ``, clipped at 0."""
    if a_sq is None:
        a_sq = (a * a).sum(dim=1)
    if b_sq is None:
        b_sq = (b * b).sum(dim=1)
    d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min_(0.0)

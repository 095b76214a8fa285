"""Transferability scores: how well do a backbone's features (or its source head) suit a labelled target?

Every function here is a pure statistic over arrays: target features ``features`` of shape ``(n, d)``
(one probe point of a backbone, say), integer class labels ``labels`` of shape ``(n,)`` and, for the
scores that read the source task's head, its logits or probabilities ``(n, Z)`` go in; a number or a
frozen result with JSON-native fields comes out. Nothing touches a model or a file. Every score is
higher-is-better. They are meant to *rank* backbones or probe points on one fixed target data set;
their absolute values depend on ``n``, ``d`` and the number of classes.

=============================  ================================================  ====================
function                       what it measures                                   range
=============================  ================================================  ====================
:func:`logme_score`            evidence of a Bayesian linear model, per sample    any real
:func:`leep_score`             log-likelihood of the source head's EEP            (-inf, 0]
:func:`nce_score`              negative conditional entropy -H(Y | Z)             [-log C, 0]
:func:`h_score`                tr(cov(f)⁻¹ cov(E[f | y])), optionally shrunk      [0, C - 1]
:func:`gbc_score`              overlap of per-class Gaussians (Bhattacharyya)     [-C(C-1), 0]
:func:`transrate_score`        coding rate of all minus mean within-class         any real
:func:`sfda_score`             log-likelihood after a self-challenging reg. FDA   (-inf, 0]
:func:`knn_accuracy`           k-NN accuracy, stratified k-fold                   [0, 1]
:func:`linear_probe_accuracy`  logistic-regression accuracy, stratified k-fold    [0, 1]
=============================  ================================================  ====================

:func:`transferability` computes every applicable score for one feature matrix and records, rather
than raises, the ones that cannot be computed for it.

The heavy linear algebra (Gram matrices, their eigen-decompositions, neighbour searches) runs in torch,
on CUDA when ``device`` says so (``"auto"``: CUDA when present), always in float64 so that the result
does not depend on the device beyond rounding. The Gram matrix is formed on the smaller side,
``min(n, d)²``, so ``d > n`` (300 samples x 1280 dimensions) costs no more than ``n x n``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from numpy.typing import ArrayLike
from threadpoolctl import threadpool_limits

from diag.device import resolve_device
from diag.errors import DataError, DiagError, param_error
from diag.stats.common import (
    Result,
    check_int,
    class_codes,
    ledoit_wolf_shrinkage,
    nearest_neighbors,
    numeric_matrix,
    principal_axes,
    require_finite,
    require_per_class,
    to_tensor,
)

__all__ = [
    "SCORES",
    "ProbeResult",
    "TransferScores",
    "gbc_score",
    "h_score",
    "knn_accuracy",
    "leep_score",
    "linear_probe_accuracy",
    "logme_score",
    "nce_score",
    "sfda_score",
    "transferability",
    "transrate_score",
]

log = logging.getLogger(__name__)

#: Names :func:`transferability` knows, in the order it computes them.
SCORES: tuple[str, ...] = (
    "logme",
    "leep",
    "nce",
    "h_score",
    "h_score_shrinkage",
    "gbc",
    "transrate",
    "sfda",
    "knn_accuracy",
    "linear_probe_accuracy",
)
_NEED_LOGITS = frozenset({"leep", "nce"})

# Elements per temporary block of a distance matrix: 16M float64 elements is 128 MiB.
_CHUNK_ELEMS = 1 << 24
# GBC: per-class variances are floored at this fraction of the mean per-dimension variance of all the
# features, so that a feature constant within a class gives a large but finite distance (the floor is
# relative, which keeps the score invariant to rescaling the features).
_GBC_VARIANCE_FLOOR = 1e-6
# The linear probe runs single-threaded below this many training-matrix elements (n_train x fitted dims).
_SMALL_PROBLEM_ELEMS = 1 << 22
# LogME: α/β is kept within this range times the largest eigenvalue of FᵀF. Beyond it the evidence is
# flat to many digits (α → ∞: the features explain nothing; α/β → 0: a noise-free fit of y).
_LOGME_T_RANGE = (1e-12, 1e12)
# Rows of the source output count as probabilities when they are in [0, 1] and sum to 1 within this.
_PROB_SUM_ATOL = 1e-3

RandomState = int | np.random.Generator | None
Device = str | torch.device


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ProbeResult(Result):
    """Outcome of :func:`knn_accuracy` and :func:`linear_probe_accuracy`.

    Attributes
    ----------
    accuracy : float
        Out-of-fold accuracy over all samples (each sample is predicted once, by the model of the fold
        that held it out).
    accuracy_std : float
        Standard deviation (``ddof=1``) of the per-fold accuracies: the spread to read differences by.
    fold_accuracies : list of float
    chance : float
        Accuracy of always predicting the most frequent class, the floor to compare with.
    n_splits : int
    method : str
        The classifier, e.g. ``"knn(k=5, metric=cosine)"`` or ``"logistic(C=1.0)"``.
    """

    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    chance: float
    n_splits: int
    method: str


@dataclass(frozen=True)
class TransferScores(Result):
    """Outcome of :func:`transferability`: the scores of one feature matrix, and those skipped.

    Attributes
    ----------
    scores : dict of str to float
        Score name (see :data:`SCORES`) to value, higher is better for each; the probes contribute their
        out-of-fold accuracy.
    skipped : dict of str to str
        Score name to the reason it could not be computed for this input (no logits, a class too small
        for the cross-validation, ...).
    n_samples, n_features, n_classes : int
    """

    scores: dict[str, float]
    skipped: dict[str, str]
    n_samples: int
    n_features: int
    n_classes: int


# --------------------------------------------------------------------------------------------------
# LogME


def logme_score(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    device: Device = "auto",
) -> float:
    """LogME: the maximum log evidence of a Bayesian linear model from the features to each class.

    You, Liu, Wang & Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
    ICML 2021. For each class ``c`` the target is its one-hot column ``y`` (one vs rest) and the model
    ``y = F w + noise`` with prior ``w ~ N(0, α⁻¹ I_d)`` and noise ``N(0, β⁻¹)``. With ``σ_i`` the
    eigenvalues of ``FᵀF`` (squared singular values of ``F``, zero beyond its rank), the evidence is::

        L(α, β) = n/2 log β + d/2 log α - n/2 log 2π - β/2 ||y - F m||² - α/2 ||m||²
                  - 1/2 Σ_{i=1..d} log(α + β σ_i),        m = β (α I + β FᵀF)⁻¹ Fᵀ y

    maximised by the paper's fixed-point iteration from ``α = β = 1``: ``γ = Σ σ_i / (σ_i + α/β)``,
    ``α = γ / ||m||²``, ``β = (n - γ) / ||y - F m||²``, until ``α/β`` changes by less than ``tol``
    (relative). The score is the mean over classes of ``L / n``.

    The maximum can lie on the boundary: ``α → ∞`` when a class is not linearly predictable at all (the
    evidence tends to that of ``y ~ N(0, I/β)``), and ``α/β → 0`` when ``d >= n`` and the features fit
    ``y`` without noise (the evidence tends to that of ``y ~ N(0, FFᵀ/α)``). The iteration then drifts
    towards that boundary; ``α/β`` is clamped to ``[1e-12, 1e12]`` times the largest ``σ_i``, where the
    evidence equals its limit to many digits, and the evidence is evaluated in a form that stays exact
    there (``β`` at its optimum ``n / (||y - Fm||² + (α/β) ||m||²)``, ``n - γ`` summed without
    cancellation). When the features fit ``y`` exactly with fewer than ``n`` independent rows
    (duplicated samples, as in a bootstrap resample with ``d`` above the number of distinct samples, or
    the labels themselves among the features) the evidence is unbounded; the clamp then caps it, the
    score says more about the cap than the features, and a warning is logged. Resample without
    replacement for LogME.

    One eigen-decomposition serves every class: of the ``d x d`` Gram ``FᵀF`` when ``n > d``, else of
    the ``n x n`` Gram ``F Fᵀ`` (its eigenvectors are the left singular vectors of ``F``, so the
    residual is a sum of non-negative terms, exact even when ``F`` fits ``y`` perfectly). Each class
    then costs O(min(n, d)) per iteration. The sum of ``log(α + β σ_i)`` runs over all ``d``
    eigenvalues, the ``d - rank`` zero ones included, as in the paper's formula. The authors' public code
    (thuml/LogME, ``LogME().fit``) sums over the nonzero ones only, which makes its value wrong whenever
    ``d > n`` (on 300 MNIST/UCI EfficientNet-Lite0 embeddings x 1280: 9.27 where the evidence maximum,
    which this function returns, is -0.027; ``benchmarks/README.md``). It
    also stops after 11 iterations with 1e-5 added to both denominators, so its values differ slightly
    for rank-deficient features and where the iteration converges slowly. Features are used as given:
    not centred, no bias column, as in the paper.

    Parameters
    ----------
    features : array-like of shape (n, d)
    labels : array-like of shape (n,)
        Integer class ids (any integers; each distinct value is a class).
    tol : float, default 1e-6
        Relative change of ``α/β`` at which the iteration stops.
    max_iter : int, default 1000
    device : str or torch.device, default "auto"

    Returns
    -------
    float
        Mean per-sample log evidence; higher is better.
    """
    x, codes, counts, _ = _check_xy(features, labels)
    _check_positive("tol", tol)
    check_int("max_iter", max_iter, minimum=1)
    if not np.any(x):
        raise DataError("features are all zero; LogME needs features that carry some signal.")
    dev = resolve_device(device)
    n, d = x.shape
    f = _to_tensor(x, dev)
    y = _one_hot(codes, len(counts), dev)
    if n > d:
        # z = Vᵀ Fᵀ y: zᵢ² = σᵢ xᵢ² with x = Uᵀy, without dividing by a tiny σᵢ.
        sigma, z = _eigh_project(_gram(x, f, transpose_first=True), f.T @ y)
        zz = (z**2).cpu().numpy()
        xx = None
    else:
        sigma, uy = _eigh_project(_gram(x, f, transpose_first=False), y)
        xx = (uy**2).cpu().numpy()  # u is a full basis of R^n: Σᵢ xᵢ² = ||y||²
        zz = None
    sig = np.clip(sigma.cpu().numpy(), 0.0, None)
    if xx is not None:
        zz = sig[:, None] * xx
    assert zz is not None
    evidence = _logme_evidence(sig, zz, xx, counts.astype(np.float64), n, d, tol=tol, max_iter=max_iter)
    return float(np.mean(evidence / n))


def _gram(x: np.ndarray, f: torch.Tensor, *, transpose_first: bool) -> torch.Tensor:
    """``FᵀF`` (``transpose_first``) or ``FFᵀ`` in float64 on ``f``'s device.

    On the CPU NumPy forms it: it recognises the product of a matrix with its own transpose and calls
    BLAS ``syrk``, half the flops of the general product that torch runs (measured on this project's
    2-core machine, one thread, 5000 x 1280: 0.37 s against 0.88 s).
    """
    if f.device.type != "cpu":
        return f.T @ f if transpose_first else f @ f.T
    a = np.asarray(x, dtype=np.float64)
    return torch.from_numpy(a.T @ a if transpose_first else a @ a.T)


def _eigh_project(gram: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) of the symmetric ``gram`` and ``Vᵀ b``, ``V`` its eigenvectors.

    On the CPU the eigenvectors are never formed: LAPACK ``sytrd`` reduces ``gram = Q T Qᵀ`` to a
    tridiagonal ``T`` by Householder reflections, which LAPACK ``ormqr`` applies to the few columns of
    ``b`` (``Qᵀ b``), and ``T = W Λ Wᵀ`` is solved by MRRR (``stemr``, O(d²)), so ``Vᵀ b = Wᵀ Qᵀ b``. That
    skips the back-transformation of all ``d`` eigenvectors (``2 d³`` flops) of a full ``syevd``. Measured
    on this project's 2-core machine, nearly idle, one thread, d = 1280 (``benchmarks/README.md``):
    ``syevd`` 0.23-0.25 s (``torch.linalg.eigh`` 0.31-0.32 s), the tridiagonal reduction alone 0.09 s.
    """
    if gram.device.type != "cpu":
        sigma, vectors = torch.linalg.eigh(gram)
        return sigma, vectors.T @ b
    packed, diag, off, tau, info = scipy.linalg.lapack.dsytrd(gram.numpy(), lower=1, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"LAPACK dsytrd failed (info={info})")
    qb = b.cpu().numpy().copy()
    if diag.size > 1:
        # Q = H(1)...H(n-1) acts on rows 1..n-1 as the Q of a QR factorisation whose reflectors sit below
        # the diagonal of packed[1:, :-1]: LAPACK ormqr applies its transpose to those rows of b.
        reflectors = packed[1:, :-1]
        query = scipy.linalg.lapack.dormqr("L", "T", reflectors, tau, qb[1:].copy(), lwork=-1)
        lwork = int(np.real(query[1]).ravel()[0])
        rows, _, info = scipy.linalg.lapack.dormqr("L", "T", reflectors, tau, qb[1:], lwork=lwork)
        if info != 0:
            raise np.linalg.LinAlgError(f"LAPACK dormqr failed (info={info})")
        qb[1:] = rows
    w, vt = scipy.linalg.eigh_tridiagonal(diag, off, check_finite=False)
    return torch.from_numpy(w), torch.from_numpy(vt.T @ qb)


def _logme_evidence(
    sigma: np.ndarray,
    zz: np.ndarray,
    xx: np.ndarray | None,
    yy: np.ndarray,
    n: int,
    d: int,
    *,
    tol: float,
    max_iter: int,
) -> np.ndarray:
    """Fixed-point maximisation of the LogME evidence for every class at once; the maximum per class.

    ``sigma (r,)``: eigenvalues; ``zz (r, C)``: ``σᵢ xᵢ²`` with ``x = Uᵀy`` per class; ``xx (r, C)``: ``xᵢ²``
    over a full basis of ``R^n`` (``n <= d``), or None (``n > d``), when the residual outside the column
    space of ``F`` follows from ``yy = ||y||²``. Everything is a function of ``t = α/β``: the paper's
    updates give ``t ← γ ||y - Fm||² / ((n - γ) ||m||²)``, and at the fixed point ``β = n / E(t)`` with
    ``E(t) = ||y - Fm||² + t ||m||²``, so the evidence is
    ``n/2 log(n/E) - n/2 - n/2 log 2π - 1/2 Σᵢ log(1 + σᵢ/t)`` (the ``d - r`` zero eigenvalues cancel
    against ``d/2 log α``). ``n - γ = Σᵢ t/(t + σᵢ) + (n - r)`` is summed directly, without cancellation.
    """
    s = sigma[:, None]
    n_missing = n - sigma.size  # zero eigenvalues of F Fᵀ not in sigma (n > d)
    scale = float(sigma.max())
    t_lo, t_hi = _LOGME_T_RANGE[0] * scale, _LOGME_T_RANGE[1] * scale

    def terms(t: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(γ, n - γ, ||m||², ||y - Fm||², E)`` per class at ``t``."""
        w = t / (t + s)
        gamma = (1.0 - w).sum(axis=0)
        rest = w.sum(axis=0) + n_missing
        m2 = (zz / (t + s) ** 2).sum(axis=0)
        if xx is not None:
            r2 = (xx * w * w).sum(axis=0)
            e = t * (xx / (t + s)).sum(axis=0)
        else:
            e = np.maximum(yy - (zz / (t + s)).sum(axis=0), 0.0)
            r2 = np.maximum(e - t * m2, 0.0)
        return gamma, rest, m2, r2, e

    n_classes = zz.shape[1]
    t = np.clip(np.ones(n_classes), t_lo, t_hi)  # α = β = 1, as in the paper
    active = np.ones(n_classes, dtype=bool)
    for _ in range(max_iter):
        gamma, rest, m2, r2, _ = terms(t)
        with np.errstate(divide="ignore", invalid="ignore"):
            new_t = gamma * r2 / (rest * m2)
        # ||m|| = 0 (no linear signal): t → ∞; a perfect fit: t → 0. The clamps stop the drift where the
        # evidence has reached its limit to many digits.
        new_t = np.clip(np.where(np.isnan(new_t), t, new_t), t_lo, t_hi)
        done = np.abs(new_t - t) <= tol * t
        t = np.where(active, new_t, t)
        active &= ~done
        if not active.any():
            break
    else:
        log.info(
            "logme: %d of %d classes did not converge in %d iterations", active.sum(), n_classes, max_iter
        )

    def evidence(t: np.ndarray) -> np.ndarray:
        e = np.maximum(terms(t)[4], np.finfo(np.float64).tiny)
        return np.asarray(
            0.5 * n * np.log(n / e)
            - 0.5 * n
            - 0.5 * n * math.log(2.0 * math.pi)
            - 0.5 * np.log1p(s / t).sum(axis=0)
        )

    value = evidence(t)
    at_floor = t <= t_lo * (1.0 + 1e-9)
    if at_floor.any():
        # A finite limit is flat here; an unbounded one still grows like (n - rank)/2 · log(1/t).
        unbounded = at_floor & (value - evidence(t * 1e3) > 1e-6 * n)
        if unbounded.any():
            log.warning(
                "logme: the evidence of %d of %d classes grows without bound as α/β → 0: the features fit "
                "those labels exactly with fewer than n independent rows (duplicated samples, e.g. a "
                "bootstrap resample, or the labels among the features); the score is capped and "
                "measures that cap, not the features",
                int(unbounded.sum()),
                n_classes,
            )
    return value


# --------------------------------------------------------------------------------------------------
# Scores from the source head


def leep_score(source_output: ArrayLike, labels: ArrayLike, *, from_logits: bool | None = None) -> float:
    """LEEP: log-likelihood of the labels under the source head's "expected empirical predictor".

    Nguyen, Hassner, Seeger & Archambeau, "LEEP: A New Measure to Evaluate Transferability of Learned
    Representations", ICML 2020. With ``θ(x)`` the source head's softmax over the ``Z`` source classes::

        P̂(y, z) = 1/n Σᵢ θ_z(xᵢ) 1[yᵢ = y],      P̂(y | z) = P̂(y, z) / Σ_y' P̂(y', z)
        LEEP    = 1/n Σᵢ log Σ_z P̂(yᵢ | z) θ_z(xᵢ)

    Source classes no sample puts any mass on (``P̂(z) = 0``) drop out of every sum.

    Parameters
    ----------
    source_output : array-like of shape (n, Z)
        The source head's logits or probabilities for each target sample.
    labels : array-like of shape (n,)
        Integer target class ids.
    from_logits : bool or None, default None
        ``True``: ``source_output`` holds logits (a softmax is applied); ``False``: probabilities (rows
        are renormalised to sum to 1 exactly). ``None``: probabilities when every value is in [0, 1] and
        every row sums to 1 within 1e-3, logits otherwise.

    Returns
    -------
    float
        In ``(-inf, 0]``; 0 when the source class determines the target class. Higher is better.
    """
    theta = _source_probabilities(source_output, from_logits=from_logits)
    codes, counts, _ = class_codes(labels, theta.shape[0], rows_of="source_output has")
    n = theta.shape[0]
    onehot = np.zeros((n, counts.size))
    onehot[np.arange(n), codes] = 1.0
    joint = onehot.T @ theta / n  # (C, Z)
    marginal = joint.sum(axis=0)
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    eep = np.einsum("iz,iz->i", theta, cond[codes])
    return float(np.mean(np.log(eep)))


def nce_score(source_output: ArrayLike, labels: ArrayLike) -> float:
    """NCE: negative conditional entropy of the target label given the source head's prediction.

    Tran, Nguyen & Hassner, "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019.
    With ``zᵢ = argmax`` of the source head for sample ``i`` and the empirical joint ``P̂(y, z)``::

        NCE = -H(Y | Z) = Σ_{y,z} P̂(y, z) log(P̂(y, z) / P̂(z))

    Parameters
    ----------
    source_output : array-like of shape (n, Z)
        The source head's logits or probabilities (the argmax is the same for both).
    labels : array-like of shape (n,)
        Integer target class ids.

    Returns
    -------
    float
        In ``[-log C, 0]``; 0 when the source prediction determines the target label. Higher is better.
    """
    scores = _check_source_matrix(source_output)
    codes, counts, _ = class_codes(labels, scores.shape[0], rows_of="source_output has")
    z = np.argmax(scores, axis=1)
    n_source = scores.shape[1]
    pairs = np.bincount(codes * n_source + z, minlength=counts.size * n_source).reshape(counts.size, -1)
    joint = pairs / codes.size
    marginal = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    ratio = np.divide(joint, marginal, out=np.ones_like(joint), where=nz)
    return float(np.sum(joint[nz] * np.log(ratio[nz])))


# --------------------------------------------------------------------------------------------------
# H-score


def h_score(
    features: ArrayLike, labels: ArrayLike, *, shrinkage: bool = False, device: Device = "auto"
) -> float:
    """H-score: how much of the feature covariance the class-conditional means explain.

    Bao, Li, Huang, Zheng, Wu, Zhang & Lin, "An Information-Theoretic Approach to Transferability in
    Task Transfer Learning", ICIP 2019::

        H(f) = tr(cov(f)⁺ cov(E[f | y]))

    with the pseudo-inverse (eigenvalues below ``max(n, d) · eps · λ_max`` count as zero). Each
    eigen-direction of ``cov(f)`` contributes a share in [0, 1], so ``0 <= H <= C - 1``. When the centred
    features span all ``n - 1`` centred directions (``d >= n - 1`` and generic features) the plain score
    is ``C - 1`` whatever the labels: it cannot rank anything there, use ``shrinkage=True``.

    ``shrinkage=True`` is the regularised H-score of Ibrahim, Ponomareva & Mazumder, "Newer is not always
    better: Rethinking transferability metrics, their peculiarities, stability and performance",
    ECML-PKDD 2022 (arXiv:2110.06893)::

        H_α(f) = tr(Σ_α⁻¹ (1 - α) cov(E[f | y])),   Σ_α = (1 - α) S + α (tr S / d) I

    with ``S`` the empirical covariance (``ddof=0``, as is ``cov(E[f | y])`` here) and ``α`` the
    Ledoit–Wolf shrinkage coefficient (Ledoit & Wolf, J. Multivariate Anal. 2004; the value of
    :class:`sklearn.covariance.LedoitWolf`). Both are computed from the eigen-decomposition of the Gram
    on the smaller side, so ``d x d`` matrices are never formed when ``d > n``.

    Parameters
    ----------
    features : array-like of shape (n, d)
    labels : array-like of shape (n,)
        Integer class ids.
    shrinkage : bool, default False
    device : str or torch.device, default "auto"

    Returns
    -------
    float
        Higher is better.
    """
    x, codes, counts, _ = _check_xy(features, labels)
    if not isinstance(shrinkage, (bool, np.bool_)):
        raise param_error("shrinkage", "must be True or False", shrinkage)
    dev = resolve_device(device)
    n, d = x.shape
    f = _to_tensor(x, dev)
    f = f - f.mean(dim=0, keepdim=True)
    y = _one_hot(codes, counts.size, dev)
    n_c = torch.as_tensor(counts, dtype=torch.float64, device=dev)
    # λ: eigenvalues of FᵀF (centred, unnormalised); q_k = v_kᵀ Fᵀ P F v_k with P the projector onto the
    # class indicators, so that cov(f) and cov(E[f|y]) are diag(λ)/n and diag(q)/n in the same basis.
    if d <= n:
        lam, v = torch.linalg.eigh(f.T @ f)
        class_means = (y.T @ f) / n_c[:, None]  # (C, d), centred
        q = (n_c[:, None] * (class_means @ v) ** 2).sum(dim=0)
    else:
        lam, u = torch.linalg.eigh(f @ f.T)
        q = lam.clamp_min(0.0) * (((y.T @ u) ** 2) / n_c[:, None]).sum(dim=0)
    lam_np = np.clip(lam.cpu().numpy(), 0.0, None)
    q_np = np.clip(q.cpu().numpy(), 0.0, None)
    if not shrinkage:
        keep = lam_np > max(n, d) * np.finfo(np.float64).eps * lam_np.max(initial=0.0)
        return float(np.sum(q_np[keep] / lam_np[keep]))
    # ||S||²_F and tr S from the spectrum: Σλ² / n² and Σλ / n, with S = FᵀF / n.
    mu = float(lam_np.sum()) / (n * d)
    alpha = ledoit_wolf_shrinkage((f * f).sum(dim=1).cpu().numpy(), float(np.sum(lam_np**2)) / n**2, mu, d)
    denom = (1.0 - alpha) * lam_np / n + alpha * mu
    terms = np.divide(q_np / n, denom, out=np.zeros_like(q_np), where=denom > 0)
    return float((1.0 - alpha) * terms.sum())


# --------------------------------------------------------------------------------------------------
# GBC


def gbc_score(features: ArrayLike, labels: ArrayLike, *, n_components: int | None = 64) -> float:
    """GBC: minus the total overlap of per-class diagonal Gaussians, by the Bhattacharyya coefficient.

    Pándy, Agostinelli, Uijlings, Ferrari & Mensink, "Transferability Estimation using Bhattacharyya
    Class Separability", CVPR 2022. Each class ``c`` is a Gaussian with the class mean ``μ_c`` and the
    per-dimension class variances ``v_c`` (``ddof=0``). Between two classes, with ``v = (v_i + v_j)/2``::

        BD_ij = 1/8 Σ_k (μ_ik - μ_jk)² / v_k + 1/2 Σ_k [log v_k - (log v_ik + log v_jk) / 2]
        GBC   = -Σ_{i ≠ j} exp(-BD_ij)

    (each unordered pair counted twice, as in the paper). Close to 0 when the classes are far apart, down
    to ``-C(C-1)`` when they coincide. Variances are floored at 1e-6 times the mean per-dimension
    variance of all features, so a feature constant within a class does not make a distance infinite.

    Pándy et al. compute GBC on PCA-reduced features, and so does this function by default: the centred
    features are projected on their top ``n_components`` principal directions (capped at
    ``min(n, d)``). Without a reduction, BD sums over every dimension, and for ``d`` in the hundreds every
    pair's coefficient underflows to 0 (GBC = 0 whatever the features). The score is invariant to a
    common rescaling of the features, with or without PCA.

    Parameters
    ----------
    features : array-like of shape (n, d)
    labels : array-like of shape (n,)
        Integer class ids; every class needs at least 2 samples (a variance).
    n_components : int or None, default 64
        Principal components to keep (at most ``min(n, d)`` are kept); None: the features as given, in
        their own axes.

    Returns
    -------
    float
        In ``[-C(C-1), 0]``; higher is better.
    """
    x, codes, counts, classes = _check_xy(features, labels)
    require_per_class(counts, classes, 2, "gbc_score (a per-class variance)")
    if n_components is not None:
        check_int("n_components", n_components, minimum=1)
        keep = min(n_components, *x.shape)
        xc = x - x.mean(axis=0)
        x = xc @ principal_axes(xc, keep)
    overall = float(x.var(axis=0).mean())
    if overall <= 0.0:
        raise DataError("features are constant (zero variance in every column); GBC needs varying features.")
    floor = _GBC_VARIANCE_FLOOR * overall
    n_classes = counts.size
    means = np.stack([x[codes == c].mean(axis=0) for c in range(n_classes)])
    variances = np.maximum(np.stack([x[codes == c].var(axis=0) for c in range(n_classes)]), floor)
    log_var = np.log(variances)
    total = 0.0
    for i in range(n_classes):
        avg = 0.5 * (variances[i] + variances)  # (C, d)
        bd = 0.125 * np.sum((means[i] - means) ** 2 / avg, axis=1) + 0.5 * np.sum(
            np.log(avg) - 0.5 * (log_var[i] + log_var), axis=1
        )
        bd[i] = np.inf  # i ≠ j
        total += float(np.sum(np.exp(-bd)))
    return 0.0 - total  # not -0.0 when every coefficient underflows


# --------------------------------------------------------------------------------------------------
# TransRate


def transrate_score(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    eps: float = 1e-4,
    device: Device = "auto",
) -> float:
    """TransRate: coding rate of all features minus the mean coding rate within each class.

    Huang, Huang, Rong, Yang & Wei, "Frustratingly Easy Transferability Estimation", ICML 2022::

        Z = F - mean(F),     R(Z) = 1/2 logdet(I + ZᵀZ / (n ε)),     TransRate = R(Z) - 1/C Σ_c R(Z_c)

    where ``Z_c`` holds the ``n_c`` rows of class ``c`` (its own ``n_c`` in the denominator); the
    features are centred once by their overall mean (classes are not re-centred) and not rescaled, with
    the scaling ``ZᵀZ / (n ε)`` of TLlib's ``tllib/ranking/transrate.py``, whose values this equals to
    rounding (``benchmarks/bench_peers.py``). The log-determinants come from
    the eigenvalues of the Gram on the smaller side (``logdet(I + AᵀA) = logdet(I + AAᵀ)``).

    An earlier version also scaled each centred row to unit norm, which neither the paper nor TLlib does; its
    values differ several-fold, and it ranked freeze depths no better against the committed fine-tuning
    sweeps (mean Spearman over 4 scenarios -0.17 against 0.04 for the published score;
    ``benchmarks/bench_peers.py``), so it was dropped.

    Parameters
    ----------
    features : array-like of shape (n, d)
    labels : array-like of shape (n,)
        Integer class ids.
    eps : float, default 1e-4
        The distortion ``ε`` of the coding rate.
    device : str or torch.device, default "auto"

    Returns
    -------
    float
        Higher is better.
    """
    x, codes, counts, _ = _check_xy(features, labels)
    _check_positive("eps", eps)
    dev = resolve_device(device)
    z = _to_tensor(x, dev)
    z = z - z.mean(dim=0, keepdim=True)
    codes_t = torch.as_tensor(codes, device=dev)
    whole = _coding_rate(z, eps)
    within = [_coding_rate(z[codes_t == c], eps) for c in range(counts.size)]
    return whole - float(np.mean(within))


def _coding_rate(z: torch.Tensor, eps: float) -> float:
    """``1/2 logdet(I + zᵀz / (n ε))`` from the eigenvalues of the smaller Gram."""
    n, d = z.shape
    gram = z.T @ z if d <= n else z @ z.T
    lam = torch.linalg.eigvalsh(gram).clamp_min(0.0)
    return 0.5 * float(torch.log1p(lam / (n * eps)).sum())


# --------------------------------------------------------------------------------------------------
# Probes


def knn_accuracy(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    k: int = 5,
    metric: str = "cosine",
    n_splits: int = 5,
    random_state: RandomState = 0,
    device: Device = "auto",
) -> ProbeResult:
    """Out-of-fold accuracy of a k-nearest-neighbour classifier on standardised features.

    A plain, strong baseline for transferability (e.g. Kornblith, Shlens & Le, "Do Better ImageNet
    Models Transfer Better?", CVPR 2019, compare with such fixed-feature classifiers). Stratified
    K-fold cross-validation; in each fold the features are standardised with the training part's mean
    and standard deviation (constant columns are left unscaled), and each held-out sample gets the
    majority label of its ``k`` nearest training samples (ties go to the smallest class id, as in
    :class:`sklearn.neighbors.KNeighborsClassifier`). Distances are computed in float64 on the device,
    in row blocks.

    Parameters
    ----------
    features : array-like of shape (n, d)
    labels : array-like of shape (n,)
        Integer class ids; every class needs at least ``n_splits`` samples.
    k : int, default 5
        Neighbours; at most the size of the smallest training part.
    metric : {"cosine", "euclidean"}, default "cosine"
    n_splits : int, default 5
        Folds of the stratified K-fold.
    random_state : int, numpy Generator or None, default 0
        Seeds the fold assignment (an int is passed to
        ``StratifiedKFold(n_splits, shuffle=True, random_state=...)`` as is).
    device : str or torch.device, default "auto"

    Returns
    -------
    ProbeResult
    """
    x, codes, counts, classes = _check_xy(features, labels)
    check_int("k", k, minimum=1)
    if metric not in ("cosine", "euclidean"):
        raise param_error("metric", "must be 'cosine' or 'euclidean'", metric)
    folds = _folds(codes, counts, classes, n_splits, random_state, "knn_accuracy")
    smallest_train = min(codes.size - test.size for _, test in folds)
    if k > smallest_train:
        raise param_error("k", f"must be at most the smallest training part ({smallest_train} samples)", k)
    dev = resolve_device(device)
    xt = _to_tensor(x, dev)
    codes_t = torch.as_tensor(codes, device=dev)
    pred = np.empty_like(codes)
    for train, test in folds:
        tr, te = torch.as_tensor(train, device=dev), torch.as_tensor(test, device=dev)
        a, b = _standardise(xt[tr], xt[te])
        pred[test] = _knn_predict(a, codes_t[tr], b, k, metric, counts.size).cpu().numpy()
    return _probe_result(codes, pred, counts, folds, f"knn(k={k}, metric={metric})")


def _knn_predict(
    train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, k: int, metric: str, n_classes: int
) -> torch.Tensor:
    if metric == "cosine":
        train = torch.nn.functional.normalize(train, dim=1)
        test = torch.nn.functional.normalize(test, dim=1)
    _, idx = nearest_neighbors(
        test, train, k, metric="inner" if metric == "cosine" else "sqeuclidean", block_elems=_CHUNK_ELEMS
    )
    votes = torch.nn.functional.one_hot(train_y[idx], n_classes).sum(dim=1)
    return torch.argmax(votes, dim=1)  # first maximum: the smallest class id wins a tie


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, correction=0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def linear_probe_accuracy(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    C: float = 1.0,
    n_splits: int = 5,
    max_iter: int = 1000,
    random_state: RandomState = 0,
) -> ProbeResult:
    """Out-of-fold accuracy of an L2-regularised logistic regression on standardised features.

    The linear probe of the transfer literature (e.g. Kornblith, Shlens & Le, CVPR 2019; Kumar et al.,
    "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022):
    stratified K-fold cross-validation of scikit-learn's ``LogisticRegression(C=C)`` (multinomial,
    L-BFGS) on features standardised with the training part's mean and standard deviation. When
    ``d`` exceeds the training size the model is fitted in the coordinates of the training rows' span,
    which gives the same classifier (representer theorem) several times faster. A fold whose solver
    stops at ``max_iter`` before converging still gives a valid held-out estimate; that is logged, not
    raised.

    Parameters
    ----------
    features : array-like of shape (n, d)
    labels : array-like of shape (n,)
        Integer class ids; every class needs at least ``n_splits`` samples.
    C : float, default 1.0
        Inverse L2 regularisation strength.
    n_splits : int, default 5
    max_iter : int, default 1000
    random_state : int, numpy Generator or None, default 0
        Seeds the fold assignment (an int is passed to
        ``StratifiedKFold(n_splits, shuffle=True, random_state=...)`` as is).

    Returns
    -------
    ProbeResult
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x, codes, counts, classes = _check_xy(features, labels)
    _check_positive("C", C)
    check_int("max_iter", max_iter, minimum=1)
    folds = _folds(codes, counts, classes, n_splits, random_state, "linear_probe_accuracy")
    pred = np.empty_like(codes)
    # L-BFGS on a small problem makes many tiny BLAS calls, where extra BLAS/OpenMP threads only spin: on
    # 2 busy cores, 300 x 1280 features took 20-30 s with 2 threads and under 1 s with one.
    small = (codes.size - min(t.size for _, t in folds)) * min(x.shape) < _SMALL_PROBLEM_ELEMS
    with (
        threadpool_limits(limits=1) if small else contextlib.nullcontext(),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always", ConvergenceWarning)
        for train, test in folds:
            mean = x[train].mean(axis=0)
            std = x[train].std(axis=0)
            std[std == 0] = 1.0  # constant columns stay unscaled, as in StandardScaler
            a, b = (x[train] - mean) / std, (x[test] - mean) / std
            if a.shape[1] > a.shape[0]:
                # The L2 optimum lies in the span of the training rows (any weight component orthogonal
                # to them leaves the loss unchanged and adds to the penalty), so fitting in that span's
                # coordinates gives the same classifier with n_train instead of d weights per class.
                basis = np.linalg.svd(a, full_matrices=False)[2]
                a, b = a @ basis.T, b @ basis.T
            model = LogisticRegression(C=C, max_iter=max_iter).fit(a, codes[train])
            pred[test] = model.predict(b)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.info("linear_probe_accuracy: the logistic regression did not converge in %d iterations", max_iter)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return _probe_result(codes, pred, counts, folds, f"logistic(C={C})")


def _folds(
    codes: np.ndarray,
    counts: np.ndarray,
    classes: np.ndarray,
    n_splits: int,
    random_state: RandomState,
    what: str,
) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    check_int("n_splits", n_splits, minimum=2)
    require_per_class(counts, classes, n_splits, f"{what} with n_splits={n_splits}")
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=_fold_seed(random_state))
    return list(splitter.split(np.zeros((codes.size, 1)), codes))


def _fold_seed(random_state: RandomState) -> int:
    """An int for StratifiedKFold: an int as is, else one drawn from the generator (or fresh entropy)."""
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    if random_state is not None and not isinstance(random_state, np.random.Generator):
        raise param_error("random_state", "must be an int, a numpy Generator or None", random_state)
    return int(np.random.default_rng(random_state).integers(2**31 - 1))


def _probe_result(
    codes: np.ndarray,
    pred: np.ndarray,
    counts: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    method: str,
) -> ProbeResult:
    per_fold = [float(np.mean(pred[test] == codes[test])) for _, test in folds]
    return ProbeResult(
        accuracy=float(np.mean(pred == codes)),
        accuracy_std=float(np.std(per_fold, ddof=1)),
        fold_accuracies=per_fold,
        chance=float(counts.max() / counts.sum()),
        n_splits=len(folds),
        method=method,
    )


# --------------------------------------------------------------------------------------------------
# All at once


def transferability(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    logits: ArrayLike | None = None,
    scores: Sequence[str] = SCORES,
    random_state: RandomState = 0,
    device: Device = "auto",
) -> TransferScores:
    """Every applicable transferability score of one feature matrix, with the skipped ones and why.

    ``features`` and ``labels`` (and ``logits`` when given) are validated first, and bad input raises as
    in the individual functions. Then each score in ``scores`` is computed with its defaults; a score
    that cannot be computed for this input (LEEP and NCE without ``logits``, GBC or the probes with a
    class too small, a numerical failure) is recorded in ``skipped`` with the reason instead of raising,
    so one call can scan every probe point of a backbone.

    Parameters
    ----------
    features : array-like of shape (n, d)
    labels : array-like of shape (n,)
        Integer class ids.
    logits : array-like of shape (n, Z), optional
        The source head's logits (or probabilities) for LEEP and NCE.
    scores : sequence of str, default all of :data:`SCORES`
        ``"logme"``, ``"leep"``, ``"nce"``, ``"h_score"``, ``"h_score_shrinkage"``, ``"gbc"``,
        ``"transrate"``, ``"sfda"``, ``"knn_accuracy"``, ``"linear_probe_accuracy"``.
    random_state : int, numpy Generator or None, default 0
        Seeds the folds of the two probes (both use the same folds).
    device : str or torch.device, default "auto"

    Returns
    -------
    TransferScores
    """
    names = [scores] if isinstance(scores, str) else list(scores)
    unknown = [s for s in names if s not in SCORES]
    if unknown or not names or len(set(names)) != len(names):
        raise param_error("scores", f"must be distinct names from {', '.join(SCORES)}", scores)
    x = _check_features(features)
    y = np.asarray(labels)
    _, counts, _ = class_codes(y, x.shape[0])
    src = None if logits is None else _check_source_matrix(logits, name="logits", n_rows=x.shape[0])
    dev = resolve_device(device)
    seed = _fold_seed(random_state)

    def compute(name: str) -> float:
        if name == "logme":
            return logme_score(x, y, device=dev)
        if name == "leep":
            assert src is not None
            return leep_score(src, y)
        if name == "nce":
            assert src is not None
            return nce_score(src, y)
        if name in ("h_score", "h_score_shrinkage"):
            return h_score(x, y, shrinkage=name == "h_score_shrinkage", device=dev)
        if name == "gbc":
            return gbc_score(x, y)
        if name == "transrate":
            return transrate_score(x, y, device=dev)
        if name == "sfda":
            return sfda_score(x, y, device=dev)
        if name == "knn_accuracy":
            return knn_accuracy(x, y, random_state=seed, device=dev).accuracy
        return linear_probe_accuracy(x, y, random_state=seed).accuracy

    values: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name in _NEED_LOGITS and src is None:
            skipped[name] = "needs the source head's logits, and none were given"
            continue
        try:
            values[name] = float(compute(name))
        except (DiagError, np.linalg.LinAlgError, torch.linalg.LinAlgError) as exc:
            log.info("transferability: skipped %s: %s", name, exc)
            skipped[name] = str(exc) or type(exc).__name__
    return TransferScores(
        scores=values,
        skipped=skipped,
        n_samples=int(x.shape[0]),
        n_features=int(x.shape[1]),
        n_classes=int(counts.size),
    )


# --------------------------------------------------------------------------------------------------
# SFDA


def sfda_score(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    a: float = 5.0,
    soften: bool = True,
    device: Device = "auto",
) -> float:
    """SFDA: the mean log-likelihood of the true class after a self-challenging regularised FDA.

    Shao, Zhao, Ge, Zhang, Yang, Wang, Shan & Luo, "Not All Models Are Equal: Predicting Model
    Transferability in a Self-challenging Fisher Space", ECCV 2022. With class means ``μ_c``, priors
    ``π_c = n_c / n``, the within-class scatter ``S_W = Σ_c π_c cov_c`` (``ddof=0``) and the between-class
    scatter ``S_B = Σ_c π_c (μ_c - μ)(μ_c - μ)ᵀ``:

    1. **Regularised FDA.** ``S_W^λ = (1 - λ) S_W + λ (tr S_W / d) I`` with the adaptive strength
       ``λ = max(exp(-a σ(S_W)), 1e-10)``, ``σ`` the largest eigenvalue of ``S_W``. ``U`` holds the
       leading ``C - 1`` generalised eigenvectors of ``S_B u = ρ S_W^λ u`` (``Uᵀ S_W^λ U = I``); in that
       Fisher space ``x̃ = Uᵀ x`` each class is a Gaussian with the identity covariance, so
       ``p(c | x) = softmax_c(x̃ᵀ μ̃_c - ½ ‖μ̃_c‖² + log π_c)`` with ``μ̃_c = Uᵀ μ_c``.
    2. **Self-challenge (ConfMix).** Each sample is pulled towards the mean of the *other* class means,
       ``m̄_y = (Σ_c μ_c - μ_y) / (C - 1)``, by how unsure the first pass is of its true class:
       ``x̂_i = p_i x_i + (1 - p_i) m̄_{y_i}``. With ``soften`` (as in the authors' release,
       TencentARC/SFDA) ``p_i`` is the true class's entry of ``softmax_c(p(c | x_i))``, a second
       softmax over the probabilities, so that even certain samples are challenged
       (``p_i <= e / (e + C - 1)``); without it ``p_i = p(y_i | x_i)``.
    3. **Score.** The regularised FDA is refitted on ``x̂`` with the same ``λ`` and
       ``SFDA = 1/n Σ_i log p(y_i | x̂_i)``, the paper's mean log-likelihood (the authors' release averages
       ``p(y_i | x̂_i)`` without the log).

    The ``C - 1`` discriminant directions carry every difference between the class logits (Hastie,
    Tibshirani & Friedman, *The Elements of Statistical Learning*, 2nd ed., §4.3.3), so the posterior is
    computed in its equivalent full-rank form ``xᵀ (S_W^λ)⁻¹ μ_c - ½ μ_cᵀ (S_W^λ)⁻¹ μ_c + log π_c``, with
    ``(S_W^λ)⁻¹`` from the eigen-decomposition of the within-class residuals' Gram on the smaller side
    (``d x d`` matrices are never formed when ``d > n``). The score is invariant to translating or
    rotating the features and to renaming the classes, but not to rescaling them: ``λ`` reads the scale
    of ``S_W``. When ``d >= n - C`` and ``λ`` is small the classes are linearly separable in the Fisher
    space and the score nears its maximum 0 for any features.

    Parameters
    ----------
    features : array-like of shape (n, d)
    labels : array-like of shape (n,)
        Integer class ids.
    a : float, default 5.0
        The positive constant of ``λ = exp(-a σ(S_W))`` (5 in the authors' release).
    soften : bool, default True
        Soften the ConfMix weight with a second softmax, as the authors' release does.
    device : str or torch.device, default "auto"

    Returns
    -------
    float
        In ``(-inf, 0]``; higher is better.
    """
    x, codes, counts, _ = _check_xy(features, labels)
    _check_positive("a", a)
    if not isinstance(soften, (bool, np.bool_)):
        raise param_error("soften", "must be True or False", soften)
    dev = resolve_device(device)
    f = _to_tensor(x, dev)
    f = f - f.mean(dim=0, keepdim=True)  # the posterior is translation-invariant; centring keeps it accurate
    y = torch.as_tensor(codes, dtype=torch.int64, device=dev)
    onehot = _one_hot(codes, counts.size, dev)
    n_c = torch.as_tensor(counts, dtype=torch.float64, device=dev)
    rows = torch.arange(codes.size, device=dev)
    log_p, lam = _reg_fda_log_posterior(f, y, onehot, n_c, lam=None, a=float(a))
    p = torch.softmax(log_p.exp(), dim=1)[rows, y] if soften else log_p[rows, y].exp()
    means = (onehot.T @ f) / n_c[:, None]
    others = (means.sum(dim=0, keepdim=True) - means) / (counts.size - 1)
    mixed = p[:, None] * f + (1.0 - p[:, None]) * others[y]
    log_p2, _ = _reg_fda_log_posterior(mixed, y, onehot, n_c, lam=lam, a=float(a))
    return float(log_p2[rows, y].mean())


def _reg_fda_log_posterior(
    f: torch.Tensor, y: torch.Tensor, onehot: torch.Tensor, n_c: torch.Tensor, *, lam: float | None, a: float
) -> tuple[torch.Tensor, float]:
    """``(log p(c | x) of shape (n, C), λ)`` of the regularised FDA of :func:`sfda_score`."""
    n, d = f.shape
    means = (onehot.T @ f) / n_c[:, None]
    z = f - means[y]  # within-class residuals: S_W = zᵀz / n
    if d <= n:
        s, v = torch.linalg.eigh(z.T @ z / n)
    else:
        s_small, u = torch.linalg.eigh(z @ z.T / n)
        keep = s_small > n * torch.finfo(torch.float64).eps * s_small.max().clamp_min(0.0)
        s = s_small[keep]
        v = z.T @ u[:, keep] / torch.sqrt(n * s)[None, :]  # orthonormal eigenvectors of S_W
    s = s.clamp_min(0.0)
    mu = float(s.sum()) / d  # tr S_W / d
    if not mu > 0.0:
        raise DataError(
            "features are constant within every class (zero within-class scatter), so SFDA's regularised "
            "FDA is undefined; check that the backbone's features vary."
        )
    if lam is None:
        lam = max(math.exp(-a * float(s.max())), 1e-10)
    # (S_W^λ)⁻¹ = (I - V diag(w) Vᵀ) / (λ μ) with w = (1 - λ) s / ((1 - λ) s + λ μ), V the eigenvectors.
    w = (1.0 - lam) * s / ((1.0 - lam) * s + lam * mu)
    inv_means = (means.T - v @ (w[:, None] * (v.T @ means.T))) / (lam * mu)  # (d, C)
    logits = f @ inv_means - 0.5 * (means * inv_means.T).sum(dim=1) + torch.log(n_c / n)
    return torch.log_softmax(logits, dim=1), lam


# --------------------------------------------------------------------------------------------------
# Validation and shared helpers


def _check_features(data: ArrayLike, name: str = "features") -> np.ndarray:
    """A validated float64 ``(n, d)`` array with finite values."""
    arr = numeric_matrix(data, name).astype(np.float64, copy=False)
    require_finite(arr, name, needed_by="the scores need finite values")
    return arr


def _check_xy(
    features: ArrayLike, labels: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, codes, counts, classes)``: the checked features and their labels (see :func:`class_codes`)."""
    x = _check_features(features)
    return (x, *class_codes(labels, x.shape[0]))


def _check_source_matrix(
    data: ArrayLike, name: str = "source_output", n_rows: int | None = None
) -> np.ndarray:
    arr = _check_features(data, name)
    if n_rows is not None and arr.shape[0] != n_rows:
        raise DataError(f"{name} has {arr.shape[0]} rows but the features have {n_rows}; they must match.")
    return arr


def _source_probabilities(data: ArrayLike, *, from_logits: bool | None) -> np.ndarray:
    arr = _check_source_matrix(data)
    if from_logits is not None and not isinstance(from_logits, (bool, np.bool_)):
        raise param_error("from_logits", "must be True, False or None", from_logits)
    sums = arr.sum(axis=1)
    looks_like_probs = bool(
        np.all(arr >= 0.0) and np.all(arr <= 1.0) and np.allclose(sums, 1.0, rtol=0.0, atol=_PROB_SUM_ATOL)
    )
    if from_logits is None:
        from_logits = not looks_like_probs
    if from_logits:
        shifted = arr - arr.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        return np.asarray(e / e.sum(axis=1, keepdims=True))
    if not looks_like_probs:
        raise DataError(
            "source_output was given as probabilities (from_logits=False) but its rows are not "
            f"non-negative and summing to 1 (row sums from {sums.min():.4g} to {sums.max():.4g}); pass "
            "from_logits=True for logits."
        )
    return np.asarray(arr / sums[:, None])


def _check_positive(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.number))
        or not math.isfinite(float(value))
        or float(value) <= 0
    ):
        raise param_error(name, "must be a positive finite number", value)


def _to_tensor(arr: np.ndarray, dev: torch.device) -> torch.Tensor:
    """A float64 tensor of ``arr`` on ``dev``."""
    return to_tensor(np.asarray(arr, dtype=np.float64), dev, torch.float64)


def _one_hot(codes: np.ndarray, n_classes: int, dev: torch.device) -> torch.Tensor:
    idx = torch.as_tensor(codes, dtype=torch.int64, device=dev)
    return torch.nn.functional.one_hot(idx, n_classes).to(torch.float64)

"""How alike two representations of the same items are, and how far a network's weights moved.

- :func:`linear_cka`: linear centered kernel alignment (Kornblith, Norouzi, Lee & Hinton, "Similarity of
  Neural Network Representations Revisited", ICML 2019). For feature matrices ``X`` (n × p) and ``Y``
  (n × q) of the same n items, column-centred,

  ``CKA(X, Y) = ||Yᵀ X||²_F / (||Xᵀ X||_F · ||Yᵀ Y||_F)``,

  which equals ``HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` with the linear kernels ``K = X Xᵀ``,
  ``L = Y Yᵀ``. It is 1 for identical representations, invariant to orthogonal transforms and isotropic
  scaling of either side, and in [0, 1].
- :func:`relative_change`: ``||θ_ft − θ_pre|| / ||θ_pre||`` over a group of tensors (the feature-distortion
  measure of fine-tuning, as in Kumar et al., "Fine-Tuning can Distort Pretrained Features and
  Underperform Out-of-Distribution", ICLR 2022).
- :func:`paired_bootstrap_diff`: the CI of a difference of two accuracies measured on the same items
  (resample items, keep the pairing; Efron & Tibshirani, "An Introduction to the Bootstrap", 1993).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike

from diag.errors import DataError, param_error
from diag.stats.common import check_int, numeric_matrix

__all__ = ["linear_cka", "paired_bootstrap_diff", "relative_change"]


def linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Linear CKA between two representations of the same items (Kornblith et al., ICML 2019).

    Parameters
    ----------
    x : array-like of shape (n, p)
    y : array-like of shape (n, q)
        Row i of both is item i.

    Returns
    -------
    float
        In [0, 1]; 1 when ``y`` is an orthogonal transform and rescaling of ``x`` (up to a shift). Computed
        in float64 with the feature-space form ``||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)``; when p or q
        exceeds n it uses the n × n Gram matrices instead (same value, less work).

    Raises
    ------
    DataError
        Different numbers of rows, fewer than 2 rows, non-finite values, or a constant representation
        (every row the same: its similarity to anything is undefined).
    """
    a = numeric_matrix(x, "x").astype(np.float64)
    b = numeric_matrix(y, "y").astype(np.float64)
    if a.shape[0] != b.shape[0]:
        raise param_error("y", f"must have the same rows (items) as x ({a.shape[0]})", f"{b.shape[0]} rows")
    if a.shape[0] < 2:
        raise param_error("x", "needs at least 2 rows (items)", f"{a.shape[0]} rows")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("linear_cka: x or y holds NaN or infinite values; check the features.")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    n = a.shape[0]
    if max(a.shape[1], b.shape[1]) > n:
        k, l_ = a @ a.T, b @ b.T  # the Gram form: <K, L>_F = ||YᵀX||²_F, ||K||_F = ||XᵀX||_F
        cross, nx, ny = float((k * l_).sum()), float(np.linalg.norm(k)), float(np.linalg.norm(l_))
    else:
        cross = float(np.linalg.norm(b.T @ a) ** 2)
        nx, ny = float(np.linalg.norm(a.T @ a)), float(np.linalg.norm(b.T @ b))
    if nx == 0 or ny == 0:
        raise DataError(
            "linear_cka: one representation is constant over the items (every row the same); CKA is "
            "undefined. Check for dead units or a degenerate layer."
        )
    return float(min(1.0, max(0.0, cross / (nx * ny))))


def relative_change(
    before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor], names: Sequence[str] | None = None
) -> tuple[float, bool]:
    """``||θ_after − θ_before||₂ / ||θ_before||₂`` over the tensors ``names`` (default: all of ``before``),
    and whether every one of them is bit-identical.

    Raises
    ------
    DataError
        A name missing on either side, or tensors of different shapes.
    """
    keys = list(names) if names is not None else list(before)
    diff2 = base2 = 0.0
    identical = True
    for k in keys:
        if k not in before or k not in after:
            raise DataError(f"relative_change: tensor {k!r} is missing on one side; the models differ.")
        u, v = before[k].detach().cpu(), after[k].detach().cpu()
        if u.shape != v.shape:
            raise DataError(f"relative_change: {k!r} has shape {tuple(u.shape)} vs {tuple(v.shape)}.")
        identical = identical and bool(torch.equal(u, v))
        u64, v64 = u.double(), v.double()
        diff2 += float(((v64 - u64) ** 2).sum())
        base2 += float((u64**2).sum())
    if base2 == 0:
        return (0.0 if diff2 == 0 else float("inf")), identical
    return float(np.sqrt(diff2 / base2)), identical


def paired_bootstrap_diff(
    correct_a: ArrayLike,
    correct_b: ArrayLike,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    random_state: int = 0,
) -> tuple[float, list[float]]:
    """``mean(a) − mean(b)`` for per-item 0/1 outcomes on the same items, and its percentile bootstrap CI.

    Parameters
    ----------
    correct_a, correct_b : array-like of shape (n,)
        1 where model a (b) got item i right.
    n_resamples : int, default 2000
    confidence : float, default 0.95
    random_state : int, default 0

    Returns
    -------
    (difference, [low, high])
    """
    a = np.asarray(correct_a, dtype=np.float64).ravel()
    b = np.asarray(correct_b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise param_error("correct_b", f"must have the same length as correct_a ({a.size}), > 0", b.size)
    check_int("n_resamples", n_resamples, minimum=1)
    if not 0 < confidence < 1:
        raise param_error("confidence", "must be in (0, 1)", confidence)
    rng = np.random.default_rng(random_state)
    d = a - b
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    boots = d[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(d.mean()), [float(lo), float(hi)]

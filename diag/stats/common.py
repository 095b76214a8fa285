"""What the pure statistics share: input checks, tensors on a device, exact k-NN search, the Ledoit–Wolf
coefficient and principal axes (used by :mod:`~diag.stats.shift`, :mod:`~diag.stats.transfer` and
:mod:`~diag.stats.projection`)."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from diag.errors import DataError, param_error

__all__ = [
    "Result",
    "check_int",
    "class_codes",
    "ledoit_wolf_shrinkage",
    "nearest_neighbors",
    "numeric_matrix",
    "principal_axes",
    "require_finite",
    "require_per_class",
    "to_tensor",
]


class Result:
    """Base of the frozen result dataclasses of the statistics: their fields as JSON-native values."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-native dict."""
        return asdict(self)  # type: ignore[call-overload]


def class_codes(
    labels: ArrayLike, n_rows: int, name: str = "labels", *, rows_of: str = "the features have"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer class ids checked (1-D, one per row, 2+ classes) and mapped to ``0..C-1``.

    Returns
    -------
    codes : ndarray of shape (n,), int64
        Each label's position in ``classes``.
    counts : ndarray of shape (C,)
        Items per class.
    classes : ndarray of shape (C,)
        The distinct ids, sorted.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of class ids; got shape {arr.shape}.")
    if arr.dtype.kind not in "iu":
        raise DataError(
            f"{name} must hold integer class ids; got dtype {arr.dtype}. Map class names to integers "
            "first, e.g. np.unique(labels, return_inverse=True)[1]."
        )
    if arr.size != n_rows:
        raise DataError(f"{name} has {arr.size} entries but {rows_of} {n_rows} rows; they must match.")
    classes, codes, counts = np.unique(arr, return_inverse=True, return_counts=True)
    if classes.size < 2:
        raise DataError(
            f"{name} holds {classes.size} distinct class(es) ({classes.tolist()}); transferability needs at "
            "least 2 classes."
        )
    return codes.reshape(-1).astype(np.int64), counts, classes


def require_per_class(counts: np.ndarray, classes: np.ndarray, minimum: int, what: str) -> None:
    """Raise, naming the small classes, unless every class has ``minimum`` items (``what`` needs them)."""
    small = counts < minimum
    if small.any():
        detail = ", ".join(
            f"{c}: {k}" for c, k in zip(classes[small].tolist(), counts[small].tolist(), strict=True)
        )
        raise DataError(
            f"labels: {what} needs at least {minimum} samples per class; these classes have fewer "
            f"({detail}). Add samples or drop those classes."
        )


def check_int(name: str, value: object, *, minimum: int) -> None:
    """Raise unless ``value`` is an integer (not a bool) at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise param_error(name, f"must be an integer >= {minimum}", value)


def numeric_matrix(data: ArrayLike, name: str) -> np.ndarray:
    """``data`` as an array, checked to be numeric, 2-D ``(n_samples, n_features)`` with a column at least."""
    arr = np.asarray(data)
    if arr.dtype.kind not in "fiub":
        raise DataError(f"{name} must be a numeric array; got dtype {arr.dtype}.")
    if arr.ndim != 2:
        hint = " For a single feature use reshape(-1, 1)." if arr.ndim == 1 else ""
        raise DataError(
            f"{name} must be a 2-D array of shape (n_samples, n_features); got shape {arr.shape}.{hint}"
        )
    if arr.shape[1] == 0:
        raise DataError(f"{name} has no feature columns; got shape {arr.shape}.")
    return arr


def require_finite(arr: np.ndarray, name: str, *, needed_by: str) -> None:
    """Raise, counting NaN and inf, unless every value of ``arr`` is finite."""
    if not np.isfinite(arr).all():
        n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        raise DataError(
            f"{name} contains {n_nan} NaN and {n_inf} inf values; {needed_by}. "
            "Drop or impute those rows first."
        )


def to_tensor(arr: np.ndarray, dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``arr`` without a host copy where possible (read-only inputs are copied: torch warns)."""
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr).to(device=dev, dtype=dtype)


def nearest_neighbors(
    query: torch.Tensor,
    ref: torch.Tensor,
    k: int,
    *,
    metric: str = "sqeuclidean",
    leave_one_out: bool = False,
    block_elems: int = 1 << 24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``ref`` for each row of ``query``, in row blocks of the distance matrix.

    Exact search: each block of queries against every ``ref`` row, then ``torch.topk``. Blocks hold at
    most about ``block_elems`` entries, so a 50k x 50k search never holds the whole matrix.

    Parameters
    ----------
    query : Tensor of shape (n, d)
    ref : Tensor of shape (m, d)
        On the same device and of the same dtype as ``query``.
    k : int
        Neighbours per query, at most ``m`` (``m - 1`` with ``leave_one_out``).
    metric : {"sqeuclidean", "inner"}, default "sqeuclidean"
        ``"sqeuclidean"``: squared Euclidean distances ``||q||² + ||r||² - 2 q·r``, not clipped at 0 (clip
        the returned values for distances); nearest is smallest. ``"inner"``: inner products, nearest is
        largest (cosine similarity for unit rows).
    leave_one_out : bool, default False
        ``query`` is ``ref``: a row is not its own neighbour.
    block_elems : int, default 2**24
        Entries per block of the distance matrix.

    Returns
    -------
    values, indices : Tensor of shape (n, k)
        Distances (or inner products) and ``ref`` rows of the neighbours, nearest first; tied neighbours
        in row order (which of several tied rows at the k-th place is kept is up to ``torch.topk``).
    """
    if metric not in ("sqeuclidean", "inner"):
        raise param_error("metric", "must be 'sqeuclidean' or 'inner'", metric)
    ref_sq = (ref * ref).sum(dim=1)
    step = max(1, block_elems // ref.shape[0])
    values, indices = [], []
    for start in range(0, query.shape[0], step):
        q = query[start : start + step]
        if metric == "inner":
            near = torch.topk(q @ ref.T, k, dim=1, largest=True)
        else:
            d2 = (q * q).sum(dim=1)[:, None] + ref_sq[None, :] - 2.0 * (q @ ref.T)
            if leave_one_out:
                rows = torch.arange(q.shape[0], device=q.device)
                d2[rows, rows + start] = math.inf
            near = torch.topk(d2, k, dim=1, largest=False)
        values.append(near.values)
        indices.append(near.indices)
    vals, idx = torch.cat(values), torch.cat(indices)
    # topk leaves the order of tied neighbours to the kernel; order them by row, on any device.
    by_row = torch.argsort(idx, dim=1)
    vals, idx = vals.gather(1, by_row), idx.gather(1, by_row)
    vals, order = torch.sort(vals, dim=1, descending=metric == "inner", stable=True)
    return vals, idx.gather(1, order)


def ledoit_wolf_shrinkage(sq_norms: np.ndarray, s_fro2: float, mu: float, dim: int) -> float:
    """Ledoit–Wolf shrinkage coefficient of centred data ``X (n, d)`` from its moments.

    Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance matrices",
    J. Multivariate Anal. 2004 (the coefficient of :func:`sklearn.covariance.ledoit_wolf_shrinkage`). With
    ``S = XᵀX / n`` and ``μ = tr S / d``: ``δ² = ||S - μI||²_F / d``,
    ``β² = (Σₖ ||xₖ||⁴ / n - ||S||²_F) / (d n)``; the coefficient is ``min(β², δ²) / δ²`` (0 when
    ``δ² = 0``). The caller computes the moments the cheap way for its data (from the rows, or from the
    spectrum of ``XᵀX``), so no ``d x d`` matrix is needed.

    Parameters
    ----------
    sq_norms : ndarray of shape (n,)
        ``||xₖ||²`` of each centred row.
    s_fro2 : float
        ``||S||²_F``.
    mu : float
        ``tr S / d``.
    dim : int
        ``d``.

    Returns
    -------
    float
        The coefficient, in [0, 1].
    """
    n = sq_norms.shape[0]
    delta = (s_fro2 - dim * mu * mu) / dim
    # β² ≥ 0 exactly (Jensen); rounding can make it a hair negative.
    beta = (float(np.sum(sq_norms**2)) / n - s_fro2) / (dim * n)
    if delta <= 0.0:
        return 0.0
    return float(min(max(beta, 0.0), delta) / delta)


def principal_axes(centred: np.ndarray, n_components: int) -> np.ndarray:
    """The ``n_components`` leading principal axes of centred rows, as columns ``(d, k)``.

    From the eigen-decomposition of ``XᵀX`` when there are more rows than columns (a ``d x d`` problem),
    else from the SVD of ``X``. Signs are as the solver returns them.

    Parameters
    ----------
    centred : ndarray of shape (n, d)
        Rows with their mean subtracted.
    n_components : int
        At most ``min(n, d)``.

    Returns
    -------
    ndarray of shape (d, n_components)
        Orthonormal columns, by decreasing variance.
    """
    if centred.shape[0] > centred.shape[1]:
        return np.asarray(np.linalg.eigh(centred.T @ centred)[1][:, ::-1][:, :n_components])
    return np.asarray(np.linalg.svd(centred, full_matrices=False)[2][:n_components].T)

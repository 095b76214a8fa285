"""Input checks shared by the pure statistics (:mod:`~diag.stats.shift`, :mod:`~diag.stats.transfer`)."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike

from diag.errors import DataError, param_error

__all__ = ["check_int", "numeric_matrix", "require_finite", "to_tensor"]


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

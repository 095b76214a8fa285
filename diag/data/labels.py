"""Class labels: raw values to integer codes with sorted class names, and seeded stratified splits."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from diag.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["encode_labels", "is_missing", "row_list", "stratified_halves", "stratified_split"]


def encode_labels(raw: Sequence[object], *, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map raw labels to ``(indices, sorted class names)``; numbers sort numerically.

    Refuses list-valued labels (multi-label or one-hot rows are not classes) and warns when numeric
    labels become many classes (float targets give one class per item: a regression target, not
    classes).
    """
    nested = [i for i, v in enumerate(raw) if isinstance(v, (list, tuple, dict, set, np.ndarray, Mapping))]
    if nested:
        v = raw[nested[0]]
        raise DataError(
            f"{where}: {len(nested)} of {len(raw)} labels are {type(v).__name__}s, not single classes "
            f"(rows {row_list(nested)}; e.g. {_short(v)}). diag needs one class per item: store a "
            "single class name or number per row (multi-label and one-hot rows are not supported)."
        )
    missing = [i for i, v in enumerate(raw) if is_missing(v)]
    if missing:
        raise DataError(
            f"{where}: {len(missing)} of {len(raw)} labels are missing (rows {row_list(missing)}). "
            "Fill them in, drop those rows, or remove the label column for an unlabelled set."
        )
    values = [_label_str(v) for v in raw]
    uniq = set(values)
    numeric = all(_is_number(v) for v in uniq)
    classes = tuple(sorted(uniq, key=(lambda s: (float(s), s)) if numeric else None))
    if numeric and len(classes) > max(10, len(values) // 2):
        log.warning(
            "%s: the numeric labels make %d classes for %d items (e.g. %s); each class needs several "
            "items. If these are measurements rather than class codes, bin them or drop the label column.",
            where,
            len(classes),
            len(values),
            ", ".join(classes[:3]),
        )
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int64), classes


def row_list(rows: Sequence[int], *, most: int = 5) -> str:
    """The first ``most`` row numbers for an error message, comma-separated, `` ...`` when there are more."""
    return ", ".join(str(i) for i in rows[:most]) + (" ..." if len(rows) > most else "")


def is_missing(v: object) -> bool:
    """Whether a raw cell is empty: None, NaN or blank text."""
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _short(v: object, most: int = 40) -> str:
    text = repr(v)
    return text if len(text) <= most else text[: most - 3] + "..."


def _label_str(v: object) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, bytes):
        return v.decode()
    return str(v).strip()


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _split_per_class(
    labels: np.ndarray, seed: int, first: Callable[[int], int]
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle each class (in sorted class order, one seeded stream) and cut it after ``first(size)``.

    Returns the sorted indices before and after the cuts.
    """
    rng = np.random.default_rng(seed)
    head: list[int] = []
    tail: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = first(len(idx))
        head += idx[:k].tolist()
        tail += idx[k:].tolist()
    return np.sort(np.asarray(head, np.int64)), np.sort(np.asarray(tail, np.int64))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: about ``fraction`` of each class to validation, at least one item per class
    kept for training. Classes with a single item go to training only.

    Returns
    -------
    train_idx, val_idx : ndarray of int64, each sorted
    """
    val, train = _split_per_class(
        labels, seed, lambda n: 0 if n < 2 else min(max(round(fraction * n), 1), n - 1)
    )
    return train, val


def stratified_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint seeded halves of each class (the first half gets ``size // 2`` of each).

    Returns
    -------
    a_idx, b_idx : ndarray of int64, each sorted
    """
    return _split_per_class(labels, seed, lambda n: n // 2)

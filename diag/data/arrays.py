"""``.npz`` arrays: images (``images`` or ``x``) or ``texts``, with optional ``labels`` (or ``y``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diag.data.dataset import DataSet
from diag.data.labels import encode_labels
from diag.errors import DataError

__all__ = ["open_npz"]


def open_npz(path: Path, *, name: str | None = None) -> DataSet:
    """An ``.npz`` with ``images`` (or ``x``): (n, H, W), (n, H, W, C) or (n, C, H, W), or ``texts``;
    and optionally ``labels`` (or ``y``)."""
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise DataError(f"{path}: not a readable .npz file (not a zip archive). Save it with np.savez.")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        raise DataError(
            f"{path}: cannot be read without pickle ({exc}). Save plain arrays with np.savez "
            "(strings as a fixed-width unicode array, not objects)."
        ) from None
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc}).") from None
    name = name or str(path)
    image_key = next((k for k in ("images", "x", "X") if k in arrays), None)
    label_key = next((k for k in ("labels", "y") if k in arrays), None)
    if image_key is None and "texts" not in arrays:
        raise DataError(
            f"{path}: holds arrays {sorted(arrays)} but none named 'images' (or 'x') or 'texts'. "
            "Save the items under one of those keys and the labels under 'labels'."
        )
    n: int
    if image_key is not None:
        imgs = arrays[image_key]
        imgs = _normalise_image_array(imgs, where=f"{path}[{image_key!r}]")
        n = len(imgs)
    else:
        texts = [str(t) for t in arrays["texts"].reshape(-1)]
        n = len(texts)
    if n == 0:
        raise DataError(f"{path}: the set is empty. An empty set cannot be embedded.")
    labels = None
    classes: tuple[str, ...] = ()
    if label_key is not None:
        raw = arrays[label_key].reshape(-1)
        if len(raw) != n:
            raise DataError(f"{path}: {len(raw)} labels for {n} items; give one label per item.")
        labels, classes = encode_labels(list(raw.tolist()), where=f"{path}[{label_key!r}]")
    ids = tuple(str(i) for i in range(n))
    if image_key is not None:
        return DataSet(name, "image", ids, labels, classes, arrays=imgs, root=path.parent)
    return DataSet(name, "text", ids, labels, classes, texts=tuple(texts), root=path.parent)


def _normalise_image_array(a: np.ndarray, *, where: str) -> np.ndarray:
    """To uint8 (n, H, W) or (n, H, W, C) with C in {1, 3, 4}."""
    if a.ndim not in (3, 4):
        raise DataError(
            f"{where}: images must be (n, H, W), (n, H, W, C) or (n, C, H, W); got shape {a.shape}."
        )
    if a.ndim == 4 and a.shape[1] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.transpose(a, (0, 2, 3, 1))
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 4 and a.shape[-1] not in (3, 4):
        raise DataError(f"{where}: the channel axis must have 1, 3 or 4 channels; got shape {a.shape}.")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.number):
            raise DataError(f"{where}: images must be numeric; got dtype {a.dtype}.")
        af = a.astype(np.float64)
        if not np.isfinite(af).all():
            raise DataError(f"{where}: images contain NaN or inf values.")
        lo, hi = float(af.min()), float(af.max())
        # Floats in [0, 1] are fractions; anything else is rescaled from its own range.
        if lo >= 0.0 and hi <= 1.0 and np.issubdtype(a.dtype, np.floating):
            af = af * 255.0
        elif lo < 0.0 or hi > 255.0:
            af = (af - lo) / ((hi - lo) or 1.0) * 255.0
        elif hi <= 16.0 and np.issubdtype(a.dtype, np.integer):
            af = af / (hi or 1.0) * 255.0  # e.g. UCI digits, 0..16
        a = np.clip(np.rint(af), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)

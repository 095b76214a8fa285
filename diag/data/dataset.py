"""Data sets a backbone can embed: image folders, text tables, ``.npz`` arrays and bundled samples.

:func:`open_data` turns what a user types (a path or ``samples:NAME``) into a :class:`DataSet`: a list
of items (image files, image arrays or texts), optional integer labels with their class names, and a
content fingerprint for the embedding cache. Nothing here touches a model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from diag.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "TEXT_EXTENSIONS",
    "DataSet",
    "open_data",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TEXT_EXTENSIONS = (".csv", ".jsonl", ".parquet")
_SUPPORTED = (
    "an image folder (one subfolder per class, or a flat folder of unlabelled images), "
    "a .csv/.jsonl/.parquet file with a text column, an .npz of arrays, or samples:NAME"
)

Modality = Literal["image", "text"]


@dataclass(frozen=True, eq=False)
class DataSet:
    """Items to embed, with optional labels.

    Exactly one of ``paths`` (image files), ``arrays`` (images as an ``(n, H, W[, C])`` uint8 array)
    or ``texts`` holds the items.

    Attributes
    ----------
    name : str
        What the user passed (a path or ``samples:NAME``); used in messages and manifests.
    modality : {"image", "text"}
    ids : tuple of str, shape (n,)
        A stable identifier per item (relative file path, or row number).
    labels : ndarray of int64, shape (n,), or None
        Index into ``classes`` per item; None for an unlabelled set.
    classes : tuple of str
        Class names, sorted; empty for an unlabelled set.
    """

    name: str
    modality: Modality
    ids: tuple[str, ...]
    labels: np.ndarray | None = None
    classes: tuple[str, ...] = ()
    paths: tuple[Path, ...] | None = None
    arrays: np.ndarray | None = None
    texts: tuple[str, ...] | None = None
    root: Path | None = None
    _fingerprint: list[str] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def load_image(self, i: int) -> Image.Image:
        """Decode item ``i`` as an RGB image. Raises ``OSError``/``ValueError`` on an unreadable file."""
        if self.paths is not None:
            with Image.open(self.paths[i]) as im:
                im.load()
                return _to_rgb(im)
        if self.arrays is not None:
            return _to_rgb(Image.fromarray(self.arrays[i]))
        raise TypeError(f"{self.name} holds texts, not images")

    def fingerprint(self) -> str:
        """A SHA-256 of the items' content and labels (file bytes, not names or dates)."""
        if not self._fingerprint:
            h = hashlib.sha256()
            h.update(f"{self.modality}\n{len(self)}\n".encode())
            if self.paths is not None:
                for rel, path in zip(self.ids, self.paths, strict=True):
                    h.update(rel.encode() + b"\0")
                    h.update(path.read_bytes())
            elif self.arrays is not None:
                h.update(str(self.arrays.shape).encode() + str(self.arrays.dtype).encode())
                h.update(np.ascontiguousarray(self.arrays).tobytes())
            else:
                assert self.texts is not None
                for t in self.texts:
                    h.update(t.encode() + b"\0")
            if self.labels is not None:
                h.update(json.dumps(list(self.classes)).encode())
                h.update(self.labels.astype(np.int64).tobytes())
            self._fingerprint.append(h.hexdigest())
        return self._fingerprint[0]

    def describe(self) -> dict[str, object]:
        """A JSON-native summary for manifests and reports."""
        counts = (
            {
                c: int(n)
                for c, n in zip(
                    self.classes, np.bincount(self.labels, minlength=len(self.classes)), strict=True
                )
            }
            if self.labels is not None
            else None
        )
        return {
            "name": self.name,
            "modality": self.modality,
            "n": len(self),
            "classes": list(self.classes),
            "class_counts": counts,
            "fingerprint": self.fingerprint(),
        }

    def subset(self, indices: Sequence[int] | np.ndarray, *, name: str | None = None) -> DataSet:
        """The items at ``indices``, in that order (for splits)."""
        idx = np.asarray(indices, dtype=np.int64)
        return DataSet(
            name=name or f"{self.name}[{len(idx)}]",
            modality=self.modality,
            ids=tuple(self.ids[i] for i in idx),
            labels=None if self.labels is None else self.labels[idx],
            classes=self.classes,
            paths=None if self.paths is None else tuple(self.paths[i] for i in idx),
            arrays=None if self.arrays is None else self.arrays[idx],
            texts=None if self.texts is None else tuple(self.texts[i] for i in idx),
            root=self.root,
        )


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "P") or "transparency" in im.info:
        # Composite on white, as a person sees a transparent image.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() or 1.0
        return Image.fromarray((arr / hi * 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def encode_labels(raw: Sequence[object], *, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map raw labels to ``(indices, sorted class names)``; numbers sort numerically."""
    missing = [i for i, v in enumerate(raw) if _is_missing(v)]
    if missing:
        rows = ", ".join(str(i) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"{where}: {len(missing)} of {len(raw)} labels are missing (rows {rows}). "
            "Fill them in, drop those rows, or remove the label column for an unlabelled set."
        )
    values = [_label_str(v) for v in raw]
    uniq = set(values)
    numeric = all(_is_number(v) for v in uniq)
    classes = tuple(sorted(uniq, key=(lambda s: (float(s), s)) if numeric else None))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int64), classes


def _is_missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


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


# --------------------------------------------------------------------------------------------------
# Image folders


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def open_image_folder(root: Path, *, name: str | None = None) -> DataSet:
    """An image folder: one subfolder per class (labelled), or images directly inside (unlabelled)."""
    name = name or str(root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p for p in root.iterdir() if _is_image(p))
    if subdirs and loose:
        raise DataError(
            f"{root}: mixes {len(loose)} images at the top level (e.g. {loose[0].name}) with class "
            f"subfolders ({', '.join(d.name for d in subdirs[:3])}). Move every image into a class "
            "subfolder for a labelled set, or use a flat folder for an unlabelled one."
        )
    paths: list[Path] = []
    raw_labels: list[str] = []
    if subdirs:
        for d in subdirs:
            files = sorted(p for p in d.rglob("*") if _is_image(p))
            paths += files
            raw_labels += [d.name] * len(files)
    else:
        paths = loose
    if not paths:
        raise DataError(
            f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} directly inside and in "
            "class subfolders). Point diag at a folder of images, or at one subfolder per class."
        )
    ids = tuple(p.relative_to(root).as_posix() for p in paths)
    if subdirs:
        empty = [d.name for d in subdirs if d.name not in set(raw_labels)]
        if empty:
            raise DataError(
                f"{root}: class subfolder(s) {', '.join(empty[:5])} hold no images. "
                "Remove them or add images: a class with no examples cannot be learnt or tested."
            )
        labels, classes = encode_labels(raw_labels, where=str(root))
        return DataSet(name, "image", ids, labels, classes, paths=tuple(paths), root=root)
    return DataSet(name, "image", ids, paths=tuple(paths), root=root)


# --------------------------------------------------------------------------------------------------
# Text tables


def _read_table(path: Path) -> list[dict[str, object]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows: list[dict[str, object]] = []
            with path.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(
                            f"{path}: line {lineno} is not valid JSON ({exc.msg}). "
                            "A .jsonl file holds one JSON object per line."
                        ) from None
                    if not isinstance(obj, dict):
                        raise DataError(
                            f"{path}: line {lineno} is a {type(obj).__name__}, not a JSON object."
                        )
                    rows.append(obj)
            return rows
        import pandas as pd

        if suffix == ".csv":
            df = pd.read_csv(path, keep_default_na=True, dtype=object)
        else:
            df = pd.read_parquet(path)
        records: list[dict[str, object]] = df.to_dict(orient="records")
        return records
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}). Save it as UTF-8."
        ) from None
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as {suffix[1:]} ({type(exc).__name__}: {exc}).") from None


def open_text_table(
    path: Path, *, text_column: str = "text", label_column: str = "label", name: str | None = None
) -> DataSet:
    """A CSV, JSONL or Parquet file with a text column and an optional label column."""
    rows = _read_table(path)
    if not rows:
        raise DataError(f"{path}: the file holds no rows. An empty set cannot be embedded.")
    columns = list(rows[0].keys())
    if text_column not in columns:
        raise DataError(
            f"{path}: no column {text_column!r} (columns: {', '.join(map(str, columns[:10]))}). "
            "Rename the text column to 'text' or pass --text-column NAME."
        )
    texts = [r.get(text_column) for r in rows]
    bad = [i for i, t in enumerate(texts) if _is_missing(t)]
    if bad:
        rows_s = ", ".join(str(i) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise DataError(
            f"{path}: {len(bad)} of {len(texts)} rows have an empty {text_column!r} (rows {rows_s}). "
            "Drop or fill those rows."
        )
    ids = tuple(str(i) for i in range(len(rows)))
    name = name or str(path)
    clean = tuple(str(t) for t in texts)
    if label_column in columns:
        labels, classes = encode_labels(
            [r.get(label_column) for r in rows], where=f"{path} column {label_column!r}"
        )
        return DataSet(name, "text", ids, labels, classes, texts=clean, root=path.parent)
    return DataSet(name, "text", ids, texts=clean, root=path.parent)


def texts_dataset(
    texts: Sequence[str], labels: Sequence[object] | None = None, *, name: str = "texts"
) -> DataSet:
    """An in-memory text set (for the Python API and the bundled text samples)."""
    if len(texts) == 0:
        raise DataError(f"{name}: the set is empty. An empty set cannot be embedded.")
    ids = tuple(str(i) for i in range(len(texts)))
    if labels is None:
        return DataSet(name, "text", ids, texts=tuple(texts))
    if len(labels) != len(texts):
        raise DataError(f"{name}: {len(labels)} labels for {len(texts)} texts; give one label per text.")
    enc, classes = encode_labels(list(labels), where=name)
    return DataSet(name, "text", ids, enc, classes, texts=tuple(texts))


# --------------------------------------------------------------------------------------------------
# .npz arrays


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


# --------------------------------------------------------------------------------------------------
# Entry point


def open_data(
    spec: str | Path | DataSet, *, text_column: str = "text", label_column: str = "label"
) -> DataSet:
    """Open what the user names: a path, or ``samples:NAME`` for a bundled sample.

    Raises
    ------
    DataError
        With the path and the problem: missing path, unsupported format, no images, missing column,
        empty set, unreadable file.
    """
    if isinstance(spec, DataSet):
        return spec
    s = str(spec)
    if s.startswith("samples:"):
        from diag.data.samples import open_sample

        return open_sample(s.split(":", 1)[1])
    path = Path(s).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder. Pass {_SUPPORTED}.")
    if path.is_dir():
        return open_image_folder(path, name=s)
    suffix = path.suffix.lower()
    if suffix in TEXT_EXTENSIONS:
        return open_text_table(path, text_column=text_column, label_column=label_column, name=s)
    if suffix == ".npz":
        return open_npz(path, name=s)
    if suffix in IMAGE_EXTENSIONS:
        raise DataError(f"{path}: is a single image. Pass the folder that holds the images instead.")
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}. Pass {_SUPPORTED}.")

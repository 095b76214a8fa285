"""Hugging Face ``datasets``: a folder written by ``save_to_disk``, or ``hf-dataset:ID`` from the Hub.

A folder is recognised by the metadata ``save_to_disk`` writes (``dataset_info.json`` and ``state.json``
for one split, ``dataset_dict.json`` for several). The items are a text column or an image column (an
``Image`` feature, bytes, or paths); labels come from a ``ClassLabel`` (its names) or any column of
single values. Images stay in the memory-mapped Arrow files and are decoded one at a time: nothing the
size of the set is loaded. Texts are read into memory (the tokenizer sorts them by length).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diag.data.columns import build_dataset, image_cells, item_column, text_cells
from diag.data.dataset import DataSet
from diag.errors import DataError, require

__all__ = ["HF_PREFIX", "HFImages", "is_hf_folder", "open_hf_folder", "open_hf_hub"]

HF_PREFIX = "hf-dataset:"


def _hf(where: str) -> Any:
    """The ``datasets`` module (the optional ``hf`` extra, imported on first use: it takes seconds), or
    MissingDependencyError naming ``where`` and the extra."""
    require("datasets", feature=f"{where}: a Hugging Face dataset", extra="hf")
    import datasets

    return datasets


def is_hf_folder(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file()
    )


class HFImages:
    """The encoded images of one column of a Hugging Face dataset, read row by row from its Arrow files.

    Implements :class:`~diag.data.dataset.EncodedImages`; pickles (by file reference) into
    data-loader workers.
    """

    def __init__(self, ds: Any, column: str, rows: Sequence[int], base: Path | None) -> None:
        datasets = _hf(column)
        ds = ds.select_columns([column])
        if isinstance(ds.features[column], datasets.Image):
            ds = ds.cast_column(column, datasets.Image(decode=False))
        self.ds = ds
        self.column = column
        self.rows = np.asarray(rows, dtype=np.int64)
        self.base = base

    def __len__(self) -> int:
        return len(self.rows)

    def content(self, i: int) -> bytes:
        cell = self.ds[int(self.rows[i])][self.column]
        if isinstance(cell, dict):
            cell = cell.get("bytes") if cell.get("bytes") is not None else cell.get("path")
        if isinstance(cell, (bytes, bytearray, memoryview)):
            return bytes(cell)
        if isinstance(cell, str) and cell:
            path = Path(cell)
            return (path if path.is_absolute() or self.base is None else self.base / path).read_bytes()
        raise ValueError(f"row {int(self.rows[i])} holds no image ({type(cell).__name__})")

    def take(self, indices: Sequence[int]) -> HFImages:
        new = object.__new__(HFImages)
        new.ds, new.column, new.base = self.ds, self.column, self.base
        new.rows = self.rows[np.asarray(indices, dtype=np.int64)]
        return new


def open_hf_folder(
    path: Path,
    *,
    hf_split: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    image_column: str | None = None,
    strict: bool = False,
    name: str | None = None,
) -> DataSet:
    """A folder written by ``save_to_disk`` (one split, or a ``DatasetDict`` with ``hf_split`` chosen)."""
    datasets = _hf(str(path))

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(
            f"{path}: looks like a Hugging Face datasets folder but cannot be read "
            f"({type(exc).__name__}: {exc}). Save it again with save_to_disk."
        ) from None
    ds = _pick_split(loaded, hf_split, where=str(path))
    return _from_hf(
        ds,
        name=name or str(path),
        where=str(path),
        base=path,
        text_column=text_column,
        label_column=label_column,
        image_column=image_column,
        strict=strict,
    )


def open_hf_hub(
    dataset_id: str,
    *,
    hf_split: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    image_column: str | None = None,
    strict: bool = False,
) -> DataSet:
    """``hf-dataset:ID`` from the Hugging Face Hub (downloaded into the ``datasets`` cache, then read
    from its memory-mapped files like a folder)."""
    where = f"{HF_PREFIX}{dataset_id}"
    if not dataset_id.strip():
        raise DataError(f"{where}: no dataset id. Write hf-dataset:OWNER/NAME (e.g. hf-dataset:mnist).")
    datasets = _hf(where)

    try:
        loaded = datasets.load_dataset(dataset_id, split=hf_split)
    except Exception as exc:
        raise DataError(
            f"{where}: cannot be loaded from the Hugging Face Hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Check the id and --hf-split, and that this "
            "machine is online (HF_HUB_OFFLINE and HF_DATASETS_OFFLINE unset); or save it with "
            "save_to_disk where you are online and pass that folder."
        ) from None
    ds = _pick_split(loaded, hf_split, where=where)
    return _from_hf(
        ds,
        name=where,
        where=where,
        base=None,
        text_column=text_column,
        label_column=label_column,
        image_column=image_column,
        strict=strict,
    )


def _pick_split(loaded: Any, split: str | None, *, where: str) -> Any:
    datasets = _hf(where)

    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        if split is None:
            if len(names) == 1:
                return loaded[names[0]]
            raise DataError(f"{where}: holds the splits {', '.join(names)}. Pick one with --hf-split NAME.")
        if split not in loaded:
            raise DataError(
                f"{where}: no split {split!r} (splits: {', '.join(names)}). Pass one of them with --hf-split."
            )
        return loaded[split]
    if not isinstance(loaded, datasets.Dataset):
        raise DataError(
            f"{where}: is a {type(loaded).__name__}, not a Dataset or DatasetDict. Save a Dataset or "
            "DatasetDict with save_to_disk."
        )
    if split is not None and loaded.split is not None and str(loaded.split) != split:
        raise DataError(
            f"{where}: holds the split {str(loaded.split)!r}, not {split!r}. Drop --hf-split or pass the "
            "folder of that split."
        )
    return loaded


def _from_hf(
    ds: Any,
    *,
    name: str,
    where: str,
    base: Path | None,
    text_column: str,
    label_column: str,
    image_column: str | None,
    strict: bool,
) -> DataSet:
    datasets = _hf(where)
    features = ds.features
    columns = list(features)
    if len(ds) == 0:
        raise DataError(f"{where}: the dataset holds no rows. An empty set cannot be embedded.")
    kind, column = item_column(
        columns,
        text_column=text_column,
        image_column=image_column,
        where=where,
        image_typed=[c for c in columns if isinstance(features[c], datasets.Image)],
    )
    texts: list[str] | None = None
    encoded: HFImages | None = None
    if kind == "image":
        kept, skipped = _image_rows(ds, column, base=base, where=f"{where} column {column!r}")
        encoded = HFImages(ds, column, kept, base)
    else:
        kept, texts, skipped = text_cells(
            list(ds[column]), where=f"{where} column {column!r}", flag="--text-column"
        )
    raw_labels: list[object] | None = None
    if label_column in features:
        feature = features[label_column]
        raw_labels = list(ds[label_column])
        if isinstance(feature, datasets.ClassLabel):
            # -1 is how datasets marks a row without a label.
            raw_labels = [
                feature.int2str(int(v)) if isinstance(v, (int, np.integer)) and v >= 0 else None
                for v in raw_labels
            ]
    return build_dataset(
        name,
        "text" if texts is not None else "image",
        len(ds),
        kept,
        skipped,
        where=where,
        strict=strict,
        raw_labels=raw_labels,
        label_where=f"{where} column {label_column!r}",
        root=base,
        texts=texts,
        encoded=encoded,
    )


def _image_rows(
    ds: Any, column: str, *, base: Path | None, where: str
) -> tuple[list[int], list[tuple[int, str]]]:
    """The rows with an image, and those without (found from the Arrow column, without reading the
    images; bytes that do not decode are skipped later, when decoded)."""
    col = ds.with_format("arrow")[column]  # memory-mapped: no image is read
    kind = str(col.type)
    if kind.startswith("struct<") or kind in ("binary", "large_binary"):
        missing = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if "bytes:" in kind and "path:" in kind:
            parts = [
                chunk.field("bytes").is_null().to_numpy(zero_copy_only=False)
                & chunk.field("path").is_null().to_numpy(zero_copy_only=False)
                for chunk in col.chunks
            ]
            if parts:
                missing |= np.concatenate(parts)
        return np.flatnonzero(~missing).tolist(), [(int(i), "no image") for i in np.flatnonzero(missing)]
    # Strings (paths) or something else: small enough to read and check cell by cell.
    kept, _, skipped = image_cells(
        list(ds[column]), base=base or Path("."), where=where, flag="--image-column"
    )
    return kept, skipped

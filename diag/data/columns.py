"""Columns of a table or a Hugging Face dataset turned into items: texts, encoded images, labels.

Shared by :mod:`~diag.data.tables` and :mod:`~diag.data.hf_datasets` so that both apply one rule:
a row that cannot be used (an empty text, a missing image) is skipped and listed by default, and
refused under ``strict``; a column of the wrong kind (numbers in a text column, lists as labels)
is refused with the column named, whatever ``strict`` says, because it means the wrong column.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diag.data.dataset import DataSet, EncodedImages, Modality
from diag.data.labels import encode_labels, is_missing, row_list
from diag.errors import DataError

__all__ = ["CellImages", "build_dataset", "image_cells", "item_column", "text_cells"]

log = logging.getLogger(__name__)

Skipped = list[tuple[int, str]]


class CellImages:
    """Encoded images held as table cells: bytes, or paths read when the item is asked for.

    Implements :class:`~diag.data.dataset.EncodedImages`.
    """

    def __init__(self, cells: Sequence[bytes | Path]) -> None:
        self.cells = tuple(cells)

    def __len__(self) -> int:
        return len(self.cells)

    def content(self, i: int) -> bytes:
        cell = self.cells[i]
        return cell.read_bytes() if isinstance(cell, Path) else cell

    def take(self, indices: Sequence[int]) -> CellImages:
        return CellImages([self.cells[i] for i in indices])


def item_column(
    columns: Sequence[str],
    *,
    text_column: str,
    image_column: str | None,
    where: str,
    image_typed: Sequence[str] = (),
) -> tuple[Modality, str]:
    """Which column holds the items, and whether they are texts or images; one rule for every source.

    An explicit ``image_column`` must exist. Otherwise ``text_column`` if present; else the first column
    whose declared type is an image (``image_typed``, in column order: Hugging Face ``Image`` features),
    else a column named ``image``. A clear error names the columns seen and the flag to pass.
    """
    shown = ", ".join(map(str, list(columns)[:10]))
    if image_column is not None:
        if image_column not in columns:
            raise DataError(
                f"{where}: no column {image_column!r} (columns: {shown}). Pass the column of images "
                "(paths or encoded bytes) with --image-column NAME."
            )
        return "image", image_column
    if text_column in columns:
        return "text", text_column
    found = next((c for c in columns if c in image_typed), "image" if "image" in columns else None)
    if found is not None:
        return "image", found
    raise DataError(
        f"{where}: no column {text_column!r} (columns: {shown}) and no image column. Rename the text "
        "column to 'text' or pass --text-column NAME (or --image-column NAME for a column of images)."
    )


def text_cells(values: Sequence[object], *, where: str, flag: str) -> tuple[list[int], list[str], Skipped]:
    """The rows with a text, their texts, and the rows skipped (empty or missing text).

    Raises
    ------
    DataError
        When a cell holds something other than a string (numbers, lists): texts are never
        stringified behind the user's back, as ``3.0`` or ``['a', 'b']`` would be embedded as text.
    """
    wrong = [i for i, v in enumerate(values) if not is_missing(v) and not isinstance(v, str)]
    if wrong:
        v = values[wrong[0]]
        raise DataError(
            f"{where}: {len(wrong)} of {len(values)} cells are not text (rows {row_list(wrong)}; e.g. "
            f"{type(v).__name__} {_short(v)}). Pass the column that holds the texts with {flag} NAME, "
            "or convert the cells to strings in the file."
        )
    kept = [i for i, v in enumerate(values) if not is_missing(v)]
    skipped = [(i, "empty text") for i, v in enumerate(values) if is_missing(v)]
    return kept, [str(values[i]) for i in kept], skipped


def image_cells(
    values: Sequence[object], *, base: Path, where: str, flag: str
) -> tuple[list[int], list[bytes | Path], Skipped]:
    """Image cells as bytes or paths (relative paths are read from ``base``), and the rows skipped
    (an empty cell, a file that does not exist).

    A cell is a path string, bytes, or a ``{"bytes": ..., "path": ...}`` record (how Hugging Face and
    Arrow store an image). Unreadable bytes are found only when decoded, and skipped there.
    """
    kept: list[int] = []
    cells: list[bytes | Path] = []
    skipped: Skipped = []
    wrong: list[int] = []
    for i, v in enumerate(values):
        if isinstance(v, dict):
            v = v.get("bytes") if v.get("bytes") is not None else v.get("path")
        if isinstance(v, (bytes, bytearray, memoryview)):
            if len(v) == 0:
                skipped.append((i, "empty image bytes"))
                continue
            kept.append(i)
            cells.append(bytes(v))
        elif isinstance(v, str) and v.strip():
            path = Path(v.strip()).expanduser()
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                skipped.append((i, f"no such image file: {v.strip()}"))
                continue
            kept.append(i)
            cells.append(path)
        elif is_missing(v):
            skipped.append((i, "no image"))
        else:
            wrong.append(i)
    if wrong:
        v = values[wrong[0]]
        raise DataError(
            f"{where}: {len(wrong)} of {len(values)} cells are neither an image path nor image bytes "
            f"(rows {row_list(wrong)}; e.g. {type(v).__name__} {_short(v)}). Pass the column that holds "
            f"the images with {flag} NAME."
        )
    return kept, cells, skipped


def build_dataset(
    name: str,
    modality: Modality,
    n_rows: int,
    kept: list[int],
    skipped: Skipped,
    *,
    where: str,
    strict: bool,
    raw_labels: Sequence[object] | None,
    label_where: str,
    root: Path | None,
    texts: list[str] | None = None,
    encoded: EncodedImages | None = None,
) -> DataSet:
    """The DataSet of the ``kept`` rows (ids are row numbers), after applying the skip-or-refuse rule
    to ``skipped``.

    Raises
    ------
    DataError
        Under ``strict`` when any row was skipped, and always when every row was.
    """
    if skipped:
        rows = [i for i, _ in skipped]
        first = f"row {skipped[0][0]}: {skipped[0][1]}"
        if strict or not kept:
            raise DataError(
                f"{where}: {len(skipped)} of {n_rows} rows cannot be used (rows {row_list(rows)}; "
                f"first: {first}). Fix or drop those rows"
                + (", or leave out --strict to skip them." if strict else ".")
            )
        log.warning(
            "%s: skipped %d of %d rows that cannot be used (rows %s; first: %s)",
            where,
            len(skipped),
            n_rows,
            row_list(rows),
            first,
        )
    ids = tuple(str(i) for i in kept)
    labels: np.ndarray | None = None
    classes: tuple[str, ...] = ()
    if raw_labels is not None:
        labels, classes = encode_labels([raw_labels[i] for i in kept], where=label_where)
    return DataSet(
        name,
        modality,
        ids,
        labels,
        classes,
        texts=None if texts is None else tuple(texts),
        root=root,
        encoded=encoded,
        skipped=tuple((str(i), why) for i, why in skipped),
    )


def _short(v: object, most: int = 40) -> str:
    text = repr(v)
    return text if len(text) <= most else text[: most - 3] + "..."

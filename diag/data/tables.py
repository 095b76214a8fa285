"""Tables: a CSV, JSONL or Parquet file with a text or image column and an optional label column."""

from __future__ import annotations

import json
from pathlib import Path

from diag.data.columns import CellImages, build_dataset, image_cells, item_column, text_cells
from diag.data.dataset import DataSet
from diag.errors import DataError

__all__ = ["TEXT_EXTENSIONS", "open_text_table"]

TEXT_EXTENSIONS = (".csv", ".jsonl", ".parquet")


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
    path: Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    image_column: str | None = None,
    strict: bool = False,
    name: str | None = None,
) -> DataSet:
    """A CSV, JSONL or Parquet file of texts or images, with an optional label column.

    The items are the texts of ``text_column``; or, when ``image_column`` is given (or the table has
    no ``text_column`` but an ``image`` column), the images of that column: paths relative to the
    table, or encoded bytes. Rows without a text or image are skipped and listed (refused under
    ``strict``); unreadable image bytes are skipped when decoded.
    """
    rows = _read_table(path)
    if not rows:
        raise DataError(f"{path}: the file holds no rows. An empty set cannot be embedded.")
    columns = [str(c) for c in rows[0]]
    kind, column = item_column(columns, text_column=text_column, image_column=image_column, where=str(path))
    texts: list[str] | None = None
    encoded: CellImages | None = None
    if kind == "image":
        kept, cells, skipped = image_cells(
            [r.get(column) for r in rows],
            base=path.parent,
            where=f"{path} column {column!r}",
            flag="--image-column",
        )
        encoded = CellImages(cells)
    else:
        kept, texts, skipped = text_cells(
            [r.get(column) for r in rows], where=f"{path} column {column!r}", flag="--text-column"
        )
    return build_dataset(
        name or str(path),
        "text" if texts is not None else "image",
        len(rows),
        kept,
        skipped,
        where=str(path),
        strict=strict,
        raw_labels=[r.get(label_column) for r in rows] if label_column in columns else None,
        label_where=f"{path} column {label_column!r}",
        root=path.parent,
        texts=texts,
        encoded=encoded,
    )

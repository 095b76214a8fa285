"""Text tables: a CSV, JSONL or Parquet file with a text column and an optional label column."""

from __future__ import annotations

import json
from pathlib import Path

from diag.data.dataset import DataSet
from diag.data.labels import encode_labels, is_missing, row_list
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
    bad = [i for i, t in enumerate(texts) if is_missing(t)]
    if bad:
        raise DataError(
            f"{path}: {len(bad)} of {len(texts)} rows have an empty {text_column!r} (rows {row_list(bad)}). "
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

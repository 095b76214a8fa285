"""In-memory text sets, for the Python API and the bundled text samples."""

from __future__ import annotations

from collections.abc import Sequence

from diag.data.dataset import DataSet
from diag.data.labels import encode_labels
from diag.errors import DataError

__all__ = ["texts_dataset"]


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

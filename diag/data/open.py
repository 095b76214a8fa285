"""Open what the user names: a path (image folder, text table, ``.npz``) or ``samples:NAME``."""

from __future__ import annotations

from pathlib import Path

from diag.data.arrays import open_npz
from diag.data.dataset import DataSet
from diag.data.folders import IMAGE_EXTENSIONS, open_image_folder
from diag.data.samples import open_sample
from diag.data.tables import TEXT_EXTENSIONS, open_text_table
from diag.errors import DataError

__all__ = ["open_data"]

_SUPPORTED = (
    "an image folder (one subfolder per class, or a flat folder of unlabelled images), "
    "a .csv/.jsonl/.parquet file with a text column, an .npz of arrays, or samples:NAME"
)


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

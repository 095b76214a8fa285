"""Open what the user names: a path (image folder, table, ``.npz``, Hugging Face datasets folder),
``hf-dataset:ID`` or ``samples:NAME``."""

from __future__ import annotations

from pathlib import Path

from diag.data.arrays import open_npz
from diag.data.dataset import DataSet
from diag.data.folders import IMAGE_EXTENSIONS, open_image_folder
from diag.data.hf_datasets import HF_PREFIX, is_hf_folder, open_hf_folder, open_hf_hub
from diag.data.samples import open_sample
from diag.data.tables import TEXT_EXTENSIONS, open_text_table
from diag.errors import DataError, param_error

__all__ = ["open_data"]

_SUPPORTED = (
    "an image folder (one subfolder per class, or a flat folder of unlabelled images), "
    "a .csv/.jsonl/.parquet file with a text or image column, an .npz of arrays, a folder saved by "
    "Hugging Face datasets' save_to_disk, hf-dataset:ID, or samples:NAME"
)


def open_data(
    spec: str | Path | DataSet,
    *,
    text_column: str = "text",
    label_column: str = "label",
    image_column: str | None = None,
    hf_split: str | None = None,
    on_bad_rows: str = "skip",
) -> DataSet:
    """Open what the user names: a path, ``hf-dataset:ID`` (Hugging Face Hub, online) or
    ``samples:NAME`` for a bundled sample.

    Parameters
    ----------
    text_column, label_column : str
        Columns of a table or Hugging Face dataset.
    image_column : str, optional
        Column of images (paths relative to the table, or encoded bytes) of a table or Hugging Face
        dataset; by default a table without ``text_column`` uses a column named ``image``, and a
        Hugging Face dataset its first ``Image`` column.
    hf_split : str, optional
        Split of a Hugging Face dataset with several (``--hf-split``: ``--split`` already means "two
        halves of the source" in ``diag diagnose``); other formats have none and ignore it.
    on_bad_rows : {"skip", "error"}, default "skip"
        What to do with rows of a table or Hugging Face dataset that cannot be used (an empty text, a
        missing image): skip them and list them (in the log and in ``DataSet.skipped``), or refuse the
        set (the CLI's ``--strict``). Named after pandas' ``on_bad_lines``; a string so that every
        option travels in one ``dict[str, str]``.

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
    if on_bad_rows not in ("skip", "error"):
        raise param_error("on_bad_rows", "must be 'skip' or 'error'", on_bad_rows)
    strict = on_bad_rows == "error"
    columns = {"text_column": text_column, "label_column": label_column}
    if s.startswith(HF_PREFIX):
        return open_hf_hub(
            s[len(HF_PREFIX) :], hf_split=hf_split, image_column=image_column, strict=strict, **columns
        )
    path = Path(s).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder. Pass {_SUPPORTED}.")
    if path.is_dir():
        if is_hf_folder(path):
            return open_hf_folder(
                path, hf_split=hf_split, image_column=image_column, strict=strict, name=s, **columns
            )
        return open_image_folder(path, name=s)
    suffix = path.suffix.lower()
    if suffix in TEXT_EXTENSIONS:
        return open_text_table(path, image_column=image_column, strict=strict, name=s, **columns)
    if suffix == ".npz":
        return open_npz(path, name=s)
    if suffix in IMAGE_EXTENSIONS:
        raise DataError(f"{path}: is a single image. Pass the folder that holds the images instead.")
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}. Pass {_SUPPORTED}.")

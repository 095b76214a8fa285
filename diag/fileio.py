"""Result files: JSON-safe values, JSON read with a clear error, and atomic writes (old file or new one)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from diag.errors import DiagError

__all__ = ["atomic_write_bytes", "json_safe", "make_temp_dir", "read_json"]


def json_safe(v: Any) -> Any:
    """``v`` as JSON-native values: NaN/inf become None (JSON has no NaN), numpy scalars and arrays become
    Python values, paths become strings, and an object with ``to_dict`` (a result, a report section)
    becomes its dict."""
    if hasattr(v, "to_dict") and callable(v.to_dict):
        v = v.to_dict()
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return json_safe(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def read_json(path: Path, *, what: str, fix: str, error: type[DiagError]) -> Any:
    """The JSON value in ``path``, or ``error`` naming the file, what it is, the reason and ``fix``.

    Parameters
    ----------
    path : Path
    what : str
        What the file is, for the message (``"manifest"``, ``"report"``).
    fix : str
        What to do about an unreadable file (``"Rebuild the reference."``).
    error : type of DiagError
        The error to raise (:class:`~diag.errors.CacheError` for cached files the user can rebuild).
    """
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise error(f"{path}: unreadable {what} ({exc}). {fix}") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_temp_dir(parent: Path, *, prefix: str) -> Path:
    """A new empty folder in ``parent`` (created if needed) with the usual permissions, for a write that ends
    in one ``os.replace``.

    ``tempfile.mkdtemp`` makes folders 0700, which would lock every other user out of a shared cache once
    the folder is renamed into place; this gives it what ``mkdir`` would (0777 less the umask).
    """
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

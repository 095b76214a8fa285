"""The on-disk embedding cache, keyed by content.

The key is a SHA-256 of everything that changes the numbers: the backbone's name and weights (a hash
of every tensor), its preprocessing and probe points, the numeric precision, the extraction code's
version and the data's content fingerprint. Device, batch size and worker count do not change the
result beyond float noise and are not part of the key. Entries are folders written atomically
(a temporary folder, then one ``os.replace``), so a crash never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from diag.data.dataset import DataSet
from diag.engine.embeddings import Embeddings
from diag.errors import CacheError
from diag.models import Backbone

__all__ = ["EXTRACT_VERSION", "cache_dir", "cache_key", "lookup", "store"]

log = logging.getLogger(__name__)

#: Bump when a change to extraction or pooling changes the numbers: old entries then miss.
EXTRACT_VERSION = 1


def cache_dir(override: str | Path | None = None) -> Path:
    """``override``, else ``$DIAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/diag`` (``~/.cache/diag``)."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("DIAG_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "diag"


def cache_key(backbone: Backbone, data: DataSet, *, precision: str) -> str:
    """The content key of ``data`` embedded by ``backbone`` at ``precision``."""
    spec: dict[str, Any] = {
        "extract_version": EXTRACT_VERSION,
        "backbone": backbone.name,
        "architecture": type(backbone.model).__name__,
        "weights_sha256": backbone.weights_fingerprint(),
        "preprocessing": backbone.preprocessing,
        "probes": backbone.probe_names,
        "precision": precision,
        "data_sha256": data.fingerprint(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _entry(root: Path, key: str) -> Path:
    return root / "embeddings" / key[:2] / key


def lookup(key: str, *, root: str | Path | None = None) -> Embeddings | None:
    """The cached embeddings for ``key``, or None. A corrupt entry is removed and reported as a miss."""
    folder = _entry(cache_dir(root), key)
    if not folder.is_dir():
        return None
    try:
        emb = Embeddings.load(folder)
    except CacheError as exc:
        log.warning("dropping a corrupt cache entry %s: %s", folder, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    if emb.cache_key != key:
        log.warning("dropping a cache entry whose manifest names another key: %s", folder)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return emb.with_manifest(from_cache=True)


def store(emb: Embeddings, *, root: str | Path | None = None) -> Path:
    """Write ``emb`` under its key, atomically. Returns the entry folder."""
    key = emb.cache_key
    if not key:
        raise CacheError("cannot cache embeddings without a cache_key in their manifest")
    folder = _entry(cache_dir(root), key)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=folder.parent))
    try:
        emb.save(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process stored the same key first; its entry is as good as ours.
            if not (folder / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder

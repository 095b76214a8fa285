"""The on-disk embedding cache, keyed by content.

The key is a SHA-256 of everything that changes the numbers: the backbone's name and weights (a hash
of every tensor), its preprocessing and probe points, the numeric precision, the extraction code's
version and the data's content fingerprint. Device, batch size and worker count do not change the
result beyond float noise and are not part of the key. Entries are folders written atomically
(a temporary folder, then one ``os.replace``), so a crash never leaves a half-written entry behind;
temporary folders a killed process left are swept by a later store once they are an hour old.

A cache problem never stops a diagnosis: an entry that does not load (torn, edited, malformed) is
dropped and rebuilt, and a cache folder that cannot be read or written (a file, another user's cache, a
full disk) is bypassed. Each case is a logged warning that says what happened and what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from diag.data.dataset import DataSet
from diag.engine.embeddings import MANIFEST_FILE, REBUILD_FIX, Embeddings
from diag.errors import CacheError
from diag.fileio import make_temp_dir
from diag.models import Backbone

__all__ = ["EXTRACT_VERSION", "STALE_TEMP_S", "cache_dir", "cache_key", "lookup", "store"]

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


#: A temporary folder untouched for this long belongs to a store that was killed: a later store removes it.
STALE_TEMP_S = 3600.0


def _entry(root: Path, key: str) -> Path:
    return root / "embeddings" / key[:2] / key


def _where(override: str | Path | None) -> str:
    """The cache folder as the user set it, for messages."""
    if override:
        return f"--cache-dir {override}"
    env = os.environ.get("DIAG_CACHE_DIR")
    if env:
        return f"DIAG_CACHE_DIR={env}"
    return f"the embedding cache {cache_dir()}"


def lookup(key: str, *, root: str | Path | None = None) -> Embeddings | None:
    """The cached embeddings for ``key``, or None.

    Never raises for a cache problem: an entry that does not load is removed (it is rebuilt on store) and
    an entry that cannot be read (permissions) is bypassed; both are logged warnings and count as misses.
    """
    folder = _entry(cache_dir(root), key)
    try:
        if not folder.is_dir():
            return None
        emb = Embeddings.load(folder)
    except CacheError as exc:
        reason = str(exc).removesuffix(" " + REBUILD_FIX)
        _drop(folder, f"dropped a cache entry that does not load (it is rebuilt, nothing to do): {reason}")
        return None
    except OSError as exc:
        log.warning(
            "cannot read the cache entry %s (%s): embedding without it. "
            "Point DIAG_CACHE_DIR (or --cache-dir) at a folder of your own.",
            folder,
            exc.strerror or exc,
        )
        return None
    if emb.cache_key != key:
        _drop(folder, f"dropping a cache entry whose manifest names another key: {folder}")
        return None
    return emb.with_manifest(from_cache=True)


def store(emb: Embeddings, *, root: str | Path | None = None) -> Path | None:
    """Write ``emb`` under its key, atomically. Returns the entry folder, or None when the cache is unusable.

    Two processes storing the same key at once both succeed (the first rename wins; the entries are
    equal). A cache folder that cannot be written (a file, another user's folder, a full disk) is a logged
    warning, not an error: the embeddings are simply not cached.
    """
    key = emb.cache_key
    if not key:
        raise CacheError("cannot cache embeddings without a cache_key in their manifest")
    base = cache_dir(root)
    folder = _entry(base, key)
    try:
        return _write(emb, folder)
    except OSError as exc:
        reason = (
            "it is a file, not a folder"
            if base.exists() and not base.is_dir()
            else f"{exc.filename or folder}: {exc.strerror or exc}"
        )
        log.warning(
            "cannot write to %s (%s): the embeddings are not cached. "
            "Point DIAG_CACHE_DIR (or --cache-dir) at a folder you can write.",
            _where(root),
            reason,
        )
        return None


def _write(emb: Embeddings, folder: Path) -> Path:
    shard = folder.parent
    for path in (shard, folder):
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            # Only diag writes inside embeddings/: a file where a folder belongs is debris, not user data.
            log.warning("removing %s from the embedding cache: a file where a cache folder belongs", path)
            path.unlink()
    _sweep_stale(shard.parent)
    tmp = make_temp_dir(shard, prefix=f".{folder.name[:12]}.")
    try:
        emb.save(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:
            if (folder / MANIFEST_FILE).is_file():
                pass  # another process stored the same key first; its entry is as good as ours
            elif folder.is_dir():
                # Not an entry (no commit marker): a leftover of a partial removal. Replace it once.
                _drop(folder, f"replacing an incomplete cache entry {folder}")
                os.replace(tmp, folder)
            else:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _drop(folder: Path, message: str) -> None:
    """Remove an entry: renamed away first (so readers see it whole or not at all), then deleted."""
    log.warning("%s", message)
    grave = folder.parent / f".{folder.name[:12]}.drop-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(folder, grave)
    except OSError as exc:
        if folder.exists():
            log.warning("could not remove %s (%s): it is bypassed", folder, exc.strerror or exc)
        return
    shutil.rmtree(grave, ignore_errors=True)


def _sweep_stale(embeddings: Path) -> None:
    """Remove temporary folders (``.<key>.*``) that no process has touched for :data:`STALE_TEMP_S`."""
    now = time.time()
    try:
        shards = [p for p in embeddings.iterdir() if p.is_dir()]
    except OSError:
        return
    for shard in shards:
        try:
            temps = [p for p in shard.iterdir() if p.name.startswith(".") and p.is_dir()]
            for tmp in temps:
                touched = max([tmp.stat().st_mtime] + [f.stat().st_mtime for f in tmp.iterdir()])
                if now - touched > STALE_TEMP_S:
                    log.info("removing %s, left by an interrupted cache write", tmp)
                    shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue  # raced with another sweep or unreadable: nothing to clean here

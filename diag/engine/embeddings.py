"""The product of one extraction pass, and how it is stored on disk.

An :class:`Embeddings` holds, for one data set and one backbone, a ``(n, dim)`` float32 array per probe
point, the source-head logits (when the backbone has a head), the labels, the item ids, and its
provenance. On disk it is a folder with two files:

``embeddings.safetensors``
    the arrays: ``features/<probe>``, ``logits``, ``labels``;
``manifest.json``
    everything else, JSON-native and self-describing, written last (it is the commit marker, and it
    carries the SHA-256 of the arrays file so a torn or stale pair is detected, and ``manifest_sha256``,
    the SHA-256 of its own other fields, so an edited manifest is detected too).

Reading checks both checksums and that the manifest agrees with the arrays (one id per row, every probe
present with its dimension), so no malformed folder is served: it is a :class:`CacheError`. A manifest
written before ``manifest_sha256`` existed still loads (the field is additive: same schema version),
under the same agreement checks.

Both files are written atomically (a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from diag.errors import CacheError, DataError
from diag.fileio import atomic_write_bytes, read_json
from diag.models import ProbePoint

__all__ = [
    "ARRAYS_FILE",
    "MANIFEST_CHECKSUM",
    "MANIFEST_FILE",
    "REBUILD_FIX",
    "SCHEMA_VERSION",
    "Embeddings",
    "check_finite",
]

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
ARRAYS_FILE = "embeddings.safetensors"
#: The manifest field holding the SHA-256 of the manifest's other fields.
MANIFEST_CHECKSUM = "manifest_sha256"
#: What to do about a folder that does not load (the cache does it by itself and drops this advice).
REBUILD_FIX = "Delete the folder and embed again."


@dataclass(frozen=True, eq=False)
class Embeddings:
    """Per-probe features of one data set under one backbone.

    Attributes
    ----------
    features : dict of str to ndarray, each (n, dim) float32
        Pooled features per probe point, in depth order.
    logits : ndarray (n, num_source_classes) float32, or None
        The source-task head's logits (e.g. ImageNet-1k), when the backbone has one.
    labels : ndarray (n,) int64, or None
    classes : tuple of str
    ids : tuple of str
        The id of each row (relative file path or row number); skipped items are absent.
    probes : tuple of ProbePoint
    manifest : dict
        Provenance: backbone, data, cache key, device, precision, timings, versions, skipped items.
    """

    features: dict[str, np.ndarray]
    logits: np.ndarray | None
    labels: np.ndarray | None
    classes: tuple[str, ...]
    ids: tuple[str, ...]
    probes: tuple[ProbePoint, ...]
    manifest: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, probe: str) -> np.ndarray:
        try:
            return self.features[probe]
        except KeyError:
            raise KeyError(f"no probe {probe!r}; probes: {', '.join(self.features)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.features)

    @property
    def cache_key(self) -> str:
        return str(self.manifest.get("cache_key", ""))

    @property
    def from_cache(self) -> bool:
        return bool(self.manifest.get("from_cache", False))

    @property
    def skipped(self) -> list[dict[str, str]]:
        return list(self.manifest.get("skipped", []))

    def with_manifest(self, **updates: Any) -> Embeddings:
        return Embeddings(
            self.features, self.logits, self.labels, self.classes, self.ids, self.probes,
            {**self.manifest, **updates},
        )  # fmt: skip

    def subset(self, indices: Sequence[int] | np.ndarray, *, name: str | None = None) -> Embeddings:
        """The rows at ``indices``, in that order (a split of an embedded data set: no new forward pass).

        The manifest's ``data`` entry records the parent data set and the rows taken.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or (idx.size and (idx.min() < -len(self) or idx.max() >= len(self))):
            raise DataError(f"subset indices must be a 1-d list of rows in [0, {len(self)}); got {idx!r}.")
        data = dict(self.manifest.get("data", {}))
        parent = data.get("name", "data")
        data.update(name=name or f"{parent}[{len(idx)}]", parent=parent, n=len(idx), rows=idx.tolist())
        return Embeddings(
            features={k: v[idx] for k, v in self.features.items()},
            logits=None if self.logits is None else self.logits[idx],
            labels=None if self.labels is None else self.labels[idx],
            classes=self.classes,
            ids=tuple(self.ids[i] for i in idx),
            probes=self.probes,
            manifest={**self.manifest, "data": data},
        )

    # -- storage -------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write ``embeddings.safetensors`` then ``manifest.json`` into ``folder`` (created if needed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray] = {
            f"features/{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in self.features.items()
        }
        if self.logits is not None:
            tensors["logits"] = np.ascontiguousarray(self.logits, dtype=np.float32)
        if self.labels is not None:
            tensors["labels"] = np.ascontiguousarray(self.labels, dtype=np.int64)
        blob = st_save(tensors)
        atomic_write_bytes(folder / ARRAYS_FILE, blob)
        manifest = {
            **{k: v for k, v in self.manifest.items() if k != "from_cache"},
            "schema_version": SCHEMA_VERSION,
            "kind": "diag.embeddings",
            "n": len(self),
            "probes": [_probe_dict(p) for p in self.probes],
            "has_logits": self.logits is not None,
            "classes": list(self.classes),
            "ids": list(self.ids),
            "arrays": {"file": ARRAYS_FILE, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)},
        }
        manifest.pop(MANIFEST_CHECKSUM, None)
        manifest = json.loads(json.dumps(manifest))  # the form a reader sees (str keys, lists), checksummed
        manifest[MANIFEST_CHECKSUM] = _manifest_digest(manifest)
        atomic_write_bytes(folder / MANIFEST_FILE, (json.dumps(manifest, indent=1) + "\n").encode())
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, verify: bool = True) -> Embeddings:
        """Read a folder written by :meth:`save`.

        Parameters
        ----------
        folder : path
        verify : bool, default True
            Check the arrays file and the manifest against their SHA-256 checksums.

        Raises
        ------
        CacheError
            Missing or unreadable files, a schema from a newer diag, arrays or a manifest that do not match
            their checksums (an interrupted or foreign write), or a manifest that is malformed or disagrees
            with the arrays (a missing field, ids for fewer rows than the arrays hold).
        """
        folder = Path(folder)
        mpath, apath = folder / MANIFEST_FILE, folder / ARRAYS_FILE
        if not mpath.is_file() or not apath.is_file():
            raise CacheError(
                f"{folder}: not an embeddings folder (needs {MANIFEST_FILE} and {ARRAYS_FILE}). "
                "Create one with `diag embed DATA --backbone NAME --out DIR`."
            )
        manifest = read_json(mpath, what="manifest", fix=REBUILD_FIX, error=CacheError)
        if not isinstance(manifest, dict):
            found = "null" if manifest is None else type(manifest).__name__
            raise CacheError(
                f"{mpath}: not a diag embeddings manifest (a JSON {found}, not an object). {REBUILD_FIX}"
            )
        if manifest.get("kind") != "diag.embeddings":
            raise CacheError(
                f"{mpath}: not a diag embeddings manifest (kind={manifest.get('kind')!r}). {REBUILD_FIX}"
            )
        version = manifest.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise CacheError(f"{mpath}: schema_version must be an integer; got {version!r}. {REBUILD_FIX}")
        if version > SCHEMA_VERSION:
            raise CacheError(
                f"{mpath}: written by a newer diag (schema {version} > {SCHEMA_VERSION}). "
                "Upgrade diag to read it."
            )
        if (
            verify
            and MANIFEST_CHECKSUM in manifest
            and manifest[MANIFEST_CHECKSUM] != _manifest_digest(manifest)
        ):
            raise CacheError(
                f"{mpath}: does not match its checksum: the manifest was edited or replaced. {REBUILD_FIX}"
            )
        try:
            blob = apath.read_bytes()
        except OSError as exc:
            raise CacheError(f"{apath}: unreadable ({exc}). {REBUILD_FIX}") from None
        try:
            return cls._from_parts(manifest, blob, verify=verify, where=apath)
        except CacheError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise CacheError(
                f"{mpath}: malformed manifest ({type(exc).__name__}: {exc}). {REBUILD_FIX}"
            ) from None

    @classmethod
    def _from_parts(cls, manifest: dict[str, Any], blob: bytes, *, verify: bool, where: Path) -> Embeddings:
        """The embeddings a checked manifest and its arrays file describe, once they agree."""
        if verify and hashlib.sha256(blob).hexdigest() != manifest["arrays"]["sha256"]:
            raise CacheError(
                f"{where}: does not match its manifest (checksum differs): the write was interrupted or the "
                f"file was replaced. {REBUILD_FIX}"
            )
        try:
            arrays = st_load(blob)
        except Exception as exc:  # safetensors raises its own SafetensorError on a torn file
            raise CacheError(f"{where}: unreadable arrays ({exc}). {REBUILD_FIX}") from None
        probes = tuple(ProbePoint(**p) for p in manifest["probes"])
        ids = manifest["ids"]
        if not isinstance(ids, list):
            raise ValueError(f"ids must be a list; got {type(ids).__name__}")
        n = len(ids)
        if manifest.get("n", n) != n:
            raise ValueError(f"n is {manifest['n']} but ids name {n} rows")
        feats = {p.name: arrays[f"features/{p.name}"] for p in probes}
        rows = {f"features/{p.name}": feats[p.name] for p in probes}
        rows.update({k: arrays[k] for k in ("logits", "labels") if k in arrays})
        for name, arr in rows.items():
            if arr.ndim == 0 or arr.shape[0] != n:
                raise ValueError(f"{name} has shape {arr.shape} but ids name {n} rows")
        for p in probes:
            if feats[p.name].shape != (n, p.dim):
                raise ValueError(
                    f"features/{p.name} has shape {feats[p.name].shape}, expected ({n}, {p.dim})"
                )
        if bool(manifest.get("has_logits", "logits" in arrays)) != ("logits" in arrays):
            raise ValueError(f"has_logits is {manifest.get('has_logits')} but the arrays disagree")
        classes = manifest.get("classes", [])
        if not isinstance(classes, list):
            raise ValueError("classes must be a list")
        return cls(
            features=feats,
            logits=arrays.get("logits"),
            labels=arrays.get("labels"),
            classes=tuple(str(c) for c in classes),
            ids=tuple(ids),
            probes=probes,
            manifest=manifest,
        )


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of a manifest's fields other than its own checksum, in a canonical JSON form."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _probe_dict(p: ProbePoint) -> dict[str, Any]:
    return {"name": p.name, "index": p.index, "dim": p.dim, "kind": p.kind, "pooling": p.pooling}


def check_finite(features: Mapping[str, np.ndarray], *, where: str) -> None:
    """Raise :class:`DataError` naming the probe and rows when features hold NaN or inf."""
    for name, arr in features.items():
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise DataError(
                f"{where}: probe {name!r} has NaN/inf features in {bad.sum()} rows "
                f"(first: {rows[:5].tolist()}). "
                "The backbone overflowed on these inputs: try --precision fp32, or check those items."
            )

"""The product of one extraction pass, and how it is stored on disk.

An :class:`Embeddings` holds, for one data set and one backbone, a ``(n, dim)`` float32 array per probe
point, the source-head logits (when the backbone has a head), the labels, the item ids, and its
provenance. On disk it is a folder with two files:

``embeddings.safetensors``
    the arrays: ``features/<probe>``, ``logits``, ``labels``;
``manifest.json``
    everything else, JSON-native and self-describing, written last (it is the commit marker, and it
    carries the SHA-256 of the arrays file so a torn or stale pair is detected).

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

__all__ = ["ARRAYS_FILE", "MANIFEST_FILE", "SCHEMA_VERSION", "Embeddings", "check_finite"]

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
ARRAYS_FILE = "embeddings.safetensors"


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
        atomic_write_bytes(folder / MANIFEST_FILE, (json.dumps(manifest, indent=1) + "\n").encode())
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, verify: bool = True) -> Embeddings:
        """Read a folder written by :meth:`save`.

        Raises
        ------
        CacheError
            Missing or unreadable files, a schema from a newer diag, or arrays that do not match the
            manifest's checksum (an interrupted or foreign write).
        """
        folder = Path(folder)
        mpath, apath = folder / MANIFEST_FILE, folder / ARRAYS_FILE
        if not mpath.is_file() or not apath.is_file():
            raise CacheError(
                f"{folder}: not an embeddings folder (needs {MANIFEST_FILE} and {ARRAYS_FILE}). "
                "Create one with `diag embed DATA --backbone NAME --out DIR`."
            )
        fix = "Delete the folder and embed again."
        manifest = read_json(mpath, what="manifest", fix=fix, error=CacheError)
        if manifest.get("kind") != "diag.embeddings":
            raise CacheError(f"{mpath}: not a diag embeddings manifest (kind={manifest.get('kind')!r}).")
        if int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
            raise CacheError(
                f"{mpath}: written by a newer diag (schema {manifest['schema_version']} > {SCHEMA_VERSION}). "
                "Upgrade diag to read it."
            )
        blob = apath.read_bytes()
        if verify and hashlib.sha256(blob).hexdigest() != manifest["arrays"]["sha256"]:
            raise CacheError(
                f"{apath}: does not match its manifest (checksum differs): the write was interrupted or the "
                "file was replaced. Delete the folder and embed again."
            )
        arrays = st_load(blob)
        probes = tuple(ProbePoint(**p) for p in manifest["probes"])
        feats = {p.name: arrays[f"features/{p.name}"] for p in probes}
        return cls(
            features=feats,
            logits=arrays.get("logits"),
            labels=arrays.get("labels"),
            classes=tuple(manifest.get("classes", [])),
            ids=tuple(manifest["ids"]),
            probes=probes,
            manifest=manifest,
        )


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

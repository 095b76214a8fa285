"""A reference: a per-layer summary of a data set that stands in for the data itself.

For each probe point of a backbone a :class:`Reference` keeps mergeable sufficient statistics
(:mod:`diag.stats.summaries`): float64 moments (mean and covariance follow), a random-Fourier-feature
mean embedding with its seed and bandwidth, per-class counts, sums and sums of squares when labelled
(diagonal: a full covariance per class would cost C·d² floats), and one seeded reservoir of whole items
(every layer's features of the same rows, with the items' ids and labels) for the statistics that need
samples: permutation tests, the classifier test, k-NN OOD scores, the map.

On disk a reference is a folder::

    reference.json          manifest: backbone (name, weights hash, preprocessing, probes), data
                            (names, fingerprints), n, layers (dim, bandwidth), RFF and reservoir settings,
                            item ids of the reservoir, and the SHA-256 of the tensor file
    summaries.safetensors   the statistics (float64 / int64 / float32 tensors; no pickle anywhere)

Two references of the same backbone and preprocessing merge (:meth:`Reference.merge`): sums add,
reservoirs merge by hypergeometric sampling, so shards can be summarised apart and combined.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import torch

from diag.engine.embeddings import Embeddings
from diag.errors import CacheError, DataError
from diag.fileio import atomic_write_bytes, read_json
from diag.models import ProbePoint
from diag.stats.shift import median_distance
from diag.stats.summaries import MeanEmbedding, Moments, Reservoir

__all__ = [
    "MANIFEST_FILE",
    "REFERENCE_PREFIX",
    "SCHEMA_VERSION",
    "TENSORS_FILE",
    "LayerSummary",
    "Reference",
    "ReferenceSettings",
    "as_reference_path",
    "load_reference",
]

SCHEMA_VERSION = 1
MANIFEST_FILE = "reference.json"
TENSORS_FILE = "summaries.safetensors"
#: ``--source ref:FOLDER`` names a saved reference wherever a source data set is accepted.
REFERENCE_PREFIX = "ref:"
#: What two references must share to be compared or merged (keys of the backbone description).
_IDENTITY = ("name", "modality", "pretrained", "weights_sha256", "preprocessing", "probes")


@dataclass(frozen=True)
class ReferenceSettings:
    """How a reference summarises: random features and reservoir (fixed for the life of the reference).

    Parameters
    ----------
    n_features : int, default 512
        Random Fourier features per layer (``D``).
    reservoir : int, default 2000
        Items kept whole for sample-based statistics.
    seed : int, default 0
        Seeds the random features and the reservoir's draws.
    bandwidth_rows : int, default 500
        Rows of the first batch whose median pairwise distance fixes each layer's kernel width.
    """

    n_features: int = 512
    reservoir: int = 2000
    seed: int = 0
    bandwidth_rows: int = 500

    def __post_init__(self) -> None:
        for name in ("n_features", "reservoir", "bandwidth_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise DataError(f"reference setting {name} must be an integer >= 2; got {value!r}.")


@dataclass
class LayerSummary:
    """The summaries of one probe point."""

    probe: ProbePoint
    moments: Moments
    embedding: MeanEmbedding
    class_count: np.ndarray  # (C,) int64
    class_sum: np.ndarray  # (C, d) float64
    class_sumsq: np.ndarray  # (C, d) float64

    def merge(self, other: LayerSummary) -> LayerSummary:
        return LayerSummary(
            self.probe,
            self.moments.merge(other.moments),
            self.embedding.merge(other.embedding),
            self.class_count + other.class_count,
            self.class_sum + other.class_sum,
            self.class_sumsq + other.class_sumsq,
        )

    def class_means(self) -> np.ndarray:
        """``(C, d)`` per-class means (NaN rows for classes never seen)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.class_sum / self.class_count[:, None]


@dataclass
class Reference:
    """Per-layer summaries of a data set, embedded by one backbone.

    Build one with :func:`diag.pipeline.build_reference` (streaming) or :meth:`from_embeddings`; save
    with :meth:`save`, load with :func:`load_reference`.
    """

    backbone: dict[str, Any]
    settings: ReferenceSettings
    classes: tuple[str, ...]
    layers: dict[str, LayerSummary]
    reservoir: Reservoir
    sources: list[dict[str, Any]] = field(default_factory=list)
    folder: Path | None = field(default=None, compare=False)

    # -- building ------------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        first: Embeddings,
        backbone: dict[str, Any],
        settings: ReferenceSettings | None = None,
        *,
        bandwidths: dict[str, float] | None = None,
    ) -> Reference:
        """An empty reference whose kernel widths come from ``first`` (median heuristic) or ``bandwidths``.

        Shards meant to be merged must share ``bandwidths`` (take them from the first shard's reference).
        """
        cfg = settings or ReferenceSettings()
        layers: dict[str, LayerSummary] = {}
        n_classes = len(first.classes)
        for probe in first.probes:
            x = first[probe.name]
            width = (bandwidths or {}).get(probe.name) or median_distance(
                torch.from_numpy(x.astype(np.float64)),
                np.random.default_rng(cfg.seed),
                max_points=cfg.bandwidth_rows,
            )
            layers[probe.name] = LayerSummary(
                probe,
                Moments(probe.dim),
                MeanEmbedding(probe.dim, width, cfg.n_features, cfg.seed),
                np.zeros(n_classes, np.int64),
                np.zeros((n_classes, probe.dim)),
                np.zeros((n_classes, probe.dim)),
            )
        width = sum(p.dim for p in first.probes) + 1  # every layer's features, then the label
        reservoir = Reservoir(cfg.reservoir, width, seed=cfg.seed)
        return cls(dict(backbone), cfg, tuple(first.classes), layers, reservoir)

    @classmethod
    def from_embeddings(
        cls,
        emb: Embeddings,
        settings: ReferenceSettings | None = None,
        *,
        source: dict[str, Any] | None = None,
    ) -> Reference:
        """The reference of embeddings already in memory (one chunk)."""
        ref = cls.start(emb, emb.manifest.get("backbone", {}), settings)
        ref.update(emb)
        ref.sources.append(source or emb.manifest.get("data", {}))
        return ref

    def update(self, chunk: Embeddings) -> Reference:
        """Add a chunk of embedded items (same backbone and classes); returns ``self``."""
        if tuple(chunk.classes) != self.classes:
            raise DataError(
                f"a chunk with classes {list(chunk.classes)} does not match {list(self.classes)}."
            )
        missing = [name for name in self.layers if name not in chunk.features]
        if missing:
            raise DataError(f"a chunk lacks the probe points {missing} of this reference.")
        labels = None if chunk.labels is None else np.asarray(chunk.labels, np.int64)
        for name, summary in self.layers.items():
            x = chunk[name]
            summary.moments.update(x)
            summary.embedding.update(x)
            if labels is not None:
                x64 = x.astype(np.float64)
                np.add.at(summary.class_count, labels, 1)
                np.add.at(summary.class_sum, labels, x64)
                np.add.at(summary.class_sumsq, labels, x64**2)
        label_col = (labels if labels is not None else np.full(len(chunk), -1)).astype(np.float32)[:, None]
        wide = np.concatenate([*(chunk[n] for n in self.layers), label_col], axis=1)
        self.reservoir.update(wide, list(chunk.ids))
        return self

    def merge(self, other: Reference) -> Reference:
        """The reference of both data sets: same backbone, preprocessing, classes and settings."""
        self.require_same_backbone(other.backbone, what="the other reference")
        if other.settings != self.settings or other.classes != self.classes:
            raise DataError(
                "cannot merge references with other settings or classes: "
                f"{self.settings}, {list(self.classes)} vs {other.settings}, {list(other.classes)}."
            )
        layers = {n: s.merge(other.layers[n]) for n, s in self.layers.items()}
        reservoir = self.reservoir.merge(other.reservoir, seed=self.settings.seed)
        return Reference(
            self.backbone, self.settings, self.classes, layers, reservoir, [*self.sources, *other.sources]
        )

    # -- reading -------------------------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Items summarised."""
        return self.reservoir.seen

    @property
    def bandwidths(self) -> dict[str, float]:
        """Each layer's RFF kernel width: pass to :meth:`start` to build a mergeable shard."""
        return {n: float(s.embedding.bandwidth) for n, s in self.layers.items()}

    def sample(self) -> Embeddings:
        """The reservoir as embeddings (its items' features at every layer, labels, ids)."""
        rows, offset, features = self.reservoir.rows, 0, {}
        for name, summary in self.layers.items():
            features[name] = np.ascontiguousarray(rows[:, offset : offset + summary.probe.dim])
            offset += summary.probe.dim
        labels = rows[:, offset].astype(np.int64)
        return Embeddings(
            features=features,
            logits=None,
            labels=None if (labels < 0).any() or not self.classes else labels,
            classes=self.classes,
            ids=tuple(self.reservoir.ids),
            probes=tuple(s.probe for s in self.layers.values()),
            manifest={
                "backbone": self.backbone,
                "data": {"name": self.name, "n": self.n, "reservoir": len(self.reservoir.ids)},
                "reference": str(self.folder) if self.folder else None,
            },
        )

    @property
    def name(self) -> str:
        names = [str(s.get("name", "?")) for s in self.sources]
        return "reference of " + (" + ".join(names) if names else "unnamed data")

    def require_same_backbone(self, backbone: dict[str, Any], *, what: str = "the backbone") -> None:
        """Raise :class:`DataError` naming every identity field where ``backbone`` differs from ours."""
        diffs = [
            f"{key}: {_short(self.backbone.get(key))} here, {_short(backbone.get(key))} in {what}"
            for key in _IDENTITY
            if self.backbone.get(key) != backbone.get(key)
        ]
        if diffs:
            raise DataError(
                f"{self.folder or 'this reference'} was built with another backbone or preprocessing than "
                f"{what} ({'; '.join(diffs)}). Rebuild the reference with the same backbone and options."
            )

    # -- disk ----------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write the reference folder atomically (tensors first, then the manifest naming their hash)."""
        out = Path(folder)
        tensors: dict[str, np.ndarray] = {}
        for name, s in self.layers.items():
            tensors[f"{name}/sum"] = s.moments.total
            tensors[f"{name}/outer"] = s.moments.outer
            tensors[f"{name}/rff_sum"] = s.embedding.fixed_sum
            tensors[f"{name}/class_count"] = s.class_count
            tensors[f"{name}/class_sum"] = s.class_sum
            tensors[f"{name}/class_sumsq"] = s.class_sumsq
        tensors["reservoir/rows"] = np.ascontiguousarray(self.reservoir.rows, np.float32)
        blob = safetensors.numpy.save(tensors)
        atomic_write_bytes(out / TENSORS_FILE, blob)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "kind": "diag.reference",
            "backbone": self.backbone,
            "settings": vars(self.settings),
            "classes": list(self.classes),
            "n": self.n,
            "sources": self.sources,
            "layers": [
                {
                    "name": n,
                    "probe": vars(s.probe),
                    "count": s.moments.count,
                    "bandwidth": s.embedding.bandwidth,
                }
                for n, s in self.layers.items()
            ],
            "reservoir": {"seen": self.reservoir.seen, "ids": self.reservoir.ids},
            "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        }
        atomic_write_bytes(out / MANIFEST_FILE, (json.dumps(manifest, indent=1) + "\n").encode())
        self.folder = out
        return out


def load_reference(folder: str | Path) -> Reference:
    """Load a reference folder written by :meth:`Reference.save` (safetensors + JSON; never pickle).

    Raises
    ------
    CacheError
        A missing, unreadable, tampered (tensor hash differs from the manifest) or foreign folder.
    """
    root = Path(str(folder).removeprefix(REFERENCE_PREFIX))
    manifest_path, tensors_path = root / MANIFEST_FILE, root / TENSORS_FILE
    if not manifest_path.is_file() or not tensors_path.is_file():
        raise CacheError(
            f"{root}: not a reference folder (needs {MANIFEST_FILE} and {TENSORS_FILE}). "
            "Build one with `diag reference build DATA -b BACKBONE -o FOLDER`."
        )
    manifest = read_json(manifest_path, what="manifest", fix="Rebuild the reference.", error=CacheError)
    if not isinstance(manifest, dict) or manifest.get("kind") != "diag.reference":
        raise CacheError(f"{manifest_path}: not a diag reference manifest.")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise CacheError(
            f"{manifest_path}: schema version {manifest.get('schema_version')!r}; this diag reads "
            f"{SCHEMA_VERSION}. Rebuild the reference with this version."
        )
    blob = tensors_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != manifest.get("tensors_sha256"):
        raise CacheError(
            f"{tensors_path}: its content does not match the hash in {MANIFEST_FILE} (modified or torn "
            "copy). Rebuild the reference, or copy both files again."
        )
    try:
        t = safetensors.numpy.load(blob)
        settings = ReferenceSettings(**manifest["settings"])
        layers: dict[str, LayerSummary] = {}
        for entry in manifest["layers"]:
            name, probe = entry["name"], ProbePoint(**entry["probe"])
            embedding = MeanEmbedding(
                probe.dim,
                float(entry["bandwidth"]),
                settings.n_features,
                settings.seed,
                int(entry["count"]),
                t[f"{name}/rff_sum"],
            )
            layers[name] = LayerSummary(
                probe,
                Moments(probe.dim, int(entry["count"]), t[f"{name}/sum"], t[f"{name}/outer"]),
                embedding,
                t[f"{name}/class_count"],
                t[f"{name}/class_sum"],
                t[f"{name}/class_sumsq"],
            )
        rows = t["reservoir/rows"]
        reservoir = Reservoir(
            settings.reservoir, rows.shape[1], settings.seed, int(manifest["reservoir"]["seen"])
        )
        reservoir.rows, reservoir.ids = rows, [str(i) for i in manifest["reservoir"]["ids"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"{root}: incomplete reference ({type(exc).__name__}: {exc}). Rebuild it.") from None
    return Reference(
        manifest["backbone"],
        settings,
        tuple(manifest["classes"]),
        layers,
        reservoir,
        manifest["sources"],
        root,
    )


def _short(v: object) -> str:
    text = json.dumps(v, sort_keys=True, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 60 else text[:57] + "..."


def as_reference_path(source: object) -> Path | None:
    """The folder of a ``ref:FOLDER`` source spec, or None for any other source."""
    if isinstance(source, str) and source.startswith(REFERENCE_PREFIX):
        return Path(source[len(REFERENCE_PREFIX) :])
    return None

"""The report: the single product of a diagnosis, as a typed, versioned, self-describing JSON file.

A report folder holds::

    report.json                  this module's Report (schema_version, backbone, layers, shift, meta, ...)
    ood_scores.safetensors       per-layer OOD score of every target sample (float32, target order)
    source/, target/             the embeddings of both sides (diag.Embeddings folders), for charts

The JSON contract (later versions add fields, never remove or rename them):

* top level: ``schema_version``, ``kind`` ("diag.report"), ``backbone``, ``source``, ``target``,
  ``n_source``, ``n_target``, ``layers`` (depth order), ``shift``, ``label_shift``,
  ``class_conditional``, ``sidecars``, ``meta``; plus sections later analyses add (``transferability``,
  ``negative_transfer``, ``freeze``), kept through a load/save round trip even by a reader that does not
  know them;
* each layer: ``name``, ``index``, ``dim``, ``kind`` and ``shift`` with ``mmd2``, ``p_value``,
  ``p_adjusted``, ``c2st_auc``, ``c2st_auc_ci`` ([low, high]), ``c2st_p_value``, ``proxy_a_distance``,
  ``frechet``, ``frechet_relative``, ``coral``, ``ood_median``, ``ood_p90``, ``ood_far``;
* ``shift``: ``is_shift``, ``p_value``, ``alpha``, ``effect`` ({name, layer, value, ci}), ``peak``,
  ``onset_layer``, ``first_significant_layer``, ``level``, ``significant_layers``, ``summary``,
  ``rules``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from diag.engine.embeddings import Embeddings
from diag.errors import CacheError, DataError
from diag.fileio import atomic_write_bytes, json_safe
from diag.report.sections import (
    ClassConditionalSection,
    FreezeSection,
    LabelShiftSection,
    LayerSection,
    NegativeTransferSection,
    ReferenceSection,
    Section,
    ShiftVerdictSection,
    TransferabilitySection,
    section_from_json,
)

__all__ = ["REPORT_FILE", "SCHEMA_VERSION", "Report", "load_report"]

SCHEMA_VERSION = 1
REPORT_FILE = "report.json"
OOD_FILE = "ood_scores.safetensors"
_S = TypeVar("_S", bound=Section)
_REQUIRED = ("schema_version", "backbone", "n_source", "n_target", "layers", "shift", "meta")


@dataclass(frozen=True, init=False)
class Report:
    """A diagnosis, typed all the way down (each part is a :mod:`diag.report.sections` dataclass).

    The constructor takes each part typed or in its JSON form (a dict, as :func:`diag.pipeline.diagnose`
    builds it) and types it. ``sections`` holds every top-level field beyond the core ones: those diag
    knows (``transferability``, ``negative_transfer``, ``freeze``, ``reference``) typed, any other as it
    was read, so an unknown section survives a round trip. The typed ones are also
    :attr:`transferability`, :attr:`negative_transfer`, :attr:`freeze` and :attr:`reference`.
    """

    backbone: dict[str, Any]
    source: dict[str, Any]
    target: dict[str, Any]
    n_source: int
    n_target: int
    layers: list[LayerSection]
    shift: ShiftVerdictSection
    meta: dict[str, Any]
    label_shift: LabelShiftSection | None = None
    class_conditional: ClassConditionalSection | None = None
    sections: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = field(default=None, compare=False)

    def __init__(
        self,
        backbone: dict[str, Any],
        source: dict[str, Any],
        target: dict[str, Any],
        n_source: int,
        n_target: int,
        layers: Sequence[Mapping[str, Any]],
        shift: Mapping[str, Any],
        meta: dict[str, Any],
        label_shift: Mapping[str, Any] | None = None,
        class_conditional: Mapping[str, Any] | None = None,
        sections: Mapping[str, Any] | None = None,
        folder: Path | None = None,
    ) -> None:
        typed = {
            "backbone": backbone,
            "source": source,
            "target": target,
            "n_source": n_source,
            "n_target": n_target,
            "layers": [LayerSection.from_dict(x) for x in layers],
            "shift": ShiftVerdictSection.from_dict(shift),
            "meta": meta,
            "label_shift": None if label_shift is None else LabelShiftSection.from_dict(label_shift),
            "class_conditional": (
                None if class_conditional is None else ClassConditionalSection.from_dict(class_conditional)
            ),
            "sections": {k: section_from_json(k, v) for k, v in (sections or {}).items()},
            "folder": folder,
        }
        for name, value in typed.items():
            object.__setattr__(self, name, value)  # frozen: the dataclass way to set fields in __init__

    # -- access --------------------------------------------------------------------------------------

    @property
    def transferability(self) -> TransferabilitySection | None:
        """The ``transferability`` section (None when the report lacks it)."""
        return self._typed("transferability", TransferabilitySection)

    @property
    def negative_transfer(self) -> NegativeTransferSection | None:
        """The ``negative_transfer`` section (None when the report lacks it)."""
        return self._typed("negative_transfer", NegativeTransferSection)

    @property
    def freeze(self) -> FreezeSection | None:
        """The ``freeze`` section (None when the report lacks it)."""
        return self._typed("freeze", FreezeSection)

    @property
    def reference(self) -> ReferenceSection | None:
        """The ``reference`` section of a check against a saved reference (None otherwise)."""
        return self._typed("reference", ReferenceSection)

    def _typed(self, name: str, cls: type[_S]) -> _S | None:
        v = self.sections.get(name)
        return v if isinstance(v, cls) else None

    @property
    def layer_names(self) -> list[str]:
        return [x.name for x in self.layers]

    def layer(self, name: str) -> LayerSection:
        for x in self.layers:
            if x.name == name:
                return x
        raise KeyError(f"no layer {name!r}; layers: {', '.join(self.layer_names)}")

    def ood_scores(self) -> dict[str, np.ndarray]:
        """Per-layer OOD scores of the target samples (from the sidecar file)."""

        path = self._sidecar(OOD_FILE)
        return dict(st_load(path.read_bytes()))

    def embeddings(self, side: str) -> Embeddings:
        """The ``"source"`` or ``"target"`` embeddings saved beside the report."""
        if side not in ("source", "target"):
            raise ValueError(f"side must be 'source' or 'target'; got {side!r}.")
        return Embeddings.load(self._sidecar(side))

    def _sidecar(self, name: str) -> Path:
        if self.folder is None:
            raise CacheError("this report was not loaded from or saved to a folder: no sidecar files.")
        path = self.folder / name
        if not path.exists():
            raise CacheError(f"{path}: sidecar missing from the report folder. Run `diag diagnose` again.")
        return path

    # -- storage -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        core = {
            "schema_version": SCHEMA_VERSION,
            "kind": "diag.report",
            "backbone": self.backbone,
            "source": self.source,
            "target": self.target,
            "n_source": self.n_source,
            "n_target": self.n_target,
            "layers": [x.to_dict() for x in self.layers],
            "shift": self.shift.to_dict(),
            "label_shift": None if self.label_shift is None else self.label_shift.to_dict(),
            "class_conditional": None if self.class_conditional is None else self.class_conditional.to_dict(),
            "sidecars": {
                "ood_scores": OOD_FILE,
                "source_embeddings": "source",
                "target_embeddings": "target",
            },
        }
        extra = {k: v.to_dict() if isinstance(v, Section) else v for k, v in self.sections.items()}
        return {**core, **extra, "meta": self.meta}

    def to_json(self) -> str:
        return json.dumps(json_safe(self.to_dict()), indent=1, allow_nan=False) + "\n"

    def with_sections(self, **sections: Any) -> Report:
        """A copy with top-level sections added or replaced (e.g. ``transferability=...``), typed or dicts."""
        return replace(self, sections={**self.sections, **sections})

    def save(
        self,
        folder: str | Path,
        *,
        source: Embeddings | None = None,
        target: Embeddings | None = None,
        ood_scores: dict[str, np.ndarray] | None = None,
    ) -> Report:
        """Write the sidecars (when given), then ``report.json`` last, each atomically.

        Returns the report bound to ``folder`` (so its sidecars can be read).
        """

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if source is not None:
            source.save(folder / "source")
        if target is not None:
            target.save(folder / "target")
        if ood_scores is not None:
            blob = st_save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in ood_scores.items()})
            atomic_write_bytes(folder / OOD_FILE, blob)
        atomic_write_bytes(folder / REPORT_FILE, self.to_json().encode())
        return replace(self, folder=folder)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, folder: Path | None = None) -> Report:
        known = {
            "schema_version", "kind", "backbone", "source", "target", "n_source", "n_target", "layers",
            "shift", "label_shift", "class_conditional", "sidecars", "meta",
        }  # fmt: skip
        return cls(
            backbone=d["backbone"],
            source=d.get("source", {}),
            target=d.get("target", {}),
            n_source=int(d["n_source"]),
            n_target=int(d["n_target"]),
            layers=list(d["layers"]),
            shift=d["shift"],
            meta=d["meta"],
            label_shift=d.get("label_shift"),
            class_conditional=d.get("class_conditional"),
            sections={k: v for k, v in d.items() if k not in known},
            folder=folder,
        )


def load_report(folder: str | Path) -> Report:
    """Read ``folder/report.json`` (a folder written by ``diag diagnose``), with clear errors."""
    folder = Path(folder)
    path = folder / REPORT_FILE if folder.is_dir() or not folder.suffix else folder
    if path.name == REPORT_FILE and path.parent != folder:
        folder = path.parent
    if not path.is_file():
        raise DataError(
            f"{path}: no report here. Create one with "
            "`diag diagnose --source DATA --target DATA --backbone NAME --out DIR`."
        )
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable report ({exc}). Run `diag diagnose` again.") from None
    if not isinstance(d, dict) or d.get("kind") != "diag.report":
        kind = d.get("kind") if isinstance(d, dict) else type(d).__name__
        raise DataError(f"{path}: not a diag report (kind={kind!r}).")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise DataError(f"{path}: report lacks {', '.join(missing)}. Run `diag diagnose` again.")
    if int(d["schema_version"]) > SCHEMA_VERSION:
        raise DataError(
            f"{path}: written by a newer diag (schema {d['schema_version']} > {SCHEMA_VERSION}). "
            "Upgrade diag."
        )
    return Report.from_dict(d, folder=path.parent)

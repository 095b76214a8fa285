"""The typed sections of a report: one frozen dataclass per part of ``report.json``.

Each section keeps the JSON contract of :mod:`diag.report.schema`: :meth:`Section.from_dict` reads the
JSON form (keys a section does not know go to ``extra`` and come back out unchanged, so a report written
by a newer diag survives a round trip), :meth:`Section.to_dict` writes it back with the same keys in the
same order. Fields named in a section's ``OPTIONAL`` are left out of the JSON when None (a skipped
analysis writes only ``{"skipped": why}``); every other field is always written, null included.

A section is also a read-only ``Mapping`` over its JSON form (``report.shift["onset_layer"]``,
``dict(report.layers[0])``), so code written against the dict form keeps working; new code reads the
attributes (``report.shift.onset_layer``). Two sections are equal when their JSON forms are, and a
section equals the dict it was read from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

__all__ = [
    "SECTION_TYPES",
    "ClassConditionalSection",
    "ClassShiftRow",
    "FreezeSection",
    "LabelShiftSection",
    "LayerSection",
    "LayerShiftStats",
    "LayerTransfer",
    "NegativeTransferSection",
    "ReferenceSection",
    "Section",
    "ShiftVerdictSection",
    "TransferabilitySection",
    "section_from_json",
]


_S = TypeVar("_S", bound="Section")


def _to_json(v: Any) -> Any:
    """Sections inside ``v`` (in dicts and lists too) replaced by their JSON form."""
    if isinstance(v, Section):
        return v.to_dict()
    if isinstance(v, dict):
        return {k: _to_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_to_json(x) for x in v]
    return v


class Section(Mapping[str, Any]):
    """Base of the report's sections: JSON in and out, unknown keys kept in ``extra``.

    Subclasses are ``@dataclass(frozen=True, eq=False)`` (equality is the Mapping's: by JSON form) whose
    last field is ``extra``. ``NESTED`` maps a field to the function that types its JSON value.
    """

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    NESTED: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    extra: dict[str, Any]

    @classmethod
    def _names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "extra"]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[_S], d: Mapping[str, Any]) -> _S:
        """The section from its JSON form (or the section itself); absent fields take their default."""
        if isinstance(d, cls):
            return d
        names = cls._names()
        kwargs = {k: cls.NESTED.get(k, _same)(v) for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**kwargs, extra=extra)  # type: ignore[call-arg]  # every subclass is a dataclass

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: known fields in declaration order, then ``extra``."""
        return {k: _to_json(self[k]) for k in self}

    # -- the read-only Mapping over the JSON form --------------------------------------------------------

    def _shown(self, name: str) -> bool:
        return not (name in self.OPTIONAL and getattr(self, name) is None)

    def __getitem__(self, key: str) -> Any:
        if key in self._names():
            if self._shown(key):
                return getattr(self, key)
        elif key in self.extra:
            return self.extra[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        yield from (n for n in self._names() if self._shown(n))
        yield from self.extra

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _same(v: Any) -> Any:
    return v


def _optional(cls: type[Section]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else cls.from_dict(v)


# ------------------------------------------------------------------------------------------------------
# Layers


@dataclass(frozen=True, eq=False)
class LayerShiftStats(Section):
    """The shift statistics at one layer (``layers[i]["shift"]``; see :class:`diag.predict.LayerShift`).

    Statistics that could not be computed (NaN) are stored as null, hence the ``None`` in every type.
    A source-free report (``method == "batchnorm"``, :func:`diag.pipeline.diagnose_source_free`) has
    the data-based statistics null and adds the BatchNorm fields (written only when present): the
    block's mean per-channel Wasserstein-2 distance ``bn_w2`` to the running statistics (Schneider et
    al. 2020), the ``null_median``/``null_p95`` of its null band from splits of the target, the
    ``excess`` over the null median, ``n_bn_layers`` and the per-BatchNorm-layer ``bn_layers`` scores.
    """

    OPTIONAL = frozenset({"bn_w2", "null_median", "null_p95", "excess", "n_bn_layers", "bn_layers"})

    mmd2: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    c2st_auc: float | None = None
    c2st_auc_ci: list[float | None] = field(default_factory=lambda: [None, None])
    c2st_p_value: float | None = None
    proxy_a_distance: float | None = None
    frechet: float | None = None
    frechet_relative: float | None = None
    coral: float | None = None
    ood_median: float | None = None
    ood_p90: float | None = None
    ood_far: float | None = None
    bandwidths: list[float] = field(default_factory=list)
    method: str | None = None
    seconds: float | None = None
    bn_w2: float | None = None
    null_median: float | None = None
    null_p95: float | None = None
    excess: float | None = None
    n_bn_layers: int | None = None
    bn_layers: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class LayerTransfer(Section):
    """Transferability scores of the target at one layer: pretrained and its random-init twin."""

    pretrained: dict[str, Any] = field(default_factory=dict)
    random_init: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def scores(self, side: str) -> dict[str, float]:
        """The numeric scores of ``side`` (``pretrained`` or ``random_init``)."""
        d = self.pretrained if side == "pretrained" else self.random_init
        return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass(frozen=True, eq=False)
class LayerSection(Section):
    """One probe point of the report (``layers[i]``): its identity, shift statistics and, later, transfer."""

    OPTIONAL = frozenset({"transfer"})
    NESTED: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "shift": LayerShiftStats.from_dict,
        "transfer": _optional(LayerTransfer),
    }

    name: str = ""
    index: int = 0
    dim: int | None = None
    kind: str | None = None
    shift: LayerShiftStats = field(default_factory=lambda: LayerShiftStats(extra={}))
    transfer: LayerTransfer | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------
# The verdict and the label analyses


@dataclass(frozen=True, eq=False)
class ShiftVerdictSection(Section):
    """The overall verdict (``shift``; see :class:`diag.predict.ShiftVerdict` for each field's rule).

    ``effect`` and ``peak`` are ``{"name", "layer", "value", "ci": [low, high]}``.
    """

    is_shift: bool = False
    p_value: float | None = None
    alpha: float | None = None
    effect: dict[str, Any] = field(default_factory=dict)
    peak: dict[str, Any] = field(default_factory=dict)
    onset_layer: str | None = None
    first_significant_layer: str | None = None
    level: str | None = None
    significant_layers: list[str] = field(default_factory=list)
    summary: str = ""
    rules: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class LabelShiftSection(Section):
    """Class proportions on both sides (``label_shift``; see :func:`diag.stats.shift.label_shift`)."""

    classes: list[Any] = field(default_factory=list)
    source_counts: list[int] = field(default_factory=list)
    target_counts: list[int] = field(default_factory=list)
    source_proportions: list[float] = field(default_factory=list)
    target_proportions: list[float] = field(default_factory=list)
    total_variation: float | None = None
    chi2: float | None = None
    dof: int | None = None
    p_value: float | None = None
    n_source: int | None = None
    n_target: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class ClassShiftRow(Section):
    """The shift within one class at one layer (see :class:`diag.predict.ClassShift`)."""

    label: str = ""
    n_source: int | None = None
    n_target: int | None = None
    mmd2: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _class_rows(layers: Mapping[str, Any]) -> dict[str, list[ClassShiftRow]]:
    return {name: [ClassShiftRow.from_dict(r) for r in rows] for name, rows in layers.items()}


@dataclass(frozen=True, eq=False)
class ClassConditionalSection(Section):
    """Shift within each class, at the onset and the last layer (``class_conditional``).

    ``skipped`` says why there is none (no class names in common).
    """

    OPTIONAL = frozenset({"skipped", "n_permutations"})
    NESTED: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"layers": _class_rows}

    skipped: str | None = None
    layers: dict[str, list[ClassShiftRow]] = field(default_factory=dict)
    n_permutations: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def rows(self, layer: str) -> list[ClassShiftRow]:
        """The per-class rows of ``layer`` (``[]`` when there are none)."""
        return list(self.layers.get(layer, []))


# ------------------------------------------------------------------------------------------------------
# The predictions (added by the transferability analysis; every field optional)


@dataclass(frozen=True, eq=False)
class TransferabilitySection(Section):
    """Transferability of the backbone to the labelled target (``transferability``).

    ``scores``/``random_init_scores`` are at ``layer`` (the deepest probe); ``layers`` and
    ``random_init_layers`` hold every layer's probe results. ``skipped`` alone says why it is missing.
    """

    OPTIONAL = frozenset(
        {
            "backbone", "layer", "scores", "random_init_scores", "best_layer", "layers",
            "random_init_layers", "random_init", "skipped",
        }
    )  # fmt: skip

    backbone: str | None = None
    layer: str | None = None
    scores: dict[str, Any] | None = None
    random_init_scores: dict[str, Any] | None = None
    best_layer: str | None = None
    layers: dict[str, Any] | None = None
    random_init_layers: dict[str, Any] | None = None
    random_init: dict[str, Any] | None = None
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class NegativeTransferSection(Section):
    """The negative-transfer verdict (``negative_transfer``; see :class:`diag.predict.NegativeTransfer`)."""

    OPTIONAL = frozenset({"risk", "probability", "evidence", "drivers", "signals", "rule"})

    risk: str | None = None
    probability: float | None = None
    evidence: list[str] | None = None
    drivers: list[str] | None = None
    signals: dict[str, Any] | None = None
    rule: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class FreezeSection(Section):
    """The freeze-depth recommendation (``freeze``; see :class:`diag.predict.FreezeRecommendation`)."""

    OPTIONAL = frozenset({"depth", "n_blocks", "frozen", "tune", "lr_scheme", "rationale", "evidence"})

    depth: int | None = None
    n_blocks: int | None = None
    frozen: list[str] | None = None
    tune: list[str] | None = None
    lr_scheme: str | None = None
    rationale: list[str] | None = None
    evidence: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class ReferenceSection(Section):
    """The target against every item of a saved reference, through its summaries (``reference``).

    Written by a check (:func:`diag.pipeline.check`, or any diagnosis with ``source = ref:FOLDER``):
    ``layers`` maps each layer to ``{rff_mmd2, rff_p_value, frechet, bandwidth}`` (the random-Fourier-
    feature MMD test of Rahimi & Recht 2007 features against the reference's mean embedding, and the
    Fréchet distance from its moments); ``reservoir`` of the ``n`` items are the sample the per-layer
    ``shift`` statistics were computed against.
    """

    OPTIONAL = frozenset({"folder", "name", "n", "reservoir", "n_features", "layers", "note"})

    folder: str | None = None
    name: str | None = None
    n: int | None = None
    reservoir: int | None = None
    n_features: int | None = None
    layers: dict[str, dict[str, Any]] | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def layer(self, name: str) -> dict[str, Any]:
        """The comparison at layer ``name`` (``{}`` when the section has none for it)."""
        return dict((self.layers or {}).get(name) or {})


#: The typed top-level sections beyond the core ones, by their key in ``report.json``.
SECTION_TYPES: dict[str, type[Section]] = {
    "transferability": TransferabilitySection,
    "negative_transfer": NegativeTransferSection,
    "freeze": FreezeSection,
    "reference": ReferenceSection,
}


def section_from_json(name: str, value: Any) -> Any:
    """Top-level section ``name`` typed when diag knows it and it is an object; else as it is."""
    cls = SECTION_TYPES.get(name)
    if cls is None or not isinstance(value, Mapping):
        return value
    return cls.from_dict(value)

"""References: building one from data, checking new data against one, and the source-free diagnosis.

- :func:`build_reference`: open the data, load the backbone, summarise chunk by chunk
  (:func:`diag.reference.summarise`), save.
- :func:`check`: new data against a saved reference: the full per-layer profile against the reference's
  reservoir (permutation tests, classifier test, OOD scores, verdict: :func:`diag.pipeline.diagnose` with
  ``source="ref:FOLDER"``), plus the linear-time RFF-MMD test and the Fréchet distance against the
  summaries of every reference item; optionally one JSON line appended to a history file.
- :func:`diagnose_source_free`: the target against the backbone's own BatchNorm statistics.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diag.config import ensure_writable
from diag.data import DataSet, open_data
from diag.device import resolve_device
from diag.engine.extract import ExtractConfig
from diag.errors import ConfigError, param_error
from diag.models import Backbone, load
from diag.pipeline.diagnose import diagnose
from diag.predict.source_free import BlockEvidence, source_free_verdict
from diag.progress import ProgressCallback
from diag.provenance import report_provenance
from diag.reference import (
    DEFAULT_CHUNK,
    REFERENCE_PREFIX,
    Reference,
    ReferenceSettings,
    batchnorm_profile,
    load_reference,
    summarise,
)
from diag.reference.shards import summarise_ray
from diag.report.schema import Report

__all__ = [
    "HISTORY_FIELDS",
    "append_history",
    "build_reference",
    "check",
    "diagnose_source_free",
    "reference_backbone",
]

log = logging.getLogger(__name__)

#: What one line of a check history holds (besides the per-layer effects).
HISTORY_FIELDS = ("time", "data", "n", "reference", "is_shift", "p_value", "onset_layer", "level", "report")


def _backbone(
    backbone: str | Backbone, *, image_size: int | None, max_length: int | None, pretrained: bool = True
) -> Backbone:
    if isinstance(backbone, Backbone):
        return backbone
    return load(backbone, pretrained=pretrained, image_size=image_size, max_length=max_length)


def _checked_inputs(
    out: str | Path | None, data: str | Path | DataSet, data_options: dict[str, str] | None
) -> DataSet:
    """Check ``out`` and open the data before any backbone is loaded or anything is computed."""
    if out is not None:
        ensure_writable(out, name="out")
    return data if isinstance(data, DataSet) else open_data(data, **(data_options or {}))


def build_reference(
    data: str | Path | DataSet,
    backbone: str | Backbone,
    config: ExtractConfig | None = None,
    *,
    out: str | Path | None = None,
    settings: ReferenceSettings | None = None,
    bandwidths: dict[str, float] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    image_size: int | None = None,
    max_length: int | None = None,
    pretrained: bool = True,
    data_options: dict[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> Reference:
    """Summarise ``data`` under ``backbone`` into a reference (streaming), saved to ``out`` when given.

    ``bandwidths`` fixes the RFF kernel widths (give a first shard's ``Reference.bandwidths`` to the
    others so that they merge); see :func:`diag.reference.summarise` for the rest. With
    ``config.engine == "ray"`` the shards are summarised in Ray actors and merged here
    (:func:`diag.reference.shards.summarise_ray`).
    """
    ds = _checked_inputs(out, data, data_options)
    bb = _backbone(backbone, image_size=image_size, max_length=max_length, pretrained=pretrained)
    run = summarise_ray if config is not None and config.engine == "ray" else summarise
    ref = run(bb, ds, config or ExtractConfig(), settings=settings, bandwidths=bandwidths,
              chunk_size=chunk_size, progress=progress)  # fmt: skip
    if out is not None:
        ref.save(out)
    return ref


def reference_backbone(ref: Reference) -> Backbone:
    """The backbone a reference was built with, loaded with the same input size or token length."""
    info, prep = ref.backbone, ref.backbone.get("preprocessing", {})
    size = prep.get("input_size", [None])[-1] if info.get("modality") == "image" else None
    length = prep.get("max_length") if info.get("modality") == "text" else None
    bb = load(
        str(info["name"]),
        pretrained=bool(info.get("pretrained", True)),
        seed=int(info.get("seed") or 0),  # the random-init twin's seed, when the reference was of one
        image_size=size,
        max_length=length,
    )
    ref.require_same_backbone(bb.describe(), what=f"backbone {bb.name!r} as loaded here")
    return bb


def check(
    new: str | Path | DataSet,
    reference: str | Path | Reference,
    config: ExtractConfig | None = None,
    *,
    out: str | Path | None = None,
    history: str | Path | None = None,
    n_permutations: int | None = None,
    alpha: float | None = None,
    seed: int | None = None,
    data_options: dict[str, str] | None = None,
    progress: ProgressCallback | None = None,
    strict: bool = False,
) -> Report:
    """Check new data against a saved reference; the report is a diagnosis with ``source = ref:FOLDER``.

    ``strict`` refuses too few permutations for the reference's layers (see :func:`diagnose`).

    With ``history``, one JSON line (:data:`HISTORY_FIELDS` and the per-layer effect) is appended to
    that file: the monitoring record of this check.
    """
    ref = reference if isinstance(reference, Reference) else load_reference(reference)
    if ref.folder is None:
        raise ConfigError("check needs a saved reference (Reference.save(folder) first).")
    if history is not None:  # before anything is computed
        ensure_writable(history, name="history", kind="file")
    report = diagnose(  # the backbone is loaded once the new data is open and the settings are checked
        f"{REFERENCE_PREFIX}{ref.folder}", new, lambda: reference_backbone(ref), config, out=out,
        strict=strict, n_permutations=n_permutations, alpha=alpha, seed=seed, transfer=False, rgn=False,
        data_options=data_options, progress=progress,
    )  # fmt: skip
    if history is not None:
        append_history(history, report, reference=str(ref.folder))
    return report


def append_history(path: str | Path, report: Report, *, reference: str) -> dict[str, Any]:
    """Append one line describing ``report`` to the JSON-lines file ``path`` (created if missing)."""
    shift = report.shift
    line = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": report.target.get("name"),
        "n": report.n_target,
        "reference": reference,
        "is_shift": bool(shift["is_shift"]),
        "p_value": shift["p_value"],
        "onset_layer": shift["onset_layer"],
        "level": shift["level"],
        "report": None if report.folder is None else str(report.folder),
        "layers": {
            layer["name"]: {
                "c2st_auc": layer["shift"].get("c2st_auc"),
                "mmd2": layer["shift"].get("mmd2"),
                "p_adjusted": layer["shift"].get("p_adjusted"),
                "rff_mmd2": report.sections.get("reference", {})
                .get("layers", {})
                .get(layer["name"], {})
                .get("rff_mmd2"),
            }
            for layer in report.layers
        },
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # One write of one line in append mode: concurrent checks interleave whole lines, never parts.
    with open(target, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return line


def diagnose_source_free(
    target: str | Path | DataSet,
    backbone: str | Backbone,
    config: ExtractConfig | None = None,
    *,
    out: str | Path | None = None,
    alpha: float = 0.05,
    seed: int = 0,
    n_buckets: int = 16,
    n_splits: int = 1000,
    image_size: int | None = None,
    pretrained: bool = True,
    data_options: dict[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> Report:
    """Per-block shift of ``target`` from the pretraining data, read off the backbone's BatchNorm
    statistics (:func:`diag.reference.batchnorm_profile`), in the report format of :func:`diagnose`.

    The BatchNorm statistics are gathered by hooks in this process: ``engine="ray"`` is not supported
    here; it logs a warning, runs locally and the report records ``engine: local``.
    """
    t0 = time.perf_counter()
    cfg = config or ExtractConfig()
    if cfg.engine != "local":
        log.warning(
            "--engine %s: the source-free diagnosis runs in this process (its BatchNorm statistics are "
            "gathered by forward hooks, which the Ray path does not run); using --engine local",
            cfg.engine,
        )
        cfg = replace(cfg, engine="local")
    if not 0 < alpha < 1:
        raise param_error("alpha", "must be in (0, 1)", alpha)
    ds = _checked_inputs(out, target, data_options)
    bb = _backbone(backbone, image_size=image_size, max_length=None, pretrained=pretrained)
    profile = batchnorm_profile(
        bb, ds, cfg, n_buckets=n_buckets, n_splits=n_splits, seed=seed, progress=progress
    )
    evidence = [BlockEvidence(b.name, b.score, b.null_median, b.null_p95, b.p_value) for b in profile.blocks]
    verdict, adjusted = source_free_verdict(evidence, alpha=alpha, modality=bb.modality)
    dims = {p.name: p for p in bb.probes}
    layers = []
    for block, p_adj in zip(profile.blocks, adjusted, strict=True):
        probe = dims.get(block.name)
        layers.append(
            {
                "name": block.name,
                "index": block.index,
                "dim": None if probe is None else probe.dim,
                "kind": None if probe is None else probe.kind,
                "shift": {
                    "p_value": block.p_value,
                    "p_adjusted": p_adj,
                    "method": "batchnorm",
                    **block.to_dict(),
                },
            }
        )
    dev = resolve_device(cfg.device)
    info = bb.describe()
    report = Report(
        backbone={k: v for k, v in info.items() if k != "probes"},
        source={
            "name": "pretraining data (BatchNorm running statistics)",
            "kind": "source-free",
            "n_bn_layers": sum(b.n_bn_layers for b in profile.blocks),
        },
        target={"spec": str(target) if isinstance(target, (str, Path)) else None, **ds.describe()},
        n_source=0,
        n_target=profile.n_items,
        layers=layers,
        shift=verdict.to_dict(),
        meta={
            **report_provenance(dev, seed=seed),
            "timings": {
                "batchnorm_s": round(profile.seconds, 3),
                "total_s": round(time.perf_counter() - t0, 3),
            },
            "config": {
                "extract": asdict(cfg),
                "source_free": {"n_buckets": n_buckets, "n_splits": n_splits, "alpha": alpha},
            },
        },
    )
    if out is not None:
        report = report.save(out)
    return report

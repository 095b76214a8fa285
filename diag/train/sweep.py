"""The freeze-depth sweep: fine-tune at several freeze depths and from scratch, over seeds.

This is the ground truth of DESIGN.md's two questions "how many blocks should I freeze?" and "will
transfer help or hurt?": every depth and the from-scratch baseline get the same budget and the same
seeds, and ``negative_transfer_gap`` = (best pretrained mean) − (from-scratch mean) is negative when
transfer hurts (Wang et al., CVPR 2019).

Each run lives in its own folder ``OUT/runs/freeze-K-seed-S`` (``scratch-seed-S`` for the baseline) and
``OUT/sweep.json`` is rewritten after every run, so a dashboard can poll it and an interrupted sweep,
run again with the same arguments, skips the finished runs and resumes the unfinished one from its
checkpoint. A ``STOP`` file in ``OUT`` stops the sweep cleanly after the current step.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from diag.data.dataset import DataSet
from diag.errors import ConfigError
from diag.models import Backbone
from diag.progress import ProgressCallback
from diag.provenance import versions
from diag.train.blocks import resolve_freeze, units_of_model
from diag.train.callbacks import STOP_FILE, StopFile, TrainCallback
from diag.train.config import FinetuneConfig
from diag.train.data import prepare_data
from diag.train.model import build_model
from diag.train.result import ResultFile, describe_backbone
from diag.train.run import (
    TrainJob,
    check_run_folder,
    comparable_config,
    load_job_backbone,
    resolved_configs,
    run_job,
)

__all__ = ["SWEEP_SCHEMA", "DepthSummary", "SweepResult", "default_depths", "sweep"]

log = logging.getLogger(__name__)

SWEEP_SCHEMA = "diag.sweep/1"
# Fields the sweep sets per run; the rest of the config is the shared budget.
_PER_RUN = ("freeze", "seed", "from_scratch")


def default_depths(n_blocks: int) -> list[int]:
    """Full fine-tuning, two middle depths and the linear probe: ``{0, n/3, 2n/3, n}`` rounded.

    EfficientNet-Lite (9 blocks): 0, 3, 6, 9 (6 = ``stem`` + ``blocks.0`` ... ``blocks.4``).
    MiniLM (7 blocks): 0, 2, 5, 7.
    """
    return sorted({0, round(n_blocks / 3), round(2 * n_blocks / 3), n_blocks})


@dataclass(frozen=True)
class DepthSummary:
    """Best validation accuracy of one freeze depth (or of the from-scratch baseline) over seeds.

    Attributes
    ----------
    label : str
        ``freeze-K`` or ``scratch``.
    freeze : int
        K, blocks frozen (0 for the from-scratch baseline).
    frozen_through : str or None
        The last frozen block (None when nothing is frozen); ``freeze up to`` this probe point.
    from_scratch : bool
    seeds : list of int
    values : list of float or None
        Each seed's best validation accuracy (None: run not finished).
    mean, std, min, max : float or None
        Over the finished seeds; ``std`` is the sample standard deviation (0 with one seed).
    runs : list of str
        Run folders, relative to the sweep folder.
    """

    label: str
    freeze: int
    frozen_through: str | None
    from_scratch: bool
    seeds: list[int]
    values: list[float | None]
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    runs: list[str]


@dataclass(frozen=True)
class SweepResult(ResultFile):
    """The sweep's summary; ``OUT/sweep.json``.

    Attributes
    ----------
    status : str
        ``running``, ``completed`` or ``stopped``.
    depths : list of DepthSummary (as dicts)
        One per pretrained freeze depth, in increasing K.
    scratch : DepthSummary (as dict) or None
        The from-scratch baseline (same architecture, budget and seeds), when run.
    best_freeze, best_frozen_through, best_mean
        The depth with the highest mean (ties: the deeper freeze, fewer parameters to train).
    negative_transfer_gap : float or None
        ``best_mean`` − scratch mean; negative means the pretrained weights hurt.
    n_runs, n_finished : int
        Runs planned and finished (a stopped sweep has ``n_finished < n_runs``).
    wall_time_s, runs_wall_time_s : float
        This invocation's wall time, and the sum of every run's own wall time (earlier sessions of a
        resumed sweep included).
    """

    status: str
    backbone: dict[str, Any]
    target: dict[str, Any]
    val: dict[str, Any]
    n_blocks: int
    blocks: list[str]
    seeds: list[int]
    depths: list[dict[str, Any]]
    scratch: dict[str, Any] | None
    best_freeze: int | None
    best_frozen_through: str | None
    best_mean: float | None
    scratch_mean: float | None
    scratch_std: float | None
    negative_transfer_gap: float | None
    negative_transfer: bool | None
    config: dict[str, Any]
    n_runs: int
    n_finished: int
    wall_time_s: float
    runs_wall_time_s: float
    versions: dict[str, str]
    out: str
    schema: str = SWEEP_SCHEMA

    # kept by ResultFile as OUT/sweep.json
    FILE: ClassVar[str] = "sweep.json"
    SCHEMA_ID: ClassVar[str] = SWEEP_SCHEMA
    KIND: ClassVar[tuple[str, str, str]] = ("sweep", "sweep result", "the sweep")


def _summary(
    label: str, k: int, through: str | None, scratch: bool, seeds: Sequence[int], runs: dict[int, Any]
) -> DepthSummary:
    values: list[float | None] = [runs[s][1] for s in seeds]
    done = [v for v in values if v is not None]
    return DepthSummary(
        label=label,
        freeze=k,
        frozen_through=through,
        from_scratch=scratch,
        seeds=list(seeds),
        values=values,
        mean=statistics.fmean(done) if done else None,
        std=(statistics.stdev(done) if len(done) > 1 else 0.0) if done else None,
        min=min(done) if done else None,
        max=max(done) if done else None,
        runs=[runs[s][0] for s in seeds],
    )


def sweep(
    target: str | Path | DataSet,
    backbone: str | Backbone,
    config: FinetuneConfig | None = None,
    *,
    out: str | Path,
    depths: Sequence[int | str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    scratch: bool = True,
    val: str | Path | DataSet | None = None,
    callbacks: Sequence[TrainCallback] = (),
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
) -> SweepResult:
    """Fine-tune at each freeze depth and from scratch, with the same budget and seeds.

    Parameters
    ----------
    target, backbone, val
        As for :func:`diag.train.run.finetune`. The data are decoded once for every run.
    config : FinetuneConfig, optional
        The shared budget and recipe; its ``freeze``, ``seed`` and ``from_scratch`` are set per run.
    out : str or Path
        The sweep folder: ``sweep.json`` and ``runs/<run>/``.
    depths : sequence of int or str, optional
        Freeze depths (K, block names, ``all``/``linear``); default :func:`default_depths`.
    seeds : sequence of int, default (0, 1, 2)
    scratch : bool, default True
        Also train the same architecture from random init (the negative-transfer baseline).
    callbacks : sequence of TrainCallback
        Passed to every run (``state.out`` says which).
    progress : ProgressCallback, optional
        Advanced once per finished run.
    overwrite : bool, default False
        Start every run over instead of reusing finished ones.

    Returns
    -------
    SweepResult
        Also written to ``out/sweep.json``.
    """
    t0 = time.perf_counter()
    base = replace(config or FinetuneConfig(), freeze=0, seed=0, from_scratch=False)
    seeds = list(seeds)
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers >= 0; got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must not repeat; got {seeds!r}.")
    outp = Path(out)
    if outp.exists() and not outp.is_dir():
        raise ConfigError(f"out {outp} is a file; pass a folder for the sweep.")
    _check_previous(outp, base, overwrite=overwrite)
    outp.mkdir(parents=True, exist_ok=True)
    stop_path = outp / STOP_FILE
    stop_path.unlink(missing_ok=True)  # a stale request from an earlier session

    job = TrainJob.open(target, backbone, val)
    name = job.backbone_name
    bb = load_job_backbone(job, base)
    base = base.for_modality(bb.modality)  # the learning rates every run uses, recorded in sweep.json
    units = units_of_model(build_model(bb, 2).body, bb)
    block_names = [u.name for u in units]
    ks = sorted({resolve_freeze(d, units) for d in depths}) if depths else default_depths(len(units))
    job.prepared = prepare_data(bb, job.target, job.val, base)

    plan: list[tuple[str, int, bool, int]] = []  # (label, K, from_scratch, seed)
    for s in seeds:
        plan += [(f"freeze-{k}", k, False, s) for k in ks]
        if scratch:
            plan.append(("scratch", 0, True, s))
    results: dict[tuple[str, int], tuple[str, float | None, float]] = {}
    for label, _, _, s in plan:
        results[(label, s)] = (f"runs/{label}-seed-{s}", None, 0.0)

    def summary(status: str) -> SweepResult:
        return _sweep_result(
            status, bb, job, block_names, ks, seeds, scratch, results, base, t0, versions(), outp
        )

    progress = progress or ProgressCallback()
    all_callbacks = [*callbacks, StopFile(stop_path)]
    status = "completed"
    summary("running").save(outp)
    progress.on_start(len(plan), f"sweep {job.target.name} [{name}]")
    try:
        for label, k, from_scratch, s in plan:
            rel = results[(label, s)][0]
            run_dir = outp / rel
            cfg = replace(base, freeze=k, seed=s, from_scratch=from_scratch)
            res = check_run_folder(run_dir, cfg, resume=not overwrite, overwrite=overwrite)
            if res is None:
                log.info("sweep: run %s", rel)
                res = run_job(job, cfg, run_dir, callbacks=all_callbacks, resume=not overwrite)
            else:
                log.info("sweep: %s already completed (best val acc %.4f)", rel, res.best_val_accuracy or 0.0)
            if res.status != "completed":
                status = "stopped"
                log.info("sweep: stopped during %s; run it again to resume", rel)
                break
            results[(label, s)] = (rel, res.best_val_accuracy, res.wall_time_s)
            summary("running").save(outp)
            progress.on_advance(1)
    finally:
        progress.on_end()
    final = summary(status)
    final.save(outp)
    stop_path.unlink(missing_ok=True)
    return final


def _check_previous(out: Path, base: FinetuneConfig, *, overwrite: bool) -> None:
    path = out / "sweep.json"
    if overwrite or not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if not isinstance(saved, dict):
        return
    cur, prev = resolved_configs(base, saved.get("config") or {}, saved.get("backbone"))
    cur = comparable_config(cur)
    diff = sorted(k for k, v in cur.items() if k not in _PER_RUN and comparable_config(prev).get(k, v) != v)
    if diff:
        raise ConfigError(
            f"out {out} holds a sweep with another budget ({', '.join(diff)}: was "
            f"{ {k: prev.get(k) for k in diff} }). Pass the same settings to resume it, --overwrite to redo "
            "every run, or another --out."
        )


def _sweep_result(
    status: str,
    bb: Backbone,
    job: TrainJob,
    blocks: list[str],
    ks: list[int],
    seeds: list[int],
    scratch: bool,
    results: dict[tuple[str, int], tuple[str, float | None, float]],
    base: FinetuneConfig,
    t0: float,
    vers: dict[str, str],
    out: Path,
) -> SweepResult:
    def runs_of(label: str) -> dict[int, Any]:
        return {s: results[(label, s)] for s in seeds}

    depths = [
        _summary(f"freeze-{k}", k, blocks[k - 1] if k else None, False, seeds, runs_of(f"freeze-{k}"))
        for k in ks
    ]
    scr = _summary("scratch", 0, None, True, seeds, runs_of("scratch")) if scratch else None
    scored = [d for d in depths if d.mean is not None]
    best = max(scored, key=lambda d: (d.mean, d.freeze)) if scored else None
    gap = None
    if best is not None and best.mean is not None and scr is not None and scr.mean is not None:
        gap = best.mean - scr.mean
    assert job.prepared is not None
    prep = job.prepared
    cfg = {k: v for k, v in base.to_dict().items() if k not in _PER_RUN}
    return SweepResult(
        status=status,
        backbone=describe_backbone(bb),
        target=prep.target.describe(),
        val=prep.val_desc,
        n_blocks=len(blocks),
        blocks=blocks,
        seeds=seeds,
        depths=[asdict(d) for d in depths],
        scratch=None if scr is None else asdict(scr),
        best_freeze=None if best is None else best.freeze,
        best_frozen_through=None if best is None else best.frozen_through,
        best_mean=None if best is None else best.mean,
        scratch_mean=None if scr is None else scr.mean,
        scratch_std=None if scr is None else scr.std,
        negative_transfer_gap=gap,
        negative_transfer=None if gap is None else gap < 0,
        config=cfg,
        n_runs=len(results),
        n_finished=sum(1 for _, v, _ in results.values() if v is not None),
        wall_time_s=round(time.perf_counter() - t0, 3),
        runs_wall_time_s=round(sum(w for _, _, w in results.values()), 3),
        versions=vers,
        out=str(out),
    )

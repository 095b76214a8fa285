"""One fine-tuning run into a folder: :func:`finetune`, its checkpoints and resumption, and
:func:`load_finetuned`.

Runs users can trust
--------------------
The target set is decoded once into memory and batches are cut from it (:mod:`diag.train.data`). The
data order, augmentation and dropout are seeded per epoch, so the same seed gives the same numbers on
CPU, and a run resumed from its last checkpoint (``resume=True``) ends exactly where the uninterrupted
run ends. ``OUT`` holds ``metrics.jsonl`` (a line per logged step and per epoch), ``result.json``
(written at the start with status ``running``, then ``completed``, ``stopped``, ``interrupted`` or
``failed``), ``last.pt`` (the checkpoint, written atomically after every epoch) and ``best.pt`` (the
weights at the best epoch). A file named ``STOP`` in ``OUT``, or a callback asking to stop, ends the run
cleanly after the current step; resuming restarts from the last completed epoch.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diag.data import DataSet, open_data
from diag.device import resolve_device, resolve_precision
from diag.errors import ConfigError, DataError, DiagError, param_error
from diag.fileio import atomic_write_bytes
from diag.models import Backbone, load
from diag.models.weights import load_weights_only
from diag.provenance import device_description, versions
from diag.train.blocks import resolve_freeze, units_of_model
from diag.train.callbacks import STOP_FILE, EarlyStopping, MetricsLog, StopFile, TrainCallback, TrainState
from diag.train.config import DEFAULT_LR, FinetuneConfig
from diag.train.data import PreparedData, prepare_data
from diag.train.model import FinetuneModel, build_model
from diag.train.result import FinetuneResult, describe_backbone
from diag.train.trainer import Trainer, mix_seed

__all__ = [
    "TrainJob",
    "check_run_folder",
    "comparable_config",
    "finetune",
    "load_finetuned",
    "load_job_backbone",
    "run_job",
]

log = logging.getLogger(__name__)

_CKPT_FORMAT = 1
_RUN_FILES = ("result.json", "metrics.jsonl", "last.pt", "best.pt", STOP_FILE)
# Fields that may differ between a run and its resumption: they change where and how fast it runs,
# not what it computes.
_RESUMABLE_FIELDS = frozenset({"device", "num_workers", "log_every", "keep_checkpoint", "save_best"})


def _atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


#: The keys a resumable ``last.pt`` holds (``best.pt`` holds format, model and the run's description).
_RESUME_KEYS = ("format", "model", "optimizer", "scheduler", "rng", "epoch", "step", "state", "history")


def _load_checkpoint(path: Path, *, keys: Sequence[str] = ("format", "model")) -> dict[str, Any]:
    """A diag checkpoint from ``path``, read with ``weights_only=True``; refused with a one-line message
    naming the file when it is unsafe, unreadable, not a dict or lacks one of ``keys``."""
    redo = "Delete it to start the run over (or pass --overwrite), or use another --out."
    try:
        ckpt: Any = load_weights_only(path)
    except ValueError as exc:
        raise DataError(f"{exc} {redo}") from None
    if not isinstance(ckpt, dict):
        raise DataError(
            f"{path}: is not a diag checkpoint (it holds a {type(ckpt).__name__}, not the dict that "
            f"diag finetune writes). {redo}"
        )
    if ckpt.get("format") != _CKPT_FORMAT:
        raise DataError(
            f"{path}: checkpoint format {ckpt.get('format')!r} is not {_CKPT_FORMAT} (not written by this "
            f"version of diag finetune). {redo}"
        )
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise DataError(
            f"{path}: the checkpoint lacks {', '.join(missing)} (incomplete or not diag's). {redo}"
        )
    return ckpt


@dataclass
class TrainJob:
    """What a run needs besides its config: shared by the runs of a sweep."""

    target: DataSet
    val: DataSet | None
    backbone: Backbone | None  # pretrained template (deep-copied per run), None: load by name
    backbone_name: str
    prepared: PreparedData | None = None

    @classmethod
    def open(
        cls, target: str | Path | DataSet, backbone: str | Backbone, val: str | Path | DataSet | None
    ) -> TrainJob:
        """Open the data (:func:`diag.data.open_data`); a backbone given by name is loaded later, once."""
        return cls(
            target=open_data(target),
            val=None if val is None else open_data(val),
            backbone=None if isinstance(backbone, str) else backbone,
            backbone_name=backbone if isinstance(backbone, str) else backbone.name,
        )


def comparable_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the fields a resumed run may change (device, workers, logging, files)."""
    return {k: v for k, v in cfg.items() if k not in _RESUMABLE_FIELDS}


def resolved_configs(
    cfg: FinetuneConfig, prev_config: dict[str, Any], backbone: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``cfg`` and a previous run's (or sweep's) config dict with the default learning rates of the previous
    backbone's modality filled in (:meth:`FinetuneConfig.for_modality`): a default rate is the same run as
    the rate it stands for. ``backbone``: the previous result's ``backbone`` entry."""
    modality = backbone.get("modality") if isinstance(backbone, dict) else None
    if modality not in DEFAULT_LR:
        return cfg.to_dict(), dict(prev_config)
    try:
        old = FinetuneConfig.from_dict(dict(prev_config)).for_modality(modality).to_dict()
    except ConfigError:
        old = dict(prev_config)
    return cfg.for_modality(modality).to_dict(), old


def check_run_folder(
    out: Path, cfg: FinetuneConfig, *, resume: bool, overwrite: bool
) -> FinetuneResult | None:
    """Decide what to do with an existing run folder. Returns the finished result to reuse, if any."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {out} is a file; pass a folder for the run.")
    present = [f for f in _RUN_FILES if (out / f).exists()]
    if not present:
        return None
    if overwrite:
        for f in present:
            (out / f).unlink()
        log.info("removed the previous run in %s (%s)", out, ", ".join(present))
        return None
    status = "unknown"
    prev: FinetuneResult | None = None
    if (out / "result.json").exists():
        with contextlib.suppress(DiagError):
            prev = FinetuneResult.load(out)
            status = prev.status
    if not resume:
        raise ConfigError(
            f"out {out} already holds a run (status {status}). Pass --resume to continue it (a completed run "
            "is reused), --overwrite to start over, or another --out."
        )
    if prev is not None:
        new, old_cfg = resolved_configs(cfg, prev.config, prev.backbone)
        diff = sorted(
            k for k, v in comparable_config(new).items() if comparable_config(old_cfg).get(k, v) != v
        )
        if diff:
            old = {k: old_cfg.get(k) for k in diff}
            raise ConfigError(
                f"out {out} holds a run with another configuration ({', '.join(diff)}: was {old}); a resumed "
                "run must use the same settings. Pass the same ones, --overwrite, or another --out."
            )
        if prev.status == "completed":
            return prev
    return None


def finetune(
    target: str | Path | DataSet,
    backbone: str | Backbone,
    config: FinetuneConfig | None = None,
    *,
    out: str | Path,
    val: str | Path | DataSet | None = None,
    callbacks: Sequence[TrainCallback] = (),
    resume: bool = False,
    overwrite: bool = False,
) -> FinetuneResult:
    """Fine-tune ``backbone`` with a fresh linear head on the labelled ``target`` set.

    Parameters
    ----------
    target : str, Path or DataSet
        Labelled training data (``samples:uci-digits``, an image folder, a table, ...). Without ``val``, a
        stratified ``config.val_fraction`` of it is held out for validation.
    backbone : str or Backbone
        A name for :func:`diag.load_backbone`, or a loaded backbone (never modified: its model is copied).
    config : FinetuneConfig, optional
        The recipe; ``config.freeze`` picks the frozen blocks (see the module docstring).
    out : str or Path
        The run's folder (created): ``metrics.jsonl``, ``result.json``, ``last.pt``, ``best.pt``.
    val : str, Path or DataSet, optional
        Separate labelled validation data; its classes must be among the target's.
    callbacks : sequence of TrainCallback
        Progress and stop hooks.
    resume : bool, default False
        Continue the run in ``out`` from its last checkpoint (the same config is required); a completed
        run is returned as it is, without training.
    overwrite : bool, default False
        Delete a previous run's files in ``out`` and start over.

    Returns
    -------
    FinetuneResult
        Also written to ``out/result.json``; ``status`` says whether the run completed or was stopped.

    Raises
    ------
    ConfigError
        Bad config, freeze depth beyond the backbone's blocks, or a run folder that holds another run.
    DataError
        Unlabelled data, a single class, validation classes the target lacks, unreadable images.
    """
    cfg = config or FinetuneConfig()
    outp = Path(out)
    done = check_run_folder(outp, cfg, resume=resume, overwrite=overwrite)
    if done is not None:
        log.info("%s: already completed; reusing its result", outp)
        return done
    return run_job(TrainJob.open(target, backbone, val), cfg, outp, callbacks=callbacks, resume=resume)


def load_job_backbone(job: TrainJob, cfg: FinetuneConfig) -> Backbone:
    """The backbone a run of ``job`` starts from: the pretrained template (loaded once and kept in
    ``job``), or a fresh random init seeded by ``cfg.seed`` for ``from_scratch``."""
    if cfg.from_scratch:
        return load(job.backbone_name, pretrained=False, seed=cfg.seed, image_size=cfg.image_size,
                    max_length=cfg.max_length)  # fmt: skip
    if job.backbone is None:
        job.backbone = load(job.backbone_name, image_size=cfg.image_size, max_length=cfg.max_length)
    return job.backbone


@contextlib.contextmanager
def _determinism(on: bool) -> Iterator[None]:
    prev, prev_warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if on:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def run_job(
    job: TrainJob, cfg: FinetuneConfig, out: Path, *, callbacks: Sequence[TrainCallback], resume: bool
) -> FinetuneResult:
    """Train one run of ``job`` with ``cfg`` into ``out`` (what :func:`finetune` and each run of
    :func:`diag.train.sweep.sweep` do once the folder is checked by :func:`check_run_folder`).

    The loop talks only to callbacks: the built-in :class:`MetricsLog`, :class:`StopFile` and
    :class:`EarlyStopping` first, then ``callbacks``.
    """
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if precision not in ("fp32", "bf16"):
        raise param_error("precision", "must be fp32 or bf16 for training", precision)
    bb = load_job_backbone(job, cfg)
    cfg = cfg.for_modality(bb.modality)  # the learning rates this run uses, recorded in result.json
    if job.prepared is None:
        job.prepared = prepare_data(bb, job.target, job.val, cfg)
    prep = job.prepared
    model = build_model(bb, len(prep.classes))
    units = units_of_model(model.body, bb)
    k = resolve_freeze(cfg.freeze, units)
    if cfg.lp_ft and k == len(units):
        raise ConfigError(
            f"lp_ft={cfg.lp_ft} with freeze={cfg.freeze!r}: a linear probe has nothing to unfreeze."
        )
    if cfg.from_scratch and k > 0:
        log.warning("from_scratch with %d frozen blocks: those blocks stay at their random init", k)
    deterministic = cfg.deterministic if cfg.deterministic is not None else device.type == "cpu"
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    out.mkdir(parents=True, exist_ok=True)
    # The metrics line is on disk before any other callback sees its record; a STOP file is honoured
    # before a callback's request (the log names the first that asked).
    cbs: list[TrainCallback] = [
        MetricsLog(out / "metrics.jsonl", resume=resume),
        StopFile(out / STOP_FILE, owned=True),
        EarlyStopping(cfg.patience),
        *callbacks,
    ]

    with torch.random.fork_rng(devices=fork_devices), _determinism(deterministic):
        torch.manual_seed(mix_seed(cfg.seed, 1 << 20))
        trainer = Trainer(
            model, units, k, prep.train, prep.val, cfg, device, precision,
            bb.input_normalization, bb.pad_token_id,
        )  # fmt: skip
        state = TrainState(
            out=str(out), epochs=cfg.epochs, steps_per_epoch=trainer.steps_per_epoch,
            total_steps=trainer.total_steps,
        )  # fmt: skip
        history: list[dict[str, Any]] = []
        start_epoch = 0
        prev_wall = 0.0  # seconds spent by earlier sessions of a resumed run
        ckpt_path = out / "last.pt"
        if resume and ckpt_path.exists():
            ckpt = _load_checkpoint(ckpt_path, keys=_RESUME_KEYS)
            trainer.load_state_dict(ckpt)
            start_epoch = int(ckpt["epoch"])
            state.step = int(ckpt["step"])
            for key in ("best_val_accuracy", "best_epoch", "epochs_since_best"):
                setattr(state, key, ckpt["state"][key])
            history = json.loads(ckpt["history"])
            prev_wall = float(ckpt["state"]["wall_s"])
            state.resumed_from_epoch = start_epoch
            log.info("%s: resuming after epoch %d", out, start_epoch)

        def elapsed() -> float:
            return prev_wall + time.perf_counter() - t_start

        frozen = [u.name for u in units[:k]]
        base: dict[str, Any] = {
            "backbone": describe_backbone(bb),
            "target": prep.target.describe(),
            "val": prep.val_desc,
            "classes": list(prep.classes),
            "n_train": prep.train.n,
            "n_val": prep.val.n,
            "freeze": k,
            "n_blocks": len(units),
            "blocks": [u.name for u in units],
            "frozen_blocks": frozen,
            "trainable_params": trainer.trainable_params,
            "total_params": sum(p.numel() for p in model.parameters()),
            "device": device_description(device),
            "precision": precision,
            "decode_s": round(prep.decode_s, 3),
            "config": cfg.to_dict(),
            "versions": versions(),
            "out": str(out),
        }

        def result(status: str, stopped_early: bool = False, error: str | None = None) -> FinetuneResult:
            last = history[-1] if history else {}
            speeds = sorted(h["items_per_s"] for h in history)
            return FinetuneResult(
                status=status,
                **base,
                best_val_accuracy=state.best_val_accuracy,
                best_epoch=state.best_epoch,
                final_val_accuracy=last.get("val_acc"),
                final_train_accuracy=last.get("train_acc"),
                final_train_loss=last.get("train_loss"),
                epochs_completed=len(history),
                steps=state.step,
                stopped_early=stopped_early,
                wall_time_s=round(elapsed(), 3),
                train_items_per_s=speeds[len(speeds) // 2] if speeds else None,
                feature_cache=trainer.feature_cache,
                history=history,
                error=error,
            )

        result("running").save(out)
        log.info(
            "%s: fine-tuning %s on %s: %d train / %d val, %d of %d blocks frozen (%s), %d trainable params",
            out, bb.name, prep.target.name, prep.train.n, prep.val.n, k, len(units),
            ", ".join(frozen) or "none", trainer.trainable_params,
        )  # fmt: skip
        for cb in cbs:
            cb.on_train_start(state)

        def ask_stop(asked: Sequence[bool]) -> None:
            if state.stop_reason is None and any(asked):
                state.stop_reason = next(cb.stop_reason for cb, a in zip(cbs, asked, strict=True) if a)

        def stop_requested() -> bool:
            if state.stop_reason is None:
                asking = next((cb for cb in cbs if cb.should_stop()), None)
                if asking is not None:
                    state.stop_reason = asking.stop_reason
            return state.stop_reason is not None

        def on_step(i: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, t0: float) -> None:
            state.step += 1
            record: dict[str, Any] = {"kind": "step", "epoch": state.epoch, "step": state.step}
            if state.step % cfg.log_every == 0 or i + 1 == trainer.steps_per_epoch:
                dt = time.perf_counter() - t0  # the values below synchronise with the device: not every step
                record.update(
                    loss=round(float(loss_sum) / seen, 6), train_acc=round(int(correct) / seen, 6),
                    **{k: round(v, 8) for k, v in trainer.lrs().items()},
                    items_per_s=round(seen / max(dt, 1e-9), 2), elapsed_s=round(elapsed(), 3),
                )  # fmt: skip
            ask_stop([bool(cb.on_step_end(state, record)) for cb in cbs])

        status = "completed"
        res: FinetuneResult | None = None
        try:
            for epoch in range(start_epoch, cfg.epochs):
                state.epoch = epoch + 1
                state.phase = trainer.phase(epoch)
                for cb in cbs:
                    cb.on_epoch_start(state)

                stats, stopped = trainer.train_epoch(epoch, on_step=on_step, stop=stop_requested)
                if stopped:
                    status = "stopped"
                    log.info("%s: stopped by %s during epoch %d", out, state.stop_reason, epoch + 1)
                    break
                val_loss, val_acc = trainer.evaluate()
                improved = state.best_val_accuracy is None or val_acc > state.best_val_accuracy
                if improved:
                    state.best_val_accuracy, state.best_epoch, state.epochs_since_best = val_acc, epoch + 1, 0
                else:
                    state.epochs_since_best += 1
                record = {
                    "kind": "epoch", "epoch": epoch + 1, "step": state.step, "phase": state.phase,
                    "train_loss": round(stats["train_loss"], 6), "train_acc": round(stats["train_acc"], 6),
                    "val_loss": round(val_loss, 6), "val_acc": round(val_acc, 6),
                    **{k: round(v, 8) for k, v in trainer.lrs().items()},
                    "items_per_s": round(stats["items_per_s"], 2), "train_s": round(stats["train_s"], 3),
                    "elapsed_s": round(elapsed(), 3),
                    "best_val_acc": state.best_val_accuracy, "best_epoch": state.best_epoch,
                }  # fmt: skip
                history.append(record)
                if improved and cfg.save_best:
                    _atomic_torch_save(
                        {"format": _CKPT_FORMAT, "model": trainer.model_state(), "epoch": epoch + 1,
                         "val_accuracy": val_acc, "classes": list(prep.classes), "backbone": bb.name,
                         "config": json.dumps(cfg.to_dict())},
                        out / "best.pt",
                    )  # fmt: skip
                _atomic_torch_save(
                    {"format": _CKPT_FORMAT, "epoch": epoch + 1, "step": state.step, **trainer.state_dict(),
                     "state": {"best_val_accuracy": state.best_val_accuracy, "best_epoch": state.best_epoch,
                               "epochs_since_best": state.epochs_since_best, "wall_s": elapsed()},
                     "history": json.dumps(history), "config": json.dumps(cfg.to_dict())},
                    ckpt_path,
                )  # fmt: skip
                log.info(
                    "epoch %d/%d: train loss %.4f acc %.3f, val acc %.3f (best %.3f @ %d), %.1f items/s",
                    epoch + 1, cfg.epochs, stats["train_loss"], stats["train_acc"], val_acc,
                    state.best_val_accuracy, state.best_epoch, stats["items_per_s"],
                )  # fmt: skip
                ask_stop([bool(cb.on_epoch_end(state, record)) for cb in cbs])
                if state.stopped_early:
                    log.info("%s: early stop, no better validation accuracy for %d epochs", out, cfg.patience)
                    break
                if stop_requested() and epoch + 1 < cfg.epochs:
                    status = "stopped"
                    log.info("%s: stopped by %s after epoch %d", out, state.stop_reason, epoch + 1)
                    break
            res = result(status, stopped_early=state.stopped_early)
        except KeyboardInterrupt:
            res = result("interrupted")
            raise
        except Exception as exc:
            res = result("failed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if res is not None:
                res.save(out)
                if res.status == "completed" and not cfg.keep_checkpoint:
                    ckpt_path.unlink(missing_ok=True)  # only resumption needs it; best.pt keeps the weights
                for cb in cbs:
                    cb.on_train_end(state, res)
    return res


def load_finetuned(out: str | Path, *, which: str = "best") -> tuple[FinetuneModel, FinetuneResult]:
    """Rebuild a fine-tuned model from its run folder, for prediction.

    Parameters
    ----------
    out : str or Path
        The run folder.
    which : {"best", "last"}
        ``best.pt`` (the best epoch) or ``last.pt`` (the last checkpoint; kept only with
        ``keep_checkpoint`` or for unfinished runs).

    Returns
    -------
    model : FinetuneModel
        In eval mode, on the CPU; ``model(x)`` gives logits over ``result.classes``.
    result : FinetuneResult
    """
    if which not in ("best", "last"):
        raise param_error("which", "must be 'best' or 'last'", which)
    outp = Path(out)
    res = FinetuneResult.load(outp)
    path = outp / f"{which}.pt"
    if not path.exists():
        raise DataError(
            f"{path}: missing. It is written only with save_best (best) or keep_checkpoint (last)."
        )
    ckpt = _load_checkpoint(path)
    cfg = FinetuneConfig.from_dict(res.config)
    bb = load(res.backbone["name"], pretrained=False, image_size=cfg.image_size, max_length=cfg.max_length)
    model = build_model(bb, len(res.classes))
    model.load_state_dict(ckpt["model"])
    return model.eval(), res

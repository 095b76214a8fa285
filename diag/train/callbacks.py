"""Training callbacks and the state they see, in the manner of transformers' ``TrainerCallback``.

The loop of :func:`diag.train.run.run_job` talks only to callbacks: it calls their no-op ``on_*``
methods and polls :meth:`TrainCallback.should_stop` after every step. What used to be inline in the loop
is a callback here, run before the user's ones in this order:

- :class:`MetricsLog` writes ``metrics.jsonl`` (a line per logged step and per epoch);
- :class:`StopFile` asks to stop when a ``STOP`` file appears in a folder;
- :class:`EarlyStopping` ends the run when validation accuracy has not improved for ``patience``
  epochs (``result.json`` then says ``completed`` with ``stopped_early``).

Progress bars are callbacks too (the CLI's, the dashboard's): they receive the same state and records.
:class:`TrainState` serialises to JSON (:meth:`TrainState.to_dict`, :meth:`TrainState.from_dict`).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from diag.errors import DataError
from diag.fileio import atomic_write_bytes
from diag.train.result import FinetuneResult

__all__ = ["STOP_FILE", "EarlyStopping", "MetricsLog", "StopFile", "TrainCallback", "TrainState"]

#: Create this file in a run's folder to stop it cleanly after the current step.
STOP_FILE = "STOP"


@dataclass
class TrainState:
    """Where a run stands; passed to every callback. JSON-native (:meth:`to_dict`).

    ``stop_reason`` is set when a stop was asked for (the run ends cleanly after the current step, with
    status ``stopped``); ``stopped_early`` when :class:`EarlyStopping` ended it (status ``completed``).
    """

    out: str
    epochs: int
    steps_per_epoch: int
    total_steps: int
    epoch: int = 0  # the epoch under way, 1-based (0 before the first)
    step: int = 0  # optimizer steps done
    phase: str = "ft"  # "lp" while only the head trains (LP-FT), else "ft"
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    epochs_since_best: int = 0
    resumed_from_epoch: int = 0
    stop_reason: str | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        """Rebuild a state from :meth:`to_dict`; keys of other versions are ignored."""
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as exc:  # a required field missing
            raise DataError(f"not a complete training state ({exc}).") from None


class TrainCallback:
    """No-op base class of training callbacks: override what you need.

    ``on_step_end`` and ``on_epoch_end`` may return True to ask the run to stop (cleanly, with its
    checkpoint and ``result.json`` status ``stopped``); so may :meth:`should_stop`, polled after every
    step. ``record`` is the JSON line written to ``metrics.jsonl`` (for steps that are not logged, only
    ``kind``, ``epoch`` and ``step``).
    """

    #: How the log names this callback when it asks to stop.
    stop_reason: ClassVar[str] = "a callback"

    def on_train_start(self, state: TrainState) -> None:
        """Training is about to start (or resume)."""

    def on_epoch_start(self, state: TrainState) -> None:
        """An epoch starts."""

    def on_step_end(self, state: TrainState, record: dict[str, Any]) -> bool | None:
        """An optimizer step is done."""
        return None

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> bool | None:
        """An epoch is done, validated and checkpointed."""
        return None

    def on_train_end(self, state: TrainState, result: FinetuneResult) -> None:
        """The run ended (completed, stopped, interrupted or failed); ``result.json`` is written."""

    def should_stop(self) -> bool:
        """Polled after every step; True stops the run cleanly."""
        return False


class MetricsLog(TrainCallback):
    """Appends the logged step records and every epoch record to a JSON-lines file.

    Parameters
    ----------
    path : Path
        ``OUT/metrics.jsonl``.
    resume : bool
        Keep the lines of the epochs a resumed run does not repeat (those up to
        ``state.resumed_from_epoch``); otherwise start a new file.
    """

    def __init__(self, path: Path, *, resume: bool) -> None:
        self.path = path
        self.resume = resume

    def on_train_start(self, state: TrainState) -> None:
        if self.resume:
            self._keep_epochs(state.resumed_from_epoch)
        else:
            self.path.unlink(missing_ok=True)

    def on_step_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if "loss" in record:  # a logged step (every log_every steps and an epoch's last)
            self._write(record)

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _keep_epochs(self, keep_epochs: int) -> None:
        """Keep only the lines of completed epochs (a resumed run rewrites the rest)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if json.loads(line).get("epoch", 0) <= keep_epochs:
                    kept.append(line)
        atomic_write_bytes(self.path, "".join(x + "\n" for x in kept).encode())


class StopFile(TrainCallback):
    """Asks to stop when the file ``path`` (a ``STOP`` file) exists.

    Parameters
    ----------
    path : Path
    owned : bool, default False
        The file belongs to this run: a stale one is removed when training starts, and the file is
        removed when it ends. A sweep's ``STOP`` file is not owned by its runs (the sweep clears it).
    """

    stop_reason: ClassVar[str] = f"{STOP_FILE} file"

    def __init__(self, path: Path, *, owned: bool = False) -> None:
        self.path = path
        self.owned = owned

    def on_train_start(self, state: TrainState) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)  # a stale request from the previous session of this run

    def should_stop(self) -> bool:
        return self.path.exists()

    def on_train_end(self, state: TrainState, result: FinetuneResult) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)


class EarlyStopping(TrainCallback):
    """Ends the run when validation accuracy has not improved for ``patience`` epochs (0: never).

    The run then counts as completed (``stopped_early``), not as stopped: it is not meant to resume.
    An improvement is tracked by the loop in ``state.epochs_since_best`` (checkpointed with the run).
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if self.patience and state.epochs_since_best >= self.patience and state.epoch < state.epochs:
            state.stopped_early = True

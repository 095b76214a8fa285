"""Progress reporting through callbacks: tqdm in the CLI, a stage log for the dashboard, nothing in tests.

The core never prints; long loops call these hooks, which do nothing unless overridden. A long run (one
diagnosis) is cut into named *stages* (:data:`STAGES`): the orchestrator wraps each in :func:`stage`, and
the loops inside it report their counts through ``on_start`` / ``on_advance`` / ``on_end`` as before.

The stage log is a JSON-lines file, one record per update (:class:`StageLogProgress` writes it,
:func:`read_stage_log` reads it back, the latest record per stage)::

    {"stage": "embed-source", "label": "embed source (mnist)", "done": 128, "total": 600, "unit": "item",
     "elapsed_s": 3.2, "eta_s": 11.8, "status": "running", "t": 1767000000.0, "message": null}

``status`` is ``running``, ``done`` or ``failed`` (then ``message`` says why); ``total`` and ``eta_s``
are null while a stage has no count (a fit, a file write).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

__all__ = [
    "STAGES",
    "STAGE_LABELS",
    "MultiProgress",
    "ProgressCallback",
    "StageLogProgress",
    "TqdmProgress",
    "read_stage_log",
    "stage",
]

#: The stages of a diagnosis, in the order they run (those that do not apply are not logged).
STAGES = (
    "embed-source",
    "embed-target",
    "shift",
    "transfer",
    "random-init",
    "gradient-norms",
    "map",
    "write",
)
#: What each stage does, in words (a page's default label).
STAGE_LABELS = {
    "embed-source": "embed the source",
    "embed-target": "embed the target",
    "shift": "shift statistics per layer",
    "transfer": "transferability per layer (pretrained)",
    "random-init": "random-init twin: embed the target, transferability per layer",
    "gradient-norms": "relative gradient norms per block",
    "map": "2-D maps and drift attribution",
    "write": "write the report",
}
# A running stage's record is rewritten at most this often (seconds) while its count advances.
_MIN_INTERVAL_S = 0.5


class ProgressCallback:
    """No-op base class: override the hooks you need."""

    def on_start(self, total: int, desc: str) -> None:
        """A loop over ``total`` items starts."""

    def on_advance(self, n: int) -> None:
        """``n`` more items are done."""

    def on_end(self) -> None:
        """The loop ended (normally or not)."""

    def on_stage(self, name: str, label: str) -> None:
        """Stage ``name`` (one of :data:`STAGES`) begins; the loops that follow belong to it."""

    def on_stage_end(self, name: str, status: str = "done", message: str | None = None) -> None:
        """Stage ``name`` ended with ``status`` ``done`` or ``failed`` (``message``: a note or the error)."""


@contextlib.contextmanager
def stage(progress: ProgressCallback | None, name: str, label: str | None = None) -> Iterator[dict[str, Any]]:
    """Run the ``with`` body as stage ``name``: ``failed`` (with the error) if it raises, else ``done``.

    Yields a dict; a ``"message"`` the body puts in it goes with the final record (``"from cache"``).
    """
    cb = progress or ProgressCallback()
    note: dict[str, Any] = {}
    cb.on_stage(name, label or STAGE_LABELS.get(name, name))
    try:
        yield note
    except BaseException as exc:
        cb.on_stage_end(name, "failed", f"{type(exc).__name__}: {exc}")
        raise
    cb.on_stage_end(name, "done", note.get("message"))


class MultiProgress(ProgressCallback):
    """Every hook forwarded to each of ``callbacks`` in turn (a tqdm bar *and* a stage log)."""

    def __init__(self, *callbacks: ProgressCallback) -> None:
        self.callbacks = callbacks

    def on_start(self, total: int, desc: str) -> None:
        for cb in self.callbacks:
            cb.on_start(total, desc)

    def on_advance(self, n: int) -> None:
        for cb in self.callbacks:
            cb.on_advance(n)

    def on_end(self) -> None:
        for cb in self.callbacks:
            cb.on_end()

    def on_stage(self, name: str, label: str) -> None:
        for cb in self.callbacks:
            cb.on_stage(name, label)

    def on_stage_end(self, name: str, status: str = "done", message: str | None = None) -> None:
        for cb in self.callbacks:
            cb.on_stage_end(name, status, message)


class TqdmProgress(ProgressCallback):
    """A tqdm bar per loop, on stderr; inside a stage, one bar per stage that stays as a line when done."""

    def __init__(self, **tqdm_kwargs: Any) -> None:
        self._kw = {"unit": "item", "dynamic_ncols": True, "leave": False, **tqdm_kwargs}
        self._bar: Any = None
        self._stage: str | None = None
        self._count = 0

    def on_start(self, total: int, desc: str) -> None:
        if self._stage is not None and self._bar is not None:
            self._bar.reset(total=total)
            return
        self.on_end()
        self._bar = tqdm(total=total, desc=desc, **self._kw)

    def on_advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def on_end(self) -> None:
        if self._bar is not None and self._stage is None:
            self._bar.close()
            self._bar = None

    def on_stage(self, name: str, label: str) -> None:
        self._stage = None
        self.on_end()
        self._count += 1
        self._stage = name
        kw = {**self._kw, "leave": True}
        self._bar = tqdm(total=None, desc=f"[{self._count}] {label}", **kw)

    def on_stage_end(self, name: str, status: str = "done", message: str | None = None) -> None:
        if self._bar is not None:
            note = status if message is None else f"{status}: {message}"
            self._bar.set_postfix_str(note[:80], refresh=False)
            self._bar.close()
            self._bar = None
        self._stage = None


class StageLogProgress(ProgressCallback):
    """Appends one JSON line per update of the current stage to ``path`` (module docstring).

    Each line is written with one ``write`` and flushed, so a reader sees whole records, except perhaps
    a last one being written (which :func:`read_stage_log` skips). Counts are rewritten at most every
    0.5 s; a stage's start, each loop's end and the stage's end are always written. The file is emptied
    when the writer is created, unless ``append``.
    """

    def __init__(self, path: str | Path, *, append: bool = False, clock: Any = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not append:  # a new run starts a new log (a reader must not mix two runs' stages)
            self.path.write_text("", encoding="utf-8")
        self._clock = clock
        self._rec: dict[str, Any] | None = None
        self._t0 = 0.0
        self._loop_t0 = 0.0
        self._loop_done = 0
        self._last_write = 0.0

    def _write(self, *, force: bool = False) -> None:
        rec = self._rec
        if rec is None:
            return
        now = self._clock()
        if not force and now - self._last_write < _MIN_INTERVAL_S:
            return
        rec["elapsed_s"] = round(now - self._t0, 3)
        rec["t"] = now
        rec["eta_s"] = None
        total, done = rec["total"], rec["done"]
        if rec["status"] == "running" and total is not None and self._loop_done > 0:
            rate = (now - self._loop_t0) / self._loop_done
            rec["eta_s"] = round(max(0.0, rate * (total - done)), 3)
        elif rec["status"] == "done":
            rec["eta_s"] = 0.0
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
        self._last_write = now

    def on_stage(self, name: str, label: str) -> None:
        self._t0 = self._loop_t0 = self._clock()
        self._loop_done = 0
        self._rec = {
            "stage": name, "label": label, "done": 0, "total": None, "unit": "item", "elapsed_s": 0.0,
            "eta_s": None, "status": "running", "t": self._t0, "message": None,
        }  # fmt: skip
        self._write(force=True)

    def on_start(self, total: int, desc: str) -> None:
        if self._rec is None:
            return
        self._loop_t0 = self._clock()
        self._loop_done = 0
        self._rec.update(done=0, total=int(total), message=desc)
        self._write(force=True)

    def on_advance(self, n: int) -> None:
        if self._rec is None:
            return
        self._rec["done"] += int(n)
        self._loop_done += int(n)
        self._write(force=self._rec["total"] is not None and self._rec["done"] >= self._rec["total"])

    def on_end(self) -> None:
        self._write(force=True)

    def on_stage_end(self, name: str, status: str = "done", message: str | None = None) -> None:
        if self._rec is None or self._rec["stage"] != name:
            self.on_stage(name, STAGE_LABELS.get(name, name))
        assert self._rec is not None
        self._rec["status"] = status
        if message is not None:
            self._rec["message"] = message
        if status == "done" and self._rec["total"] is not None:
            self._rec["done"] = max(self._rec["done"], self._rec["total"])
        self._write(force=True)
        self._rec = None


def read_stage_log(path: str | Path) -> list[dict[str, Any]]:
    """The latest record of each stage in a stage log, in the order the stages first appear.

    A missing file gives ``[]``; a line that is not a whole JSON object (the last one, while it is being
    written) is skipped.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    latest: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("stage"), str):
            latest[rec["stage"]] = rec  # a dict keeps the first-seen order of its keys
    return list(latest.values())

"""Background ``diag finetune`` runs: launch, poll, stop, and read their metrics.

A fine-tuning run takes minutes to hours, so the dashboard never runs it inside its own process (a page
rerun or a closed browser tab must not kill it). :func:`launch_finetune` writes the run's settings to
``DIR/run.json`` and starts ``python -m diag.cli finetune --config DIR/run.json ...`` as a detached
process (its own session, so signals meant for the dashboard do not reach it), recorded in the folder::

    DIR/run.json        the fine-tuning settings (this module; any FinetuneConfig field)
    DIR/job.json        the command, pid, process start time, launch time (this module)
    DIR/log.txt         the process's stdout and stderr
    DIR/metrics.jsonl   one JSON line per logged step and per epoch (written by diag.train.run)
    DIR/result.json     status running/completed/stopped/interrupted/failed (written by diag.train.run)

Everything else reads those files, so any process (a page rerun, another browser tab, a restarted
dashboard) sees the same state. :func:`stop` asks for a clean stop (the ``STOP`` file that
:mod:`diag.train.callbacks` polls after every step, plus SIGINT when the run has not reached its training
loop yet); :func:`terminate` sends SIGTERM to the whole process group when a run does not react.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diag.errors import ConfigError, DataError, param_error
from diag.fileio import atomic_write_bytes
from diag.train.config import FinetuneConfig

__all__ = [
    "JOB_FILE",
    "LOG_FILE",
    "METRICS_FILE",
    "RESULT_FILE",
    "RUN_FILE",
    "Job",
    "RunStatus",
    "check_extra_args",
    "finetune_command",
    "is_alive",
    "launch",
    "launch_finetune",
    "list_runs",
    "load_run_result",
    "new_run_dir",
    "read_metrics",
    "run_config",
    "run_status",
    "stop",
    "tail",
    "terminate",
]

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
RUN_FILE = "run.json"
LOG_FILE = "log.txt"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
STOP_FILE = "STOP"  # diag.train.STOP_FILE, the name the run polls
_FINISHED = ("completed", "stopped", "interrupted", "failed")

# Popen objects of the runs launched here, by pid: polling reaps them (no zombies, no ResourceWarning).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Job:
    """A launched background process, as recorded in ``DIR/job.json``.

    Attributes
    ----------
    out, pid, command : Path, int, list of str
        The run folder, the process id, the command line.
    started : str
        ISO 8601 launch time (UTC).
    start_ticks : int or None
        The process's start time in clock ticks since boot (Linux ``/proc/PID/stat``), so that a
        recycled pid is not mistaken for the run.
    """

    out: Path
    pid: int
    command: list[str]
    started: str
    start_ticks: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "diag.job", "pid": self.pid, "command": self.command, "started": self.started,
                "start_ticks": self.start_ticks}  # fmt: skip

    @classmethod
    def load(cls, out: str | Path) -> Job | None:
        """The job recorded in ``out``, or None when there is none (or it is unreadable)."""
        path = Path(out) / JOB_FILE
        try:
            d = json.loads(path.read_text())
            return cls(
                out=Path(out),
                pid=int(d["pid"]),
                command=[str(c) for c in d.get("command", [])],
                started=str(d.get("started", "")),
                start_ticks=d.get("start_ticks"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands, from its files and its process.

    Attributes
    ----------
    out : Path
    state : str
        ``starting`` (process alive, training not yet begun), ``running``, ``stopping`` (a stop was
        asked for), one of the finished states of :mod:`diag.train.run` (``completed``, ``stopped``,
        ``interrupted``, ``failed``; final as soon as written, even while the process exits), ``died``
        (the process ended without a final result: killed, or it failed before training; see
        ``log_tail``) or ``unknown`` (no job and no result in the folder).
    alive : bool
        Whether the recorded process still runs.
    pid : int or None
    result : dict or None
        ``result.json`` when present.
    epochs_done, epochs : int or None
        Completed epochs (live, from ``metrics.jsonl``) and the planned number.
    log_tail : str
        The last lines of ``log.txt``.
    """

    out: Path
    state: str
    alive: bool
    pid: int | None = None
    result: dict[str, Any] | None = None
    epochs_done: int | None = None
    epochs: int | None = None
    log_tail: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return not self.alive and self.state not in ("starting", "running", "stopping")


# ------------------------------------------------------------------------------------------------------
# Launching


def run_config(
    *,
    freeze: int | str = 0,
    epochs: int | None = None,
    image_size: int | None = None,
    batch_size: int | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The fine-tuning settings a run file holds (``DIR/run.json``, read by ``diag finetune --config``).

    Settings left None are not written, so ``diag finetune`` applies its own defaults to them. ``more``
    takes any other :class:`diag.train.FinetuneConfig` field (``lp_ft=2``, ``lr=3e-4``, ``from_scratch``);
    the whole is checked as a FinetuneConfig, so a bad value is refused here, naming the setting.

    Returns
    -------
    dict
        JSON-native, keys named as :class:`diag.train.FinetuneConfig`'s fields.
    """
    settings: dict[str, Any] = {"freeze": freeze}
    for name, value in (("epochs", epochs), ("image_size", image_size), ("batch_size", batch_size)):
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise param_error(name, "must be a positive integer", value)
            settings[name] = value
    settings.update({k: v for k, v in more.items() if v is not None})
    FinetuneConfig.from_dict(settings)  # unknown names and bad values: ConfigError naming them
    return settings


# ``diag finetune`` flags refused in ``extra_args``: the launcher sets them, or they would make the run
# write elsewhere or over another run, or not train (the page would watch a folder nothing writes to).
# Long flags match by prefix too: argparse accepts unambiguous abbreviations (--ou DIR).
_NEW_FOLDER = "each start is a new run in a new folder chosen for you"
_FIXED_FLAGS = {
    "--out": _NEW_FOLDER, "--overwrite": _NEW_FOLDER, "--resume": _NEW_FOLDER,
    "--config": "the settings come from the fields above", "--target": "set it in its field above",
    "--backbone": "set it in its field above", "--list-blocks": "it exits without training",
    "--help": "it exits without training",
}  # fmt: skip
_SHORT_FLAGS = {"o": "--out", "t": "--target", "b": "--backbone", "h": "--help"}


def check_extra_args(extra_args: Sequence[str]) -> None:
    """Raise ConfigError, naming the flag, for a flag a background run must not take from ``extra_args``."""
    for arg in (str(a) for a in extra_args):
        if arg.startswith("--") and len(arg) > 2:
            hits = [flag for flag in _FIXED_FLAGS if flag.startswith(arg.split("=", 1)[0])]
        elif arg.startswith("-") and len(arg) > 1 and not arg[1].isdigit() and arg[1] != ".":
            hits = [_SHORT_FLAGS[c] for c in arg[1:] if c in _SHORT_FLAGS]  # combined: -qo DIR, -oDIR
        else:
            continue
        if hits:
            raise ConfigError(
                f"More flags: {arg} is not allowed here ({hits[0]}: {_FIXED_FLAGS[hits[0]]}). Remove it; to "
                "continue or redo a run, use `diag finetune` in a terminal."
            )


def finetune_command(
    target: str,
    backbone: str,
    out: str | Path,
    *,
    extra_args: Sequence[str] = (),
    python: str | None = None,
) -> list[str]:
    """The ``python -m diag.cli finetune --config DIR/run.json ...`` command line for one run.

    The settings come from the run file ``out/run.json`` (:func:`run_config`; :func:`launch_finetune`
    writes it); the command adds what to train on and where.

    Parameters
    ----------
    target, backbone : str
        Labelled training data (a path or ``samples:NAME``) and the backbone.
    out : path
        The run folder.
    extra_args : sequence of str
        More ``diag finetune`` flags, e.g. ``["--lr", "3e-4"]``; they override the run file. Flags that
        choose the folder, the data, the backbone or the settings file are refused
        (:func:`check_extra_args`).
    python : str, optional
        The interpreter (default: this one, ``sys.executable``).

    Returns
    -------
    list of str
    """
    if not str(target).strip():
        raise param_error("target", "must name labelled data (a path or samples:NAME)", target)
    if not str(backbone).strip():
        raise param_error("backbone", "must name a backbone", backbone)
    check_extra_args(extra_args)
    # The extra flags come first, so that the fixed ones after them win even if one slipped through.
    cmd = [python or sys.executable, "-m", "diag.cli", "finetune", *(str(a) for a in extra_args)]
    cmd += ["--config", str(Path(out) / RUN_FILE)]
    cmd += ["--target", str(target), "--backbone", str(backbone), "--out", str(out), "--quiet"]
    return cmd


def _start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (start time in clock ticks), or None off Linux or for no process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    rest = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


# A process started in the background by a non-interactive shell (CI runners, nohup) inherits SIGINT as
# *ignored*, and Python then never raises KeyboardInterrupt: stop() could not interrupt a run that has not
# reached its training loop. This trampoline restores the default disposition, then execs the command.
_SIGINT_DEFAULT = (
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])",
)


def launch(
    command: Sequence[str],
    out: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Job:
    """Start ``command`` in the background, detached from this process; record it in ``out/job.json``.

    The process gets its own session (``start_new_session``): a Ctrl-C in the dashboard's terminal or
    a page rerun does not stop it. Its stdout and stderr go to ``out/log.txt``.

    Raises
    ------
    ConfigError
        When ``out`` already has a live job.
    """
    out = Path(out)
    current = run_status(out)
    if current.alive:
        raise ConfigError(
            f"{out}: a run is still going on in this folder (pid {current.pid}); stop it first."
        )
    out.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    with (out / LOG_FILE).open("ab") as logf:
        logf.write(f"$ {' '.join(command)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(
            [*_SIGINT_DEFAULT, *command],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=None if cwd is None else str(cwd),
            env=full_env,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    job = Job(
        out=out,
        pid=proc.pid,
        command=list(command),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        start_ticks=_start_ticks(proc.pid),
    )
    atomic_write_bytes(out / JOB_FILE, (json.dumps(job.to_dict(), indent=1) + "\n").encode())
    log.info("launched pid %d in %s: %s", proc.pid, out, " ".join(command))
    return job


def launch_finetune(
    target: str,
    backbone: str,
    out: str | Path,
    *,
    freeze: int | str = 0,
    epochs: int | None = None,
    image_size: int | None = None,
    batch_size: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    **more: Any,
) -> Job:
    """Write ``out/run.json`` (:func:`run_config`, with ``more`` settings) and start ``diag finetune
    --config`` on it, detached. ``extra_args`` are more flags (see :func:`finetune_command`).

    Raises
    ------
    ConfigError
        When ``out`` already holds a run (pick a new folder with :func:`new_run_dir`) or has a live job.
    """
    out = Path(out)
    if (out / RESULT_FILE).exists() or (out / METRICS_FILE).exists():
        raise ConfigError(f"{out}: already holds a fine-tuning run; choose a new folder.")
    settings = run_config(freeze=freeze, epochs=epochs, image_size=image_size, batch_size=batch_size, **more)
    cmd = finetune_command(target, backbone, out, extra_args=extra_args)
    if run_status(out).alive:  # checked again by launch(); before run.json, so a live run keeps its file
        raise ConfigError(f"{out}: a run is still going on in this folder; stop it first.")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / RUN_FILE, (json.dumps(settings, indent=1) + "\n").encode())
    return launch(cmd, out, env=env)


def new_run_dir(root: str | Path, stem: str) -> Path:
    """A fresh folder name under ``root``: ``<stem>-<YYYYmmdd-HHMMSS>`` (with a counter when taken)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-.") or "run"
    base = f"{safe}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    root = Path(root)
    path, i = root / base, 1
    while path.exists():
        i += 1
        path = root / f"{base}-{i}"
    return path


# ------------------------------------------------------------------------------------------------------
# Polling


def is_alive(job: Job) -> bool:
    """Whether the job's process still runs (a zombie or a recycled pid does not count)."""
    proc = _CHILDREN.get(job.pid)
    if proc is not None:
        if proc.poll() is None:
            return True
        del _CHILDREN[job.pid]
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        # Our own child launched by an earlier module instance: reap it if it has exited.
        pid, _ = os.waitpid(job.pid, os.WNOHANG)
        if pid == job.pid:
            return False
    proc_stat = Path(f"/proc/{job.pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            stat = proc_stat.read_text()
        except OSError:
            return False
        if stat[stat.rfind(")") + 2 :].split()[:1] == ["Z"]:
            return False  # a zombie: exited, not yet reaped by its parent
        ticks = _start_ticks(job.pid)
        return job.start_ticks is None or ticks == job.start_ticks
    try:
        os.kill(job.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def tail(path: Path, n_lines: int = 20, max_bytes: int = 16384) -> str:
    """The last ``n_lines`` lines of a log (as a terminal shows them: after the last ``\\r``)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # tqdm-style carriage returns: keep only what a terminal would show last on each line.
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(lines[-n_lines:])


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """The JSON lines of ``out/metrics.jsonl`` (a line being written, or a bad one, is skipped)."""
    path = Path(out) / METRICS_FILE
    try:
        text = path.read_text()
    except OSError:
        return []
    records: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def run_status(out: str | Path) -> RunStatus:
    """Where the run in ``out`` stands (see :class:`RunStatus`); reads files, never blocks."""
    out = Path(out)
    job = Job.load(out)
    alive = job is not None and is_alive(job)
    result = _read_json(out / RESULT_FILE)
    res_status = str(result.get("status")) if result else None
    config = dict(result.get("config") or {}) if result else {}
    epochs = config.get("epochs")
    if epochs is None:
        epochs = (_read_json(out / RUN_FILE) or {}).get("epochs")
    if epochs is None and job is not None and "--epochs" in job.command:  # a run launched before run.json
        with contextlib.suppress(ValueError, IndexError):
            epochs = int(job.command[job.command.index("--epochs") + 1])
    done = int(result.get("epochs_completed") or 0) if result else None
    if alive:  # live: result.json counts the epochs only at the end, metrics.jsonl as they end
        ends = [int(r.get("epoch") or 0) for r in read_metrics(out) if r.get("kind") == "epoch"]
        done = max([done or 0, *ends])
    if alive and res_status not in _FINISHED:
        stopping = (out / STOP_FILE).exists()
        state = "stopping" if stopping else ("running" if res_status == "running" else "starting")
    elif res_status in _FINISHED:  # a final result stays final, even while the process exits
        state = str(res_status)
    elif job is not None:
        state = "died"
    else:
        state = "unknown"
    return RunStatus(
        out=out,
        state=state,
        alive=alive,
        pid=None if job is None else job.pid,
        result=result,
        epochs_done=done,
        epochs=int(epochs) if isinstance(epochs, int) else None,
        log_tail=tail(out / LOG_FILE),
        config=config,
    )


def list_runs(root: str | Path) -> list[Path]:
    """Run folders directly under ``root`` (with a job, a result or metrics), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [
        p
        for p in root.iterdir()
        if p.is_dir() and any((p / f).exists() for f in (JOB_FILE, RESULT_FILE, METRICS_FILE))
    ]

    def started(p: Path) -> float:
        times = []
        for f in (JOB_FILE, LOG_FILE, METRICS_FILE, RESULT_FILE):
            with contextlib.suppress(OSError):
                times.append((p / f).stat().st_mtime)
        return min(times, default=0.0)

    return sorted(runs, key=lambda p: (started(p), p.name))


# ------------------------------------------------------------------------------------------------------
# Stopping


def _signal_group(pid: int, sig: int) -> bool:
    try:
        os.killpg(os.getpgid(pid), sig)
    except (ProcessLookupError, PermissionError, OSError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError, OSError):
            return False
    return True


def stop(out: str | Path, *, wait_s: float = 0.0) -> RunStatus:
    """Ask the run in ``out`` to stop cleanly; wait up to ``wait_s`` seconds for it to end.

    Writes the ``STOP`` file (the run ends after its current step, saves its checkpoint and writes
    ``result.json`` with status ``stopped``, resumable with ``diag finetune --resume``). A run that has
    not reached its training loop yet (it deletes a stale ``STOP`` file when it gets there) gets SIGINT
    instead, which it records as ``interrupted``.

    Returns
    -------
    RunStatus
        After the wait.
    """
    if wait_s < 0:
        raise param_error("wait_s", "must be >= 0", wait_s)
    out = Path(out)
    st = run_status(out)
    if not st.alive:
        return st
    (out / STOP_FILE).write_text("stop requested by diag.train.jobs\n")
    if st.state != "running" and st.pid is not None:
        _signal_group(st.pid, signal.SIGINT)
    deadline = time.monotonic() + wait_s
    while wait_s and time.monotonic() < deadline:
        st = run_status(out)
        if not st.alive:
            break
        time.sleep(0.2)
    return run_status(out)


def terminate(out: str | Path, *, wait_s: float = 5.0) -> RunStatus:
    """SIGTERM to the run's process group, SIGKILL after ``wait_s`` s: for a run that ignores :func:`stop`."""
    out = Path(out)
    st = run_status(out)
    if not st.alive or st.pid is None:
        return st
    _signal_group(st.pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not run_status(out).alive:
            break
        time.sleep(0.1)
    else:
        _signal_group(st.pid, signal.SIGKILL)
        time.sleep(0.2)
    return run_status(out)


def load_run_result(out: str | Path) -> dict[str, Any]:
    """``out/result.json`` as a dict, with a clear error when it is missing or unreadable."""
    path = Path(out) / RESULT_FILE
    d = _read_json(path)
    if d is None:
        raise DataError(f"{path}: no readable fine-tuning result here.")
    return d

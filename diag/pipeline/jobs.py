"""Background diagnoses (``diag diagnose`` as a detached process) and the list of every background job.

A diagnosis takes from a minute to hours, so the dashboard never runs it inside its page script (a page
change or a closed tab would kill it). :func:`launch_diagnosis` starts ``python -m diag.cli diagnose ...
--progress-log DIR/progress.jsonl`` through :func:`diag.train.jobs.launch` (its own session, output to a
log), with the report folder itself as the job's folder::

    DIR/diagnose.json   the inputs and the launch time (this module)
    DIR/job.json        the command, pid and process start time (diag.train.jobs)
    DIR/log.txt         the process's stdout and stderr
    DIR/progress.jsonl  one JSON line per stage update (diag.progress.StageLogProgress)
    DIR/report.json     the report, when the diagnosis finished (diag.pipeline.diagnose)

Everything reads those files, so any process (a page rerun, another browser tab, a restarted dashboard)
sees the same state: :func:`diagnosis_status` for one folder, :func:`list_jobs` for every diagnosis and
fine-tuning run under a runs folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag.data.hf_datasets import HF_PREFIX
from diag.data.samples import list_samples
from diag.errors import ConfigError, DataError, param_error
from diag.fileio import atomic_write_bytes
from diag.progress import STAGE_LABELS, STAGES, read_stage_log
from diag.train import jobs as train_jobs

__all__ = [
    "DIAGNOSE_FILE",
    "PROGRESS_FILE",
    "DiagnosisStatus",
    "JobEntry",
    "diagnose_command",
    "diagnosis_status",
    "launch_diagnosis",
    "list_jobs",
    "stage_rows",
    "stop_diagnosis",
]

DIAGNOSE_FILE = "diagnose.json"
PROGRESS_FILE = "progress.jsonl"
#: The prefixes of data specs that are not paths on this machine.
_NOT_PATHS = ("samples:", HF_PREFIX, "ref:")


@dataclass(frozen=True)
class DiagnosisStatus:
    """Where a background diagnosis stands, from its folder and its process.

    Attributes
    ----------
    out : Path
        The report folder.
    state : str
        ``starting`` (process alive, no stage begun), ``running``, ``completed`` (its ``report.json``
        was written after the launch; final), ``failed`` (the process ended without a new report: see
        ``error`` and ``log_tail``) or ``unknown`` (no diagnosis was launched in this folder).
    alive : bool
        Whether the process still runs.
    stages : list of dict
        The latest record of each stage, in the order they ran (:func:`diag.progress.read_stage_log`).
    inputs : dict
        What was diagnosed (source, target, backbone, options), from ``diagnose.json``.
    error : str or None
        The error line of a failed run (``diag diagnose: error: ...`` or the last line of the log).
    """

    out: Path
    state: str
    alive: bool
    pid: int | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    started: float | None = None
    error: str | None = None
    log_tail: str = ""

    @property
    def finished(self) -> bool:
        return self.state in ("completed", "failed")


def _check_data(name: str, spec: str) -> None:
    """Refuse a missing path or unknown sample now, not minutes later in the background."""
    s = str(spec).strip()
    if not s:
        raise param_error(name, "must name data (a path or samples:NAME)", spec)
    if s.startswith("samples:"):
        names = [x.name for x in list_samples()]
        if s.split(":", 1)[1] not in names:
            raise DataError(f"{name} {s}: no such sample; the bundled samples are {', '.join(names)}.")
        return
    if not s.startswith(_NOT_PATHS) and not Path(s).expanduser().exists():
        raise DataError(f"{name} {s}: no such file or folder. Pass an existing path or samples:NAME.")


def diagnose_command(
    source: str,
    target: str,
    backbone: str,
    out: str | Path,
    *,
    options: Mapping[str, Any] | None = None,
    python: str | None = None,
) -> list[str]:
    """The ``python -m diag.cli diagnose`` command line of one background diagnosis.

    Parameters
    ----------
    source, target, backbone : str
        As ``diag diagnose --source --target --backbone`` takes them.
    out : path
        The report folder; the stage log goes to ``out/progress.jsonl``.
    options : mapping, optional
        More :class:`diag.config.DiagnoseConfig` settings by field name (``image_size``,
        ``n_permutations``, ``seed``, ``text_column``, ``label_column``, ...); None values are left out.
    """
    for name, value in (("source", source), ("target", target), ("backbone", backbone)):
        if not str(value).strip():
            raise param_error(name, "must not be empty", value)
    cmd = [python or sys.executable, "-m", "diag.cli", "diagnose", "--source", str(source)]
    cmd += ["--target", str(target), "--backbone", str(backbone), "--out", str(out), "--quiet"]
    flags = {"n_permutations": "--permutations"}
    for key, value in (options or {}).items():
        if value is None:
            continue
        flag = flags.get(key, "--" + key.replace("_", "-"))
        if isinstance(value, bool):
            cmd += [flag] if value else []
        else:
            cmd += [flag, str(value)]
    return [*cmd, "--progress-log", str(Path(out) / PROGRESS_FILE)]


def launch_diagnosis(
    source: str,
    target: str,
    backbone: str,
    out: str | Path,
    *,
    options: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> train_jobs.Job:
    """Start a diagnosis of ``source`` against ``target`` in the background, writing into ``out``.

    The data are checked first (a missing path or sample is refused here, naming it); a folder with a
    live diagnosis is refused. A previous report in ``out`` stays until the new one replaces it.

    Raises
    ------
    ConfigError, DataError
    """
    _check_data("source", source)
    _check_data("target", target)
    out = Path(out)
    cmd = diagnose_command(source, target, backbone, out, options=options)
    if train_jobs.run_status(out).alive:
        raise ConfigError(f"{out}: a diagnosis is still running in this folder; wait for it or stop it.")
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (out / PROGRESS_FILE).unlink()  # the stages of an earlier run in this folder
    inputs = {"source": source, "target": target, "backbone": backbone, **dict(options or {})}
    record = {"kind": "diag.diagnosis", "inputs": inputs, "started": time.time()}
    atomic_write_bytes(out / DIAGNOSE_FILE, (json.dumps(record, indent=1, default=str) + "\n").encode())
    return train_jobs.launch(cmd, out, env=env)


def _error_line(log: str) -> str | None:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("diag ") and ": error:" in line:
            return line.split(": error:", 1)[1].strip()
    return lines[-1] if lines else None


def diagnosis_status(out: str | Path) -> DiagnosisStatus:
    """Where the diagnosis launched in ``out`` stands (see :class:`DiagnosisStatus`); never blocks."""
    out = Path(out)
    try:
        record = json.loads((out / DIAGNOSE_FILE).read_text())
    except (OSError, ValueError):
        record = None
    job = train_jobs.Job.load(out)
    if not isinstance(record, dict) or job is None:
        return DiagnosisStatus(out=out, state="unknown", alive=False)
    started = float(record.get("started") or 0.0)
    alive = train_jobs.is_alive(job)
    try:
        written = (out / "report.json").stat().st_mtime >= started
    except OSError:
        written = False
    stages = read_stage_log(out / PROGRESS_FILE)
    log_tail = train_jobs.tail(out / train_jobs.LOG_FILE)
    error = None
    if written and not any(s.get("status") == "failed" for s in stages):
        state = "completed"
    elif alive:
        state = "running" if stages else "starting"
    else:
        state = "failed"
        failed = [s for s in stages if s.get("status") == "failed"]
        error = _error_line(log_tail) or (str(failed[-1].get("message")) if failed else None)
        error = error or "the process ended without writing a report (killed?); see the log"
    return DiagnosisStatus(
        out=out,
        state=state,
        alive=alive,
        pid=job.pid,
        stages=stages,
        inputs=dict(record.get("inputs") or {}),
        started=started,
        error=error,
        log_tail=log_tail,
    )


def stage_rows(stages: list[dict[str, Any]], *, pending: bool = False) -> list[dict[str, Any]]:
    """The stage records in the order they ran, each with a label; with ``pending``, the stages of
    :data:`diag.progress.STAGES` not begun yet follow with ``status="waiting"`` (a run skips those that
    do not apply, such as transferability without labels)."""
    rows = [{**s, "label": s.get("label") or STAGE_LABELS.get(str(s["stage"]), s["stage"])} for s in stages]
    if pending:
        begun = {str(s.get("stage")) for s in stages}
        rows += [
            {"stage": name, "label": STAGE_LABELS.get(name, name), "status": "waiting"}
            for name in STAGES
            if name not in begun
        ]
    return rows


def stop_diagnosis(out: str | Path, *, wait_s: float = 5.0) -> DiagnosisStatus:
    """End a running diagnosis (SIGTERM to its process group, SIGKILL after ``wait_s`` s)."""
    if wait_s < 0:
        raise param_error("wait_s", "must be >= 0", wait_s)
    train_jobs.terminate(out, wait_s=wait_s)
    return diagnosis_status(out)


@dataclass(frozen=True)
class JobEntry:
    """One background job: a diagnosis (``kind="diagnosis"``) or a fine-tuning run (``"fine-tune"``).

    ``report`` is the report folder the job belongs to (a diagnosis writes it; a fine-tuning run lives in
    ``REPORT/finetune/``), ``started`` its launch time (seconds since the epoch).
    """

    kind: str
    out: Path
    state: str
    alive: bool
    report: Path | None
    started: float
    label: str


def _started(out: Path) -> float:
    with contextlib.suppress(OSError):
        return (out / train_jobs.JOB_FILE).stat().st_mtime
    return 0.0


def list_jobs(root: str | Path, *, max_depth: int = 3) -> list[JobEntry]:
    """Every background diagnosis under ``root`` and every fine-tuning run of those reports (and of any
    report under ``root``), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    entries: list[JobEntry] = []
    reports: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        if depth >= max_depth or here.name == "finetune":
            dirnames[:] = []
        if DIAGNOSE_FILE in filenames:
            st = diagnosis_status(here)
            if st.state != "unknown":
                what = f"{st.inputs.get('source')} vs {st.inputs.get('target')} ({st.inputs.get('backbone')})"
                entries.append(JobEntry("diagnosis", here, st.state, st.alive, here, _started(here), what))
        if "report.json" in filenames or DIAGNOSE_FILE in filenames:
            reports.add(here)
    for report in sorted(reports):
        for run in train_jobs.list_runs(report / "finetune"):
            rs = train_jobs.run_status(run)
            freeze = (rs.config or {}).get("freeze", (rs.result or {}).get("freeze"))
            label = f"{report.name}: {run.name}" + (f" (freeze {freeze})" if freeze is not None else "")
            entries.append(JobEntry("fine-tune", run, rs.state, rs.alive, report, _started(run), label))
    return sorted(entries, key=lambda e: (-e.started, str(e.out)))

"""What every page of the dashboard shares: session state, cached loads, the sidebar, error display.

Pages only lay out widgets: computation lives in the ``diag`` library. Heavy objects are cached per
server process (``st.cache_resource`` for embeddings and data sets, ``st.cache_data`` for the report,
projections and exports), keyed by the report folder and the modification time of its ``report.json``
so that a re-run diagnosis is picked up. Session state is initialised idempotently: a key is set only
when it is missing, so reruns and page switches never reset what the user chose. Streamlit drops the
state of widgets a run did not draw (another page's); :func:`keep` copies each widget's value into a
plain session key (``kept_widgets``) and gives it back when the page is drawn again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from diag.errors import DiagError
from diag.progress import ProgressCallback

REPORT_KEY = "report_dir"
RUNS_KEY = "runs_dir"
REPORT_ENV = "DIAG_REPORT"
RUNS_ENV = "DIAG_RUNS_DIR"
HISTORY_ENV = "DIAG_HISTORY"


# ------------------------------------------------------------------------------------------------------
# Session state and page frame


def init_state() -> None:
    """Set the session's defaults once (never overwrite what is already there)."""
    if REPORT_KEY not in st.session_state:
        st.session_state[REPORT_KEY] = os.environ.get(REPORT_ENV) or None
    if RUNS_KEY not in st.session_state:
        st.session_state[RUNS_KEY] = os.environ.get(RUNS_ENV) or "runs"


TIMINGS_ENV = "DIAG_DASHBOARD_TIMINGS"  # a file: each script run appends one JSON line (benchmarks)
MARKS_KEY = "timing_marks"


@contextlib.contextmanager
def timed_run(page: Any) -> Iterator[None]:
    """Append one JSON line per script run (page, wall-clock start and end, the page's marks) to
    the file ``$DIAG_DASHBOARD_TIMINGS`` names; nothing without it. The browser benchmark splits an
    interaction's latency into the server's script time and the browser's with it."""
    path = os.environ.get(TIMINGS_ENV)
    if not path:
        yield
        return
    st.session_state[MARKS_KEY] = []
    t0 = time.time()
    try:
        yield
    finally:
        marks = st.session_state.get(MARKS_KEY) or []
        rec = {"page": getattr(page, "title", str(page)), "start": t0, "end": time.time(), "marks": marks}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


def mark(name: str) -> None:
    """Note when a part of the page script ended (wall clock; only under ``$DIAG_DASHBOARD_TIMINGS``)."""
    if os.environ.get(TIMINGS_ENV):
        st.session_state.setdefault(MARKS_KEY, []).append([name, time.time()])


KEPT_KEY = "kept_widgets"  # a plain (non-widget) key: it survives page switches


def keep(key: str, default: Any, options: Sequence[Any] | None = None) -> str:
    """Give the widget ``key`` its kept value (or ``default``) before it is drawn; returns ``key``.

    Draw the widget right after, with ``key=`` and without ``value=``/``index=`` (the value comes from
    the session). A kept value no longer among ``options`` falls back to ``default``.
    """
    kept = st.session_state.setdefault(KEPT_KEY, {})
    if key not in st.session_state:
        value = kept.get(key, default)
        if options is not None and value not in options:
            value = default
        st.session_state[key] = value
    kept[key] = st.session_state[key]
    return key


def page_setup(title: str) -> None:
    """Page config, session defaults and the sidebar (the report in use, and a field to open another)."""
    st.set_page_config(page_title=f"diag · {title}", page_icon="📐", layout="wide")
    init_state()
    sidebar()


def sidebar() -> None:
    with st.sidebar:
        folder = st.session_state.get(REPORT_KEY)
        if folder:
            st.caption("Report in use")
            st.markdown(f"**{Path(str(folder)).name}**", help=str(folder))
        else:
            st.caption("No report open yet.")
        running = running_jobs()
        if running:
            st.caption(f"Running in the background: {len(running)} job(s); see **Run**.")
        path = st.text_input("Open a report folder", key="sidebar_open_path", placeholder="runs/my-report")
        if st.button("Open", key="sidebar_open", disabled=not path) and open_report(path) is not None:
            st.rerun()  # the sidebar above (drawn already) then names the report just opened


def running_jobs() -> list[Any]:
    """The background diagnoses and fine-tuning runs alive under the session's runs folder and report."""
    from diag.pipeline.jobs import list_jobs

    roots = [st.session_state.get(RUNS_KEY) or "runs"]
    folder = st.session_state.get(REPORT_KEY)
    if folder:
        roots.append(str(Path(str(folder)).parent))
    seen: dict[str, Any] = {}
    for root in dict.fromkeys(roots):
        with contextlib.suppress(OSError):
            seen.update({str(j.out): j for j in list_jobs(root) if j.alive})
    return list(seen.values())


@dataclass
class Outcome:
    """Set by :func:`shown_errors`: ``ok`` is False when the block raised (the error is on the page)."""

    ok: bool = True


@contextlib.contextmanager
def shown_errors(what: str) -> Iterator[Outcome]:
    """Run a block; show a failure as ``st.error`` (never a traceback on the page), and go on.

    ``DiagError`` carries a message written for users: it is shown as is. Anything else gets a short
    message and the traceback folded in an expander, for bug reports.
    """
    outcome = Outcome()
    try:
        yield outcome
    except DiagError as exc:
        outcome.ok = False
        st.error(f"{what}: {exc}")
    except Exception as exc:
        outcome.ok = False
        st.error(f"{what} failed unexpectedly ({type(exc).__name__}: {exc}).")
        with st.expander("Details (for a bug report)"):
            st.code(traceback.format_exc(), language=None)


# ------------------------------------------------------------------------------------------------------
# Reports


def _mtime(folder: str) -> int:
    try:
        return (Path(folder) / "report.json").stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_data(show_spinner=False, max_entries=16)
def _load_report(folder: str, mtime: int) -> Any:
    from diag.report.schema import load_report

    return load_report(folder)


def open_report(path: str | Path) -> Any | None:
    """Load the report at ``path`` and make it the session's; show an error and return None if it fails."""
    with shown_errors("Could not open the report"):
        report = _load_report(str(Path(path).expanduser()), _mtime(str(Path(path).expanduser())))
        st.session_state[REPORT_KEY] = str(report.folder)
        for key in ("emb_selection",):
            st.session_state.pop(key, None)
        return report
    return None


def current_report(*, show_errors: bool = True) -> Any | None:
    """The session's report, or None (with an error on the page when the folder is not a report)."""
    folder = st.session_state.get(REPORT_KEY)
    if not folder:
        return None
    if not show_errors:
        try:
            return _load_report(str(folder), _mtime(str(folder)))
        except DiagError:
            return None
    with shown_errors(f"Could not open the report {folder}"):
        return _load_report(str(folder), _mtime(str(folder)))
    return None


def require_report() -> Any:
    """The session's report; otherwise explain how to get one and stop the page."""
    report = current_report()
    if report is None:
        if not st.session_state.get(REPORT_KEY):
            st.info(
                "No report open. Run a diagnosis on the **Run** page, open a report folder in the sidebar, "
                "or start the dashboard with one: `diag dashboard runs/my-report`."
            )
        st.stop()
    return report


def report_version(report: Any) -> tuple[str, int]:
    """The cache key of a loaded report: its folder and the mtime of its ``report.json``."""
    folder = str(report.folder)
    return folder, _mtime(folder)


@st.cache_resource(show_spinner="Loading embeddings…", max_entries=8)
def embeddings(folder: str, mtime: int, side: str) -> Any:
    return _load_report(folder, mtime).embeddings(side)


@st.cache_resource(show_spinner=False, max_entries=8)
def ood_scores(folder: str, mtime: int) -> dict[str, np.ndarray]:
    return _load_report(folder, mtime).ood_scores()


@st.cache_resource(show_spinner="Opening the data set…", max_entries=8)
def dataset(spec: str) -> Any:
    """The data set behind a report side, for thumbnails and texts (``diag.data.open_data``)."""
    from diag.data import open_data

    return open_data(spec)


@st.cache_data(show_spinner=False, max_entries=4)
def report_html(folder: str, mtime: int) -> str:
    from diag.report.render import report_html as build

    return build(_load_report(folder, mtime))


@st.cache_data(show_spinner=False, max_entries=16)
def report_markdown(folder: str, mtime: int) -> str:
    from diag.report.render import report_markdown as build

    return build(_load_report(folder, mtime))


def report_folder_for(root: str | Path, **inputs: Any) -> Path:
    """The folder for a diagnosis of these inputs: same inputs, same folder (so a finished one reloads)."""

    def short(spec: str) -> str:
        s = str(spec).removeprefix("samples:").rstrip("/\\")
        s = Path(s).stem if ("/" in s or "\\" in s or "." in s) else s
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in s)[:24] or "data"

    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:8]
    src, tgt, bb = (short(inputs.get(k, "")) for k in ("source", "target", "backbone"))
    name = f"{src}-vs-{tgt}-{bb}"
    return Path(root) / f"{name}-{key}"


def show_key_metrics(report: Any) -> None:
    """The verdict's headline numbers (p-value, effect with CI, onset, level) as ``st.metric`` cards."""
    from diag.report.tables import key_metrics

    metrics = key_metrics(report)
    per_row = 3  # readable at 800 px: more columns truncate the numbers
    cols = [c for i in range(0, len(metrics), per_row) for c in st.columns(per_row)][: len(metrics)]
    for col, m in zip(cols, metrics, strict=True):
        col.metric(
            m.label,
            m.value,
            delta=m.detail or None,
            delta_color="off",
            delta_arrow="off",
            help=m.help or None,
        )


# ------------------------------------------------------------------------------------------------------
# Progress


class StreamlitProgress(ProgressCallback):
    """``diag.progress`` callbacks drawn as one ``st.progress`` bar (each loop restarts it)."""

    def __init__(self, container: Any = None) -> None:
        self._bar = (container or st).progress(0.0, text="Starting…")
        self._total = 1
        self._done = 0
        self._desc = ""

    def on_start(self, total: int, desc: str) -> None:
        self._total, self._done, self._desc = max(int(total), 1), 0, desc
        self._bar.progress(0.0, text=f"{desc}: 0 / {total}")

    def on_advance(self, n: int) -> None:
        self._done += int(n)
        frac = min(1.0, self._done / self._total)
        self._bar.progress(frac, text=f"{self._desc}: {min(self._done, self._total)} / {self._total}")

    def on_end(self) -> None:
        self._bar.progress(1.0, text=f"{self._desc}: done")


# ------------------------------------------------------------------------------------------------------
# Items (thumbnails, texts)


@st.cache_resource(show_spinner=False, max_entries=8)
def _id_index(spec: str) -> dict[str, int]:
    return {str(x): i for i, x in enumerate(dataset(spec).ids)}


def preview(spec: str, item_id: str, *, size: int = 84) -> Any:
    """The image (upscaled to about ``size`` px, pixels kept sharp) or the text of one item, or None."""
    i = _id_index(spec).get(str(item_id))
    if i is None:
        return None
    ds = dataset(spec)
    if ds.modality == "text":
        text = str(ds.texts[i]) if ds.texts is not None else ""
        return text if len(text) <= 400 else text[:400] + "…"
    from PIL import Image

    try:
        img = ds.load_image(i)
    except (OSError, ValueError):
        return None
    scale = max(1, size // max(img.size))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    else:
        img.thumbnail((size, size))
    return img

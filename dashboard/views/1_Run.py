"""Run: start a diagnosis in the background, watch its stages, list the background jobs, open a report.

A diagnosis runs as its own process (``diag.pipeline.jobs``): leaving the page or closing the browser does
not stop it. The page polls the stage log every second while one runs, and opens the report when it is
written. The form keeps its values across page switches (``ui.keep``).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pages' shared helpers (_common.py)

import _common as ui
import pandas as pd
import streamlit as st

from diag.config import DiagnoseConfig, help_text
from diag.data.samples import list_samples
from diag.models import BUNDLED
from diag.pipeline import jobs as diag_jobs

CUSTOM = "Other (path or name)…"
JOB_KEY = "run_job"  # the report folder of the diagnosis this session follows (a plain key: it persists)
OPENED_KEY = "run_job_opened"  # (folder, launch time) of the finished diagnosis already opened
FLASH_KEY = "run_flash"  # a message to show after a rerun

ui.page_setup("Run")
st.title("Run a diagnosis")
st.caption(
    "Embeds source and target with one backbone (cached), tests the shift at every layer and writes a "
    "report folder. It runs in the background: you can switch pages or close the browser meanwhile. The "
    "same inputs open the finished report instantly."
)
flash = st.session_state.pop(FLASH_KEY, None)
if flash:
    st.success(flash)

samples = [f"samples:{s.name}" for s in list_samples()]


def data_input(label: str, key: str, default: int) -> str:
    options = [*samples, CUSTOM]
    choice = st.selectbox(
        label, options, key=ui.keep(f"{key}_choice", options[min(default, len(samples))], options)
    )
    if choice != CUSTOM:
        return str(choice)
    return st.text_input(
        f"{label}: path",
        key=ui.keep(f"{key}_path", ""),
        placeholder="an image folder, a .csv/.jsonl/.parquet with a text column, an .npz",
    ).strip()


left, right = st.columns(2)
with left:
    source = data_input("Source", "run_source", 0)
with right:
    target = data_input("Target", "run_target", 1)

left, right = st.columns(2)
with left:
    bb_options = [*BUNDLED, CUSTOM]
    bb_choice = st.selectbox(
        "Backbone", bb_options, key=ui.keep("run_backbone_choice", bb_options[0], bb_options)
    )
    backbone = (
        st.text_input(
            "Backbone name",
            key=ui.keep("run_backbone_name", ""),
            placeholder="timm:resnet50 or hf:/path/to/model",
        )
        if bb_choice == CUSTOM
        else str(bb_choice)
    ).strip()
with right:
    image_size = st.number_input(
        "Image size (px; 0 = the backbone's default)", min_value=0, max_value=1024, step=16,
        key=ui.keep("run_image_size", 112),
        help="Image backbones only. 112 px runs the bundled digit samples in about a minute on a CPU.",
    )  # fmt: skip

DEFAULTS, HELP = DiagnoseConfig(), help_text(DiagnoseConfig)  # the CLI's defaults and words

with st.expander("Options"):
    c1, c2, c3 = st.columns(3)
    permutations = c1.number_input(
        "MMD permutations", min_value=100, max_value=20000, step=100,
        key=ui.keep("run_permutations", DEFAULTS.n_permutations), help=HELP["n_permutations"],
    )  # fmt: skip
    seed = c2.number_input(
        "Seed", min_value=0, step=1, key=ui.keep("run_seed", DEFAULTS.seed), help=HELP["seed"]
    )
    runs_dir = c3.text_input("Reports folder", key=ui.keep("run_root", str(st.session_state[ui.RUNS_KEY])))
    c1, c2 = st.columns(2)
    text_column = c1.text_input("Text column (tables)", key=ui.keep("run_text_column", DEFAULTS.text_column))
    label_column = c2.text_input(
        "Label column (tables)", key=ui.keep("run_label_column", DEFAULTS.label_column)
    )
    recompute = st.checkbox(
        "Recompute even when a report for these inputs exists", key=ui.keep("run_recompute", False)
    )

inputs = {
    "source": source,
    "target": target,
    "backbone": backbone,
    "image_size": int(image_size) or None,
    "n_permutations": int(permutations),
    "seed": int(seed),
    "text_column": text_column,
    "label_column": label_column,
}
ready = bool(source and target and backbone)
folder = ui.report_folder_for(runs_dir, **inputs) if ready else None
if folder is not None:
    exists = (folder / "report.json").is_file()
    st.caption(f"Report folder: `{folder}`" + (" (exists: it opens without recomputing)" if exists else ""))

if st.button("Run diagnosis", type="primary", disabled=not ready, key="run_go"):
    assert folder is not None
    if (folder / "report.json").is_file() and not recompute:
        if ui.open_report(folder) is not None:
            st.session_state[FLASH_KEY] = f"Opened the existing report in `{folder}` (no recomputation)."
            st.rerun()
    else:
        with ui.shown_errors("The diagnosis failed to start"):
            options = {k: v for k, v in inputs.items() if k not in ("source", "target", "backbone")}
            job = diag_jobs.launch_diagnosis(source, target, backbone, folder, options=options)
            st.session_state[JOB_KEY] = str(folder)
            st.success(f"Started the diagnosis in the background (pid {job.pid}): `{folder}`.")


# -- the diagnosis this session follows ------------------------------------------------------------------


def fmt_s(seconds: object) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    s = round(float(seconds))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def stage_line(rec: dict[str, object]) -> None:
    """One stage: its label, a bar with the count (when it has one), elapsed time and ETA."""
    status = str(rec.get("status") or "waiting")
    # Coloured words, not emoji: a machine without an emoji font would draw boxes.
    badges = {
        "done": ":green-badge[done]",
        "running": ":orange-badge[running]",
        "failed": ":red-badge[failed]",
    }
    badge = badges.get(status, ":gray-badge[to come]")
    done, total, unit = rec.get("done"), rec.get("total"), rec.get("unit") or "item"
    count = f"{done} / {total} {unit}s" if isinstance(total, int) and total > 0 else ""
    times = ", ".join(
        x
        for x in (
            fmt_s(rec.get("elapsed_s")) and f"{fmt_s(rec.get('elapsed_s'))} elapsed",
            status == "running" and fmt_s(rec.get("eta_s")) and f"about {fmt_s(rec.get('eta_s'))} left",
            rec.get("message") and str(rec.get("message")),
        )
        if x
    )
    text = f"**{rec.get('label')}**" + (f": {count}" if count else "") + (f" ({times})" if times else "")
    if status == "running" and isinstance(total, int) and total > 0 and isinstance(done, int):
        st.progress(min(1.0, done / total), text=f"running: {text}")
    else:
        st.markdown(f"{badge} {text}")


def show_job(out: Path) -> diag_jobs.DiagnosisStatus:
    status = diag_jobs.diagnosis_status(out)
    i = status.inputs
    st.markdown(
        f"**{i.get('source')}** vs **{i.get('target')}** with `{i.get('backbone')}`: **{status.state}**"
        + (f" (pid {status.pid})" if status.alive else "")
    )
    st.caption(f"`{out}`")
    # The stages in the order they ran; while it runs, those still to come (greyed) after them.
    for rec in diag_jobs.stage_rows(status.stages, pending=status.alive):
        stage_line(rec)
    if status.state == "failed":
        st.error(f"The diagnosis failed: {status.error}")
    if status.alive and not status.finished and st.button("Stop this diagnosis", key="run_stop"):
        diag_jobs.stop_diagnosis(out)
        st.rerun()
    with st.expander("Log", expanded=status.state == "failed"):
        st.code(status.log_tail or "(empty)", language=None)
    return status


followed = st.session_state.get(JOB_KEY)
if not followed:  # a new session (another tab, a reopened browser): follow a diagnosis still running
    alive = [j for j in diag_jobs.list_jobs(runs_dir) if j.kind == "diagnosis" and j.alive]
    followed = str(alive[0].out) if alive else None
    if followed:
        st.session_state[JOB_KEY] = followed  # kept after it ends, to show how it ended
alive_at_start = bool(followed) and diag_jobs.diagnosis_status(str(followed)).alive


@st.fragment(run_every=1.0 if alive_at_start else None)
def job_panel() -> None:
    if not followed:
        return
    st.divider()
    st.subheader("Diagnosis in the background")
    status = show_job(Path(str(followed)))
    key = (str(status.out), status.started)
    if status.state == "completed" and st.session_state.get(OPENED_KEY) != key:
        st.session_state[OPENED_KEY] = key
        if ui.open_report(status.out) is not None:
            st.session_state[FLASH_KEY] = f"The diagnosis finished: `{status.out}` is open."
        st.rerun(scope="app")  # the sidebar and every page now show the new report
    if alive_at_start and not status.alive:
        st.rerun(scope="app")  # it ended (failed or stopped): stop polling


job_panel()

report = ui.current_report(show_errors=False)
if report is not None:
    st.divider()
    st.subheader("Report in use")
    st.markdown(f"`{report.folder}`")
    (st.warning if report.shift.is_shift else st.success)(report.shift.summary)
    st.caption("See the **Shift**, **Embeddings**, **Transfer** and **Fine-tune** pages.")

# -- every background job -----------------------------------------------------------------------------------

st.divider()
st.subheader("Background jobs")
all_jobs = diag_jobs.list_jobs(runs_dir)
if not all_jobs:
    st.caption(f"No diagnosis or fine-tuning run under `{runs_dir}` yet.")
else:
    rows = [
        {
            "kind": j.kind,
            "what": j.label,
            "state": j.state,
            "started": datetime.fromtimestamp(j.started).strftime("%Y-%m-%d %H:%M:%S") if j.started else "",
            "report": str(j.report) if j.report else "",
        }
        for j in all_jobs
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="run_jobs_table")
    labels = [f"{j.kind}: {j.label} ({j.state})" for j in all_jobs]
    c1, c2, c3 = st.columns([3, 1, 1])
    pick = c1.selectbox("Job", range(len(all_jobs)), format_func=lambda i: labels[i], key="run_job_pick")
    chosen = all_jobs[int(pick or 0)]
    has_report = chosen.report is not None and (chosen.report / "report.json").is_file()
    opened = c2.button("Open its report", key="run_job_open", disabled=not has_report)
    if opened and ui.open_report(str(chosen.report)) is not None:
        st.session_state[FLASH_KEY] = f"Opened `{chosen.report}`."
        st.rerun()
    if chosen.kind == "diagnosis" and c3.button("Follow its progress", key="run_job_follow"):
        st.session_state[JOB_KEY] = str(chosen.out)
        st.rerun()
    if chosen.kind == "fine-tune":
        c3.caption("Curves: the **Fine-tune** page of its report.")

# -- open an existing report ---------------------------------------------------------------------------------

st.divider()
st.subheader("Open an existing report")
found = sorted(
    {str(p.parent) for p in Path(runs_dir).glob("**/report.json") if len(p.relative_to(runs_dir).parts) <= 3}
    if Path(runs_dir).is_dir()
    else set()
)
c1, c2 = st.columns([3, 1])
path = c1.text_input("Report folder", key="run_open_path", placeholder="runs/my-report")
if c2.button("Open folder", key="run_open", disabled=not path) and ui.open_report(path) is not None:
    st.rerun()
if found:
    c1, c2 = st.columns([3, 1])
    pick_report = c1.selectbox(f"Reports under `{runs_dir}`", found, key="run_pick")
    if c2.button("Open selected", key="run_open_pick") and ui.open_report(pick_report) is not None:
        st.rerun()

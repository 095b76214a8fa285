"""Run: start a diagnosis (source, target, backbone) or open an existing report folder."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pages' shared helpers (_common.py)

import _common as ui
import streamlit as st

from diag.config import DiagnoseConfig, help_text
from diag.data.samples import list_samples
from diag.models import BUNDLED

CUSTOM = "Other (path or name)…"

ui.page_setup("Run")
st.title("Run a diagnosis")
st.caption(
    "Embeds source and target with one backbone (cached), tests the shift at every layer and writes a "
    "report folder. The same inputs open the finished report instantly."
)

samples = [f"samples:{s.name}" for s in list_samples()]


def data_input(label: str, key: str, default: int) -> str:
    choice = st.selectbox(label, [*samples, CUSTOM], index=min(default, len(samples)), key=f"{key}_choice")
    if choice != CUSTOM:
        return str(choice)
    return st.text_input(
        f"{label}: path",
        key=f"{key}_path",
        placeholder="an image folder, a .csv/.jsonl/.parquet with a text column, an .npz",
    ).strip()


left, right = st.columns(2)
with left:
    source = data_input("Source", "run_source", 0)
with right:
    target = data_input("Target", "run_target", 1)

left, right = st.columns(2)
with left:
    bb_choice = st.selectbox("Backbone", [*BUNDLED, CUSTOM], key="run_backbone_choice")
    backbone = (
        st.text_input(
            "Backbone name", key="run_backbone_name", placeholder="timm:resnet50 or hf:/path/to/model"
        )
        if bb_choice == CUSTOM
        else str(bb_choice)
    ).strip()
with right:
    image_size = st.number_input(
        "Image size (px; 0 = the backbone's default)",
        min_value=0,
        max_value=1024,
        value=112,
        step=16,
        key="run_image_size",
        help="Image backbones only. 112 px runs the bundled digit samples in about a minute on a CPU.",
    )

DEFAULTS, HELP = DiagnoseConfig(), help_text(DiagnoseConfig)  # the CLI's defaults and words

with st.expander("Options"):
    c1, c2, c3 = st.columns(3)
    permutations = c1.number_input(
        "MMD permutations", min_value=100, max_value=20000, value=DEFAULTS.n_permutations, step=100,
        key="run_permutations", help=HELP["n_permutations"],
    )  # fmt: skip
    seed = c2.number_input(
        "Seed", min_value=0, value=DEFAULTS.seed, step=1, key="run_seed", help=HELP["seed"]
    )
    runs_dir = c3.text_input("Reports folder", key="run_root", value=str(st.session_state[ui.RUNS_KEY]))
    c1, c2 = st.columns(2)
    text_column = c1.text_input("Text column (tables)", value=DEFAULTS.text_column, key="run_text_column")
    label_column = c2.text_input("Label column (tables)", value=DEFAULTS.label_column, key="run_label_column")
    recompute = st.checkbox("Recompute even when a report for these inputs exists", key="run_recompute")

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
            st.success(f"Opened the existing report in `{folder}` (no recomputation).")
    else:
        from diag.pipeline import diagnose

        progress = ui.StreamlitProgress()
        t0 = time.perf_counter()
        with ui.shown_errors("The diagnosis failed") as outcome:
            report = diagnose(
                source,
                target,
                backbone,
                out=folder,
                image_size=inputs["image_size"],
                n_permutations=inputs["n_permutations"],
                seed=inputs["seed"],
                data_options={"text_column": text_column, "label_column": label_column},
                progress=progress,
                strict=True,  # too few permutations for this backbone's layers: say so, don't run
            )
        if outcome.ok:
            ui.open_report(folder)
            st.success(f"Done in {time.perf_counter() - t0:.0f} s: `{folder}`.")

report = ui.current_report(show_errors=False)
if report is not None:
    st.divider()
    st.subheader("Report in use")
    st.markdown(f"`{report.folder}`")
    (st.warning if report.shift.is_shift else st.success)(report.shift.summary)
    st.caption("See the **Shift**, **Embeddings**, **Transfer** and **Fine-tune** pages.")

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
    pick = c1.selectbox(f"Reports under `{runs_dir}`", found, key="run_pick")
    if c2.button("Open selected", key="run_open_pick") and ui.open_report(pick) is not None:
        st.rerun()

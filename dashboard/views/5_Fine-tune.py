"""Fine-tune: launch background ``diag finetune`` runs, watch their curves live, stop them, compare them."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pages' shared helpers (_common.py)

import _common as ui
import pandas as pd
import streamlit as st

from diag.report import figures, tables
from diag.train import jobs

LIVE_STATES = ("starting", "running", "stopping")
FREEZE_HELP = "Blocks frozen from the input side: 0 tunes everything; the number of blocks is a linear probe."

ui.page_setup("Fine-tune")
report = ui.require_report()
root = Path(str(report.folder)) / "finetune"

st.title("Fine-tune")
st.caption(
    "Runs `diag finetune` in the background (closing the page does not stop it); curves update every "
    f"2 s while a run is going. Runs are kept in `{root}`."
)

# -- defaults from the report (the freeze depth when the report recommends one) -------------------------
freeze_section = report.freeze
default_freeze = freeze_section.depth if freeze_section and isinstance(freeze_section.depth, int) else 0
n_blocks = freeze_section.n_blocks if freeze_section and isinstance(freeze_section.n_blocks, int) else None
preselected = freeze_section is not None and freeze_section.depth is not None
image_default = 0
if report.backbone.get("modality") == "image":
    size = (report.backbone.get("preprocessing") or {}).get("input_size") or [0]
    image_default = int(size[-1]) if isinstance(size, list) and size else 0

with st.form("ft_form"):
    c1, c2 = st.columns(2)
    target = c1.text_input(
        "Labelled target data", value=str(report.target.get("spec") or ""), key="ft_target",
        help="A path or samples:NAME; it needs labels (one subfolder per class, or a label column).",
    )  # fmt: skip
    backbone = c2.text_input("Backbone", value=str(report.backbone.get("name") or ""), key="ft_backbone")
    c1, c2, c3, c4 = st.columns(4)
    freeze = c1.number_input(
        "Freeze depth (blocks)", min_value=0, max_value=n_blocks or 1000, value=int(default_freeze), step=1,
        key="ft_freeze",
        help=FREEZE_HELP + (" Preselected from the report." if preselected else ""),
    )  # fmt: skip
    epochs = c2.number_input("Epochs", min_value=1, max_value=500, value=3, step=1, key="ft_epochs")
    image_size = c3.number_input(
        "Image size (px; 0 = default)", min_value=0, max_value=1024, value=image_default, step=16,
        key="ft_image_size",
    )  # fmt: skip
    batch_size = c4.number_input("Batch size", min_value=1, max_value=4096, value=32, step=8, key="ft_batch")
    extra = st.text_input(
        "More `diag finetune` flags", key="ft_extra", placeholder="--lr 3e-4 --lp-ft 1 --augment light",
        help="Training settings only: --out, --overwrite, --resume, --config, --target and --backbone are "
        "refused (each run gets its own new folder, and the fields above set the rest).",
    )  # fmt: skip
    submitted = st.form_submit_button("Start fine-tuning", type="primary", key="ft_start")

if submitted:
    with ui.shown_errors("Could not start the fine-tuning"):
        try:
            extra_args = shlex.split(extra)
        except ValueError as exc:
            from diag.errors import ConfigError

            raise ConfigError(f"More flags: cannot parse {extra!r} ({exc}).") from None
        out = jobs.new_run_dir(root, f"freeze{int(freeze)}")
        job = jobs.launch_finetune(
            target.strip(), backbone.strip(), out, freeze=int(freeze), epochs=int(epochs),
            image_size=int(image_size) or None, batch_size=int(batch_size), extra_args=extra_args,
        )  # fmt: skip
        st.session_state["ft_last_run"] = str(out)
        st.success(f"Started fine-tuning (pid {job.pid}) in `{out}`.")


def run_label(status: jobs.RunStatus) -> str:
    cfg = status.config or {}
    res = status.result or {}
    k = res.get("freeze", cfg.get("freeze"))
    return f"{status.out.name} (freeze {k})" if k is not None else status.out.name


def render_run(out: Path) -> None:
    status = jobs.run_status(out)
    records = jobs.read_metrics(out)
    res = status.result or {}
    st.markdown(f"**{run_label(status)}**: {status.state}")
    if status.epochs:
        done = status.epochs_done or 0
        st.progress(min(1.0, done / status.epochs), text=f"epoch {done} / {status.epochs} complete")
    steps = [r for r in records if r.get("kind", "step") == "step" and "loss" in r]
    epochs_rec = [r for r in records if r.get("kind") == "epoch"]
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Train loss", tables.fmt(steps[-1]["loss"], ".4f") if steps else "n/a")
    m2.metric(
        "Val accuracy (last epoch)", tables.fmt(epochs_rec[-1].get("val_acc"), ".3f") if epochs_rec else "n/a"
    )
    m3.metric("Best val accuracy", tables.fmt(res.get("best_val_accuracy"), ".3f"))
    m4.metric("Items/s", tables.fmt(steps[-1].get("items_per_s"), ".0f") if steps else "n/a")
    if records:
        st.plotly_chart(figures.finetune_curves_figure(records), key=f"ft_curves_{out.name}")
    if status.state in ("failed", "died"):
        why = res.get("error") or "it ended without a result; see the log below"
        st.error(f"The run {status.state}: {why}")
    if status.alive:
        b1, b2 = st.columns([1, 4])
        if b1.button(
            "Stop", key=f"ft_stop_{out.name}", help="Ends cleanly after the current step (resumable)"
        ):
            jobs.stop(out)
            st.toast(f"Stop requested for {out.name}")
        if status.state == "stopping" and b2.button("Force stop (SIGTERM)", key=f"ft_kill_{out.name}"):
            jobs.terminate(out)
    with st.expander("Log", expanded=status.state in ("failed", "died")):
        st.code(status.log_tail or "(empty)", language=None)


runs = jobs.list_runs(root)
statuses = {r: jobs.run_status(r) for r in runs}
live_at_start = any(s.alive for s in statuses.values())


@st.fragment(run_every=2 if live_at_start else None)
def live_panel() -> None:
    current = jobs.list_runs(root)
    active = [r for r in current if jobs.run_status(r).alive]
    last = st.session_state.get("ft_last_run")
    show = active or ([Path(last)] if last and Path(last).exists() else [])
    if not show:
        st.caption("No run in progress. Start one above.")
    for out in show:
        render_run(out)
    if live_at_start and not active:
        st.rerun()  # every run ended: refresh the whole page (comparison below) and stop polling


st.subheader("Current run")
live_panel()

st.subheader("Finished runs")
finished = [s for s in statuses.values() if s.result and s.state not in LIVE_STATES]
if not finished:
    st.caption("None yet.")
else:
    table = [
        {
            "run": s.out.name,
            "status": s.state,
            "freeze": (s.result or {}).get("freeze"),
            "epochs": (s.result or {}).get("epochs_completed"),
            "best val acc": (s.result or {}).get("best_val_accuracy"),
            "best epoch": (s.result or {}).get("best_epoch"),
            "final val acc": (s.result or {}).get("final_val_accuracy"),
            "trainable params": (s.result or {}).get("trainable_params"),
            "wall s": (s.result or {}).get("wall_time_s"),
        }
        for s in finished
    ]
    st.dataframe(pd.DataFrame(table), hide_index=True, key="ft_table")
    st.plotly_chart(
        figures.finetune_comparison_figure(
            [
                (run_label(s), jobs.read_metrics(s.out), (s.result or {}).get("best_val_accuracy"))
                for s in finished
            ]
        ),
        key="ft_compare",
    )
    names = [s.out.name for s in finished]
    pick = st.selectbox("Curves of run", names, index=len(names) - 1, key="ft_pick")
    st.plotly_chart(
        figures.finetune_curves_figure(jobs.read_metrics(root / pick), title=pick), key="ft_pick_curves"
    )

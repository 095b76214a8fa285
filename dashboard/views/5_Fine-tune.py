"""Fine-tune: launch background ``diag finetune`` runs, watch their curves live, stop them, compare them."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pages' shared helpers (_common.py)

import _common as ui
import _verdict as verdict
import pandas as pd
import streamlit as st

from diag.report import figures, tables
from diag.train import jobs
from diag.train.config import DEFAULT_HEAD_LR, DEFAULT_LR

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
recommends_lp_ft = freeze_section is not None and freeze_section.lr_scheme == "lp-ft"
image_default = 0
modality = "text" if report.backbone.get("modality") == "text" else "image"
lr_default = DEFAULT_LR[modality]  # diag finetune's rate for this kind of backbone when --lr is not given
if report.backbone.get("modality") == "image":
    size = (report.backbone.get("preprocessing") or {}).get("input_size") or [0]
    image_default = int(size[-1]) if isinstance(size, list) and size else 0
DEFAULTS = {
    "ft_target": str(report.target.get("spec") or ""),
    "ft_backbone": str(report.backbone.get("name") or ""),
    "ft_freeze": int(default_freeze),
    "ft_epochs": 3,
    "ft_image_size": image_default,
    "ft_batch": 32,
    "ft_lp_ft": 0,
    "ft_lr": lr_default,
    "ft_scratch": False,
    "ft_extra": "",
}
if st.session_state.get("ft_report") != str(report.folder):  # another report: its own defaults
    st.session_state["ft_report"] = str(report.folder)
    kept = st.session_state.setdefault(ui.KEPT_KEY, {})
    for k in DEFAULTS:
        st.session_state.pop(k, None)
        kept.pop(k, None)
for k, v in DEFAULTS.items():
    ui.keep(k, v)


def apply_recommendation() -> None:
    """The report's whole recommendation: its freeze depth, and LP-FT when it recommends it."""
    st.session_state["ft_freeze"] = int(default_freeze)
    epochs_now = int(st.session_state.get("ft_epochs") or 3)
    if recommends_lp_ft:
        st.session_state["ft_epochs"] = max(epochs_now, 2)
        st.session_state["ft_lp_ft"] = max(1, st.session_state["ft_epochs"] // 3)
    else:
        st.session_state["ft_lp_ft"] = 0
    st.session_state["ft_scratch"] = False


if preselected:
    plan = f"freeze {default_freeze} of {n_blocks} blocks" + (", then LP-FT" if recommends_lp_ft else "")
    st.info(f"The report recommends: **{plan}**.")
    st.button("Apply the recommendation", key="ft_apply", on_click=apply_recommendation,
              help=verdict.term_help("freeze depth", "LP-FT"))  # fmt: skip

with st.form("ft_form"):
    c1, c2 = st.columns(2)
    target = c1.text_input(
        "Labelled target data", key="ft_target",
        help="A path or samples:NAME; it needs labels (one subfolder per class, or a label column).",
    )  # fmt: skip
    backbone = c2.text_input("Backbone", key="ft_backbone")
    c1, c2, c3, c4 = st.columns(4)
    freeze = c1.number_input(
        "Freeze depth (blocks)", min_value=0, max_value=n_blocks or 1000, step=1, key="ft_freeze",
        help=FREEZE_HELP + (" Preselected from the report." if preselected else ""),
    )  # fmt: skip
    epochs = c2.number_input("Epochs", min_value=1, max_value=500, step=1, key="ft_epochs")
    image_size = c3.number_input(
        "Image size (px; 0 = default)", min_value=0, max_value=1024, step=16, key="ft_image_size"
    )
    batch_size = c4.number_input("Batch size", min_value=1, max_value=4096, step=8, key="ft_batch")
    c1, c2, c3 = st.columns([1, 1, 1.3])
    lp_ft = c1.number_input(
        "LP-FT: head-only epochs first", min_value=0, max_value=499, step=1, key="ft_lp_ft",
        help=verdict.term_help("LP-FT") + "\n\n0 = off. Must be fewer than the epochs.",
    )  # fmt: skip
    lr = c2.number_input(
        "Learning rate", min_value=1e-7, max_value=1.0, step=1e-4, format="%.1e", key="ft_lr",
        help=f"Peak learning rate of the top tuned block (diag finetune --lr). Left at {lr_default:.0e}, "
        "the default for this kind of backbone, the run takes diag's recipe"
        + (f" (the new head at {DEFAULT_HEAD_LR[modality]:.0e})." if DEFAULT_HEAD_LR[modality] else ".")
        + " Another value sets the head's rate too.",
    )  # fmt: skip
    scratch = c3.checkbox(
        "From scratch (random init)", key="ft_scratch",
        help="The no-transfer baseline: the same architecture trained from random weights.",
    )  # fmt: skip
    extra = st.text_input(
        "More `diag finetune` flags", key="ft_extra", placeholder="--augment none --patience 2",
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
        stem = "scratch" if scratch else f"freeze{int(freeze)}" + (f"-lpft{int(lp_ft)}" if lp_ft else "")
        out = jobs.new_run_dir(root, stem)
        job = jobs.launch_finetune(
            target.strip(), backbone.strip(), out, freeze=int(freeze), epochs=int(epochs),
            image_size=int(image_size) or None, batch_size=int(batch_size), extra_args=extra_args,
            lp_ft=int(lp_ft) or None, lr=None if float(lr) == lr_default else float(lr),
            from_scratch=True if scratch else None,
        )  # fmt: skip
        st.session_state["ft_last_run"] = str(out)
        st.success(f"Started fine-tuning (pid {job.pid}) in `{out}`.")


def reference_lines() -> list[tuple[float, str]]:
    """Accuracy lines to draw beside the curves: the report's linear probe, the random-init twin's, and
    the best finished from-scratch run in this report's folder."""
    lines: list[tuple[float, str]] = []
    neg = report.negative_transfer
    sig = (neg.signals or {}) if neg is not None else {}
    lp, lp_layer = sig.get("pretrained_linear_probe"), sig.get("pretrained_best_layer")
    tr = report.transferability
    if lp is None and tr is not None and tr.scores:
        lp, lp_layer = tr.scores.get("linear_probe_accuracy"), tr.layer
    if isinstance(lp, (int, float)):
        lines.append((float(lp), f"linear probe (report, {lp_layer}) {lp:.2f}"))
    twin = sig.get("random_init_linear_probe")
    if isinstance(twin, (int, float)):
        lines.append((float(twin), f"random-init twin's probe {twin:.2f}"))
    scratch_runs = [
        s.result for s in (jobs.run_status(r) for r in jobs.list_runs(root))
        if s.result and (s.result.get("config") or {}).get("from_scratch") and s.state == "completed"
    ]  # fmt: skip
    best = max((r.get("best_val_accuracy") or 0.0 for r in scratch_runs), default=None)
    if best:
        lines.append((float(best), f"from scratch (best run) {best:.2f}"))
    return lines


def with_references(fig: object, col: int = 2) -> object:
    for y, text in reference_lines():
        fig.add_hline(  # type: ignore[attr-defined]
            y=y, line_dash="dot", line_color="#555555", annotation_text=text, row=1, col=col,
            annotation_position="bottom right", annotation_font_size=10,
        )  # fmt: skip
    return fig


def run_settings(status: jobs.RunStatus) -> dict[str, object]:
    """The run's settings: the result's full config, else its run file (a run still going on)."""
    if status.config:
        return dict(status.config)
    try:
        return dict(json.loads((status.out / jobs.RUN_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def run_label(status: jobs.RunStatus) -> str:
    cfg = run_settings(status)
    k = (status.result or {}).get("freeze", cfg.get("freeze"))
    what = "from scratch" if cfg.get("from_scratch") else (f"freeze {k}" if k is not None else "")
    what += f", LP-FT {cfg['lp_ft']}" if cfg.get("lp_ft") else ""
    return f"{status.out.name} ({what})" if what else status.out.name


def epoch_progress(status: jobs.RunStatus, records: list[dict]) -> tuple[float, str]:
    """The fraction of the run done (epochs, and steps into the current epoch) and its words."""
    total = status.epochs or 1
    done = status.epochs_done or 0
    text = f"epoch {done} / {total} complete"
    ends = [int(r.get("step") or 0) for r in records if r.get("kind") == "epoch"]
    steps = [int(r.get("step") or 0) for r in records if r.get("kind", "step") == "step"]
    if status.alive and steps and done < total:
        per_epoch = ends[-1] - (ends[-2] if len(ends) > 1 else 0) if ends else None
        into = steps[-1] - (ends[-1] if ends else 0)
        if per_epoch:
            frac_in = min(1.0, into / per_epoch)
            return min(
                1.0, (done + frac_in) / total
            ), text + f"; epoch {done + 1}: step {into} of {per_epoch}"
        text += f"; epoch {done + 1}: step {into}"
    return min(1.0, done / total), text


def render_run(out: Path) -> None:
    status = jobs.run_status(out)
    records = jobs.read_metrics(out)
    res = status.result or {}
    st.markdown(f"**{run_label(status)}**: {status.state}")
    if status.epochs:
        frac, text = epoch_progress(status, records)
        st.progress(frac, text=text)
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
        st.plotly_chart(with_references(figures.finetune_curves_figure(records)), key=f"ft_curves_{out.name}")
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
    settings = {s.out: run_settings(s) for s in finished}
    names = dict.fromkeys(k for cfg in settings.values() for k in cfg if k not in ("freeze", "log_every"))
    differ = [k for k in names if len({json.dumps(c.get(k)) for c in settings.values()}) > 1]
    table = [
        {
            "run": s.out.name,
            "status": s.state,
            "freeze": (s.result or {}).get("freeze"),
            **{k: settings[s.out].get(k) for k in differ},
            "epochs": (s.result or {}).get("epochs_completed"),
            "best val acc": (s.result or {}).get("best_val_accuracy"),
            "best epoch": (s.result or {}).get("best_epoch"),
            "final val acc": (s.result or {}).get("final_val_accuracy"),
            "trainable params": (s.result or {}).get("trainable_params"),
            "wall s": (s.result or {}).get("wall_time_s"),
        }
        for s in finished
    ]
    if differ:
        st.caption("Settings that differ between these runs: " + ", ".join(f"`{k}`" for k in differ) + ".")
    frame = pd.DataFrame(table)
    st.dataframe(frame, hide_index=True, key="ft_table", column_config=verdict.number_columns(frame))
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
        with_references(figures.finetune_curves_figure(jobs.read_metrics(root / pick), title=pick)),
        key="ft_pick_curves",
    )

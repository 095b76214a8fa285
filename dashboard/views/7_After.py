"""After: what fine-tuning changed (per-block CKA, weight change, shift), what it forgot, and the int8
deployment check, for the runs under a folder (``diag compare`` / ``diag deploy-check`` write the files
this page reads; it computes nothing itself)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pages' shared helpers (_common.py)

import _common as ui
import pandas as pd
import streamlit as st

from diag.errors import DiagError
from diag.report.posthoc import CompareReport, DeployReport, load_compare, load_deploy

ui.page_setup("After")
st.title("After fine-tuning")
st.caption(
    "Per block, the fine-tuned body against its pretrained backbone (linear CKA, relative weight change, "
    "shift); forgetting on reference data; the int8 deployment check. Produce them with "
    "`diag compare RUN [RUN ...] --reference DATA` and `diag deploy-check RUN --data DATA`."
)

report = ui.current_report(show_errors=False)
default = str(Path(str(report.folder)) / "finetune") if report is not None else "runs"
root = Path(st.text_input("Folder with runs (searched recursively)", value=default, key="after_root"))

found = sorted({p.parent for name in (CompareReport.FILE, DeployReport.FILE) for p in root.rglob(name)})
if not root.is_dir() or not found:
    st.info(f"No compare.json or deploy.json under `{root}` yet.")
    st.stop()

labels = [str(p.relative_to(root)) if p != root else str(p) for p in found]
choice = st.selectbox("Run (or sweep)", labels, key="after_run")
folder = found[labels.index(choice)]

if (folder / CompareReport.FILE).is_file():
    try:
        comp = load_compare(folder)
    except DiagError as exc:
        st.error(str(exc))
    else:
        st.subheader("What changed, what was forgotten")
        curve = comp.curve()
        if len(curve) > 1:
            st.markdown("**Trade-off per freeze depth** (target accuracy vs forgetting)")
            st.dataframe(pd.DataFrame(curve).drop(columns=["run"]), hide_index=True)
        for run in comp.runs:
            ok = "passed" if run.frozen_check_ok else f"FAILED at {', '.join(run.frozen_check_violations)}"
            st.markdown(
                f"**{Path(run.run).name}**: K = {run.freeze} of {run.n_blocks}; frozen-block check {ok}"
            )
            st.dataframe(
                pd.DataFrame(
                    [
                        {"block": b.name, "frozen": b.frozen, "weight change": b.weight_change, "CKA": b.cka,
                         "C2ST AUC": b.c2st_auc}
                        for b in run.blocks
                    ]
                ),
                hide_index=True,
            )  # fmt: skip
            if run.forgetting is not None:
                f = run.forgetting
                cols = st.columns(3)
                cols[0].metric(
                    "linear probe (pre → ft)", f"{f.linear_finetuned:.3f}", f"{-f.forgetting_linear:+.3f}"
                )
                cols[1].metric("k-NN (pre → ft)", f"{f.knn_finetuned:.3f}", f"{-f.forgetting_knn:+.3f}")
                if f.source_top1_agreement is not None:
                    cols[2].metric("source head top-1 unchanged", f"{f.source_top1_agreement:.1%}")

if (folder / DeployReport.FILE).is_file():
    try:
        dep = load_deploy(folder)
    except DiagError as exc:
        st.error(str(exc))
    else:
        st.subheader("int8 deployment (CPU)")
        lo, hi = dep.accuracy_drop_ci
        cols = st.columns(4)
        cols[0].metric("accuracy int8", f"{dep.accuracy_int8:.3f}", f"{-100 * dep.accuracy_drop:+.1f} pt")
        cols[1].metric("drop 95% CI (points)", f"{100 * lo:+.1f} … {100 * hi:+.1f}")
        cols[2].metric("size ratio", f"×{dep.size_ratio:.2f}")
        cols[3].metric("latency ratio (batch 32)", f"×{dep.latency['batch_32']['ratio']:.2f}")
        st.caption(dep.quantization.get("message", ""))
        st.dataframe(
            pd.DataFrame([{"layer": x.name, "relative error": x.relative_error, "CKA": x.cka,
                           "C2ST AUC": x.c2st_auc} for x in dep.layers]),
            hide_index=True,
        )  # fmt: skip

"""Home: the report in use at a glance, and what the bundled backbones and samples are."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pages' shared helpers (_common.py)

import _common as ui
import streamlit as st

from diag.data.samples import list_samples
from diag.models import BUNDLED
from diag.report.tables import report_title

ui.page_setup("Home")
st.title("diag: domain-adaptation diagnostics")
st.markdown(
    "How far is your target data from the source, layer by layer inside a pretrained backbone; will "
    "transfer help; how many layers to freeze; and then the fine-tuning itself, to check."
)

report = ui.current_report()
if report is not None:
    st.subheader(report_title(report))
    (st.warning if report.shift.is_shift else st.success)(report.shift.summary)
    ui.show_key_metrics(report)
    st.markdown(
        "Next: **Shift** for the per-layer charts and downloads, **Embeddings** for the map and the samples "
        "behind it, **Transfer** and **Fine-tune** to act on it (pages in the sidebar)."
    )
else:
    st.info(
        "No report open. Start a diagnosis on the **Run** page (bundled samples work offline), or open a "
        "report folder written by `diag diagnose` in the sidebar."
    )

with st.expander("Bundled backbones and samples (offline)", expanded=report is None):
    st.markdown("**Backbones**")
    st.dataframe(
        [{"name": n, "description": b.description, "licence": b.licence} for n, b in BUNDLED.items()],
        hide_index=True,
    )
    st.markdown("**Samples**")
    st.dataframe(
        [
            {"name": f"samples:{s.name}", "modality": s.modality, "description": s.description}
            for s in list_samples()
        ],
        hide_index=True,
    )

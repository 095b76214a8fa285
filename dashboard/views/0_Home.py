"""Home: the decision first (shift, negative-transfer risk, freeze depth), the one chart that says the
most, then what the bundled backbones and samples are."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pages' shared helpers (_common.py)

import _common as ui
import _verdict as verdict
import streamlit as st

from diag.data.samples import list_samples
from diag.models import BUNDLED
from diag.report.tables import report_title

ui.page_setup("Home")
st.title("diag: domain-adaptation diagnostics")

report = ui.current_report()
if report is not None:
    st.subheader(report_title(report))
    verdict.verdict_cards(report)
    st.markdown(report.shift.summary)
    with ui.shown_errors("Could not draw the lead chart"):
        fig, caption = verdict.lead_figure(report)
        st.plotly_chart(fig, key="home_lead")
        st.caption(caption)
    ui.show_key_metrics(report)
    verdict.glossary(("MMD²", "C2ST", "Fréchet", "OOD"))
    st.markdown(
        "Next: **Shift** for every per-layer statistic and the downloads, **Embeddings** for the map and "
        "the samples behind the shift, **Transfer** and **Fine-tune** to act on it (pages in the sidebar)."
    )
else:
    st.markdown(
        "How far is your target data from the source, layer by layer inside a pretrained backbone; will "
        "transfer help; how many layers to freeze; and then the fine-tuning itself, to check."
    )
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

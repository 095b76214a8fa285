"""diag dashboard (placeholder): the Streamlit app lands with the dashboard issue.

Run with ``streamlit run dashboard/app.py``. Compute stays in the ``diag`` library; pages only lay out
widgets. For now the page lists the bundled backbones and samples, so the app starts and is testable.
"""

from __future__ import annotations

import streamlit as st

from diag.backbones import BUNDLED
from diag.samples import list_samples

st.set_page_config(page_title="diag", layout="wide")
st.title("diag: domain-adaptation diagnostics")
st.info(
    "The dashboard is under construction. Use the CLI meanwhile: `diag embed DATA --backbone NAME --out DIR`."
)
st.subheader("Bundled backbones (offline)")
st.table([{"name": n, "description": b.description, "licence": b.licence} for n, b in BUNDLED.items()])
st.subheader("Bundled samples")
st.table(
    [
        {"name": f"samples:{s.name}", "modality": s.modality, "description": s.description}
        for s in list_samples()
    ]
)

"""diag dashboard. Start it with ``diag dashboard [REPORT_DIR]`` (or ``streamlit run dashboard/app.py``). This
script only routes between the pages in ``views/``: Home (the report at a glance), Run (start a diagnosis or
open a report), Shift (the per-layer profile and the verdict), Embeddings (UMAP map, selections with
thumbnails), Transfer (transferability, negative-transfer risk, freeze depth), Fine-tune (background runs
with live curves) and History (checks against a reference over time). Every page also runs on its own
(``AppTest``), and none computes anything itself: the ``diag`` library does. (The folder is not named
``pages/``: Streamlit would take that for its older, file-based page list and show "page not found" before
this router runs.)
"""

from __future__ import annotations

import streamlit as st

PAGES = [
    st.Page("views/0_Home.py", title="Home", icon=":material/home:", url_path="home", default=True),
    st.Page("views/1_Run.py", title="Run", icon=":material/play_arrow:", url_path="run"),
    st.Page("views/2_Shift.py", title="Shift", icon=":material/stacked_line_chart:", url_path="shift"),
    st.Page(
        "views/3_Embeddings.py", title="Embeddings", icon=":material/scatter_plot:", url_path="embeddings"
    ),
    st.Page("views/4_Transfer.py", title="Transfer", icon=":material/swap_horiz:", url_path="transfer"),
    st.Page("views/5_Fine-tune.py", title="Fine-tune", icon=":material/tune:", url_path="fine-tune"),
    st.Page("views/6_History.py", title="History", icon=":material/timeline:", url_path="history"),
]

st.navigation(PAGES).run()

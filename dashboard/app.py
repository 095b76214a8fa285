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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the pages' shared helpers (_common.py)

import _common as ui
import streamlit as st

# No page icons: a Material icon name makes the browser fetch an icon font, and emoji need an emoji font
# that a minimal system may lack (boxes instead); the dashboard makes no request beyond its own server.
HOME = st.Page("views/0_Home.py", title="Home", default=True)
PAGES = [
    HOME,
    st.Page("views/1_Run.py", title="Run", url_path="run"),
    st.Page("views/2_Shift.py", title="Shift", url_path="shift"),
    st.Page("views/3_Embeddings.py", title="Embeddings", url_path="embeddings"),
    st.Page("views/4_Transfer.py", title="Transfer", url_path="transfer"),
    st.Page("views/5_Fine-tune.py", title="Fine-tune", url_path="fine-tune"),
    st.Page("views/7_After.py", title="After", url_path="after"),
    st.Page("views/6_History.py", title="History", url_path="history"),
]
# The default page is served at "/": "/home" (a natural link) is the same page, unlisted.
HOME_ALIAS = st.Page("views/0_Home.py", title="Home", url_path="home", visibility="hidden")

page = st.navigation([*PAGES, HOME_ALIAS], position="sidebar")
with ui.timed_run(page):
    page.run()

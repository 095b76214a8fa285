"""History: the checks of new data against a saved reference over time (a `diag check --history` file).

The file is picked from, in this order: the ``DIAG_HISTORY`` environment variable (a file), any
``*.jsonl`` under the runs folder (``DIAG_RUNS_DIR``, default ``runs``), or a path typed here. The page
draws one line per layer of the chosen effect (C2ST AUC, RFF-MMD², ...) check by check, and the table
of checks with their verdict; a check's report opens in the other pages.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pages' shared helpers (_common.py)

import _common as ui
import _verdict as verdict
import pandas as pd
import streamlit as st

from diag.report import figures
from diag.report.history import HISTORY_METRICS, find_history_files, history_rows, read_history

ui.page_setup("History")
st.title("Check history")
st.caption(
    "Each `diag check NEWDATA --reference REF --history FILE` appends one line to FILE: this page plots "
    "them over time."
)

found = [str(p) for p in find_history_files(st.session_state[ui.RUNS_KEY])]
env = os.environ.get(ui.HISTORY_ENV)
choices = list(dict.fromkeys([*([env] if env else []), *found]))
typed = st.text_input("History file (JSON lines)", key="history_path", placeholder="runs/checks.jsonl")
if choices:
    picked = st.selectbox("Or pick one found", choices, key="history_pick")
else:
    picked = None
    st.caption(f"No `*.jsonl` under {st.session_state[ui.RUNS_KEY]}; set `{ui.HISTORY_ENV}` or type a path.")
path = typed or picked
if not path:
    st.info("No check history yet. Run `diag check NEWDATA --reference REF --history runs/checks.jsonl`.")
    st.stop()

records = []
with ui.shown_errors(f"Could not read the history {path}"):
    records = read_history(path)
if not records:
    st.info(f"{path} holds no checks yet.")
    st.stop()

shifts = sum(r.is_shift for r in records)
c1, c2, c3 = st.columns(3)
c1.metric("Checks", len(records))
c2.metric("With a shift", shifts)
c3.metric("Last verdict", "shift" if records[-1].is_shift else "no shift", delta=records[-1].time,
          delta_color="off", delta_arrow="off")  # fmt: skip

labels = {"c2st_auc": "C2ST AUC", "rff_mmd2": "RFF-MMD²", "mmd2": "MMD²", "p_adjusted": "p (Holm)"}
metric = st.radio(
    "Effect per layer", list(HISTORY_METRICS), format_func=labels.get, horizontal=True, key="history_metric"
)
with ui.shown_errors("Could not draw the history chart"):
    st.plotly_chart(figures.history_figure(records, metric), key="fig_history")

st.subheader("Checks")
history_table = pd.DataFrame(history_rows(records))
st.dataframe(
    history_table, hide_index=True, key="history_table", column_config=verdict.number_columns(history_table)
)
reports = [r.report for r in records if r.report]
if reports:
    chosen = st.selectbox("Open a check's report", reports[::-1], key="history_report")
    if st.button("Open", key="history_open") and ui.open_report(chosen) is not None:
        st.success(f"Opened {chosen}: see the Home, Shift and Embeddings pages.")

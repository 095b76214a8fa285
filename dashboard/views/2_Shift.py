"""Shift: the verdicts first, the one chart that says the most, then the per-layer profile (MMD², C2ST AUC
with CI, Fréchet, OOD), labels, downloads."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pages' shared helpers (_common.py)

import _common as ui
import _verdict as verdict
import pandas as pd
import streamlit as st

from diag.report import figures, tables

ui.page_setup("Shift")
report = ui.require_report()
folder, mtime = ui.report_version(report)
shift = report.shift

st.title("Shift, layer by layer")
st.caption(tables.report_title(report))

verdict.verdict_cards(report)
(st.warning if shift.is_shift else st.success)(shift.summary)

ui.show_key_metrics(report)
onset = shift.onset_layer
if onset:
    st.markdown(
        f"Shift onset at layer **{onset}** ({shift.level or 'level unknown'}); significant layers: "
        + ", ".join(f"`{x}`" for x in shift.significant_layers)
    )
verdict.glossary(("MMD²", "C2ST", "Fréchet", "CORAL", "OOD", "onset"))

if tables.is_source_free(report):
    # No source data: the one profile is the BatchNorm W2 per block against its null band.
    with ui.shown_errors("Could not draw the profile chart"):
        st.plotly_chart(figures.source_free_figure(report), key="fig_bn_w2")
    st.subheader("Per-block statistics")
    head, body = tables.shift_table(report)
    body_df = pd.DataFrame(body, columns=head)
    st.dataframe(body_df, hide_index=True, key="layer_table", column_config=verdict.number_columns(body_df))
    st.caption(tables.shift_table_note(report))
else:
    with ui.shown_errors("Could not draw the lead chart"):
        lead, lead_caption = verdict.lead_figure(report)
        st.plotly_chart(lead, key="fig_lead")
        st.caption(lead_caption)
    with ui.shown_errors("Could not draw the profile charts"):
        import plotly.graph_objects as go

        figs = figures.shift_figures(report)
        mmd = figs["mmd2"]  # its bars are coloured by significance: say so in a legend
        mmd.update_traces(showlegend=False)
        for colour, name in (("#ff7f0e", "significant (Holm p ≤ α)"), ("#9e9e9e", "not significant")):
            mmd.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                     marker={"symbol": "square", "size": 12, "color": colour}))  # fmt: skip
        mmd.update_layout(showlegend=True)
        tabs = st.tabs(["C2ST AUC", "MMD²", "Fréchet", "OOD"])
        tabs[0].plotly_chart(figs["c2st_auc"], key="fig_auc")
        tabs[0].caption("The AUC saturates at 1 as soon as the domains are separable: read the chart above.")
        tabs[1].plotly_chart(mmd, key="fig_mmd")
        tabs[2].plotly_chart(figs["frechet_relative"], key="fig_frechet")
        tabs[3].plotly_chart(figs["ood"], key="fig_ood")

    st.subheader("Per-layer statistics")
    rows = pd.DataFrame(tables.layer_rows(report))
    rows = rows.rename(
        columns={
            "mmd2": "MMD²", "p_value": "p", "p_adjusted": "p (Holm)", "c2st_auc": "C2ST AUC",
            "auc_low": "AUC low", "auc_high": "AUC high", "frechet_relative": "Fréchet (rel.)",
            "coral": "CORAL", "ood_median": "OOD median", "ood_p90": "OOD p90",
        }
    )  # fmt: skip

    def _highlight(row: pd.Series) -> list[str]:
        return ["background-color: rgba(214, 39, 40, 0.15)" if row["onset"] else "" for _ in row]

    st.dataframe(
        rows.style.apply(_highlight, axis=1),
        hide_index=True,
        key="layer_table",
        column_config=verdict.number_columns(rows),
    )
    st.caption(
        "The onset layer's row is highlighted. p (Holm): per-layer permutation p-value, Holm-adjusted."
    )
    refs = tables.reference_rows(report)
    if refs:
        st.markdown("**Against every reference item** (through the reference's summaries)")
        st.dataframe(
            pd.DataFrame(refs).rename(
                columns={"rff_mmd2": "RFF-MMD²", "rff_p_value": "RFF p", "frechet_all": "Fréchet (all)"}
            ),
            hide_index=True,
            key="reference_table",
        )
        st.caption(tables.shift_table_note(report))

st.subheader("Labels")
label_fig = figures.label_shift_figure(report)
if label_fig is None:
    st.info("No label-distribution analysis: it needs labels on both source and target.")
else:
    st.plotly_chart(label_fig, key="fig_labels")
cc_fig = figures.class_conditional_figure(report)
if cc_fig is not None:
    st.plotly_chart(cc_fig, key="fig_cc")
    layers_cc = [n for n in report.layer_names if tables.class_conditional_rows(report, n)]
    default = layers_cc.index(onset) if onset in layers_cc else len(layers_cc) - 1
    layer = st.selectbox("Class-conditional table at layer", layers_cc, index=default, key="cc_layer")
    st.dataframe(pd.DataFrame(tables.class_conditional_rows(report, layer)), hide_index=True)
elif report.label_shift is not None:
    st.caption("No class-conditional statistics in this report.")

st.subheader("Downloads")
c1, c2, c3 = st.columns(3)
c1.download_button(
    "report.json",
    data=(Path(folder) / "report.json").read_bytes(),
    file_name="report.json",
    mime="application/json",
    key="dl_json",
)
c2.download_button(
    "HTML summary (with charts, offline)",
    data=lambda: ui.report_html(folder, mtime),
    file_name="diag-report.html",
    mime="text/html",
    key="dl_html",
)
c3.download_button(
    "Markdown summary",
    data=ui.report_markdown(folder, mtime),
    file_name="diag-report.md",
    mime="text/markdown",
    key="dl_md",
)

"""Transfer: negative-transfer risk, the recommended freeze depth and transferability scores, when present."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pages' shared helpers (_common.py)

import _common as ui
import _verdict as verdict
import pandas as pd
import streamlit as st

from diag.report import figures, tables

ui.page_setup("Transfer")
report = ui.require_report()

st.title("Transfer")
st.caption(tables.report_title(report))
verdict.glossary(
    ("negative transfer", "freeze depth", "LP-FT", "RGN", "linear probe", "LogME", "LEEP", "NCE")
)

NOT_IN_REPORT = (
    "Transferability is not in this report: run `diag diagnose` with a labelled target (an image folder "
    "with one subfolder per class, or a table with a label column) to get transferability scores, the "
    "negative-transfer risk and a freeze depth."
)
no_transfer = report.transferability is None and report.negative_transfer is None and report.freeze is None
if no_transfer and (tables.is_source_free(report) or report.reference is not None):
    what = "a source-free report" if tables.is_source_free(report) else "a check against a saved reference"
    st.info(
        f"Transferability is not computed for {what}: it scores the backbone on a labelled target, which "
        "`diag diagnose --source-free` and `diag check` do not do. Run `diag diagnose` with a labelled "
        "target for transferability, the negative-transfer risk and a freeze depth."
    )
    st.stop()
skipped = tables.transfer_skipped(report)
score_names = tables.layer_score_names(report)
neg, fr, tr = report.negative_transfer, report.freeze, report.transferability
if neg is None and fr is None and tr is None and not score_names:
    st.info(NOT_IN_REPORT)
    st.stop()
if skipped and neg is None and fr is None:
    st.info(f"Transferability was not computed for this report: {skipped}")
    st.caption(NOT_IN_REPORT)
    st.stop()

# -- negative transfer ---------------------------------------------------------------------------------
st.subheader("Negative-transfer risk")
if neg is not None:
    risk = str(neg.risk or "unknown").lower()
    text = f"Negative-transfer risk: **{risk.upper()}**" + (
        f" (probability {tables.fmt(neg.probability, '.2f')})" if neg.probability is not None else ""
    )
    {"high": st.error, "medium": st.warning, "low": st.success}.get(risk, st.info)(text)
    if neg.evidence:
        st.markdown("\n".join(f"- {e}" for e in neg.evidence))
    if neg.rule:
        st.caption(f"Rule: {neg.rule}")
    rest = {k: v for k, v in neg.to_dict().items() if k not in ("risk", "probability", "evidence", "rule")}
    if rest:
        with st.expander("Signals"):
            st.json(rest)
else:
    st.caption("Not in this report.")

# -- freeze depth --------------------------------------------------------------------------------------
st.subheader("Freeze depth")
if fr is not None:
    c1, c2, c3 = st.columns(3)
    c1.metric("Blocks to freeze (from the input)", tables.fmt(fr.depth))
    c2.metric("Blocks in the backbone", tables.fmt(fr.n_blocks))
    lr = fr.lr_scheme
    c3.metric(
        "Learning-rate scheme",
        lr if isinstance(lr, str) else ("see below" if lr else "n/a"),
        help=verdict.term_help("LP-FT"),
    )
    frozen, tune = [str(t) for t in fr.frozen or []], [str(t) for t in fr.tune or []]
    if frozen:
        st.markdown("Frozen: " + ", ".join(f"`{t}`" for t in frozen))
    if tune:
        st.markdown("Tuned: " + ", ".join(f"`{t}`" for t in tune))
    if fr.rationale:
        st.markdown("\n".join(f"- {r}" for r in fr.rationale))
    if isinstance(lr, dict):
        st.json(lr)
    rgn = (fr.evidence or {}).get("rgn")
    if isinstance(rgn, dict) and rgn:
        rgn_rows = [
            {
                "block": str(b),
                "relative gradient norm": float(v),
                "kept": "frozen" if b in frozen else "tuned",
            }
            for b, v in rgn.items()
            if isinstance(v, (int, float))
        ]
        st.plotly_chart(
            figures.bar_figure(
                rgn_rows,
                "block",
                "relative gradient norm",
                "Where the target pulls (Auto-RGN, 1 = strongest)",
            ),
            key="fr_rgn_fig",
        )
    st.caption("The **Fine-tune** page preselects this depth: run it to check the recommendation.")
else:
    st.caption("Not in this report.")

# -- transferability -----------------------------------------------------------------------------------
st.subheader("Transferability")
if skipped:
    st.info(f"Not computed: {skipped}")
rows = tables.transfer_score_rows(report)
if rows and tr is not None:
    where = tables.transfer_where(report)
    if where:
        st.markdown(
            f"Scores of **{where}** (higher is better)"
            + (f"; best layer by linear probe: **{tr.best_layer}**." if tr.best_layer else ".")
        )
    st.dataframe(
        pd.DataFrame(rows), hide_index=True, key="tr_scores", column_config=verdict.number_columns(rows)
    )
if score_names:
    default = "linear_probe_accuracy" if "linear_probe_accuracy" in score_names else score_names[0]
    score = st.selectbox(
        "Score along the depth", score_names, index=score_names.index(default), key="tr_score"
    )
    fig = figures.transfer_layers_figure(report, score)
    if fig is not None:
        st.plotly_chart(fig, key="tr_layers_fig")
    st.caption(
        "Pretrained features against the random-init twin of the same architecture (the no-transfer "
        "baseline); the shaded blocks are those the freeze recommendation keeps frozen."
    )
    with st.expander("Per-layer table"):
        layer_rows = tables.layer_transfer_rows(report)
        st.dataframe(
            pd.DataFrame(layer_rows),
            hide_index=True,
            key="tr_layers",
            column_config=verdict.number_columns(layer_rows),
        )

# Anything else a later version adds (a backbone ranking, ...): shown generically.
extra = {} if tr is None else {k: v for k, v in tr.to_dict().items() if k not in tables.TRANSFER_KNOWN}
for name in ("ranking",):
    if report.sections.get(name) is not None:
        extra[name] = report.sections[name]
if extra:
    for i, (title, trows) in enumerate(tables.tables_of(extra, "more")):
        st.markdown(f"**{title.removeprefix('more / ').replace('_', ' ')}**")
        st.dataframe(pd.DataFrame(trows), hide_index=True, key=f"tr_extra_{i}")
        numeric = tables.numeric_columns(trows)
        label_col = next((c for c in trows[0] if c not in numeric), None) if trows else None
        if numeric and label_col and len(trows) > 1:
            metric = st.selectbox("Chart", numeric, key=f"tr_extra_metric_{i}")
            st.plotly_chart(figures.bar_figure(trows, label_col, metric, metric), key=f"tr_extra_fig_{i}")

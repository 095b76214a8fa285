"""Transfer: negative-transfer risk, the recommended freeze depth and transferability scores, when present."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pages' shared helpers (_common.py)

import _common as ui
import pandas as pd
import streamlit as st

from diag.report import export

ui.page_setup("Transfer")
report = ui.require_report()

st.title("Transfer")
st.caption(export.report_title(report))

NOT_IN_REPORT = (
    "Transferability is not in this report: run `diag diagnose` with a labelled target (an image folder "
    "with one subfolder per class, or a table with a label column) to get transferability scores, the "
    "negative-transfer risk and a freeze depth."
)
sections = {name: report.sections.get(name) for name in export.TRANSFER_SECTIONS}
skipped = export.transfer_skipped(report)
score_names = export.layer_score_names(report)
if not any(v is not None for v in sections.values()) and not score_names:
    st.info(NOT_IN_REPORT)
    st.stop()
if skipped and sections["negative_transfer"] is None and sections["freeze"] is None:
    st.info(f"Transferability was not computed for this report: {skipped}")
    st.caption(NOT_IN_REPORT)
    st.stop()


def as_list(v: object) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return [str(v)]


# -- negative transfer ---------------------------------------------------------------------------------
neg = sections["negative_transfer"]
st.subheader("Negative-transfer risk")
if isinstance(neg, dict):
    risk = str(neg.get("risk", "unknown")).lower()
    prob = neg.get("probability")
    text = f"Negative-transfer risk: **{risk.upper()}**" + (
        f" (probability {export.fmt(prob, '.2f')})" if prob is not None else ""
    )
    {"high": st.error, "medium": st.warning, "low": st.success}.get(risk, st.info)(text)
    evidence = as_list(neg.get("evidence"))
    if evidence:
        st.markdown("\n".join(f"- {e}" for e in evidence))
    if neg.get("rule"):
        st.caption(f"Rule: {neg['rule']}")
    rest = {k: v for k, v in neg.items() if k not in ("risk", "probability", "evidence", "rule")}
    if rest:
        with st.expander("Signals"):
            st.json(rest)
else:
    st.caption("Not in this report.")

# -- freeze depth --------------------------------------------------------------------------------------
fr = sections["freeze"]
st.subheader("Freeze depth")
if isinstance(fr, dict):
    c1, c2, c3 = st.columns(3)
    c1.metric("Blocks to freeze (from the input)", export.fmt(fr.get("depth")))
    c2.metric("Blocks in the backbone", export.fmt(fr.get("n_blocks")))
    lr = fr.get("lr_scheme")
    c3.metric("Learning-rate scheme", lr if isinstance(lr, str) else ("see below" if lr else "n/a"))
    frozen, tune = as_list(fr.get("frozen")), as_list(fr.get("tune"))
    if frozen:
        st.markdown("Frozen: " + ", ".join(f"`{t}`" for t in frozen))
    if tune:
        st.markdown("Tuned: " + ", ".join(f"`{t}`" for t in tune))
    rationale = as_list(fr.get("rationale"))
    if rationale:
        st.markdown("\n".join(f"- {r}" for r in rationale))
    if isinstance(lr, dict):
        st.json(lr)
    ev = fr.get("evidence") if isinstance(fr.get("evidence"), dict) else {}
    rgn = ev.get("rgn") if isinstance(ev.get("rgn"), dict) else None
    if rgn:
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
            export.bar_figure(
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
rows = export.transfer_score_rows(report)
tr = sections["transferability"] if isinstance(sections["transferability"], dict) else {}
if rows:
    where = " at ".join(str(tr[k]) for k in ("backbone", "layer") if tr.get(k))
    if where:
        st.markdown(
            f"Scores of **{where}** (higher is better)"
            + (f"; best layer by linear probe: **{tr['best_layer']}**." if tr.get("best_layer") else ".")
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="tr_scores")
if score_names:
    default = "linear_probe_accuracy" if "linear_probe_accuracy" in score_names else score_names[0]
    score = st.selectbox(
        "Score along the depth", score_names, index=score_names.index(default), key="tr_score"
    )
    fig = export.transfer_layers_figure(report, score)
    if fig is not None:
        st.plotly_chart(fig, key="tr_layers_fig")
    st.caption(
        "Pretrained features against the random-init twin of the same architecture (the no-transfer "
        "baseline); the shaded blocks are those the freeze recommendation keeps frozen."
    )
    with st.expander("Per-layer table"):
        st.dataframe(pd.DataFrame(export.layer_transfer_rows(report)), hide_index=True, key="tr_layers")

# Anything else a later version adds (a backbone ranking, ...): shown generically.
known = {"backbone", "layer", "scores", "random_init_scores", "best_layer", "layers", "random_init_layers"}
known |= {"random_init", "skipped"}
extra = {k: v for k, v in tr.items() if k not in known}
for name in ("ranking",):
    if report.sections.get(name) is not None:
        extra[name] = report.sections[name]
if extra:
    for i, (title, trows) in enumerate(export.tables_of(extra, "more")):
        st.markdown(f"**{title.removeprefix('more / ').replace('_', ' ')}**")
        st.dataframe(pd.DataFrame(trows), hide_index=True, key=f"tr_extra_{i}")
        numeric = export.numeric_columns(trows)
        label_col = next((c for c in trows[0] if c not in numeric), None) if trows else None
        if numeric and label_col and len(trows) > 1:
            metric = st.selectbox("Chart", numeric, key=f"tr_extra_metric_{i}")
            st.plotly_chart(export.bar_figure(trows, label_col, metric, metric), key=f"tr_extra_fig_{i}")

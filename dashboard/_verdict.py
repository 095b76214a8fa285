"""Decision first: the verdict cards (shift, negative-transfer risk, freeze depth), the one lead chart, a
glossary of the terms the pages use, and readable number formats. Shared by Home and Shift (and Transfer,
Fine-tune for the glossary); like every page helper it lays out what the ``diag`` library computed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas  # noqa: F401  (imported here, once: plotly imports it lazily, racy under a threaded server)
import plotly.graph_objects as go
import streamlit as st

from diag.report import tables

# ------------------------------------------------------------------------------------------------------
# Glossary: one or two sentences per term, with the paper it comes from.

TERMS: dict[str, str] = {
    "shift": "Whether the target's features are distributed differently from the source's at a layer, by "
    "a kernel two-sample test (MMD², permutation p-value, Holm-corrected over layers).",
    "onset": "The first layer (from the input) where the shift is significant. Early onset: the inputs "
    "differ (pixels, style); late onset only: the content or labels differ.",
    "MMD²": "Squared maximum mean discrepancy (Gretton et al. 2012): the distance between the mean "
    "kernel embeddings of source and target. 0 means the same distribution; its p-value comes from "
    "permutations of the pooled sample.",
    "C2ST": "Classifier two-sample test (Lopez-Paz & Oquab 2017): a classifier learns to tell source from "
    "target on held-out folds. AUC 0.5 = indistinguishable, 1.0 = fully separable; it saturates at 1 "
    "for any large shift, so it cannot rank two strong shifts.",
    "Fréchet": "Fréchet (2-Wasserstein) distance between Gaussians fitted to source and target features, "
    "as in FID (Heusel et al. 2017). Relative: divided by the total variance tr Σ_s + tr Σ_t, so layers "
    "compare; 0 = same mean and covariance. It keeps growing where the AUC saturates.",
    "CORAL": "Squared distance between the source and target feature covariances (Deep CORAL, Sun & "
    "Saenko 2016): a second-order shift.",
    "OOD": "Per-sample out-of-distribution score: a target sample's distance to its k-th nearest source "
    "neighbour, divided by the source's own typical k-NN distance (Sun et al. 2022). About 1 = typical "
    "of the source; 2 = twice as far as source samples are from each other.",
    "negative transfer": "Fine-tuning from the pretrained weights ending worse than training the same "
    "architecture from scratch (Wang et al. 2019). The risk compares the pretrained features with those "
    "of the random-init twin on the labelled target.",
    "freeze depth": "How many blocks to keep frozen from the input side when fine-tuning: 0 tunes "
    "everything, all blocks is a linear probe. diag picks the shallowest depth whose features are "
    "near the best linear-probe accuracy, and checks the gradient reach (RGN).",
    "LP-FT": "Linear probe, then fine-tune (Kumar et al. 2022): train only the new head for the first "
    "epochs, then unfreeze. A random head's large gradients then do not distort good pretrained "
    "features; recommended for good features under a large shift.",
    "LogME": "Log marginal evidence of a Bayesian linear model from the features to the labels (You et "
    "al. 2021): higher = the labels are more linearly predictable from these features.",
    "LEEP": "Log expected empirical prediction (Nguyen et al. 2020): how well the source model's class "
    "predictions, re-mapped to target labels, predict the target labels. Higher is better.",
    "NCE": "Negative conditional entropy (Tran et al. 2019) of the target labels given the source "
    "model's predicted labels; closer to 0 is better.",
    "RGN": "Relative gradient norm per block (Auto-RGN, Lee et al. 2023, surgical fine-tuning): the "
    "gradient norm of a block's weights on the target, divided by their norm. 1 marks where the target "
    "pulls hardest; those blocks should be tuned.",
    "linear probe": "Accuracy of a logistic regression on frozen features (cross-validated): what the "
    "features give without any fine-tuning.",
}


def term_help(*names: str) -> str:
    """The glossary entries of ``names`` as one ``help=`` tooltip text."""
    return "\n\n".join(f"**{n}**: {TERMS[n]}" for n in names if n in TERMS)


def glossary(names: Iterable[str], label: str = "What do these terms mean?") -> None:
    """A popover with the short definition of each term in ``names``."""
    with st.popover(label):
        for n in names:
            if n in TERMS:
                st.markdown(f"**{n}**: {TERMS[n]}")


# ------------------------------------------------------------------------------------------------------
# Numbers


def number_columns(rows: Sequence[dict[str, Any]] | Any, digits: int = 3) -> dict[str, Any]:
    """A ``column_config`` that shows every float column with ``digits`` significant digits."""
    if hasattr(rows, "columns"):  # a DataFrame
        names = [c for c in rows.columns if str(rows[c].dtype).startswith("float")]
    else:
        names = tables.numeric_columns(list(rows)) if rows else []
    return {c: st.column_config.NumberColumn(format=f"%.{digits}g") for c in names}


# ------------------------------------------------------------------------------------------------------
# Verdicts


def graded_effect(report: Any) -> dict[str, Any] | None:
    """The report's graded (non-saturating) effect section, when it has one (``graded_effect``: the
    relative energy distance, 0 = no shift, with ``value``, ``ci``, ``layer`` and per-layer ``layers``
    entries ``{value, ci}``); None for reports written before it existed."""
    graded = report.sections.get("graded_effect")
    if not isinstance(graded, dict) or graded.get("value") is None:
        return None
    return graded


def verdict_cards(report: Any) -> None:
    """Three cards in a row: the shift, the negative-transfer risk, the freeze depth (each with help)."""
    shift, neg, fr = report.shift, report.negative_transfer, report.freeze
    c1, c2, c3 = st.columns(3)
    with c1.container(border=True):
        st.markdown("**Shift**")
        onset = shift.onset_layer
        text = (
            f"**Yes**, from layer `{onset}` ({shift.level or 'level unknown'})"
            if shift.is_shift
            else "**No** significant shift"
        )
        (st.warning if shift.is_shift else st.success)(text)
        st.caption(f"p = {tables.fmt(shift.p_value, '.2g')} (α = {tables.fmt(shift.alpha)})")
        glossary(("shift", "onset", "MMD²"), "What is this?")
    with c2.container(border=True):
        st.markdown("**Negative-transfer risk**")
        if neg is not None and neg.risk:
            risk = str(neg.risk).lower()
            prob = f" (p ≈ {tables.fmt(neg.probability, '.2f')})" if neg.probability is not None else ""
            {"high": st.error, "medium": st.warning, "low": st.success}.get(risk, st.info)(
                f"**{risk.upper()}**{prob}"
            )
            st.caption("Pretrained weights vs training from scratch.")
        else:
            st.info("Not computed")
            st.caption("Needs a labelled target.")
        glossary(("negative transfer",), "What is this?")
    with c3.container(border=True):
        st.markdown("**Freeze depth**")
        if fr is not None and fr.depth is not None:
            scheme = f", then {fr.lr_scheme.upper()}" if fr.lr_scheme == "lp-ft" else ""
            st.info(f"Freeze **{fr.depth}** of {tables.fmt(fr.n_blocks)} blocks{scheme}")
            st.caption("Apply it on the **Fine-tune** page.")
        else:
            st.info("Not computed")
            st.caption("Needs a labelled target.")
        glossary(("freeze depth", "LP-FT", "RGN"), "What is this?")


def lead_figure(report: Any) -> tuple[Any, str]:
    """The one chart that says the most, and a caption: the graded effect per layer when the report has
    it, else the relative Fréchet distance per layer (both keep growing where the C2ST AUC saturates),
    bars coloured by significance with a legend, the onset marked."""
    rows = tables.layer_rows(report)
    graded = graded_effect(report)
    per_layer = graded.get("layers") if graded else None
    errors: list[tuple[float | None, float | None]] = [(None, None)] * len(rows)
    if isinstance(per_layer, dict) and per_layer:
        name = "relative energy distance"
        entries = [
            per_layer.get(r["layer"]) if isinstance(per_layer.get(r["layer"]), dict) else {} for r in rows
        ]
        values = [_num(e.get("value")) for e in entries]
        errors = [tuple([*map(_num, e.get("ci") or []), None, None][:2]) for e in entries]  # type: ignore[misc]
        caption = (
            "Graded effect per layer: relative energy distance with its 95% CI (0 = no shift). Unlike the "
            "C2ST AUC it keeps growing as the target moves further from the source."
        )
    else:
        name = "relative Fréchet distance"
        values = [_num(r["frechet_relative"]) for r in rows]
        caption = (
            "Relative Fréchet distance per layer (0 = same mean and covariance): unlike the C2ST AUC it "
            "does not saturate at 1, so a larger bar is a larger shift."
        )
    fig = go.Figure()
    for sig, colour, label in ((True, "#ff7f0e", "significant shift"), (False, "#9e9e9e", "not significant")):
        sel = [i for i, r in enumerate(rows) if bool(r["significant"]) == sig]
        fig.add_trace(
            go.Bar(
                x=[rows[i]["layer"] for i in sel],
                y=[values[i] for i in sel],
                name=label,
                marker_color=colour,
                text=[tables.fmt(values[i], ".2g") for i in sel],
                textposition="inside",
                error_y=_error_bars([values[i] for i in sel], [errors[i] for i in sel]),
                hovertemplate="%{x}: %{y:.3g}<extra>" + label + "</extra>",
            )
        )
    onset = report.shift.onset_layer
    if onset in report.layer_names:
        fig.add_annotation(x=onset, y=1.0, yref="paper", text=f"onset: {onset}", showarrow=False,
                           yanchor="bottom", font={"color": "#d62728"})  # fmt: skip
    fig.update_layout(
        height=340, template="plotly_white", yaxis_title=name, showlegend=True,
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
        legend={"orientation": "h", "x": 0, "y": 1.12, "yanchor": "bottom"},
        xaxis={"categoryorder": "array", "categoryarray": report.layer_names},
    )  # fmt: skip
    return fig, caption


def _error_bars(values: list[float | None], cis: list[tuple[float | None, float | None]]) -> Any:
    """Plotly asymmetric error bars from (low, high) intervals, or None when there are none."""
    if not any(lo is not None and hi is not None for lo, hi in cis):
        return None
    up = [
        None if v is None or hi is None else max(0.0, hi - v) for v, (_, hi) in zip(values, cis, strict=True)
    ]
    down = [
        None if v is None or lo is None else max(0.0, v - lo) for v, (lo, _) in zip(values, cis, strict=True)
    ]
    return {"type": "data", "symmetric": False, "array": up, "arrayminus": down, "color": "#555555"}


def _num(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None

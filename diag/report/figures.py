"""The report's charts (Plotly): the dashboard pages and the HTML export draw the same figures from here.

- shift along the depth: :func:`mmd_figure`, :func:`auc_figure` (C2ST AUC with its CI band and the
  0.5 chance line), :func:`frechet_figure`, :func:`ood_figure` (all four: :func:`shift_figures`); the
  onset layer is shaded in each;
- source-free: :func:`source_free_figure` (BatchNorm W2 per block with the null band of target splits);
- a check history: :func:`history_figure` (an effect per layer over the checks);
- labels: :func:`label_shift_figure`, :func:`class_conditional_figure`;
- transfer: :func:`transfer_layers_figure`, and :func:`bar_figure`/:func:`layer_line_figure` for the
  generic tables of :mod:`diag.report.tables`;
- the joint embedding map: :func:`embedding_figure`, and :func:`selection_rows` to map a selection back;
- fine-tuning: :func:`finetune_curves_figure` (one run's loss and accuracy) and
  :func:`finetune_comparison_figure` (several runs).

The numbers come from the view-model (:mod:`diag.report.tables`), never from the report's JSON.
Plotly is an optional dependency (``pip install 'diag[dashboard]'``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from diag.errors import require
from diag.report.history import CheckRecord, history_series
from diag.report.tables import fmt, is_source_free, layer_rows, layer_scores, source_free_rows

if TYPE_CHECKING:
    from diag.report.schema import Report

__all__ = [
    "auc_figure",
    "bar_figure",
    "class_conditional_figure",
    "embedding_figure",
    "finetune_comparison_figure",
    "finetune_curves_figure",
    "frechet_figure",
    "history_figure",
    "label_shift_figure",
    "layer_line_figure",
    "mmd_figure",
    "ood_figure",
    "selection_rows",
    "shift_figures",
    "source_free_figure",
    "transfer_layers_figure",
]

_SOURCE = "#1f77b4"
_TARGET = "#ff7f0e"
_GREY = "#9e9e9e"
_ONSET = "rgba(214, 39, 40, 0.12)"


def _go() -> Any:
    require("plotly", feature="Charts", extra="dashboard")
    import plotly.graph_objects as go

    return go


def _layout(fig: Any, title: str, ytitle: str, height: int = 320) -> Any:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        height=height,
        margin={"l": 60, "r": 40, "t": 50, "b": 60},
        yaxis_title=ytitle,
        modebar={"orientation": "v"},
        hovermode="x unified",
        legend={"orientation": "h", "y": -0.3},
        template="plotly_white",
    )
    return fig


def _mark_onset(fig: Any, report: Report) -> None:
    onset = report.shift.onset_layer
    names = report.layer_names
    if onset in names:
        i = names.index(onset)
        fig.add_vrect(x0=i - 0.5, x1=i + 0.5, fillcolor=_ONSET, line_width=0, layer="below")
        fig.add_annotation(
            x=onset, y=1.0, yref="paper", text=f"onset: {onset}", showarrow=False, yanchor="bottom",
            font={"color": "#d62728"},
        )  # fmt: skip


def mmd_figure(report: Report) -> Any:
    """MMD² per layer (bars), significant layers (Holm-adjusted p ≤ alpha) coloured, onset shaded."""
    go = _go()
    rows = layer_rows(report)
    alpha = report.shift.alpha
    fig = go.Figure(
        go.Bar(
            x=[r["layer"] for r in rows],
            y=[r["mmd2"] for r in rows],
            marker_color=[_TARGET if r["significant"] else _GREY for r in rows],
            customdata=[[fmt(r["p_value"]), fmt(r["p_adjusted"])] for r in rows],
            hovertemplate="MMD² %{y:.4f}<br>p %{customdata[0]}, Holm %{customdata[1]}<extra></extra>",
            name="MMD²",
        )
    )
    _mark_onset(fig, report)
    return _layout(fig, f"MMD² per layer (coloured: significant at α = {alpha})", "MMD² (unbiased)")


def auc_figure(report: Report) -> Any:
    """C2ST AUC per layer with its 95% CI band and the 0.5 chance line, onset shaded."""
    go = _go()
    rows = layer_rows(report)
    x = [r["layer"] for r in rows]
    lo = [r["auc_low"] for r in rows]
    hi = [r["auc_high"] for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=hi, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"))
    fig.add_trace(
        go.Scatter(
            x=x, y=lo, mode="lines", line={"width": 0}, fill="tonexty", fillcolor="rgba(255,127,14,0.2)",
            name="95% CI", hoverinfo="skip",
        )
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[r["c2st_auc"] for r in rows],
            mode="lines+markers",
            line={"color": _TARGET},
            name="C2ST AUC",
            customdata=[[fmt(a, ".2f"), fmt(b, ".2f")] for a, b in zip(lo, hi, strict=True)],
            hovertemplate="AUC %{y:.3f} [%{customdata[0]}, %{customdata[1]}]<extra></extra>",
        )
    )
    fig.add_hline(y=0.5, line_dash="dash", line_color=_GREY, annotation_text="chance (no shift)")
    _mark_onset(fig, report)
    fig.update_yaxes(range=[0.4, 1.02])
    return _layout(fig, "Domain-classifier AUC per layer (0.5 = no shift, 1 = separable)", "C2ST AUC")


def frechet_figure(report: Report) -> Any:
    """Relative Fréchet distance per layer (comparable across layers), onset shaded."""
    go = _go()
    rows = layer_rows(report)
    fig = go.Figure(
        go.Scatter(
            x=[r["layer"] for r in rows],
            y=[r["frechet_relative"] for r in rows],
            mode="lines+markers",
            line={"color": _SOURCE},
            name="Fréchet (relative)",
            hovertemplate="%{y:.3f}<extra></extra>",
        )
    )
    _mark_onset(fig, report)
    return _layout(fig, "Fréchet distance / (tr Σ_s + tr Σ_t) per layer", "relative Fréchet")


def ood_figure(report: Report) -> Any:
    """Median and 90th percentile of the target's per-sample OOD scores per layer (1 = like the source)."""
    go = _go()
    rows = layer_rows(report)
    x = [r["layer"] for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[r["ood_median"] for r in rows], mode="lines+markers", name="median"))
    fig.add_trace(
        go.Scatter(x=x, y=[r["ood_p90"] for r in rows], mode="lines+markers", name="90th percentile")
    )
    fig.add_hline(y=1.0, line_dash="dash", line_color=_GREY, annotation_text="typical source sample")
    _mark_onset(fig, report)
    return _layout(fig, "Target OOD score per layer (1 = typical of the source)", "OOD score")


def source_free_figure(report: Report) -> Any:
    """BatchNorm W2 per block against the null band (median to 95th percentile of target splits)."""
    go = _go()
    rows = source_free_rows(report)
    x = [r["layer"] for r in rows]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=x, y=[r["null_p95"] for r in rows], mode="lines", line={"width": 0}, showlegend=False,
                   hoverinfo="skip")
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=x, y=[r["null_median"] for r in rows], mode="lines", line={"color": _GREY, "dash": "dot"},
            fill="tonexty", fillcolor="rgba(158,158,158,0.25)", name="null band (median to 95%)",
        )
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[r["bn_w2"] for r in rows],
            mode="lines+markers",
            line={"color": _TARGET},
            marker={"color": [_TARGET if r["significant"] else _GREY for r in rows], "size": 9},
            name="W2 to the running statistics",
            customdata=[[fmt(r["p_value"]), fmt(r["p_adjusted"])] for r in rows],
            hovertemplate="W2 %{y:.4f}<br>p %{customdata[0]}, Holm %{customdata[1]}<extra></extra>",
        )
    )
    _mark_onset(fig, report)
    return _layout(
        fig, "BatchNorm W2 per block vs the pretraining statistics (band: splits of the target)", "mean W2"
    )


def shift_figures(report: Report) -> dict[str, Any]:
    """The per-layer profile charts, by key: ``mmd2``, ``c2st_auc``, ``frechet_relative``, ``ood``; a
    source-free report has the one chart its statistics support, ``bn_w2``."""
    if is_source_free(report):
        return {"bn_w2": source_free_figure(report)}
    return {
        "mmd2": mmd_figure(report),
        "c2st_auc": auc_figure(report),
        "frechet_relative": frechet_figure(report),
        "ood": ood_figure(report),
    }


def label_shift_figure(report: Report) -> Any | None:
    """Class proportions of source and target side by side; None when the report has no label shift."""
    ls = report.label_shift
    if ls is None or not ls.classes:
        return None
    go = _go()
    classes = [str(c) for c in ls.classes]
    fig = go.Figure()
    for side, color in (("source", _SOURCE), ("target", _TARGET)):
        fig.add_trace(
            go.Bar(
                x=classes,
                y=ls[f"{side}_proportions"],
                customdata=ls[f"{side}_counts"],
                name=side,
                marker_color=color,
                hovertemplate=f"{side}: %{{y:.3f}} (%{{customdata}})<extra></extra>",
            )
        )
    fig.update_layout(barmode="group")
    title = (
        f"Label distribution (total variation {fmt(ls.total_variation, '.3f')}, "
        f"chi-square p = {fmt(ls.p_value, '.3g')})"
    )
    _layout(fig, title, "share of samples")
    fig.update_layout(xaxis_title="class")
    return fig


def class_conditional_figure(report: Report) -> Any | None:
    """Heat map of the per-class MMD² (class x layer), hover with the Holm-adjusted p; None when absent."""
    cc = report.class_conditional
    layers = {} if cc is None else cc.layers
    if not layers:
        return None
    go = _go()
    names = [n for n in report.layer_names if n in layers] or list(layers)
    classes: list[str] = []
    for n in names:
        for r in layers[n]:
            if str(r.label) not in classes:
                classes.append(str(r.label))
    z, text = [], []
    for c in classes:
        zr: list[Any] = []
        tr: list[str] = []
        for n in names:
            row: Mapping[str, Any] = next((r for r in layers[n] if str(r.label) == c), {})
            zr.append(row.get("mmd2"))
            tr.append(f"p(Holm) {fmt(row.get('p_adjusted'))}, n {row.get('n_source')}/{row.get('n_target')}")
        z.append(zr)
        text.append(tr)
    fig = go.Figure(
        go.Heatmap(
            z=z, x=names, y=classes, text=text, colorscale="Oranges", colorbar={"title": "MMD²"},
            hovertemplate="class %{y} at %{x}<br>MMD² %{z:.4f}<br>%{text}<extra></extra>",
        )
    )  # fmt: skip
    _layout(
        fig, "Class-conditional shift: MMD² within each class", "class", height=max(300, 28 * len(classes))
    )
    fig.update_layout(hovermode="closest")
    return fig


def bar_figure(rows: Sequence[Mapping[str, Any]], x: str, y: str, title: str) -> Any:
    """A bar chart of column ``y`` against column ``x`` (for the generic section tables)."""
    go = _go()
    fig = go.Figure(go.Bar(x=[str(r.get(x)) for r in rows], y=[r.get(y) for r in rows], name=y))
    _layout(fig, title, y)
    fig.update_layout(xaxis_title=x)
    return fig


def layer_line_figure(rows: Sequence[Mapping[str, Any]], columns: Iterable[str], title: str) -> Any:
    """Lines of the given numeric ``columns`` across ``rows[i]["layer"]`` (per-layer transfer scores)."""
    go = _go()
    fig = go.Figure()
    x = [r.get("layer") for r in rows]
    for c in columns:
        fig.add_trace(go.Scatter(x=x, y=[r.get(c) for r in rows], mode="lines+markers", name=c))
    return _layout(fig, title, "score")


_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf",
)  # fmt: skip


def embedding_figure(
    coords: Any,
    n_source: int,
    *,
    colour_by: str = "domain",
    labels: Sequence[str | None] | None = None,
    target_scores: Any = None,
    hover: Sequence[str] | None = None,
    title: str = "",
    rows: Sequence[int] | None = None,
    scores: Any = None,
    score_name: str = "score",
    highlight: Sequence[int] | None = None,
) -> tuple[Any, list[list[int]]]:
    """A WebGL scatter (``Scattergl``) of a joint source + target map.

    Parameters
    ----------
    coords : array-like of shape (n_source + n_target, 2)
        Source rows first (see :class:`diag.stats.projection.JointProjection`).
    n_source : int
    colour_by : {"domain", "label", "ood", "score", "cluster"}
        ``label`` draws one colour per class, circles for source and crosses for target; ``ood``
        colours target points by ``target_scores`` and draws the source grey (the score measures a target
        sample's distance to the source; a typical source sample scores about 1); ``score`` colours every
        point with a finite value in ``scores`` (named ``score_name``) and the others grey; ``cluster``
        colours points by ``labels`` (one colour per value) and points whose label is None grey.
    labels : sequence of str or None, length n_source + n_target, optional
    target_scores : array-like of shape (n_target,), optional
    hover : sequence of str, optional
        Hover text per point.
    rows : sequence of int, optional
        The value each point carries as ``customdata`` (its row in the caller's full arrays when
        ``coords`` is a subsample); ``range(len(coords))`` by default.
    scores : array-like of shape (n_source + n_target,), optional, for ``colour_by="score"``
    highlight : sequence of int, optional
        Positions in ``coords`` drawn again as open black rings on top (a selection).

    Returns
    -------
    figure : plotly Figure
    trace_rows : list of list of int
        For each trace, the row of ``coords`` of each of its points (maps a selection back to samples).
    """
    go = _go()
    xy = np.asarray(coords, dtype=float)
    n = len(xy)
    pos = np.arange(n)
    custom = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    is_src = pos < n_source
    text = list(hover) if hover is not None else [""] * n
    traces: list[tuple[dict[str, Any], np.ndarray]] = []
    has_scale = False
    if colour_by in ("label", "cluster") and labels is not None:
        labs = np.array(["" if lab is None else str(lab) for lab in labels])
        none: np.ndarray = np.array([lab is None for lab in labels], dtype=bool)
        if colour_by == "cluster" and none.any():
            traces.append(
                ({"name": "no cluster", "marker": {"color": _GREY, "size": 5, "opacity": 0.35}}, pos[none])
            )
        classes = list(dict.fromkeys(str(lab) for lab in labels if lab is not None))
        is_tgt: np.ndarray = ~is_src
        sides = (("source", is_src, "circle"), ("target", is_tgt, "x"))
        for i, c in enumerate(classes):
            col = _PALETTE[i % len(_PALETTE)]
            of_c = (labs == c) & ~none
            for side, mask, symbol in sides if colour_by == "label" else (("", of_c, "circle"),):
                sel = pos[mask & of_c]
                if len(sel):
                    traces.append(
                        ({"name": f"{c} ({side})" if side else c, "legendgroup": c,
                          "marker": {"color": col, "symbol": symbol, "size": 6, "opacity": 0.8}}, sel)
                    )  # fmt: skip
    elif colour_by in ("ood", "score") and (target_scores is not None or scores is not None):
        if colour_by == "ood":
            values = np.full(n, np.nan)
            values[~is_src] = np.asarray(target_scores, dtype=float)
            name, scale = "OOD score", "YlOrRd"
        else:
            values, name, scale = np.asarray(scores, dtype=float), score_name, "Viridis"
        finite = np.isfinite(values)
        lo = float(np.nanquantile(values[finite], 0.02)) if finite.any() else 0.0
        hi = float(np.nanquantile(values[finite], 0.98)) if finite.any() else 1.0
        if colour_by == "ood":
            lo = min(1.0, hi)
        grey = "source (grey)" if colour_by == "ood" else f"no {name} (grey)"
        traces.append(({"name": grey, "marker": {"color": _GREY, "size": 5, "opacity": 0.35}}, pos[~finite]))
        traces.append(
            (
                {"name": f"target ({name})" if colour_by == "ood" else name,
                 "marker": {"color": values[finite], "colorscale": scale, "cmin": lo,
                            "cmax": max(hi, lo + 1e-9), "size": 7, "showscale": True,
                            "colorbar": {"title": {"text": name}, "x": 1.0, "xanchor": "left"}}},
                pos[finite],
            )
        )  # fmt: skip
        has_scale = True
    else:
        traces.append(
            ({"name": "source", "marker": {"color": _SOURCE, "size": 6, "opacity": 0.7}}, pos[is_src])
        )
        traces.append(
            ({"name": "target", "marker": {"color": _TARGET, "size": 6, "opacity": 0.7}}, pos[~is_src])
        )
    if highlight is not None and len(highlight):
        ring = {"color": "rgba(0,0,0,0)", "size": 10, "line": {"color": "#111111", "width": 1.5}}
        traces.append(({"name": "selected", "marker": ring}, np.asarray(highlight, dtype=np.int64)))
    fig = go.Figure()
    trace_rows: list[list[int]] = []
    for spec, sel in traces:
        fig.add_trace(
            go.Scattergl(
                x=xy[sel, 0], y=xy[sel, 1], mode="markers", customdata=custom[sel].tolist(),
                text=[text[i] for i in sel], hovertemplate="%{text}<extra></extra>", **spec,
            )
        )  # fmt: skip
        trace_rows.append(custom[sel].tolist())
    # The legend sits above the plot, in a row: never over the colour bar on the right.
    legend = {"itemsizing": "constant", "orientation": "h", "x": 0.0, "y": 1.0, "yanchor": "bottom"}
    fig.update_layout(
        title={"text": title, "x": 0.0, "y": 0.99, "yanchor": "top"}, height=600, template="plotly_white",
        dragmode="lasso", margin={"l": 20, "r": 20 if not has_scale else 80, "t": 90, "b": 20},
        legend=legend, uirevision="map",
        xaxis={"showticklabels": False, "title": None}, yaxis={"showticklabels": False, "title": None},
    )  # fmt: skip
    return fig, trace_rows


def selection_rows(points: Iterable[Mapping[str, Any]], trace_rows: Sequence[Sequence[int]]) -> list[int]:
    """Rows of the map's ``coords`` behind the points of a plotly selection event (sorted, unique).

    Uses each point's ``customdata`` (the row, set by :func:`embedding_figure`) and falls back to
    ``trace_rows[curve_number][point_index]``.
    """
    out: set[int] = set()
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, (list, tuple)) and cd:
            cd = cd[0]
        if isinstance(cd, (int, float)) and not isinstance(cd, bool):
            out.add(int(cd))
            continue
        curve, idx = p.get("curve_number"), p.get("point_index", p.get("point_number"))
        if (
            isinstance(curve, int)
            and isinstance(idx, int)
            and 0 <= curve < len(trace_rows)
            and 0 <= idx < len(trace_rows[curve])
        ):
            out.add(int(trace_rows[curve][idx]))
    return sorted(out)


def finetune_curves_figure(records: Sequence[Mapping[str, Any]], title: str = "") -> Any:
    """One run's training curves from its ``metrics.jsonl`` records: loss (left), accuracy (right).

    Step lines (``kind == "step"`` with a ``loss``) give the training loss and running accuracy against
    the step; epoch lines give the validation loss and accuracy at the step where the epoch ended.
    """
    go = _go()
    from plotly.subplots import make_subplots

    steps = [r for r in records if r.get("kind", "step") == "step" and "loss" in r]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    fig.add_trace(
        go.Scatter(x=[r.get("step") for r in steps], y=[r["loss"] for r in steps], name="train loss",
                   mode="lines", line={"color": _SOURCE}),
        row=1, col=1,
    )  # fmt: skip
    if epochs:
        fig.add_trace(
            go.Scatter(x=[r.get("step") for r in epochs], y=[r.get("val_loss") for r in epochs],
                       name="val loss", mode="lines+markers", line={"color": _TARGET}),
            row=1, col=1,
        )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=[r.get("step") for r in steps], y=[r.get("train_acc") for r in steps],
                   name="train acc", mode="lines", line={"color": _SOURCE, "dash": "dot"}),
        row=1, col=2,
    )  # fmt: skip
    if epochs:
        fig.add_trace(
            go.Scatter(x=[r.get("step") for r in epochs], y=[r.get("val_acc") for r in epochs],
                       name="val acc", mode="lines+markers", line={"color": _TARGET},
                       customdata=[r.get("epoch") for r in epochs],
                       hovertemplate="epoch %{customdata}: val acc %{y:.3f}<extra></extra>"),
            row=1, col=2,
        )  # fmt: skip
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(
        title={"text": title, "x": 0.0}, height=330, template="plotly_white",
        margin={"l": 50, "r": 20, "t": 60, "b": 50}, legend={"orientation": "h", "y": -0.25},
    )  # fmt: skip
    return fig


def finetune_comparison_figure(runs: Sequence[tuple[str, Sequence[Mapping[str, Any]], float | None]]) -> Any:
    """Several runs: validation accuracy per epoch (left) and best validation accuracy (right).

    Parameters
    ----------
    runs : sequence of (label, metrics records, best validation accuracy or None)
    """
    go = _go()
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.62, 0.38],
        subplot_titles=("validation accuracy per epoch", "best validation accuracy"),
    )  # fmt: skip
    for label, records, _best in runs:
        ep = [r for r in records if r.get("kind") == "epoch"]
        fig.add_trace(
            go.Scatter(x=[r.get("epoch") for r in ep], y=[r.get("val_acc") for r in ep], name=label,
                       mode="lines+markers", legendgroup=label),
            row=1, col=1,
        )  # fmt: skip
    fig.add_trace(
        go.Bar(
            x=[label for label, _, _ in runs], y=[best for _, _, best in runs], showlegend=False,
            text=[fmt(best, ".3f") for _, _, best in runs], textposition="auto",
            marker_color=_TARGET,
        ),
        row=1, col=2,
    )  # fmt: skip
    fig.update_xaxes(title_text="epoch", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(
        height=380, template="plotly_white", margin={"l": 50, "r": 20, "t": 60, "b": 80},
        legend={"orientation": "h", "y": -0.3},
    )  # fmt: skip
    return fig


def transfer_layers_figure(report: Report, score: str = "linear_probe_accuracy") -> Any | None:
    """One transfer score along the depth, pretrained vs random-init twin; frozen blocks shaded.

    None when no layer carries that score.
    """
    names = report.layer_names
    pre = [scores.get(score) for scores in layer_scores(report, "pretrained")]
    rnd = [scores.get(score) for scores in layer_scores(report, "random_init")]
    if all(v is None for v in pre):
        return None
    go = _go()
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=names, y=pre, mode="lines+markers", name="pretrained", line={"color": _TARGET})
    )
    if any(v is not None for v in rnd):
        fig.add_trace(
            go.Scatter(x=names, y=rnd, mode="lines+markers", name="random-init twin",
                       line={"color": _GREY, "dash": "dot"})
        )  # fmt: skip
    fr = report.freeze
    frozen = [n for n in (fr.frozen if fr else None) or [] if n in names]
    if frozen:
        last = max(names.index(n) for n in frozen)
        fig.add_vrect(
            x0=-0.5, x1=last + 0.5, fillcolor="rgba(31, 119, 180, 0.10)", line_width=0, layer="below"
        )
        fig.add_annotation(
            x=frozen[len(frozen) // 2], y=1.0, yref="paper", yanchor="bottom", showarrow=False,
            text=f"frozen ({len(frozen)} blocks)", font={"color": _SOURCE},
        )  # fmt: skip
    label = score.replace("_", " ")
    return _layout(fig, f"{label} of the target by layer", label)


def history_figure(records: Sequence[CheckRecord], metric: str = "c2st_auc") -> Any:
    """One line per layer of ``metric`` (``c2st_auc``, ``rff_mmd2``, ...) over the checks, in time order."""
    go = _go()
    fig = go.Figure()
    for layer, points in history_series(records, metric).items():
        fig.add_trace(
            go.Scatter(
                x=[t for t, _ in points], y=[v for _, v in points], mode="lines+markers", name=layer,
                hovertemplate=f"{layer}: %{{y:.4g}}<extra></extra>",
            )
        )  # fmt: skip
    if metric == "c2st_auc":
        fig.add_hline(y=0.5, line_dash="dash", line_color=_GREY, annotation_text="chance (no shift)")
    label = {"c2st_auc": "C2ST AUC", "rff_mmd2": "RFF-MMD²", "mmd2": "MMD²"}.get(metric, metric)
    fig = _layout(fig, f"{label} per layer, check by check", label)
    fig.update_layout(hovermode="closest")
    return fig

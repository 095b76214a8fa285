"""A report's charts and summaries: Plotly figures, a Markdown summary and a self-contained HTML page.

The dashboard and the exports draw the same figures from this module (pages only lay them out):

- shift along the depth: :func:`mmd_figure`, :func:`auc_figure` (C2ST AUC with its CI band and the
  0.5 chance line), :func:`frechet_figure`, :func:`ood_figure`; the onset layer is shaded in each;
- labels: :func:`label_shift_figure`, :func:`class_conditional_figure`;
- later sections, whatever their exact shape: :func:`section_tables` flattens ``transferability``,
  ``negative_transfer``, ``freeze`` and the per-layer ``transfer`` dicts into tables;
- fine-tuning: :func:`finetune_curves_figure` (one run's loss and accuracy) and
  :func:`finetune_comparison_figure` (several runs);
- :func:`report_markdown` (tables, with the AUC profile as a text bar chart) and :func:`report_html`
  (one file that opens offline: plotly.js is inlined once, about 4.8 MB).

Plotly is an optional dependency (``pip install 'diag[dashboard]'``); only the figure functions and
:func:`report_html` need it.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diag.errors import require

if TYPE_CHECKING:
    from diag.report.schema import Report

__all__ = [
    "TRANSFER_SECTIONS",
    "KeyMetric",
    "auc_figure",
    "bar_figure",
    "class_conditional_figure",
    "class_conditional_rows",
    "embedding_figure",
    "finetune_comparison_figure",
    "finetune_curves_figure",
    "fmt",
    "frechet_figure",
    "key_metrics",
    "label_shift_figure",
    "layer_line_figure",
    "layer_rows",
    "layer_score_names",
    "layer_transfer_rows",
    "mmd_figure",
    "numeric_columns",
    "ood_figure",
    "report_html",
    "report_markdown",
    "report_title",
    "section_tables",
    "selection_rows",
    "shift_figures",
    "tables_of",
    "transfer_layers_figure",
    "transfer_score_rows",
    "transfer_skipped",
]

#: Top-level report sections written by the transferability analysis (rendered when present).
TRANSFER_SECTIONS = ("transferability", "negative_transfer", "freeze")

_SOURCE = "#1f77b4"
_TARGET = "#ff7f0e"
_GREY = "#9e9e9e"
_ONSET = "rgba(214, 39, 40, 0.12)"


# ------------------------------------------------------------------------------------------------------
# Numbers and rows


def fmt(v: Any, spec: str = ".3g") -> str:
    """``v`` formatted with ``spec``; ``n/a`` for None or NaN, ``str(v)`` for non-numbers."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) and spec.endswith("g"):
        return str(v)  # counts and dimensions: never 1.28e+03
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return "n/a"
        return format(v, spec)
    return str(v)


def _ci(ci: Any, spec: str = ".2f") -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return f"[{fmt(ci[0], spec)}, {fmt(ci[1], spec)}]"
    return ""


def report_title(report: Report) -> str:
    """``source (n) vs target (n) | backbone (pretrained)``."""
    bb = report.backbone
    kind = "pretrained" if bb.get("pretrained", True) else "random-init"
    return (
        f"{report.source.get('name', 'source')} ({report.n_source}) vs "
        f"{report.target.get('name', 'target')} ({report.n_target}) | {bb.get('name', '?')} ({kind})"
    )


@dataclass(frozen=True)
class KeyMetric:
    """A headline number: ``label``, ``value``, an optional ``detail`` (a CI, ...) and the ``help`` rule."""

    label: str
    value: str
    detail: str = ""
    help: str = ""

    @property
    def text(self) -> str:
        """``value`` and ``detail`` on one line."""
        return f"{self.value} ({self.detail})" if self.detail else self.value


def key_metrics(report: Report) -> list[KeyMetric]:
    """The headline numbers: p-value, effect size with its CI, onset layer, level of the shift."""
    s = report.shift
    eff = s.get("effect") or {}
    eff_name = {"c2st_auc": "C2ST AUC"}.get(str(eff.get("name")), str(eff.get("name", "effect")))
    rules = s.get("rules") or {}
    ci = _ci(eff.get("ci"), ".3f")
    return [
        KeyMetric(
            "p-value",
            fmt(s.get("p_value"), ".3g"),
            f"α = {fmt(s.get('alpha'))}",
            str(rules.get("p_value", "")),
        ),
        KeyMetric(
            f"Effect: {eff_name} at {eff.get('layer', '?')}",
            fmt(eff.get("value"), ".3f"),
            f"95% CI {ci}" if ci else "",
            str(rules.get("effect", "")),
        ),
        KeyMetric("Onset layer", str(s.get("onset_layer") or "none"), "", str(rules.get("onset_layer", ""))),
        KeyMetric("Level", str(s.get("level") or "none"), "", str(rules.get("level", ""))),
    ]


def layer_rows(report: Report) -> list[dict[str, Any]]:
    """One row per layer (depth order) with the shift statistics, numbers kept as numbers."""
    onset = report.shift.get("onset_layer")
    sig = set(report.shift.get("significant_layers") or [])
    rows = []
    for lay in report.layers:
        x = lay.get("shift", {})
        ci = x.get("c2st_auc_ci") or [None, None]
        rows.append(
            {
                "layer": lay["name"],
                "dim": lay.get("dim"),
                "mmd2": x.get("mmd2"),
                "p_value": x.get("p_value"),
                "p_adjusted": x.get("p_adjusted"),
                "significant": lay["name"] in sig,
                "c2st_auc": x.get("c2st_auc"),
                "auc_low": ci[0],
                "auc_high": ci[1],
                "frechet_relative": x.get("frechet_relative"),
                "coral": x.get("coral"),
                "ood_median": x.get("ood_median"),
                "ood_p90": x.get("ood_p90"),
                "onset": lay["name"] == onset,
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------------
# Generic tables of the later sections (their exact shape may still change: render what is there)


def _flatten(d: Mapping[str, Any], prefix: str = "", depth: int = 2) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and depth > 0:
            # A "scores" sub-dict holds the values themselves: no prefix for them.
            sub_prefix = "" if k in ("scores", "values") else f"{key}."
            out.update(_flatten(v, sub_prefix, depth - 1))
        elif isinstance(v, (list, tuple)) and all(not isinstance(e, (Mapping, list, tuple)) for e in v):
            out[key] = ", ".join(fmt(e) if isinstance(e, float) else str(e) for e in v)
        elif isinstance(v, (Mapping, list, tuple)):
            out[key] = json.dumps(v, default=str)[:200]
        else:
            out[key] = v
    return out


def tables_of(obj: Any, title: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """Tables in JSON-like ``obj``: a list of dicts, a dict of dicts (a row per key), loose scalars."""
    if isinstance(obj, list):
        if obj and all(isinstance(e, Mapping) for e in obj):
            return [(title, [_flatten(e) for e in obj])]
        return [(title, [{"value": ", ".join(map(str, obj))}])] if obj else []
    if not isinstance(obj, Mapping):
        return [(title, [{"value": obj}])]
    found: list[tuple[str, list[dict[str, Any]]]] = []
    scalars = {
        k: v
        for k, v in obj.items()
        if not isinstance(v, (Mapping, list, tuple))
        or (isinstance(v, (list, tuple)) and all(not isinstance(e, (Mapping, list, tuple)) for e in v))
    }
    nested = {k: v for k, v in obj.items() if k not in scalars}
    if scalars:
        found.append((title, [{"field": k, "value": _flatten({k: v})[k]} for k, v in scalars.items()]))
    dict_children = {k: v for k, v in nested.items() if isinstance(v, Mapping)}
    # A dict of dicts of scalars (e.g. backbone -> scores): one row per key.
    if dict_children and all(
        all(not isinstance(x, Mapping) or k2 in ("scores", "values") for k2, x in v.items())
        for v in dict_children.values()
    ):
        found.append((title, [{"name": k, **_flatten(v)} for k, v in dict_children.items()]))
    else:
        for k, v in dict_children.items():
            found.extend(tables_of(v, f"{title} / {k}"))
    for k, v in nested.items():
        if isinstance(v, list):
            found.extend(tables_of(v, f"{title} / {k}"))
    return found


def section_tables(report: Report, name: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """The tables in top-level section ``name`` (``[]`` when the report lacks it)."""
    obj = report.sections.get(name)
    if obj is None:
        return []
    return tables_of(obj, name)


def layer_transfer_rows(report: Report) -> list[dict[str, Any]]:
    """One row per layer that has a ``transfer`` dict (flattened), in depth order; ``[]`` when none."""
    rows = []
    for lay in report.layers:
        tr = lay.get("transfer")
        if isinstance(tr, Mapping) and tr:
            rows.append({"layer": lay["name"], **_flatten(tr)})
    return rows


def _section(report: Report, name: str) -> dict[str, Any] | None:
    v = report.sections.get(name)
    return dict(v) if isinstance(v, Mapping) else None


def transfer_skipped(report: Report) -> str | None:
    """Why the transfer analysis is missing from a report that has the section (e.g. no target labels)."""
    tr = _section(report, "transferability")
    if tr and isinstance(tr.get("skipped"), str) and not tr.get("scores"):
        return str(tr["skipped"])
    return None


def transfer_score_rows(report: Report) -> list[dict[str, Any]]:
    """Scores of the pretrained backbone and its random-init twin at the report's transfer layer."""
    tr = _section(report, "transferability") or {}
    pre: Mapping[str, Any] = tr["scores"] if isinstance(tr.get("scores"), Mapping) else {}
    rnd: Mapping[str, Any] = (
        tr["random_init_scores"] if isinstance(tr.get("random_init_scores"), Mapping) else {}
    )
    rows = []
    for k in dict.fromkeys([*pre, *rnd]):
        a, b = pre.get(k), rnd.get(k)
        diff = a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
        rows.append({"score": k, "pretrained": a, "random_init": b, "difference": diff})
    return rows


def _layer_scores(lay: Mapping[str, Any], side: str) -> dict[str, Any]:
    tr = lay.get("transfer")
    if not isinstance(tr, Mapping):
        return {}
    if isinstance(tr.get(side), Mapping):
        return dict(tr[side])
    if side == "pretrained":  # a flat dict of scores, or {"scores": {...}}
        inner: Mapping[str, Any] = tr["scores"] if isinstance(tr.get("scores"), Mapping) else tr
        return {k: v for k, v in inner.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {}


def layer_score_names(report: Report) -> list[str]:
    """The transfer scores present in the per-layer ``transfer`` dicts (pretrained side), in order."""
    names: dict[str, None] = {}
    for lay in report.layers:
        names.update(dict.fromkeys(_layer_scores(lay, "pretrained")))
    return list(names)


def transfer_layers_figure(report: Report, score: str = "linear_probe_accuracy") -> Any | None:
    """One transfer score along the depth, pretrained vs random-init twin; frozen blocks shaded.

    None when no layer carries that score.
    """
    names = report.layer_names
    pre = [_layer_scores(lay, "pretrained").get(score) for lay in report.layers]
    rnd = [_layer_scores(lay, "random_init").get(score) for lay in report.layers]
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
    fr = _section(report, "freeze") or {}
    frozen = [n for n in fr.get("frozen") or [] if n in names]
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


def numeric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Columns holding numbers (bools excluded) in some row and nothing but numbers or None elsewhere."""

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    cols = list(dict.fromkeys(k for r in rows for k in r))
    return [
        c
        for c in cols
        if any(is_num(r.get(c)) for r in rows) and all(r.get(c) is None or is_num(r.get(c)) for r in rows)
    ]


# ------------------------------------------------------------------------------------------------------
# Figures


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
    onset = report.shift.get("onset_layer")
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
    alpha = report.shift.get("alpha", 0.05)
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


def shift_figures(report: Report) -> dict[str, Any]:
    """The per-layer profile charts, by key: ``mmd2``, ``c2st_auc``, ``frechet_relative``, ``ood``."""
    return {
        "mmd2": mmd_figure(report),
        "c2st_auc": auc_figure(report),
        "frechet_relative": frechet_figure(report),
        "ood": ood_figure(report),
    }


def label_shift_figure(report: Report) -> Any | None:
    """Class proportions of source and target side by side; None when the report has no label shift."""
    ls = report.label_shift
    if not ls or not ls.get("classes"):
        return None
    go = _go()
    classes = [str(c) for c in ls["classes"]]
    fig = go.Figure()
    for side, color in (("source", _SOURCE), ("target", _TARGET)):
        fig.add_trace(
            go.Bar(
                x=classes,
                y=ls.get(f"{side}_proportions"),
                customdata=ls.get(f"{side}_counts"),
                name=side,
                marker_color=color,
                hovertemplate=f"{side}: %{{y:.3f}} (%{{customdata}})<extra></extra>",
            )
        )
    fig.update_layout(barmode="group")
    title = (
        f"Label distribution (total variation {fmt(ls.get('total_variation'), '.3f')}, "
        f"chi-square p = {fmt(ls.get('p_value'), '.3g')})"
    )
    _layout(fig, title, "share of samples")
    fig.update_layout(xaxis_title="class")
    return fig


def class_conditional_figure(report: Report) -> Any | None:
    """Heat map of the per-class MMD² (class x layer), hover with the Holm-adjusted p; None when absent."""
    cc = report.class_conditional
    layers = (cc or {}).get("layers") or {}
    if not layers:
        return None
    go = _go()
    names = [n for n in report.layer_names if n in layers] or list(layers)
    classes: list[str] = []
    for n in names:
        for r in layers[n]:
            if str(r.get("label")) not in classes:
                classes.append(str(r.get("label")))
    z, text = [], []
    for c in classes:
        zr: list[Any] = []
        tr: list[str] = []
        for n in names:
            row: dict[str, Any] = next((r for r in layers[n] if str(r.get("label")) == c), {})
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


def class_conditional_rows(report: Report, layer: str) -> list[dict[str, Any]]:
    """The per-class rows of one layer (``[]`` when the report has none for it)."""
    cc = report.class_conditional or {}
    return [dict(r) for r in (cc.get("layers") or {}).get(layer, [])]


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
) -> tuple[Any, list[list[int]]]:
    """A WebGL scatter (``Scattergl``) of a joint source + target map.

    Parameters
    ----------
    coords : array-like of shape (n_source + n_target, 2)
        Source rows first (see :class:`diag.stats.projection.JointProjection`).
    n_source : int
    colour_by : {"domain", "label", "ood"}
        ``label`` draws one colour per class, circles for source and crosses for target; ``ood``
        colours target points by ``target_scores`` and draws the source grey (the score measures a target
        sample's distance to the source; a typical source sample scores about 1).
    labels : sequence of str or None, length n_source + n_target, optional
    target_scores : array-like of shape (n_target,), optional
    hover : sequence of str, optional
        Hover text per point.

    Returns
    -------
    figure : plotly Figure
    trace_rows : list of list of int
        For each trace, the row of ``coords`` of each of its points (maps a selection back to samples).
    """
    go = _go()
    import numpy as np

    xy = np.asarray(coords, dtype=float)
    n = len(xy)
    rows = np.arange(n)
    is_src = rows < n_source
    text = list(hover) if hover is not None else [""] * n
    traces: list[tuple[dict[str, Any], np.ndarray]] = []
    if colour_by == "label" and labels is not None:
        classes = list(dict.fromkeys(str(lab) for lab in labels if lab is not None))
        for i, c in enumerate(classes):
            col = _PALETTE[i % len(_PALETTE)]
            for side, mask, symbol in (("source", is_src, "circle"), ("target", ~is_src, "x")):
                sel = rows[mask & np.array([str(lab) == c for lab in labels])]
                if len(sel):
                    traces.append(
                        ({"name": f"{c} ({side})", "legendgroup": c,
                          "marker": {"color": col, "symbol": symbol, "size": 6, "opacity": 0.8}}, sel)
                    )  # fmt: skip
    elif colour_by == "ood" and target_scores is not None:
        scores = np.asarray(target_scores, dtype=float)
        hi = float(np.nanquantile(scores, 0.98)) if len(scores) else 1.0
        traces.append(
            ({"name": "source (grey)", "marker": {"color": _GREY, "size": 5, "opacity": 0.35}}, rows[is_src])
        )
        traces.append(
            (
                {"name": "target (OOD score)",
                 "marker": {"color": scores, "colorscale": "YlOrRd", "cmin": min(1.0, hi), "cmax": hi,
                            "size": 7, "showscale": True, "colorbar": {"title": {"text": "OOD score"}}}},
                rows[~is_src],
            )
        )  # fmt: skip
    else:
        traces.append(
            ({"name": "source", "marker": {"color": _SOURCE, "size": 6, "opacity": 0.7}}, rows[is_src])
        )
        traces.append(
            ({"name": "target", "marker": {"color": _TARGET, "size": 6, "opacity": 0.7}}, rows[~is_src])
        )
    fig = go.Figure()
    trace_rows: list[list[int]] = []
    for spec, sel in traces:
        fig.add_trace(
            go.Scattergl(
                x=xy[sel, 0], y=xy[sel, 1], mode="markers", customdata=sel.tolist(),
                text=[text[i] for i in sel], hovertemplate="%{text}<extra></extra>", **spec,
            )
        )  # fmt: skip
        trace_rows.append(sel.tolist())
    fig.update_layout(
        title={"text": title, "x": 0.0}, height=560, template="plotly_white", dragmode="lasso",
        margin={"l": 20, "r": 20, "t": 50, "b": 20}, legend={"itemsizing": "constant"},
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


# ------------------------------------------------------------------------------------------------------
# The transfer sections as neutral blocks, rendered to Markdown and HTML below

Block = tuple[str, Any]  # ("h", title) | ("p", text) | ("ul", [items]) | ("table", (head, rows))


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]


def _cell(v: Any) -> str:
    return fmt(v, ".4g") if isinstance(v, float) else fmt(v)


def _transfer_blocks(report: Report) -> list[Block]:
    blocks: list[Block] = []
    nt = _section(report, "negative_transfer")
    if nt is not None:
        blocks.append(("h", "Negative transfer"))
        risk = str(nt.get("risk", "unknown"))
        prob = nt.get("probability")
        blocks.append(
            (
                "p",
                f"Risk: {risk.upper()}"
                + (f" (probability {fmt(prob, '.2f')})." if prob is not None else "."),
            )
        )
        if nt.get("evidence"):
            blocks.append(("ul", _as_list(nt.get("evidence"))))
        if nt.get("rule"):
            blocks.append(("p", f"Rule: {nt['rule']}"))
    fr = _section(report, "freeze")
    if fr is not None:
        blocks.append(("h", "Freeze depth"))
        depth, n = fr.get("depth"), fr.get("n_blocks")
        text = f"Freeze the first {fmt(depth)} of {fmt(n)} blocks"
        if fr.get("frozen"):
            text += f" ({', '.join(_as_list(fr.get('frozen')))})"
        if fr.get("tune"):
            text += f"; tune {', '.join(_as_list(fr.get('tune')))}"
        if fr.get("lr_scheme"):
            lr = fr["lr_scheme"]
            text += f"; learning-rate scheme: {lr if isinstance(lr, str) else json.dumps(lr)}"
        blocks.append(("p", text + "."))
        if fr.get("rationale"):
            blocks.append(("ul", _as_list(fr.get("rationale"))))
    skipped = transfer_skipped(report)
    tr = _section(report, "transferability")
    if skipped is not None:
        blocks += [("h", "Transferability"), ("p", f"Not computed: {skipped}")]
    elif tr is not None:
        blocks.append(("h", "Transferability"))
        where = " ".join(
            x for x in (
                f"{tr['backbone']}" if tr.get("backbone") else "",
                f"at {tr['layer']}" if tr.get("layer") else "",
            ) if x
        )  # fmt: skip
        if where or tr.get("best_layer"):
            best = f"; best layer by linear probe: {tr['best_layer']}" if tr.get("best_layer") else ""
            blocks.append(("p", f"Scores of {where or 'the backbone'}{best} (higher is better)."))
        rows = transfer_score_rows(report)
        if rows:
            head = ["score", "pretrained", "random-init twin", "difference"]
            body = [
                [r["score"], _cell(r["pretrained"]), _cell(r["random_init"]), _cell(r["difference"])]
                for r in rows
            ]
            blocks.append(("table", (head, body)))
        known = {
            "backbone", "layer", "scores", "random_init_scores", "best_layer", "layers",
            "random_init_layers", "random_init", "skipped",
        }  # fmt: skip
        for title, trows in tables_of({k: v for k, v in tr.items() if k not in known}, "transferability"):
            cols = list(dict.fromkeys(k for r in trows for k in r))
            blocks += [
                ("p", title.replace("_", " ")),
                ("table", (cols, [[_cell(r.get(c)) for c in cols] for r in trows])),
            ]
    names = layer_score_names(report)
    if names:
        blocks.append(("h", "Transfer scores per layer (pretrained; random-init twin in brackets)"))
        body = []
        for lay in report.layers:
            pre, rnd = _layer_scores(lay, "pretrained"), _layer_scores(lay, "random_init")
            if not pre:
                continue
            body.append(
                [lay["name"]]
                + [
                    _cell(pre.get(k)) + (f" ({_cell(rnd.get(k))})" if rnd.get(k) is not None else "")
                    for k in names
                ]
            )
        blocks.append(("table", (["layer", *names], body)))
    return blocks


def _blocks_markdown(blocks: Sequence[Block]) -> list[str]:
    out: list[str] = []
    for kind, value in blocks:
        if kind == "h":
            out += [f"## {value}", ""]
        elif kind == "p":
            out += [str(value), ""]
        elif kind == "ul":
            out += [f"- {_md_escape(x)}" for x in value] + [""]
        elif kind == "table":
            head, body = value
            out.append("| " + " | ".join(_md_escape(h) for h in head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
            out.append("")
    return out


def _blocks_html(blocks: Sequence[Block]) -> list[str]:
    out: list[str] = []
    for kind, value in blocks:
        if kind == "h":
            out.append(f"<h2>{html.escape(str(value))}</h2>")
        elif kind == "p":
            out.append(f"<p>{html.escape(str(value))}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in value) + "</ul>")
        elif kind == "table":
            out.append(_html_table(*value))
    return out


# ------------------------------------------------------------------------------------------------------
# Markdown


def _md_escape(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return ""
    cols = list(columns or dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(_md_escape(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt(r.get(c), ".4g") if isinstance(r.get(c), float) else fmt(r.get(c)) for c in cols]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return "\n".join(lines)


def _layer_table_cells(report: Report) -> tuple[list[str], list[list[str]]]:
    head = [
        "layer",
        "dim",
        "MMD²",
        "p",
        "p (Holm)",
        "C2ST AUC [95% CI]",
        "Fréchet (rel.)",
        "CORAL",
        "OOD median",
    ]
    body = []
    for r in layer_rows(report):
        name = r["layer"] + (" ← onset" if r["onset"] else "")
        body.append(
            [
                name,
                fmt(r["dim"]),
                fmt(r["mmd2"], ".4f"),
                fmt(r["p_value"], ".3g"),
                fmt(r["p_adjusted"], ".3g") + (" *" if r["significant"] else ""),
                f"{fmt(r['c2st_auc'], '.3f')} [{fmt(r['auc_low'], '.2f')}, {fmt(r['auc_high'], '.2f')}]",
                fmt(r["frechet_relative"], ".3f"),
                fmt(r["coral"], ".2e"),
                fmt(r["ood_median"], ".2f"),
            ]
        )
    return head, body


def _auc_text_chart(report: Report, width: int = 30) -> str:
    lines = []
    names = report.layer_names
    pad = max((len(n) for n in names), default=5)
    for r in layer_rows(report):
        auc = r["c2st_auc"]
        n = 0 if auc is None else max(0, round((float(auc) - 0.5) / 0.5 * width))
        lines.append(f"{r['layer']:<{pad}} {'█' * n:<{width}} {fmt(auc, '.3f')}")
    return "\n".join(lines)


def report_markdown(report: Report) -> str:
    """A Markdown summary: verdict, key numbers, the per-layer table, an AUC text chart, labels, sections.

    Parameters
    ----------
    report : Report

    Returns
    -------
    str
    """
    s = report.shift
    out = [f"# Shift report: {report_title(report)}", ""]
    out += [f"> {s.get('summary', '')}", ""]
    out += ["| metric | value |", "|---|---|"]
    out += [f"| {_md_escape(m.label)} | {_md_escape(m.text)} |" for m in key_metrics(report)]
    sig = s.get("significant_layers") or []
    out += [
        f"| significant layers (α = {fmt(s.get('alpha'))}) | {_md_escape(', '.join(sig) or 'none')} |",
        "",
    ]
    out += ["## Per-layer shift", ""]
    head, body = _layer_table_cells(report)
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
    out += ["", "`*` significant after Holm adjustment.", ""]
    out += ["C2ST AUC by layer (bar from 0.5 = no shift to 1 = separable):", "", "```text"]
    out += [_auc_text_chart(report), "```", ""]
    ls = report.label_shift
    if ls and ls.get("classes"):
        out += ["## Label distribution", ""]
        out.append(
            f"Total variation {fmt(ls.get('total_variation'), '.3f')}, chi-square p = "
            f"{fmt(ls.get('p_value'), '.3g')}."
        )
        out.append("")
        rows = [
            {"class": c, "source": sp, "target": tp}
            for c, sp, tp in zip(
                ls["classes"],
                ls.get("source_proportions", []),
                ls.get("target_proportions", []),
                strict=False,
            )
        ]
        out += [_md_table(rows, ["class", "source", "target"]), ""]
    out += _blocks_markdown(_transfer_blocks(report))
    meta = report.meta
    out += [
        "---",
        f"diag {meta.get('diag_version', '?')}, created {meta.get('created', '?')}, "
        f"device {(meta.get('device') or {}).get('type', '?')}, seed {meta.get('seed', '?')}.",
        "",
    ]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
.verdict { padding: .8rem 1rem; border-radius: 6px; margin: 1rem 0; font-size: 1.05rem; }
.shift { background: #fff4e5; border-left: 5px solid #ff7f0e; }
.noshift { background: #e8f5e9; border-left: 5px solid #2e7d32; }
.metrics { display: flex; gap: 1rem; flex-wrap: wrap; }
.metric { border: 1px solid #ddd; border-radius: 6px; padding: .5rem .8rem; min-width: 10rem; }
.metric .label { font-size: .8rem; color: #666; } .metric .value { font-size: 1.2rem; font-weight: 600; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.onset td { background: #fdecea; font-weight: 600; }
footer { margin-top: 2rem; color: #777; font-size: .8rem; }
"""


def _html_table(head: Sequence[str], body: Sequence[Sequence[Any]], onset_rows: Sequence[bool] = ()) -> str:
    cells = [
        "<table><thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr></thead>"
    ]
    cells.append("<tbody>")
    for i, row in enumerate(body):
        cls = ' class="onset"' if i < len(onset_rows) and onset_rows[i] else ""
        cells.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    cells.append("</tbody></table>")
    return "\n".join(cells)


def _rows_table(rows: Sequence[Mapping[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    body = [
        [fmt(r.get(c), ".4g") if isinstance(r.get(c), float) else fmt(r.get(c)) for c in cols] for r in rows
    ]
    return _html_table(cols, body)


def report_html(report: Report) -> str:
    """One self-contained HTML page: verdict, key numbers, the charts (plotly.js inlined once), tables.

    The file opens offline (no CDN); it is about 4.8 MB, nearly all of it plotly.js.

    Parameters
    ----------
    report : Report

    Returns
    -------
    str
    """
    require("plotly", feature="The HTML export", extra="dashboard")
    import plotly.io as pio

    s = report.shift
    figs: list[Any] = list(shift_figures(report).values())
    extras = (label_shift_figure(report), class_conditional_figure(report), transfer_layers_figure(report))
    for extra in extras:
        if extra is not None:
            figs.append(extra)
    chart_html = []
    for i, fig in enumerate(figs):
        chart_html.append(
            pio.to_html(
                fig, full_html=False, include_plotlyjs=(i == 0), div_id=f"diag-chart-{i}",
                config={"displaylogo": False, "responsive": True}, default_height="340px",
            )
        )  # fmt: skip
    head, body = _layer_table_cells(report)
    onset_rows = [r["onset"] for r in layer_rows(report)]
    metrics = "".join(
        f'<div class="metric" title="{html.escape(m.help)}"><div class="label">{html.escape(m.label)}</div>'
        f'<div class="value">{html.escape(m.value)}</div>'
        f'<div class="label">{html.escape(m.detail)}</div></div>'
        for m in key_metrics(report)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>diag report: {html.escape(report_title(report))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Shift report: {html.escape(report_title(report))}</h1>",
        f'<div class="verdict {"shift" if s.get("is_shift") else "noshift"}">'
        f"{html.escape(str(s.get('summary', '')))}</div>",
        f'<div class="metrics">{metrics}</div>',
        "<h2>Per-layer shift</h2>",
        _html_table(head, body, onset_rows),
        "<p><small>* significant after Holm adjustment; the onset layer is highlighted.</small></p>",
        "<h2>Charts</h2>",
        *chart_html,
    ]
    parts += _blocks_html(_transfer_blocks(report))
    meta = report.meta
    versions = ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())
    parts += [
        f"<footer>diag {html.escape(str(meta.get('diag_version', '?')))}, created "
        f"{html.escape(str(meta.get('created', '?')))}; {html.escape(versions)}</footer>",
        "</body></html>",
    ]
    return "\n".join(parts)

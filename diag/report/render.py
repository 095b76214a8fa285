"""The report as text: the CLI summary, a Markdown summary and a self-contained HTML page.

Every row and sentence comes from the view-model (:mod:`diag.report.tables`); this module only lays it
out. :func:`report_text` is what ``diag diagnose`` prints, :func:`report_markdown` a Markdown file (the
AUC profile as a text bar chart), :func:`report_html` one HTML file that opens offline (plotly.js inlined
once, about 4.8 MB) rendered through the jinja2 template ``templates/report.html.j2`` with autoescape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup

from diag.errors import require
from diag.report import figures
from diag.report.explain import attribution_lines, graded_effect_line
from diag.report.tables import (
    Block,
    fmt,
    fmt_cell,
    is_source_free,
    key_metrics,
    label_rows,
    layer_rows,
    reference_rows,
    report_title,
    shift_table,
    shift_table_note,
    source_free_rows,
    transfer_blocks,
)

if TYPE_CHECKING:
    from diag.report.schema import Report

__all__ = ["report_html", "report_markdown", "report_text"]

_TEMPLATES = Path(__file__).parent / "templates"

# ------------------------------------------------------------------------------------------------------
# Plain text (the CLI)


def report_text(report: Report, *, out: str | Path | None = None) -> list[str]:
    """The lines ``diag diagnose`` (and ``diag check``) prints: one row per layer, the verdict, the
    predictions, the file. A check adds the reference's columns; a source-free report has its own."""
    lines = [report_title(report)]
    lines += _source_free_lines(report) if is_source_free(report) else _layer_lines(report)
    ls = report.label_shift
    if ls is not None and len(ls):
        lines.append(
            f"label shift: total variation {ls.total_variation:.3f}, chi-square p = {ls.p_value:.3g}"
        )
    lines.append(report.shift.summary)
    lines += [x for x in (graded_effect_line(report),) if x] + attribution_lines(report)
    lines += _prediction_lines(report)
    timings = report.meta.get("timings", {})
    cached = [w for w in ("source", "target") if timings.get(f"{w}_from_cache")]
    note = f"; embeddings from cache: {', '.join(cached)}" if cached else ""
    if out is not None:
        lines.append(f"wrote {Path(out) / 'report.json'} in {timings.get('total_s', 0):.1f} s{note}")
    return lines


def _layer_lines(report: Report) -> list[str]:
    head = f"{'layer':<12}{'dim':>6}{'MMD²':>9}{'p':>9}{'p(Holm)':>9}  {'C2ST AUC [95% CI]':<20}"
    refs = reference_rows(report)
    ref_head = f"{'RFF-MMD²':>10}{'RFF p':>9}{'Fréchet(all)':>13}" if refs else ""
    lines = [head + f"{'Fréchet(rel)':>13}{'CORAL':>10}{'OOD med':>9}" + ref_head]
    for i, r in enumerate(layer_rows(report)):
        ood = f"{r['ood_median']:>9.2f}" if r["ood_median"] is not None else f"{'n/a':>9}"
        ref = ""
        if refs:
            x = refs[i]
            ref = f"{fmt(x['rff_mmd2'], '.4f'):>10}{fmt(x['rff_p_value'], '.3g'):>9}"
            ref += f"{fmt(x['frechet_all'], '.3f'):>13}"
        lines.append(
            f"{r['layer']:<12}{r['dim']:>6}{r['mmd2']:>9.4f}{r['p_value']:>9.4f}{r['p_adjusted']:>9.4f}  "
            f"{r['c2st_auc']:.3f} [{r['auc_low']:.2f}, {r['auc_high']:.2f}]{'':<3}"
            f"{r['frechet_relative']:>11.3f}{r['coral']:>10.2e}{ood}{ref}"
            + ("  <- onset" if r["onset"] else "")
        )
    return lines


def _source_free_lines(report: Report) -> list[str]:
    lines = [f"{'layer':<12}{'dim':>6}{'W2':>10}{'null med':>10}{'null 95%':>10}{'p':>9}{'p(Holm)':>9}"]
    for r in source_free_rows(report):
        lines.append(
            f"{r['layer']:<12}{fmt(r['dim']):>6}{fmt(r['bn_w2'], '.4f'):>10}"
            f"{fmt(r['null_median'], '.4f'):>10}{fmt(r['null_p95'], '.4f'):>10}"
            f"{fmt(r['p_value'], '.4f'):>9}{fmt(r['p_adjusted'], '.4f'):>9}"
            + ("  <- onset" if r["onset"] else "")
        )
    return lines


def _prediction_lines(report: Report) -> list[str]:
    tr = report.transferability
    if tr is None or not len(tr):
        return []
    if tr.skipped is not None:
        return [f"transfer predictions skipped: {tr.skipped}"]
    sc, rs = tr.scores or {}, tr.random_init_scores or {}
    keys = [k for k in ("logme", "leep", "nce", "knn_accuracy", "linear_probe_accuracy") if k in sc]
    lines = [
        f"transferability at {tr.layer} (pretrained vs random-init): "
        + ", ".join(f"{k} {sc[k]:.3f} vs {rs.get(k, float('nan')):.3f}" for k in keys)
    ]
    nt = report.negative_transfer
    if nt is not None and len(nt):
        evidence = (nt.evidence or [""])[0]
        lines.append(f"negative transfer: risk {nt.risk} (p = {nt.probability:.2f}); {evidence}")
    fr = report.freeze
    if fr is not None and len(fr):
        tune = ", ".join(fr.tune or []) or "head only"
        rationale = fr.rationale or []
        why = rationale[1] if len(rationale) > 1 else ""
        lines.append(f"freeze: K = {fr.depth} of {fr.n_blocks} blocks (tune {tune}; {fr.lr_scheme}). {why}")
    return lines


# ------------------------------------------------------------------------------------------------------
# Markdown


def _md_escape(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _md_table(head: Sequence[Any], body: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_md_escape(h) for h in head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]


def _rows_md(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    return _md_table(columns, [[fmt_cell(r.get(c)) for c in columns] for r in rows]) if rows else []


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
            out += [*_md_table(*value), ""]
    return out


def _auc_text_chart(report: Report, width: int = 30) -> str:
    lines = []
    pad = max((len(n) for n in report.layer_names), default=5)
    for r in layer_rows(report):
        auc = r["c2st_auc"]
        n = 0 if auc is None else max(0, round((float(auc) - 0.5) / 0.5 * width))
        lines.append(f"{r['layer']:<{pad}} {'█' * n:<{width}} {fmt(auc, '.3f')}")
    return "\n".join(lines)


def _w2_text_chart(report: Report, width: int = 30) -> str:
    rows = source_free_rows(report)
    top = max((r["bn_w2"] for r in rows if r["bn_w2"] is not None), default=0.0) or 1.0
    pad = max((len(n) for n in report.layer_names), default=5)
    lines = []
    for r in rows:
        n = 0 if r["bn_w2"] is None else max(0, round(float(r["bn_w2"]) / top * width))
        lines.append(f"{r['layer']:<{pad}} {'█' * n:<{width}} {fmt(r['bn_w2'], '.4f')}")
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
    out += [f"> {s.summary}", ""]
    out += ["| metric | value |", "|---|---|"]
    out += [f"| {_md_escape(m.label)} | {_md_escape(m.text)} |" for m in key_metrics(report)]
    sig = s.significant_layers
    out += [
        f"| significant layers (α = {fmt(s.alpha)}) | {_md_escape(', '.join(sig) or 'none')} |",
        "",
    ]
    out += ["## Per-layer shift", ""]
    out += _md_table(*shift_table(report))
    out += ["", shift_table_note(report), ""]
    if is_source_free(report):
        out += ["BatchNorm W2 by block (bar relative to the largest):", "", "```text"]
        out += [_w2_text_chart(report), "```", ""]
    else:
        out += ["C2ST AUC by layer (bar from 0.5 = no shift to 1 = separable):", "", "```text"]
        out += [_auc_text_chart(report), "```", ""]
    ref = report.reference
    if ref is not None and ref.note:
        out += [f"Reference: {ref.folder or ref.name}. {ref.note}", ""]
    ls = report.label_shift
    if ls is not None and ls.classes:
        out += ["## Label distribution", ""]
        out.append(
            f"Total variation {fmt(ls.total_variation, '.3f')}, chi-square p = {fmt(ls.p_value, '.3g')}."
        )
        out.append("")
        out += [*_rows_md(label_rows(report), ["class", "source", "target"]), ""]
    out += _blocks_markdown(transfer_blocks(report))
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


def report_html(report: Report) -> str:
    """One self-contained HTML page: verdict, key numbers, the charts (plotly.js inlined once), tables.

    The file opens offline (no CDN); it is about 4.8 MB, nearly all of it plotly.js. The page is the
    jinja2 template ``templates/report.html.j2`` with autoescape on: every report string is escaped,
    only the chart markup plotly writes goes in as is.

    Parameters
    ----------
    report : Report

    Returns
    -------
    str
    """
    require("plotly", feature="The HTML export", extra="dashboard")
    import plotly.io as pio

    figs: list[Any] = list(figures.shift_figures(report).values())
    extras = (
        figures.label_shift_figure(report),
        figures.class_conditional_figure(report),
        figures.transfer_layers_figure(report),
    )
    figs += [f for f in extras if f is not None]
    charts = [
        pio.to_html(
            fig, full_html=False, include_plotlyjs=(i == 0), div_id=f"diag-chart-{i}",
            config={"displaylogo": False, "responsive": True}, default_height="340px",
        )
        for i, fig in enumerate(figs)
    ]  # fmt: skip
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True, keep_trailing_newline=False
    )
    meta = report.meta
    head, body = shift_table(report)
    ref = report.reference
    return env.get_template("report.html.j2").render(
        title=report_title(report),
        shift=report.shift,
        metrics=key_metrics(report),
        layer_head=head,
        layer_body=body,
        layer_note=shift_table_note(report),
        reference_note=None if ref is None else f"Reference: {ref.folder or ref.name}. {ref.note or ''}",
        onset_rows=[r["onset"] for r in layer_rows(report)],
        charts=[Markup(c) for c in charts],  # plotly's own markup: not escaped
        blocks=transfer_blocks(report),
        diag_version=meta.get("diag_version", "?"),
        created=meta.get("created", "?"),
        versions=", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items()),
    )

"""The report's view-model: every table, headline number and verdict sentence, written once.

The CLI (:mod:`diag.cli.diagnose`), the Markdown/HTML export (:mod:`diag.report.render`), the charts
(:mod:`diag.report.figures`) and the dashboard pages all read the rows and sentences below, so a report
field is rendered in one place. Rows keep numbers as numbers (None when a statistic could not be
computed); :func:`fmt` turns them into text.

- :func:`report_title`, :func:`source_text`, :func:`key_metrics`: the heading and the headline numbers;
- :func:`layer_rows`, :func:`layer_table`: the per-layer shift table (rows, and cells for a text table);
- :func:`is_source_free`, :func:`source_free_rows`, :func:`reference_rows`, :func:`shift_table`,
  :func:`shift_table_note`: the shapes of a source-free report (BatchNorm W2 per block) and of a check
  against a saved reference (its RFF-MMD and Fréchet columns beside the usual ones);
- :func:`label_rows`, :func:`class_conditional_rows`: the label analyses;
- :func:`transfer_score_rows`, :func:`layer_scores`, :func:`layer_score_names`, :func:`layer_transfer_rows`,
  :func:`transfer_skipped`, :func:`risk_sentence`, :func:`freeze_sentence`, :func:`transfer_where`,
  :func:`transfer_blocks`: the transfer sections;
- :func:`tables_of`, :func:`section_tables`, :func:`numeric_columns`: any JSON-like part as tables (the
  fields a renderer does not know, such as a ranking).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diag.report.explain import graded_effect_metric

if TYPE_CHECKING:
    from diag.report.schema import Report

__all__ = [
    "LAYER_TABLE_HEAD",
    "REFERENCE_TABLE_HEAD",
    "SOURCE_FREE_TABLE_HEAD",
    "TRANSFER_KNOWN",
    "TRANSFER_SECTIONS",
    "Block",
    "KeyMetric",
    "ci_text",
    "class_conditional_rows",
    "fmt",
    "fmt_cell",
    "freeze_sentence",
    "is_source_free",
    "key_metrics",
    "label_rows",
    "layer_rows",
    "layer_score_names",
    "layer_scores",
    "layer_table",
    "layer_transfer_rows",
    "numeric_columns",
    "reference_rows",
    "report_title",
    "risk_sentence",
    "section_tables",
    "shift_table",
    "shift_table_note",
    "source_free_rows",
    "source_text",
    "tables_of",
    "transfer_blocks",
    "transfer_score_rows",
    "transfer_skipped",
    "transfer_where",
]

#: Top-level report sections written by the transferability analysis (rendered when present).
TRANSFER_SECTIONS = ("transferability", "negative_transfer", "freeze")

#: Fields of the ``transferability`` section that the renderers lay out themselves; any other field is
#: shown generically (:func:`tables_of`).
TRANSFER_KNOWN = frozenset(
    {
        "backbone", "layer", "scores", "random_init_scores", "best_layer", "layers", "random_init_layers",
        "random_init", "skipped",
    }
)  # fmt: skip

# ------------------------------------------------------------------------------------------------------
# Numbers


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


def fmt_cell(v: Any) -> str:
    """A table cell: floats to 4 significant digits, anything else through :func:`fmt`."""
    return fmt(v, ".4g") if isinstance(v, float) else fmt(v)


def ci_text(ci: Any, spec: str = ".2f") -> str:
    """``[low, high]`` of a two-element interval; ``""`` for anything else."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return f"[{fmt(ci[0], spec)}, {fmt(ci[1], spec)}]"
    return ""


# ------------------------------------------------------------------------------------------------------
# Heading, headline numbers, the per-layer table


def is_source_free(report: Report) -> bool:
    """Whether ``report`` compares the target with the backbone's BatchNorm statistics (no source data)."""
    return report.source.get("kind") == "source-free"


def source_text(report: Report) -> str:
    """What the target was compared with: ``source (n)``, ``reference of X (N items, R in the
    reservoir)`` or ``source-free: pretraining statistics``."""
    if is_source_free(report):
        return "source-free: pretraining statistics"
    ref = report.reference
    if ref is not None:
        name = ref.name or report.source.get("name", "reference")
        return f"{name} ({fmt(ref.n)} items, {fmt(ref.reservoir)} in the reservoir)"
    return f"{report.source.get('name', 'source')} ({report.n_source})"


def report_title(report: Report) -> str:
    """``source (n) vs target (n) | backbone (pretrained)`` (the source as :func:`source_text` says)."""
    bb = report.backbone
    kind = "pretrained" if bb.get("pretrained", True) else "random-init"
    return (
        f"{source_text(report)} vs "
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
    """The headline numbers: p-value, effect size with its CI, onset layer, level of the shift; and, for
    a check or a source-free report, what the target was compared with."""
    s = report.shift
    eff = s.effect
    names = {"c2st_auc": "C2ST AUC", "bn_w2": "BatchNorm W2"}
    eff_name = names.get(str(eff.get("name")), str(eff.get("name", "effect")))
    ci = ci_text(eff.get("ci"), ".3f")
    # A source-free effect's interval is the null band of target splits (median, 95th percentile).
    band = "null band" if is_source_free(report) else "95% CI"
    metrics = [
        KeyMetric("p-value", fmt(s.p_value, ".3g"), f"α = {fmt(s.alpha)}", s.rules.get("p_value", "")),
        KeyMetric(
            f"Effect: {eff_name} at {eff.get('layer', '?')}",
            fmt(eff.get("value"), ".3f"),
            f"{band} {ci}" if ci else "",
            s.rules.get("effect", ""),
        ),
        *([KeyMetric(**graded)] if (graded := graded_effect_metric(report)) else []),
        KeyMetric("Onset layer", str(s.onset_layer or "none"), "", s.rules.get("onset_layer", "")),
        KeyMetric("Level", str(s.level or "none"), "", s.rules.get("level", "")),
    ]
    if is_source_free(report):
        n_bn = report.source.get("n_bn_layers")
        metrics.append(KeyMetric("Compared with", source_text(report), f"{fmt(n_bn)} BatchNorm layers"))
    elif report.reference is not None:
        ref = report.reference
        metrics.append(
            KeyMetric(
                "Compared with", f"reference of {fmt(ref.n)} items", f"{fmt(ref.reservoir)} in the reservoir"
            )
        )
    return metrics


def layer_rows(report: Report) -> list[dict[str, Any]]:
    """One row per layer (depth order) with the shift statistics, numbers kept as numbers."""
    onset = report.shift.onset_layer
    sig = set(report.shift.significant_layers)
    rows = []
    for lay in report.layers:
        x = lay.shift
        lo, hi = [*x.c2st_auc_ci, None, None][:2]
        rows.append(
            {
                "layer": lay.name,
                "dim": lay.dim,
                "mmd2": x.mmd2,
                "p_value": x.p_value,
                "p_adjusted": x.p_adjusted,
                "significant": lay.name in sig,
                "c2st_auc": x.c2st_auc,
                "auc_low": lo,
                "auc_high": hi,
                "frechet_relative": x.frechet_relative,
                "coral": x.coral,
                "ood_median": x.ood_median,
                "ood_p90": x.ood_p90,
                "onset": lay.name == onset,
            }
        )
    return rows


#: The columns of the per-layer shift table.
LAYER_TABLE_HEAD = (
    "layer", "dim", "MMD²", "p", "p (Holm)", "C2ST AUC [95% CI]", "Fréchet (rel.)", "CORAL", "OOD median",
)  # fmt: skip


def _onset_name(r: Mapping[str, Any]) -> str:
    return r["layer"] + (" ← onset" if r["onset"] else "")


def layer_table(report: Report) -> list[list[str]]:
    """The cells of the per-layer shift table (columns :data:`LAYER_TABLE_HEAD`), one row per layer."""
    body = []
    for r in layer_rows(report):
        body.append(
            [
                _onset_name(r),
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
    return body


def source_free_rows(report: Report) -> list[dict[str, Any]]:
    """One row per block of a source-free report: the BatchNorm W2, its null band and p-values."""
    onset = report.shift.onset_layer
    sig = set(report.shift.significant_layers)
    return [
        {
            "layer": lay.name,
            "dim": lay.dim,
            "bn_w2": lay.shift.bn_w2,
            "null_median": lay.shift.null_median,
            "null_p95": lay.shift.null_p95,
            "excess": lay.shift.excess,
            "p_value": lay.shift.p_value,
            "p_adjusted": lay.shift.p_adjusted,
            "significant": lay.name in sig,
            "n_bn_layers": lay.shift.n_bn_layers,
            "onset": lay.name == onset,
        }
        for lay in report.layers
    ]


#: The columns of the per-block table of a source-free report.
SOURCE_FREE_TABLE_HEAD = ("layer", "dim", "W2", "null median", "null 95%", "p", "p (Holm)")

#: The columns a check against a saved reference adds to :data:`LAYER_TABLE_HEAD`.
REFERENCE_TABLE_HEAD = ("RFF-MMD²", "RFF p", "Fréchet (all)")


def reference_rows(report: Report) -> list[dict[str, Any]]:
    """Per layer, the target against every reference item (``[]`` unless the report is a check)."""
    ref = report.reference
    if ref is None:
        return []
    rows = []
    for lay in report.layers:
        x = ref.layer(lay.name)
        rows.append(
            {
                "layer": lay.name,
                "rff_mmd2": x.get("rff_mmd2"),
                "rff_p_value": x.get("rff_p_value"),
                "frechet_all": x.get("frechet"),
            }
        )
    return rows


def shift_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """The per-layer table of any report as ``(head, rows of cells)``: the usual one
    (:func:`layer_table`), with the reference's columns for a check, or the BatchNorm one when
    source-free."""
    if is_source_free(report):
        body = [
            [
                _onset_name(r),
                fmt(r["dim"]),
                fmt(r["bn_w2"], ".4f"),
                fmt(r["null_median"], ".4f"),
                fmt(r["null_p95"], ".4f"),
                fmt(r["p_value"], ".3g"),
                fmt(r["p_adjusted"], ".3g") + (" *" if r["significant"] else ""),
            ]
            for r in source_free_rows(report)
        ]
        return list(SOURCE_FREE_TABLE_HEAD), body
    head, body = list(LAYER_TABLE_HEAD), layer_table(report)
    refs = reference_rows(report)
    if refs:
        head += REFERENCE_TABLE_HEAD
        body = [
            [*cells, fmt(r["rff_mmd2"], ".4f"), fmt(r["rff_p_value"], ".3g"), fmt(r["frechet_all"], ".3f")]
            for cells, r in zip(body, refs, strict=True)
        ]
    return head, body


def shift_table_note(report: Report) -> str:
    """What the marks and columns of :func:`shift_table` mean."""
    if is_source_free(report):
        return (
            "W2: mean per-channel Wasserstein-2 distance between the target's BatchNorm-input moments and "
            "the running statistics (Schneider et al. 2020); null median and 95%: the same distance "
            "between splits of the target itself. `*` significant after Holm adjustment."
        )
    note = "`*` significant after Holm adjustment."
    ref = report.reference
    if ref is not None:
        note += (
            f" Columns up to OOD: against the reference's reservoir ({fmt(ref.reservoir)} items); RFF-MMD², "
            f"RFF p and Fréchet (all): against all {fmt(ref.n)} items through their summaries."
        )
    big = (report.meta.get("config", {}).get("shift") or {}).get("streaming")
    if big:  # diag.predict.streaming: which numbers came from every item and which from a subsample
        c, o = big["c2st"], big["ood"]
        note += (
            f" Streaming path (over {fmt(big['above'])} items a side): MMD (asymptotic p), Fréchet and CORAL "
            f"from every item; C2ST AUC, CI and p on a subsample of {fmt(c['n_source'])} + "
            f"{fmt(c['n_target'])}; OOD of every target item against {fmt(o['index'])} source items."
        )
    return note


# ------------------------------------------------------------------------------------------------------
# Labels


def label_rows(report: Report) -> list[dict[str, Any]]:
    """Class proportions on each side (``[]`` without a label analysis)."""
    ls = report.label_shift
    if ls is None:
        return []
    return [
        {"class": c, "source": sp, "target": tp}
        for c, sp, tp in zip(ls.classes, ls.source_proportions, ls.target_proportions, strict=False)
    ]


def class_conditional_rows(report: Report, layer: str) -> list[dict[str, Any]]:
    """The per-class rows of one layer (``[]`` when the report has none for it)."""
    cc = report.class_conditional
    return [] if cc is None else [r.to_dict() for r in cc.rows(layer)]


# ------------------------------------------------------------------------------------------------------
# Generic tables (fields a renderer does not know: render what is there)


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
# Transfer


def transfer_skipped(report: Report) -> str | None:
    """Why the transfer analysis is missing from a report that has the section (e.g. no target labels)."""
    tr = report.transferability
    if tr is not None and tr.skipped is not None and not tr.scores:
        return tr.skipped
    return None


def transfer_score_rows(report: Report) -> list[dict[str, Any]]:
    """Scores of the pretrained backbone and its random-init twin at the report's transfer layer."""
    tr = report.transferability
    pre = (tr.scores if tr else None) or {}
    rnd = (tr.random_init_scores if tr else None) or {}
    rows = []
    for k in dict.fromkeys([*pre, *rnd]):
        a, b = pre.get(k), rnd.get(k)
        diff = a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
        rows.append({"score": k, "pretrained": a, "random_init": b, "difference": diff})
    return rows


def transfer_where(report: Report) -> str:
    """``backbone at layer`` of the transferability scores (``""`` when the section names neither)."""
    tr = report.transferability
    if tr is None:
        return ""
    return " ".join(x for x in (tr.backbone or "", f"at {tr.layer}" if tr.layer else "") if x)


def layer_scores(report: Report, side: str) -> list[dict[str, float]]:
    """Per layer (depth order), the numeric transfer scores of ``side`` (``pretrained``/``random_init``)."""
    return [{} if lay.transfer is None else lay.transfer.scores(side) for lay in report.layers]


def layer_score_names(report: Report) -> list[str]:
    """The transfer scores present in the per-layer ``transfer`` sections (pretrained side), in order."""
    names: dict[str, None] = {}
    for scores in layer_scores(report, "pretrained"):
        names.update(dict.fromkeys(scores))
    return list(names)


def layer_transfer_rows(report: Report) -> list[dict[str, Any]]:
    """One row per layer that has a ``transfer`` section (flattened), in depth order; ``[]`` when none."""
    return [
        {"layer": lay.name, **_flatten(lay.transfer.to_dict())}
        for lay in report.layers
        if lay.transfer is not None and len(lay.transfer)
    ]


def risk_sentence(report: Report) -> str | None:
    """``Risk: MEDIUM (probability 0.42).``; None without a negative-transfer section."""
    nt = report.negative_transfer
    if nt is None:
        return None
    prob = f" (probability {fmt(nt.probability, '.2f')})." if nt.probability is not None else "."
    return f"Risk: {str(nt.risk or 'unknown').upper()}{prob}"


def freeze_sentence(report: Report) -> str | None:
    """``Freeze the first K of n blocks (...); tune ...; learning-rate scheme: ...``; None without one."""
    fr = report.freeze
    if fr is None:
        return None
    text = f"Freeze the first {fmt(fr.depth)} of {fmt(fr.n_blocks)} blocks"
    if fr.frozen:
        text += f" ({', '.join(map(str, fr.frozen))})"
    if fr.tune:
        text += f"; tune {', '.join(map(str, fr.tune))}"
    if fr.lr_scheme:
        lr = fr.lr_scheme
        text += f"; learning-rate scheme: {lr if isinstance(lr, str) else json.dumps(lr)}"
    return text + "."


#: A renderer-neutral block: ("h", title) | ("p", text) | ("ul", [items]) | ("table", (head, rows)).
Block = tuple[str, Any]


def transfer_blocks(report: Report) -> list[Block]:
    """The transfer sections as neutral blocks (headings, sentences, lists, tables) for any renderer."""
    blocks: list[Block] = []
    nt = report.negative_transfer
    if nt is not None:
        blocks += [("h", "Negative transfer"), ("p", risk_sentence(report))]
        if nt.evidence:
            blocks.append(("ul", [str(x) for x in nt.evidence]))
        if nt.rule:
            blocks.append(("p", f"Rule: {nt.rule}"))
    fr = report.freeze
    if fr is not None:
        blocks += [("h", "Freeze depth"), ("p", freeze_sentence(report))]
        if fr.rationale:
            blocks.append(("ul", [str(x) for x in fr.rationale]))
    skipped = transfer_skipped(report)
    tr = report.transferability
    if skipped is not None:
        blocks += [("h", "Transferability"), ("p", f"Not computed: {skipped}")]
    elif tr is not None:
        blocks.append(("h", "Transferability"))
        where = transfer_where(report)
        if where or tr.best_layer:
            best = f"; best layer by linear probe: {tr.best_layer}" if tr.best_layer else ""
            blocks.append(("p", f"Scores of {where or 'the backbone'}{best} (higher is better)."))
        rows = transfer_score_rows(report)
        if rows:
            head = ["score", "pretrained", "random-init twin", "difference"]
            body = [
                [r["score"], fmt_cell(r["pretrained"]), fmt_cell(r["random_init"]), fmt_cell(r["difference"])]
                for r in rows
            ]
            blocks.append(("table", (head, body)))
        extra = {k: v for k, v in tr.to_dict().items() if k not in TRANSFER_KNOWN}
        for title, trows in tables_of(extra, "transferability"):
            cols = list(dict.fromkeys(k for r in trows for k in r))
            blocks += [
                ("p", title.replace("_", " ")),
                ("table", (cols, [[fmt_cell(r.get(c)) for c in cols] for r in trows])),
            ]
    names = layer_score_names(report)
    if names:
        blocks.append(("h", "Transfer scores per layer (pretrained; random-init twin in brackets)"))
        body = []
        pres, rnds = layer_scores(report, "pretrained"), layer_scores(report, "random_init")
        for lay, pre, rnd in zip(report.layers, pres, rnds, strict=True):
            if not pre:
                continue
            body.append(
                [lay.name]
                + [
                    fmt_cell(pre.get(k)) + (f" ({fmt_cell(rnd.get(k))})" if rnd.get(k) is not None else "")
                    for k in names
                ]
            )
        blocks.append(("table", (["layer", *names], body)))
    return blocks

"""The view-model of the graded effect and the drift attribution: what the CLI and the pages show of them.

Reads the report's ``graded_effect`` section (:func:`diag.predict.effect.graded_effect`) and its
``attribution`` section (:class:`diag.predict.attribution.Attribution`); reports written before these
existed have neither, and every function here then returns None or an empty list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diag.report.schema import Report

__all__ = [
    "attribution_lines",
    "attribution_section",
    "cluster_rows",
    "graded_effect",
    "graded_effect_line",
    "graded_effect_metric",
    "graded_effect_rows",
]

EFFECT_HELP = (
    "Relative energy distance (2E|X−Y| − E|X−X′| − E|Y−Y′|) / E|X−X′|: 0 = no shift, and unlike the AUC it "
    "keeps growing as the target moves further from the source, so it ranks targets that are all "
    "separable (AUC 1.00)."
)


def graded_effect(report: Report) -> Mapping[str, Any] | None:
    """The ``graded_effect`` section, or None."""
    g = report.sections.get("graded_effect")
    return g if isinstance(g, Mapping) and "value" in g else None


def attribution_section(report: Report) -> Mapping[str, Any] | None:
    """The ``attribution`` section, or None."""
    a = report.sections.get("attribution")
    return a if isinstance(a, Mapping) and isinstance(a.get("layers"), Mapping) else None


def _ci(ci: Any) -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return ""
    return f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def graded_effect_metric(report: Report) -> dict[str, str] | None:
    """The headline number beside the AUC: ``{"label", "value", "detail", "help"}`` (a KeyMetric's fields)."""
    g = graded_effect(report)
    if g is None:
        return None
    return {
        "label": f"Graded effect: relative energy at {g.get('layer', '?')}",
        "value": f"{g['value']:.3g}",
        "detail": f"95% CI {_ci(g.get('ci'))}",
        "help": EFFECT_HELP,
    }


def graded_effect_line(report: Report) -> str | None:
    """One line for the CLI."""
    g = graded_effect(report)
    if g is None:
        return None
    peak = g.get("peak") or {}
    where = (
        f"; peak {peak['value']:.3g} at {peak['layer']}"
        if peak.get("layer") not in (None, g["layer"])
        else ""
    )
    return (
        f"graded effect: relative energy distance {g['value']:.3g} {_ci(g.get('ci'))} at {g['layer']}{where} "
        "(0 = no shift; keeps growing where the AUC saturates)"
    )


def graded_effect_rows(report: Report) -> list[dict[str, Any]]:
    """Per layer (depth order): ``layer``, ``energy_relative``, ``low``, ``high`` (numbers)."""
    g = graded_effect(report)
    if g is None:
        return []
    per = g.get("layers") or {}
    rows = []
    for name in report.layer_names:
        x = per.get(name)
        if isinstance(x, Mapping):
            lo, hi = [*(x.get("ci") or []), None, None][:2]
            rows.append({"layer": name, "energy_relative": x.get("value"), "low": lo, "high": hi})
    return rows


def cluster_rows(report: Report, layer: str | None = None) -> list[dict[str, Any]]:
    """The ranked target clusters at ``layer`` (default: the section's first layer), without member ids.

    Each row: ``rank``, ``cluster``, ``size``, ``fraction`` (of the target), ``share`` (of the MMD²),
    ``lift`` (share / fraction), ``excess_witness`` (the ranking key: mean witness minus the source's),
    ``mean_domain_probability``, ``mean_witness``.
    """
    a = attribution_section(report)
    if a is None:
        return []
    layer = layer or a.get("layer")
    entry = a["layers"].get(layer) or {}
    keys = (
        "rank", "cluster", "size", "fraction", "share", "lift", "excess_witness", "mean_domain_probability",
        "mean_witness",
    )  # fmt: skip
    return [{k: c.get(k) for k in keys} for c in entry.get("clusters") or []]


def attribution_lines(report: Report, top: int = 3) -> list[str]:
    """CLI lines: the clusters of the target that carry most of the drift, at the attribution's layer."""
    a = attribution_section(report)
    if a is None:
        return []
    layer = a.get("layer")
    rows = cluster_rows(report, layer)
    if not rows:
        return []
    entry = a["layers"].get(layer) or {}
    lines = [
        f"drift by target cluster at {layer} (k-means, k = {entry.get('k')}; share of MMD², "
        f"domain-classifier P(target)); per-sample scores in {a.get('sidecar')}:"
    ]
    for r in rows[:top]:
        lines.append(
            f"  #{r['rank']} cluster {r['cluster']}: {r['size']} samples ({r['fraction']:.0%} of the target) "
            f"carry {r['share']:.0%} of the MMD² (lift {r['lift']:.1f}), mean P(target) "
            f"{r['mean_domain_probability']:.2f}"
        )
    return lines

"""Bring the negative-transfer verdicts stored in ``results/predict.json`` up to diag's current rule.

``bench_predict.py`` stores, per table, what ``diag diagnose`` measured (the probe curve, gradient norms,
negative-transfer signals). The lost-plasticity part of the rule (:func:`diag.predict.negative.weight_scale`)
needs two more numbers, neither of which needs the diagnosis to be run again:

- the **weight scale** of the checkpoint and of its random-init twin: read from the weights (no data,
  well under a second per checkpoint);
- the **twin's final-layer probe** (the pretrained one is in the stored curve): from the diagnose report
  the table was made with (``--reports``), where it is kept; else the twin's embeddings of the target (the
  same seed, input size and probe as ``diagnose``; seconds for a digit or texture target).

Then diag's own :func:`~diag.predict.negative.negative_transfer` is called on the stored evidence — after
checking that, with the weight scale the row stored (none before the first backfill), it reproduces the
stored probability — and the row's ``risk``,
``probability``, ``negative_transfer_correct``, ``nt_signals`` and ``nt_drivers`` are replaced by its
answer. The freeze fields are left as diagnosed (a high risk adds a line to the freeze rationale only).

Usage (``bench_predict.py`` runs it, then its summary)::

    .venv/bin/python benchmarks/bench_predict.py --summary-only --backfill-nt
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _twin_final_probe(sc: dict, reports: Path, cache: dict[tuple, tuple[str, float]]) -> tuple[str, float]:
    """The random-init twin's linear probe at its deepest probe point on the table's target."""
    rep = reports / sc["name"] / "report.json"
    if rep.is_file():
        tr = json.loads(rep.read_text())["transferability"]
        return tr["layer"], float(tr["random_init_scores"]["linear_probe_accuracy"])
    from diag.models import load
    from diag.models.weights import split_weights
    from diag.pipeline import embed
    from diag.stats.transfer import linear_probe_accuracy

    base = split_weights(sc["backbone"])[0]
    key = (base, sc["target"], tuple(sorted(sc["options"].items())))
    if key not in cache:
        twin = load(sc["backbone"], pretrained=False, seed=0, **sc["options"])
        emb = embed(sc["target"], twin)
        last = emb.probes[-1].name
        cache[key] = (last, float(linear_probe_accuracy(emb[last], emb.labels, random_state=0).accuracy))
    return cache[key]


def _call(
    row: dict,
    twin_last: tuple[str, float],
    scale: float | None,
    twin_scale: float | None,
    scale_top: float | None = None,
) -> Any:
    """diag's negative_transfer on the evidence the row stored."""
    from diag.predict.negative import negative_transfer

    sig, ev = row["nt_signals"], row["freeze_evidence"]
    pre = {k: {"scores": {"linear_probe_accuracy": v}} for k, v in ev["linear_probe"].items()}
    last = list(pre)[-1]
    pre[last]["scores"]["logme"] = sig.get("logme_pretrained")
    best, (final, final_probe) = sig["random_init_best_layer"], twin_last
    rnd: dict[str, dict[str, Any]] = {
        best: {"scores": {"linear_probe_accuracy": sig["random_init_linear_probe"]}}
    }
    if final != best:
        rnd[final] = {"scores": {"linear_probe_accuracy": final_probe}}
    rnd[final]["scores"]["logme"] = sig.get("logme_random_init")
    excess = float(sig["shift_excess"])
    shift = {"is_shift": True, "effect": {"value": 0.5 + excess / 2, "layer": last}} if excess > 0 else None
    per_class = float(sig["examples_per_class"])
    return negative_transfer(
        pre, rnd, n_target=round(per_class * 1000), n_classes=1000, shift=shift, rgn=ev.get("rgn"),
        scale=scale, twin_scale=twin_scale, scale_top=scale_top,
    )  # fmt: skip


def backfill(rows: list[dict], scenarios: list[dict], reports: Path) -> list[dict]:
    """Rows with the negative-transfer verdict of diag's current rule (module docstring)."""
    from diag.models import load
    from diag.predict.negative import SCALE_QUANTILE, weight_scale

    by_name = {sc["name"]: sc for sc in scenarios}
    cache: dict[tuple, tuple[str, float]] = {}
    scales: dict[str, tuple[float | None, float | None, float | None]] = {}
    for row in rows:
        if "nt_signals" not in row or row["name"] not in by_name:
            continue
        t0 = time.perf_counter()
        sc = by_name[row["name"]]
        if sc["backbone"] not in scales:
            bb = load(sc["backbone"], **sc["options"])
            twin = load(sc["backbone"], pretrained=False, seed=0, **sc["options"])
            scales[sc["backbone"]] = (
                weight_scale(bb.model), weight_scale(twin.model), weight_scale(bb.model, SCALE_QUANTILE)
            )  # fmt: skip
        scale, twin_scale, top = scales[sc["backbone"]]
        twin_last = _twin_final_probe(sc, reports, cache)
        sig = row["nt_signals"]  # a row backfilled before reproduces with its own weight scale
        old = _call(
            row,
            twin_last,
            sig.get("weight_scale"),
            sig.get("weight_scale_random_init"),
            sig.get("weight_scale_top"),
        )
        if abs(old.probability - float(row["probability"])) > 1e-3:
            raise RuntimeError(
                f"{row['name']}: the stored evidence gives p = {old.probability:.4f}, the table stored "
                f"{row['probability']}: not the evidence diagnose used; rerun bench_predict.py for it."
            )
        nt = _call(row, twin_last, scale, twin_scale, top)
        gap = float(row["measured_gap"])
        row.update(
            risk=nt.risk,
            probability=nt.probability,
            negative_transfer_correct=(nt.risk == "high") == (gap < 0),
            nt_signals=nt.signals,
            nt_drivers=nt.drivers,
        )
        lost = " (lost plasticity)" if nt.signals["plasticity_lost"] else ""
        print(
            f"{row['name']}: weight scale {scale:.3f} (twin {twin_scale:.3f}), final probe "
            f"{nt.signals['pretrained_final_probe']:.3f} vs twin {twin_last[1]:.3f}; p {old.probability:.3f} "
            f"-> {nt.probability:.3f}{lost} [{time.perf_counter() - t0:.1f} s]",
            flush=True,
        )
    assert all(math.isfinite(float(r.get("probability", 0.0))) for r in rows)
    return rows

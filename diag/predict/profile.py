"""The per-layer shift profile: every shift statistic at every probe point, and what they say together.

Input: the embeddings of a source and a target data set under one backbone (one extraction pass each,
see :func:`diag.pipeline.embed`). Output: a :class:`ShiftProfile` with, per probe point in depth order,
the MMD² permutation test, the classifier two-sample test (AUC with its CI), the Fréchet and CORAL
distances and a summary of the per-sample OOD scores; plus an overall verdict (:class:`ShiftVerdict`)
that says whether there is a shift, how large it is, and at which depth it appears.

How the verdict is formed (each rule is stated in the report, so a reader can check it):

* **Test.** One MMD permutation test per layer; the overall p-value is the Bonferroni bound
  ``min(1, L · min_l p_l)`` over the ``L`` layers, valid whatever the dependence between layers.
  Per-layer p-values are Holm-adjusted (Holm, "A Simple Sequentially Rejective Multiple Test
  Procedure", Scand. J. Statist. 6 (1979)) to say *which* layers differ.
* **Effect.** With many samples every difference is "significant", so the size of the shift is read from
  the C2ST AUC (0.5 = indistinguishable, 1 = separable), with its 95% CI, at the deepest probe (the
  representation a new head sees); the layer where the AUC peaks is reported too.
* **Onset.** The first layer, in depth order, whose Holm-adjusted p-value is below α *and* whose AUC
  excess over chance reaches half of the peak excess: where a shift of a size that matters first shows.
  Its relative depth names the kind of shift, after the surgical fine-tuning view (Lee et al.,
  "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts", ICLR 2023): first third of the
  network = input-level (style, resolution, corruption), middle = feature-level, last third = semantic
  (output-level).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from diag.engine.embeddings import Embeddings, check_finite
from diag.errors import ConfigError, DataError, param_error
from diag.predict.classes import ClassShift, class_conditional_shift, class_view, holm
from diag.predict.streaming import OOD_FAR, STREAMING_ABOVE, layer_fields, streaming_layer, streaming_sizes
from diag.progress import ProgressCallback
from diag.stats.shift import (
    MIN_SAMPLES,
    c2st,
    coral_distance,
    frechet_distance,
    knn_shift_scores,
    mmd_test,
)

__all__ = [
    "LEVELS", "LEVEL_WHY", "ClassShift", "LayerShift", "ShiftProfile", "ShiftVerdict", "check_compatible",
    "check_permutations", "class_conditional_shift", "holm", "min_permutations", "shift_profile",
]  # fmt: skip

log = logging.getLogger(__name__)

#: Where along the depth a shift's onset falls (fraction of the probes up to it) names its level.
LEVELS = (
    (1 / 3, "input-level"),
    (2 / 3, "feature-level"),
    (1.0, "semantic"),
)
LEVEL_WHY = {
    ("input-level", "image"): "style, resolution, contrast or corruption: how the inputs look",
    ("input-level", "text"): "vocabulary, length or register: how the inputs are written",
    ("feature-level", "image"): "mid-level features: shapes, parts, new sub-populations",
    ("feature-level", "text"): "mid-level features: phrasing, syntax, new sub-populations",
    ("semantic", "image"): "only deep, class-level features: what is shown, not how",
    ("semantic", "text"): "only deep, meaning-level features: what is said, not how",
}


@dataclass(frozen=True)
class LayerShift:
    """Every shift statistic at one probe point.

    Attributes
    ----------
    name, index, dim, kind : the probe point (see :class:`diag.ProbePoint`).
    mmd2, p_value : unbiased MMD² and its permutation p-value (:func:`diag.stats.shift.mmd_test`).
    p_adjusted : Holm-adjusted ``p_value`` over the profile's layers.
    c2st_auc, c2st_auc_ci, c2st_p_value, proxy_a_distance : the classifier two-sample test
        (:func:`diag.stats.shift.c2st`).
    frechet : Fréchet distance of Gaussian fits (in squared feature units; not comparable across layers).
    frechet_relative : ``frechet / (tr Σ_source + tr Σ_target)``: comparable across layers (0 = same).
    coral : CORAL distance ``||C_s - C_t||²_F / (4 d²)``.
    ood_median, ood_p90, ood_far : median and 90th percentile of the target's per-sample OOD scores
        (:func:`~diag.stats.shift.knn_shift_scores`, ~1 = typical of the source) and the share
        above ``OOD_FAR``; None when a score is not finite (a degenerate layer: most source rows
        identical, e.g. dead units), where they are undefined. Both paths build these fields with
        :func:`diag.predict.streaming.layer_fields`.
    bandwidths, method : the MMD kernel widths and ``exact``/``rff``.
    seconds : time spent on this layer.
    """

    name: str
    index: int
    dim: int
    kind: str
    mmd2: float
    p_value: float
    p_adjusted: float
    c2st_auc: float
    c2st_auc_ci: list[float]
    c2st_p_value: float
    proxy_a_distance: float
    frechet: float
    frechet_relative: float
    coral: float
    ood_median: float | None
    ood_p90: float | None
    ood_far: float | None
    bandwidths: list[float]
    method: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The report's layer entry: ``name``, ``index``, ``dim``, ``kind`` and a ``shift`` dict."""
        d = asdict(self)
        head = {k: d.pop(k) for k in ("name", "index", "dim", "kind")}
        return {**head, "shift": d}


@dataclass(frozen=True)
class ShiftVerdict:
    """What the profile says, overall.

    Attributes
    ----------
    is_shift : bool
        ``p_value <= alpha``.
    p_value : float
        Bonferroni bound over layers of the per-layer MMD permutation p-values.
    alpha : float
    effect : dict
        ``{"name": "c2st_auc", "layer", "value", "ci": [low, high]}`` at the deepest probe.
    peak : dict
        The same at the layer where the AUC peaks.
    onset_layer : str or None
        Where a shift of a size that matters first appears (module docstring); None without a shift.
    first_significant_layer : str or None
        The first layer whose Holm-adjusted p-value is below ``alpha``, whatever its effect size.
    level : str or None
        ``input-level``, ``feature-level`` or ``semantic`` (from the onset's relative depth).
    significant_layers : list of str
    summary : str
        One sentence a person can read.
    rules : dict
        The rules above, in words, so the report explains itself.
    """

    is_shift: bool
    p_value: float
    alpha: float
    effect: dict[str, Any]
    peak: dict[str, Any]
    onset_layer: str | None
    first_significant_layer: str | None
    level: str | None
    significant_layers: list[str]
    summary: str
    rules: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ShiftProfile:
    """The per-layer shift profile of a source/target pair under one backbone.

    ``ood_scores`` maps each layer to the target's per-sample OOD scores (shape ``(n_target,)``): the
    report keeps them in a sidecar file, not in the JSON.
    """

    layers: list[LayerShift]
    verdict: ShiftVerdict
    n_source: int
    n_target: int
    label_shift: dict[str, Any] | None
    class_conditional: dict[str, Any] | None
    config: dict[str, Any]
    seconds: float
    ood_scores: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def layer(self, name: str) -> LayerShift:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(f"no layer {name!r}; layers: {', '.join(x.name for x in self.layers)}")


# --------------------------------------------------------------------------------------------------


def check_compatible(source: Embeddings, target: Embeddings) -> None:
    """Raise a clear error unless both sides come from the same backbone, weights and preprocessing.

    A shift measured between features of two different networks (or two input resolutions) would be an
    artefact of the comparison, not a property of the data.
    """
    for side, emb in (("source", source), ("target", target)):
        if not isinstance(emb, Embeddings):
            raise ConfigError(f"{side} must be diag.Embeddings (from diag.embed); got {type(emb).__name__}.")
        if len(emb) < MIN_SAMPLES:
            raise DataError(
                f"{side} has {len(emb)} embedded items; the shift statistics need at least {MIN_SAMPLES} per "
                "side (a few hundred for useful power). Add data, or check what was skipped as unreadable."
            )
        check_finite(emb.features, where=f"{side} embeddings")
    bs, bt = source.manifest.get("backbone", {}), target.manifest.get("backbone", {})
    checks = (("name", "backbone"), ("weights_sha256", "weights"), ("preprocessing", "preprocessing"))
    for key, what in checks:
        if key in bs and key in bt and bs[key] != bt[key]:
            raise ConfigError(
                f"source and target were embedded with different {what} ({_short(bs[key])} vs "
                f"{_short(bt[key])}): the comparison would measure the networks, not the data. Embed both "
                "with the same backbone, weights and input size."
            )
    ps = [(p.name, p.dim) for p in source.probes]
    pt = [(p.name, p.dim) for p in target.probes]
    if ps != pt:
        raise ConfigError(
            f"source and target have different probe points or dims (source {ps}, target {pt}). "
            "Embed both with the same backbone."
        )
    for p in source.probes:
        ds, dt = source[p.name].shape[1], target[p.name].shape[1]
        if ds != dt or ds != p.dim:
            raise ConfigError(
                f"probe {p.name!r}: source has dim {ds}, target {dt}, manifest says {p.dim}. "
                "The embeddings are inconsistent: embed both again."
            )


def _short(v: object) -> str:
    s = str(v)
    return s if len(s) <= 40 else s[:12] + "…"


def min_permutations(n_layers: int, alpha: float) -> int:
    """The fewest MMD permutations per layer with which a shift over ``n_layers`` layers can be found.

    With ``B`` permutations the smallest per-layer p-value is ``1 / (B + 1)``, so the Bonferroni p over
    ``L`` layers cannot go below ``L / (B + 1)``: below this ``B`` the verdict is "no shift" whatever the
    data (computed with the same float operations as the verdict).
    """
    b = max(1, math.ceil(n_layers / alpha) - 1)
    while n_layers * (1 / (b + 1)) > alpha:
        b += 1
    while b > 1 and n_layers * (1 / b) <= alpha:
        b -= 1
    return b


def check_permutations(n_permutations: int, n_layers: int, alpha: float) -> None:
    """Raise :class:`~diag.errors.ConfigError` (naming the minimum) when no shift could be found."""
    need = min_permutations(n_layers, alpha)
    if n_permutations < need:
        floor = n_layers / (n_permutations + 1)
        raise ConfigError(
            f"n_permutations must be at least {need} for {n_layers} layers at alpha {alpha:g} (with "
            f"{n_permutations} the overall p-value cannot go below {n_layers}/({n_permutations}+1) = "
            f"{floor:.3g}, so no shift could ever be reported); got {n_permutations}. Raise it."
        )


def shift_profile(
    source: Embeddings,
    target: Embeddings,
    *,
    layers: Sequence[str] | None = None,
    n_permutations: int = 2000,
    alpha: float = 0.05,
    knn_k: int = 10,
    class_conditional: bool = True,
    random_state: int = 0,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    streaming_above: int | None = STREAMING_ABOVE,
) -> ShiftProfile:
    """Every shift statistic at every probe point, and the overall verdict.

    Parameters
    ----------
    source, target : Embeddings
        From the same backbone (checked: :func:`check_compatible`).
    layers : list of str, optional
        Probe points to profile (default: all, in depth order).
    n_permutations : int, default 2000
        Per-layer MMD permutations. With ``L`` layers the smallest overall p-value is
        ``L / (n_permutations + 1)`` (Bonferroni), so keep ``n_permutations`` well above ``L / alpha``.
    alpha : float, default 0.05
    knn_k : int, default 10
        Neighbours for the per-sample OOD scores.
    class_conditional : bool, default True
        When both sides have labels: the label-distribution shift, and a per-class MMD at the deepest
        probe and at the onset layer.
    random_state : int, default 0
    device : str, default "auto"
    progress : ProgressCallback, optional
        Advanced once per layer.
    streaming_above : int or None, default 20000
        More items on a side: each layer from summaries and samples (:mod:`diag.predict.streaming`).

    Returns
    -------
    ShiftProfile
    """
    check_compatible(source, target)
    if not 0 < alpha < 1:
        raise param_error("alpha", "must be in (0, 1)", alpha)
    if not isinstance(n_permutations, int) or n_permutations < 1:
        raise param_error("n_permutations", "must be a positive integer", n_permutations)
    names = [p.name for p in source.probes]
    if layers is not None:
        unknown = [x for x in layers if x not in names]
        if unknown or not layers:
            raise param_error("layers", f"must be probe points of the backbone ({', '.join(names)})", layers)
        names = [n for n in names if n in set(layers)]
    probes = {p.name: p for p in source.probes}
    k = max(1, min(knn_k, len(source) - 1))
    cb = progress or ProgressCallback()
    t_all = time.perf_counter()
    rows: list[dict[str, Any]] = []
    ood: dict[str, np.ndarray] = {}
    big = streaming_above is not None and max(len(source), len(target)) > streaming_above
    cb.on_start(len(names), "shift profile")
    try:
        for i, name in enumerate(names):
            t0 = time.perf_counter()
            x, y = source[name], target[name]
            seed = random_state + 1009 * i
            if big:  # summaries and bounded samples (diag.predict.streaming)
                stats, ood[name] = streaming_layer(x, y, k=k, random_state=seed, device=device)
                p = probes[name]
                rows.append({"name": name, "index": p.index, "dim": p.dim, "kind": p.kind, **stats})
                cb.on_advance(1)
                continue
            mmd = mmd_test(x, y, n_permutations=n_permutations, random_state=seed, device=device)
            clf = c2st(x, y, random_state=seed)
            try:
                scores = knn_shift_scores(x, y, k=k, device=device)
            except DataError as exc:  # a degenerate layer (e.g. dead units: every source row the same)
                log.warning("layer %s: no OOD scores (%s)", name, exc)
                scores = np.full(len(y), np.nan)
            ood[name] = scores.astype(np.float32)
            fr = frechet_distance(x, y)
            scale = float(np.var(x, axis=0, ddof=1).sum() + np.var(y, axis=0, ddof=1).sum())
            distances = {
                "frechet": float(fr),
                "frechet_relative": float(fr / scale) if scale > 0 else 0.0,
                "coral": float(coral_distance(x, y)),
            }
            fields = layer_fields(mmd.mmd2, mmd.p_value, mmd.bandwidths, mmd.method, clf, distances, scores)
            p = probes[name]
            rows.append(
                {
                    "name": name,
                    "index": p.index,
                    "dim": p.dim,
                    "kind": p.kind,
                    **fields,
                    "seconds": round(time.perf_counter() - t0, 4),
                }
            )
            log.debug("layer %s: mmd2=%.4g p=%.4g auc=%.3f", name, mmd.mmd2, mmd.p_value, clf.auc)
            cb.on_advance(1)
    finally:
        cb.on_end()
    adjusted = holm([r["p_value"] for r in rows])
    layer_shifts = [LayerShift(p_adjusted=float(a), **r) for r, a in zip(rows, adjusted, strict=True)]
    modality = str(source.manifest.get("backbone", {}).get("modality", "image"))
    verdict = _verdict(layer_shifts, alpha=alpha, modality=modality, n_permutations=n_permutations)

    lab = cond = None
    if class_conditional and source.labels is not None and target.labels is not None:
        lab, cond = class_view(
            source, target, verdict.onset_layer, names, n_permutations, random_state, device, streaming_above
        )
    config = {
        "layers": names,
        "n_permutations": n_permutations,
        "alpha": alpha,
        "knn_k": k,
        "ood_far": OOD_FAR,
        "random_state": random_state,
        "class_conditional": class_conditional,
        "streaming": streaming_sizes(len(source), len(target), above=streaming_above or 0) if big else None,
    }
    return ShiftProfile(
        layers=layer_shifts,
        verdict=verdict,
        n_source=len(source),
        n_target=len(target),
        label_shift=lab,
        class_conditional=cond,
        config=config,
        seconds=round(time.perf_counter() - t_all, 3),
        ood_scores=ood,
    )


def _verdict(layers: list[LayerShift], *, alpha: float, modality: str, n_permutations: int) -> ShiftVerdict:
    n = len(layers)
    p_overall = min(1.0, n * min(x.p_value for x in layers))
    is_shift = p_overall <= alpha
    deepest = layers[-1]
    peak = max(layers, key=lambda x: x.c2st_auc)
    effect = _effect(deepest)
    significant = [x.name for x in layers if x.p_adjusted <= alpha]
    first_sig = significant[0] if significant else None
    onset: LayerShift | None = None
    if is_shift:
        excess = peak.c2st_auc - 0.5
        for x in layers:
            if x.p_adjusted <= alpha and x.c2st_auc - 0.5 >= 0.5 * excess:
                onset = x
                break
        if onset is None:  # significant somewhere, but the classifier sees nothing: take the first
            onset = next(x for x in layers if x.name == first_sig) if first_sig else None
    level = None
    if onset is not None:
        pos = [x.name for x in layers].index(onset.name)
        frac = (pos + 1) / n
        level = next(name for cut, name in LEVELS if frac <= cut + 1e-9)
    summary = _summary(layers, p_overall, is_shift, effect, peak, onset, level, modality)
    if not is_shift and n_permutations < min_permutations(n, alpha):
        summary += (
            f" With {n_permutations} permutations over {n} layers the p-value cannot go below "
            f"{_fmt_p(n / (n_permutations + 1))}, so no shift could have been reported at alpha {alpha:g}: "
            f"use at least {min_permutations(n, alpha)} permutations."
        )
    rules = {
        "p_value": f"Bonferroni over {n} layers of per-layer MMD² permutation p-values: min(1, L · min p)",
        "layers": "per-layer p-values Holm-adjusted; a layer is significant when its adjusted p <= alpha",
        "effect": "C2ST AUC (0.5 = no shift, 1 = separable) with its 95% CI at the deepest probe",
        "onset_layer": "first layer significant after Holm whose AUC - 0.5 reaches half of the peak's",
        "level": "onset in the first third of the probes = input-level, middle = feature-level, "
        "last third = semantic",
    }
    return ShiftVerdict(
        is_shift=is_shift,
        p_value=float(p_overall),
        alpha=alpha,
        effect=effect,
        peak=_effect(peak),
        onset_layer=None if onset is None else onset.name,
        first_significant_layer=first_sig,
        level=level,
        significant_layers=significant,
        summary=summary,
        rules=rules,
    )


def _effect(x: LayerShift) -> dict[str, Any]:
    return {"name": "c2st_auc", "layer": x.name, "value": x.c2st_auc, "ci": list(x.c2st_auc_ci)}


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _summary(
    layers: list[LayerShift],
    p: float,
    is_shift: bool,
    effect: dict[str, Any],
    peak: LayerShift,
    onset: LayerShift | None,
    level: str | None,
    modality: str,
) -> str:
    lo, hi = effect["ci"]
    auc = f"AUC {effect['value']:.2f} [{lo:.2f}, {hi:.2f}] at {effect['layer']}"
    if not is_shift:
        value = effect["value"]  # the words must not contradict the AUC (issue 18: "AUC 1.00 ... small")
        size = "small" if value < 0.6 else "moderate" if value < 0.75 else "large"
        tail = "consistent with chance" if lo <= 0.5 else f"a {size} difference the test does not confirm"
        return (
            f"No shift detected (p = {_fmt_p(p)} over {len(layers)} layers): a domain classifier reaches "
            f"{auc}, {tail}."
        )
    assert onset is not None and level is not None
    why = LEVEL_WHY.get((level, modality), LEVEL_WHY[(level, "image")])
    article = "a" if level == "semantic" else "an"
    grows = (
        f", and grows to AUC {peak.c2st_auc:.2f} at {peak.name}"
        if peak.name != onset.name and peak.c2st_auc - onset.c2st_auc >= 0.02
        else ""
    )
    return (
        f"Shift detected (p = {_fmt_p(p)} over {len(layers)} layers; {auc}): it appears at {onset.name} "
        f"(AUC {onset.c2st_auc:.2f}){grows} — {article} {level} shift ({why})."
    )

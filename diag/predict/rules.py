"""Predictions before fine-tuning: per-layer transfer scores, the negative-transfer verdict, the freeze depth.

Inputs are embeddings (one pass of the pretrained backbone over the labelled target, one of its
random-init twin) and, when a source is given, the per-layer shift profile. Outputs are frozen results
with JSON-native fields and the evidence in words. Every rule is stated here and in the report, and is
checked against the fine-tuning sweeps in ``benchmarks/bench_predict.py``.

Negative transfer (Wang et al., "Characterizing and Avoiding Negative Transfer", CVPR 2019): fine-tuning
from the pretrained weights ends worse than training the same architecture from scratch. The signals,
before any training (DESIGN.md): how much better the pretrained features serve the target than the
random-init twin's (linear-probe accuracy at the best layer of each: the *feature advantage*), how much
data the target has (from-scratch training catches up with more data per class), and the size of the
source–target shift. LogME alone cannot flag negative transfer (it ranks models on fixed data), so it is
reported as evidence beside the probe gap, not used alone.

Freeze depth: the per-layer linear-probe curve says where target-useful features peak; blocks up to
that depth are kept (frozen), the blocks after it — whose features turn source-specific — are tuned
(Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS 2014). The shift
profile adjusts the learning-rate scheme: with good features and a large shift, LP-FT (Kumar et al.,
ICLR 2022); where the shift is input-level, surgical fine-tuning (Lee et al., ICLR 2023) says early
blocks matter, which the rationale states.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from diag.engine.embeddings import Embeddings
from diag.errors import DataError, DiagError

__all__ = [
    "FreezeRecommendation",
    "NegativeTransfer",
    "freeze_blocks",
    "layer_transfer",
    "negative_transfer",
    "recommend_freeze",
]

log = logging.getLogger(__name__)

#: The scores computed at every probe point (the cheap ones; LEEP/NCE need the head and are added at the
#: last layer when the backbone has one).
LAYER_SCORES = ("logme", "knn_accuracy", "linear_probe_accuracy")


def _require_labels(emb: Embeddings, what: str) -> np.ndarray:
    if emb.labels is None:
        raise DataError(
            f"{what} has no labels: transferability, negative transfer and freeze depth need a labelled "
            "target (an image folder with one subfolder per class, or a table with a label column). "
            "The shift report is still produced."
        )
    counts = np.bincount(emb.labels, minlength=len(emb.classes))
    present = int((counts > 0).sum())
    if present < 2:
        raise DataError(
            f"{what} has a single class ({emb.classes[int(np.argmax(counts))] if emb.classes else '?'}): "
            "transfer scores need at least 2 classes. The shift report is still produced."
        )
    return emb.labels


def layer_transfer(
    emb: Embeddings,
    *,
    scores: Sequence[str] = LAYER_SCORES,
    random_state: int = 0,
    device: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Transferability scores of the target's features at every probe point (depth order).

    Returns ``{layer: {"scores": {...}, "skipped": {...}, "linear_probe_std": float}}``; at the deepest
    probe LEEP and NCE are added when the embeddings carry the source head's logits.
    """
    from diag.stats.transfer import linear_probe_accuracy, transferability

    y = _require_labels(emb, "the target")
    out: dict[str, dict[str, Any]] = {}
    names = [p.name for p in emb.probes]
    for name in names:
        wanted = list(scores)
        logits = None
        if name == names[-1] and emb.logits is not None:
            wanted += ["leep", "nce"]
            logits = emb.logits
        probe = "linear_probe_accuracy" in wanted
        others = [s for s in wanted if s != "linear_probe_accuracy"]
        entry: dict[str, Any] = {"scores": {}, "skipped": {}}
        if others:
            res = transferability(
                emb[name], y, logits=logits, scores=others, random_state=random_state, device=device
            )
            entry = {"scores": dict(res.scores), "skipped": dict(res.skipped)}
        if probe:
            try:
                lp = linear_probe_accuracy(emb[name], y, random_state=random_state)
            except DiagError as exc:  # e.g. a class too small for the folds
                entry["skipped"]["linear_probe_accuracy"] = str(exc)
            else:
                entry["scores"]["linear_probe_accuracy"] = lp.accuracy
                entry["linear_probe_std"] = lp.accuracy_std  # the fold spread, to read layer differences by
        out[name] = entry
    return out


def _best_layer(curve: dict[str, float], names: list[str], tol: float) -> tuple[str, float, str]:
    """The argmax layer, and the shallowest layer within ``tol`` of it."""
    best = max(names, key=lambda n: curve[n])
    top = curve[best]
    first = next(n for n in names if curve[n] >= top - tol)
    return best, top, first


# --------------------------------------------------------------------------------------------------
# Negative transfer


@dataclass(frozen=True)
class NegativeTransfer:
    """The negative-transfer verdict.

    Attributes
    ----------
    risk : str
        ``low``, ``medium`` or ``high``.
    probability : float
        Estimated probability that from-scratch training beats fine-tuning from the pretrained weights
        with the same budget.
    evidence : list of str
        Each signal, its value and which way it pushes, in words.
    drivers : list of str
        The signals that drove the verdict, strongest first.
    signals : dict
        The numbers: feature advantage, per-class size, LogME gap, shift effect.
    rule : str
    """

    risk: str
    probability: float
    evidence: list[str]
    drivers: list[str]
    signals: dict[str, Any]
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: A probe curve whose range over the blocks is below this is "flat": it cannot place the freeze depth
#: (MiniLM on the debates: 0.77-0.80 over every layer), and the relative gradient norms decide instead.
FLAT_RANGE = 0.05
#: Below this many examples per class (and from 10 up), only the last block is tuned: with 10 per class
#: freezing all but the last block beat freezing through the probe peak on UCI and OpenCV digits (0.781 vs
#: 0.744, 0.700 vs 0.549; linear probe 0.635, 0.538); at 30 per class the probe peak won. Set between the
#: two sizes measured, on those two tables, after they had been held out from the rest of the rule.
SMALL_TARGET = 20

#: With a flat probe curve, tuning starts at the first block whose normalised RGN reaches this.
RGN_PULL = 0.9

#: From-scratch training on a small target, with the fine-tuning budget, ends well below a linear probe on
#: the random-init twin's features (measured, 6 epochs: 0.54 vs 0.83 on UCI digits at 30 per class, 0.48
#: vs 0.87 on inverted UCI, 0.33 vs 0.66 on OpenCV digits, 0.58 vs 0.77 on the debates at 166 per class).
#: So pretrained features must trail the twin's by about that much before scratch training wins: the
#: *head start* of pretrained weights, HEAD_START_30 at 30 examples per class, shrinking by
#: HEAD_START_PER_DOUBLING per doubling of the data (scratch training catches up), floored at 0.
HEAD_START_30 = 0.30
HEAD_START_PER_DOUBLING = 0.04
#: Logistic rule, z = SLOPE·(-(advantage) - head_start(n)) + B_SHIFT·shift_excess + B_REACH·blocked.
_SLOPE = 20.0
_B_SHIFT = 0.5
#: Gradient reach: the mean normalised relative gradient norm (:mod:`diag.train.rgn`) over the input-side half
#: of the blocks. Below REACH_MIN the target's gradient hardly reaches them — dead or saturated units —
#: and fine-tuning cannot adapt them (measured: 0.02 and 0.00 for Lite0 with 60 % / 90 % dead ReLU6
#: units, where scratch training won by 0.19 / 0.44; 0.23-0.64 in the 13 sweeps where pretrained won).
REACH_MIN = 0.1
_B_REACH = 8.0


def gradient_reach(rgn: dict[str, float]) -> float:
    """Mean of the normalised relative gradient norms over the input-side half of the blocks."""
    values = list(rgn.values())
    half = values[: math.ceil(len(values) / 2)]
    return float(np.mean(half)) if half else 1.0


def head_start(per_class: float) -> float:
    """How far pretrained features may trail the random-init twin's before from-scratch training wins."""
    return max(0.0, HEAD_START_30 - HEAD_START_PER_DOUBLING * math.log2(max(per_class, 1e-9) / 30.0))


def negative_transfer(
    pretrained: dict[str, dict[str, Any]],
    random_init: dict[str, dict[str, Any]],
    *,
    n_target: int,
    n_classes: int,
    shift: dict[str, Any] | None = None,
    rgn: dict[str, float] | None = None,
) -> NegativeTransfer:
    """Will fine-tuning from the pretrained weights end worse than training from scratch?

    Parameters
    ----------
    pretrained, random_init : dict
        :func:`layer_transfer` of the target under the pretrained backbone and its random-init twin.
    n_target, n_classes : int
    shift : dict, optional
        The report's ``shift`` verdict (effect AUC, onset).
    rgn : dict, optional
        Normalised relative gradient norm per block (:func:`diag.train.rgn.relative_gradient_norms`).

    The rule: the *feature advantage* ``a`` is the best-layer linear-probe accuracy of the pretrained
    features minus that of the random-init twin. Transfer fails only when ``a`` falls below minus the
    head start that pretrained weights give a small fine-tuning budget (:func:`head_start`: 0.30 at 30
    examples per class, 0.04 less per doubling). A large source-target shift (C2ST AUC excess over
    0.5, doubled, in [0, 1]) adds a little risk. A checkpoint whose gradient does not reach its
    input-side blocks (:func:`gradient_reach` below ``REACH_MIN``: dead or saturated units) cannot be
    repaired by fine-tuning, whatever its features probe: ``blocked = (1 - reach / REACH_MIN)⁺``.
    ``p = sigmoid(20 (-a - head_start) + 0.5 · shift + 8 · blocked)``; risk high above 0.6, medium
    above 0.3. Calibrated on the 15 sweeps of ``bench_predict.py``: pretrained weights won in 13 —
    including backbones whose features probe 0.09-0.11 *below* their twin's (trained on shuffled labels
    or on noise), which still won by 0.19-0.23 — and lost with dead units (60 %: features probe only
    0.05 below the twin's, but the gradient does not reach the first blocks).
    """
    pre_lp = {k: v["scores"].get("linear_probe_accuracy", math.nan) for k, v in pretrained.items()}
    rnd_lp = {k: v["scores"].get("linear_probe_accuracy", math.nan) for k, v in random_init.items()}
    names = [k for k in pre_lp if math.isfinite(pre_lp[k])]
    rnames = [k for k in rnd_lp if math.isfinite(rnd_lp[k])]
    if not names or not rnames:
        raise DataError("negative transfer needs linear-probe accuracies of both backbones on the target.")
    pre_best = max(names, key=lambda n: pre_lp[n])
    rnd_best = max(rnames, key=lambda n: rnd_lp[n])
    adv = pre_lp[pre_best] - rnd_lp[rnd_best]
    per_class = n_target / max(n_classes, 1)
    start = head_start(per_class)
    shift_excess = 0.0
    if shift and shift.get("is_shift") and shift.get("effect"):
        shift_excess = float(np.clip(2.0 * (float(shift["effect"]["value"]) - 0.5), 0.0, 1.0))
    reach = gradient_reach(rgn) if rgn else None
    blocked = 0.0 if reach is None else max(0.0, 1.0 - reach / REACH_MIN)
    z = _SLOPE * (-adv - start) + _B_SHIFT * shift_excess + _B_REACH * blocked
    p = 1.0 / (1.0 + math.exp(-z))
    risk = "high" if p > 0.6 else "medium" if p > 0.3 else "low"

    last = list(pretrained)[-1]
    logme_pre = pretrained[last]["scores"].get("logme")
    logme_rnd = random_init.get(last, {}).get("scores", {}).get("logme")
    evidence = [
        f"Pretrained features reach {pre_lp[pre_best]:.2f} linear-probe accuracy on the target (at "
        f"{pre_best}); the random-init twin's best is {rnd_lp[rnd_best]:.2f} (at {rnd_best}): a feature "
        f"advantage of {adv:+.2f} — "
        + (
            "favours transfer."
            if adv > 0
            else "the pretrained features serve the target no better than random ones."
        ),
        f"{per_class:.0f} examples per class ({n_target} in {n_classes} classes): with a short budget, "
        f"from-scratch training ends well below the twin's probe, so pretrained weights keep a head start "
        f"of {start:.2f}; scratch wins only if the features trail the twin's by more"
        + (" (more data shrinks the head start)." if per_class > 30 else "."),
    ]
    contributions = {
        "feature advantage": abs(_SLOPE * adv),
        "target size": abs(_SLOPE * start),
        "shift size": abs(_B_SHIFT * shift_excess),
        "gradient reach": _B_REACH * blocked,
    }
    if reach is not None:
        evidence.append(
            f"Gradient reach: the input-side half of the blocks gets {reach:.2f} of the strongest block's "
            "relative gradient — "
            + (
                "healthy."
                if blocked == 0
                else "almost none: dead or saturated units block the gradient, so fine-tuning cannot "
                "adapt those blocks (a broken checkpoint?)."
            )
        )
    if shift and shift.get("effect"):
        e = shift["effect"]
        evidence.append(
            f"Source-target shift: AUC {float(e['value']):.2f} at {e['layer']}"
            + (
                f", onset {shift.get('onset_layer')} ({shift.get('level')})"
                if shift.get("onset_layer")
                else ""
            )
            + (
                " — a large shift adds a little risk (across the sweeps, shifts of AUC 0.7-1.0 never "
                "made scratch training win)."
                if shift_excess > 0.5
                else " — small, adds little risk."
            )
        )
    if logme_pre is not None and logme_rnd is not None:
        evidence.append(
            f"LogME at {last}: pretrained {logme_pre:.3f} vs random-init {logme_rnd:.3f} (ranks features on "
            "this target; it cannot flag negative transfer alone)."
        )
    drivers = [k for k, v in sorted(contributions.items(), key=lambda kv: -kv[1]) if v > 0.25]
    return NegativeTransfer(
        risk=risk,
        probability=round(p, 4),
        evidence=evidence,
        drivers=drivers,
        signals={
            "feature_advantage": adv,
            "pretrained_best_layer": pre_best,
            "pretrained_linear_probe": pre_lp[pre_best],
            "random_init_best_layer": rnd_best,
            "random_init_linear_probe": rnd_lp[rnd_best],
            "examples_per_class": per_class,
            "head_start": start,
            "gradient_reach": reach,
            "shift_excess": shift_excess,
            "logme_pretrained": logme_pre,
            "logme_random_init": logme_rnd,
        },
        rule=(
            f"p = sigmoid({_SLOPE:g}·(-advantage - head_start) + {_B_SHIFT:g}·shift"
            f" + {_B_REACH:g}·blocked), "
            f"head_start = max(0, {HEAD_START_30} - {HEAD_START_PER_DOUBLING}"
            "·log2(examples per class / 30)), "
            f"blocked = max(0, 1 - gradient_reach / {REACH_MIN}); high > 0.6, medium > 0.3"
        ),
    )


# --------------------------------------------------------------------------------------------------
# Freeze depth


@dataclass(frozen=True)
class FreezeRecommendation:
    """How many blocks to freeze, which to tune, and the learning-rate scheme, with the reasons.

    Attributes
    ----------
    depth : int
        ``K`` for ``diag finetune --freeze K``: the first K blocks are frozen (0 = tune everything,
        ``n_blocks`` = linear probe).
    n_blocks : int
    frozen : list of str
    tune : list of str
        Block names to tune (the head is always trained).
    lr_scheme : str
        ``standard`` or ``lp-ft``.
    rationale : list of str
    evidence : dict
    """

    depth: int
    n_blocks: int
    frozen: list[str]
    tune: list[str]
    lr_scheme: str
    rationale: list[str]
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def freeze_blocks(backbone: Any) -> list[str]:
    """The backbone's blocks in freeze order (names = probe points), from the fine-tuning engine."""
    from diag.train.finetune import freeze_units

    return [u.name for u in freeze_units(backbone)]


def recommend_freeze(
    pretrained: dict[str, dict[str, Any]],
    blocks: Sequence[str],
    *,
    n_target: int,
    n_classes: int,
    shift: dict[str, Any] | None = None,
    shift_layers: Sequence[dict[str, Any]] | None = None,
    rgn: dict[str, float] | None = None,
) -> FreezeRecommendation:
    """Recommend ``K`` (blocks to freeze) from the per-layer probe curve, the shift profile and, when the
    probe curve cannot decide, the relative gradient norms.

    Rule (checked against the sweeps in ``benchmarks/bench_predict.py``):

    1. Fewer than 10 examples per class: a linear probe (too little data to tune blocks). From 10 to
       ``SMALL_TARGET``: every block but the last frozen (K = n − 1): enough data to adapt the top block,
       not the several after the probe peak.
    2. The probe curve is *informative* when its range over the blocks is at least ``FLAT_RANGE``.
       Then the blocks up to and including the layer where the target's linear-probe accuracy peaks
       are frozen, the blocks after it — whose features turn source-specific — are tuned (Yosinski et
       al. 2014). The shallowest layer within one fold-spread of the peak is named in the rationale.
    3. A *flat* curve (every layer serves the target about equally) cannot say where to stop freezing;
       then the relative gradient norms (:mod:`diag.train.rgn`, Lee et al. 2023) decide: tuning starts at the
       first block whose normalised RGN reaches ``RGN_PULL`` — where the target pulls hardest. Without
       RGN the informative-curve rule applies.
    4. Otherwise at least the last two blocks are tuned (a head-only probe leaves accuracy on the table
       whenever the target differs from the source).

    LP-FT is recommended when the pretrained features are good (peak accuracy ≥ 0.8) and the shift is
    large (AUC ≥ 0.9) (Kumar et al., ICLR 2022).
    """
    blocks = list(blocks)
    n = len(blocks)
    lp = {k: v["scores"].get("linear_probe_accuracy", math.nan) for k, v in pretrained.items()}
    names = [k for k in pretrained if math.isfinite(lp[k])]
    if not names:
        raise DataError("freeze depth needs the linear-probe accuracy of the target at each probe point.")
    best = max(names, key=lambda k: lp[k])
    tol = max(0.01, float(pretrained[best].get("linear_probe_std", 0.0)))
    _, top, peak = _best_layer(lp, names, tol)
    per_class = n_target / max(n_classes, 1)
    on_blocks = [lp[b] for b in blocks if b in lp and math.isfinite(lp[b])] or [lp[k] for k in names]
    spread = max(on_blocks) - min(on_blocks)
    flat = spread < FLAT_RANGE
    rationale: list[str] = []
    curve = ", ".join(f"{k} {lp[k]:.2f}" for k in names)
    rationale.append(f"Linear-probe accuracy of the target by layer: {curve}.")
    basis = "probe"
    if per_class < 10:
        depth = n
        basis = "few examples"
        rationale.append(
            f"Only {per_class:.0f} examples per class: tuning blocks would overfit, so train the head alone."
        )
    elif per_class < SMALL_TARGET and n > 1:
        depth = n - 1
        basis = "small target"
        rationale.append(
            f"Only {per_class:.0f} examples per class (below {SMALL_TARGET}): tune the last block "
            f"({blocks[-1]}) and keep the {depth} below frozen — with 10 per class that beat freezing "
            f"through the probe peak (here {best}, {top:.2f}) on two digit targets, and a head alone "
            "did worse than both."
        )
    elif flat and rgn and any(rgn.get(b, 0.0) >= RGN_PULL for b in blocks):
        basis = "rgn"
        first = next(b for b in blocks if rgn.get(b, 0.0) >= RGN_PULL)
        depth = min(blocks.index(first), n - 2) if n > 2 else blocks.index(first)
        rationale.append(
            f"The probe curve is flat (range {spread:.2f} over the blocks, below {FLAT_RANGE}): every "
            "layer's features serve the target about equally, so it cannot say where to stop freezing. "
            f"The relative gradient norms decide: the target pulls hardest from {first} on (RGN ≥ "
            f"{RGN_PULL} of the largest), so tune from {blocks[depth]} and keep the {depth} block(s) "
            "below frozen."
        )
    else:
        # a probe that is not a block (e.g. "cls" for text) maps by depth order
        depth = blocks.index(best) + 1 if best in blocks else min(n, names.index(best) + 1)
        depth = min(depth, n - 2) if n > 2 else depth
        rationale.append(
            f"Target-useful features peak at {best} ({top:.2f}): keep the blocks up to "
            f"{blocks[depth - 1] if depth > 0 else 'none'} frozen and tune the {n - depth} block(s) after, "
            "whose features turn specific to the source task."
            + (
                f" {peak} ({lp[peak]:.2f}) is within the fold spread ({tol:.2f}) of the peak: freezing "
                f"only up to it is about as defensible."
                if peak != best
                else ""
            )
            + (" (The curve is flat and no gradient norms were computed: a weak signal.)" if flat else "")
        )
    lr = "standard"
    if shift and shift.get("is_shift"):
        e = shift.get("effect") or {}
        auc = float(e.get("value", 0.5))
        level, onset = shift.get("level"), shift.get("onset_layer")
        rationale.append(
            f"The source-target shift appears at {onset} ({level}, AUC {auc:.2f} at {e.get('layer')})."
        )
        if level == "input-level" and depth > 0:
            rationale.append(
                "An input-level shift is best corrected in early blocks (surgical fine-tuning); they stay "
                "frozen here because the target's features still serve it at those depths — if accuracy "
                "disappoints, try a smaller K."
            )
        if top >= 0.8 and auc >= 0.9 and depth < n:
            lr = "lp-ft"
            rationale.append(
                "Good features and a large shift: train the head first, then unfreeze (LP-FT), so a random "
                "head does not distort the pretrained features."
            )
    evidence: dict[str, Any] = {
        "linear_probe": {k: lp[k] for k in names},
        "peak_layer": best,
        "shallowest_near_peak": peak,
        "best_layer": best,
        "tolerance": tol,
        "probe_range": spread,
        "basis": basis,
        "examples_per_class": per_class,
    }
    if shift_layers:
        evidence["shift_auc"] = {x["name"]: x["shift"]["c2st_auc"] for x in shift_layers}
    if rgn:
        evidence["rgn"] = dict(rgn)
        pull = max(rgn, key=lambda b: rgn[b])
        if basis != "rgn":
            rationale.append(
                "Relative gradient norm per block on target batches (Auto-RGN, 1 = strongest): "
                + ", ".join(f"{b} {v:.2f}" for b, v in rgn.items())
                + f"; the target pulls hardest on {pull}"
                + (" (tuned)." if pull in blocks[depth:] else " (frozen here).")
            )
        else:
            rationale.append(
                "Relative gradient norm per block (Auto-RGN, 1 = strongest): "
                + ", ".join(f"{b} {v:.2f}" for b, v in rgn.items())
                + "."
            )
    return FreezeRecommendation(
        depth=int(depth),
        n_blocks=n,
        frozen=blocks[:depth],
        tune=blocks[depth:],
        lr_scheme=lr,
        rationale=rationale,
        evidence=evidence,
    )


def recommend_for_target(
    target: Any,
    backbone: Any,
    *,
    report: Any = None,
    random_state: int = 0,
    use_cache: bool = True,
    rgn: bool = True,
) -> FreezeRecommendation:
    """The freeze recommendation for ``diag finetune --freeze auto``.

    With a ``report`` (from ``diag diagnose`` on this target) its ``freeze`` section is used as is.
    Otherwise the target is embedded with ``backbone`` (cached) and the recommendation comes from its
    per-layer probe curve and, with ``rgn``, the relative gradient norms of its blocks on a few target
    batches (no source, so no shift evidence).
    """
    from diag.data.dataset import open_data
    from diag.models.backbones import Backbone, load
    from diag.pipeline import embed

    if report is not None:
        fr = report.sections.get("freeze")
        if not fr:
            raise DataError(
                f"{report.folder or 'the report'} has no freeze recommendation (unlabelled target, or "
                "--no-transfer). Run `diag diagnose` with a labelled target, or pass --freeze K."
            )
        return FreezeRecommendation(**fr)
    bb = backbone if isinstance(backbone, Backbone) else load(backbone)
    data = open_data(target)
    emb = embed(data, bb, use_cache=use_cache)
    pre = layer_transfer(emb, scores=("linear_probe_accuracy",), random_state=random_state)
    y = _require_labels(emb, "the target")
    grads = None
    if rgn:
        from diag.train.rgn import relative_gradient_norms

        # no config: the loaded backbone's own input size / token length, as for the probe curve above
        grads = relative_gradient_norms(data, bb, seed=random_state).normalized
    return recommend_freeze(pre, freeze_blocks(bb), n_target=len(emb), n_classes=len(np.unique(y)), rgn=grads)

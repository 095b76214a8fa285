"""Negative transfer: will fine-tuning from the pretrained weights end worse than training from scratch?

Negative transfer (Wang et al., "Characterizing and Avoiding Negative Transfer", CVPR 2019): fine-tuning
from the pretrained weights ends worse than training the same architecture from scratch. The signals,
before any training (DESIGN.md): how much better the pretrained features serve the target than the
random-init twin's (linear-probe accuracy at the best layer of each: the *feature advantage*), how much
data the target has (from-scratch training catches up with more data per class), and the size of the
source–target shift. LogME alone cannot flag negative transfer (it ranks models on fixed data), so it is
reported as evidence beside the probe gap, not used alone. The rule is checked against the fine-tuning
sweeps in ``benchmarks/bench_predict.py``.

*Lost plasticity* is read from the checkpoint itself (:func:`weight_scale`): conv and linear weights far
above the scale of He initialisation leave the forward pass of a BatchNorm or LayerNorm network unchanged
(every layer's output is normalised) but shrink the optimiser's step relative to every weight. Under SGD the
effective learning rate of a scale-invariant weight is ``lr / ||w||²`` (van Laarhoven, "L2 Regularization
versus Batch and Weight Normalization", 2017); under Adam the step per weight is about ``lr`` whatever the
gradient's scale, so the relative step is ``lr / |w|``. Either way such a network keeps its features through
fine-tuning — the loss of plasticity of Lyle et al., "Understanding Plasticity in Neural Networks", ICML
2023, where growing parameter norms are one of its causes — and fine-tuning amounts to a linear probe of the
final features.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import nn

from diag.errors import DataError

__all__ = [
    "HEAD_START_30",
    "HEAD_START_PER_DOUBLING",
    "REACH_MIN",
    "SCALE_MAX",
    "SCALE_QUANTILE",
    "NegativeTransfer",
    "gradient_reach",
    "head_start",
    "negative_transfer",
    "weight_scale",
]


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
#: Weights above SCALE_MAX times the He-initialisation scale (:func:`weight_scale`) have lost plasticity.
#: Set from the physics, not fitted to the sweeps: at √10 times that scale the effective learning rate
#: ``lr / ||w||²`` (van Laarhoven 2017) is ten times below the one default learning rates are set for (the
#: Adam step relative to a weight, ``lr / |w|``, √10 times below). Healthy checkpoints measure 0.67-1.00
#: (ImageNet EfficientNet-Lite0/1/2 0.80/0.67/0.68, MiniLM 0.99, timm's and Hugging Face's random inits
#: 1.00 / 0.28, checkpoints fine-tuned here with AdamW 0.78-1.00).
SCALE_MAX = math.sqrt(10.0)
#: Plasticity can be lost in part of a network: the rule reads the weight scale of the tenth of the conv and
#: linear layers with the largest weights (this quantile of the per-layer scales) beside the median. Healthy
#: checkpoints measure at most 2.49 there (ImageNet Lite0/1/2 1.76/1.68/1.63, MiniLM 1.27, the random inits
#: 2.45, the ones trained here on shuffled labels, noise or gratings 1.78-2.49); five trained at too high a
#: learning rate (AdamW at 0.05 without weight decay, or one epoch of SGD at 1) 3.96-32.2 — all negative,
#: four of them with medians of 1.25-2.56 the median test let through. Set after those five were seen.
#: Checked after: seven more checkpoints (too-high learning rates, controls, and the last third of the convs
#: re-scaled x 10), all right (benchmarks/README.md). Not checked: the pretrained weights of other
#: architectures (ResNet, ConvNeXt, ViT; none offline here) - a healthy one with large top layers would be
#: judged on its final features, which only matters where they probe below random ones.
SCALE_QUANTILE = 0.9
_CONV_OR_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def gradient_reach(rgn: dict[str, float]) -> float:
    """Mean of the normalised relative gradient norms over the input-side half of the blocks."""
    values = list(rgn.values())
    half = values[: math.ceil(len(values) / 2)]
    return float(np.mean(half)) if half else 1.0


def weight_scale(model: nn.Module, q: float = 0.5) -> float | None:
    """How large a network's weights are: the ``q`` quantile (default the median), over its conv and
    linear layers, of ``RMS(w)`` in units of He initialisation's ``sqrt(2 / fan_in)`` (He, Zhang, Ren &
    Sun, "Delving Deep into Rectifiers", ICCV 2015), ``fan_in`` being the inputs of one output unit
    (in-channels per group × kernel size). 1 at He initialisation; the median keeps a new head or an odd
    layer from moving it, ``q = SCALE_QUANTILE`` reads the largest tenth of the layers. None when the model
    has no conv or linear layer.

    No data is needed: it reads the weights. Multiplying every conv and linear weight by ``c`` multiplies it
    by ``c`` exactly. A normalised network (BatchNorm, LayerNorm) computes the same function at any scale
    of these weights, but its effective learning rate falls with the square of the scale (the module
    docstring), so a large value means fine-tuning can hardly move the features.
    """
    values = []
    for m in model.modules():
        w = getattr(m, "weight", None) if isinstance(m, _CONV_OR_LINEAR) else None
        if w is None or w.numel() == 0:
            continue
        rms = float(w.detach().double().pow(2).mean().sqrt())
        values.append(rms / math.sqrt(2.0 / w[0].numel()))
    return float(np.quantile(values, q)) if values else None


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
    scale: float | None = None,
    twin_scale: float | None = None,
    scale_top: float | None = None,
) -> NegativeTransfer:
    """Will fine-tuning from the pretrained weights end worse than training from scratch?

    Parameters
    ----------
    pretrained, random_init : dict
        :func:`diag.predict.layers.layer_transfer` of the target under the pretrained backbone and its
        random-init twin.
    n_target, n_classes : int
    shift : dict, optional
        The report's ``shift`` verdict (effect AUC, onset).
    rgn : dict, optional
        Normalised relative gradient norm per block (:func:`diag.train.rgn.relative_gradient_norms`).
    scale, twin_scale : float, optional
        :func:`weight_scale` of the pretrained backbone and of its random-init twin (the twin's is
        reported, not used).
    scale_top : float, optional
        :func:`weight_scale` of the pretrained backbone at ``q = SCALE_QUANTILE``: the largest tenth of
        its layers.

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

    A blocked gradient also means that fine-tuning cannot carry good mid-network features up to the head
    through the blocks above them, so the head sees the final features: when the final-layer advantage
    ``a_final`` (final probe minus the twin's final probe) is the worse, ``a`` moves to it by the blocked
    fraction, ``a ← a + blocked · (a_final - a)``. No new constant (``blocked`` is the term above). Built
    after Lite0 × 0.01 was missed: its probe at blocks.3 beat the twin's by 0.11 while the deep blocks had
    collapsed (final probe 0.10 against the twin's 0.75), and scratch training won by 0.44.

    *Lost plasticity*: when the weights — the median layer's, or those of the largest tenth of the layers
    (``scale_top``: plasticity lost in part of the network, as training at too high a learning rate leaves
    it) — are above ``SCALE_MAX`` times the He-initialisation scale,
    fine-tuning cannot move the features and amounts to a linear probe of the final (pooled) features, so
    the advantage is read there instead — the final-layer probe minus the twin's final-layer probe,
    ``a_final`` — alone: ``p = sigmoid(-20 a_final)``. No head start (its calibration, scratch training
    against the probes of a network that fine-tuning can change, does not carry over; zero is the natural
    margin, not a fitted one), and neither the shift nor the gradient reach, which say how hard the
    network is to adapt, when it will not adapt: the probe on the target already measures what the shift
    costs frozen features. Frozen features that probe below random ones predict negative transfer
    (measured: ImageNet and random-init Lite0 × 100, final features +0.10 / +0.00 against the twin's, beat
    scratch training; shuffled ImageNet weights × 100 or × 10, -0.18 to -0.29, lost to it).
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
    last = list(pretrained)[-1]
    rnd_last = rnd_lp.get(last, math.nan)
    adv_final = pre_lp[last] - rnd_last if math.isfinite(pre_lp[last]) and math.isfinite(rnd_last) else None
    lost = adv_final is not None and any(x is not None and x > SCALE_MAX for x in (scale, scale_top))
    # A blocked gradient cannot rebuild the path from the best layer's features to the head, which sees the
    # final features: the advantage moves, by the blocked fraction, to the final layer's when that is worse.
    used = adv
    if blocked > 0 and adv_final is not None and adv_final < adv:
        used = adv + blocked * (adv_final - adv)
    if lost:
        assert adv_final is not None
        z = -_SLOPE * adv_final
    else:
        z = _SLOPE * (-used - start) + _B_SHIFT * shift_excess + _B_REACH * blocked
    p = 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, z))))
    risk = "high" if p > 0.6 else "medium" if p > 0.3 else "low"

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
    if scale is not None:
        evidence.append(
            _scale_sentence(scale, twin_scale, lost, last, pre_lp[last], rnd_last, adv_final, scale_top)
        )
    contributions = {
        "feature advantage": 0.0 if lost else abs(_SLOPE * used),
        "target size": 0.0 if lost else abs(_SLOPE * start),
        "weight scale": abs(_SLOPE * adv_final) if lost and adv_final is not None else 0.0,
        "shift size": 0.0 if lost else abs(_B_SHIFT * shift_excess),
        "gradient reach": 0.0 if lost else _B_REACH * blocked,
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
            + (
                f" Nor can it carry the features of {pre_best} up to the head, which sees those of {last} "
                f"({adv_final:+.2f} against the twin's): the advantage counted is {used:+.2f}."
                if used != adv and not lost and adv_final is not None
                else ""
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
            "advantage_used": adv if lost else used,
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
            "weight_scale": scale,
            "weight_scale_random_init": twin_scale,
            "weight_scale_top": scale_top,
            "final_layer": last,
            "pretrained_final_probe": pre_lp[last] if math.isfinite(pre_lp[last]) else None,
            "random_init_final_probe": rnd_last if math.isfinite(rnd_last) else None,
            "final_advantage": adv_final,
            "plasticity_lost": lost,
        },
        rule=(
            f"p = sigmoid({_SLOPE:g}·(-advantage - head_start) + {_B_SHIFT:g}·shift"
            f" + {_B_REACH:g}·blocked), advantage moved towards the final layer's by blocked when worse, "
            f"head_start = max(0, {HEAD_START_30} - {HEAD_START_PER_DOUBLING}"
            "·log2(examples per class / 30)), "
            f"blocked = max(0, 1 - gradient_reach / {REACH_MIN}); with weight_scale or weight_scale_top > "
            f"{SCALE_MAX:.2f} "
            f"(lost plasticity) p = sigmoid({_SLOPE:g}·(-final_advantage)); high > 0.6, medium > 0.3"
        ),
    )


def _scale_sentence(
    scale: float,
    twin_scale: float | None,
    lost: bool,
    last: str,
    pre_last: float,
    rnd_last: float,
    adv_final: float | None,
    scale_top: float | None = None,
) -> str:
    """The weight-scale evidence, in words."""
    twin = f"; the random-init twin's {twin_scale:.2f}" if twin_scale is not None else ""
    head = f"Weight scale: conv/linear weights at {scale:.2f}× the He-initialisation scale{twin} — "
    if lost and scale <= SCALE_MAX and scale_top is not None:
        return head + (
            f"normal for the median layer, but the largest tenth of the layers is at {scale_top:.2f}×, above "
            f"{SCALE_MAX:.2f}: those layers can hardly move (lost plasticity in part of the network, as "
            "training at too high a learning rate leaves it), so fine-tuning cannot repair the features "
            f"that pass through them; the final features are judged: {pre_last:.2f} at {last} against the "
            f"twin's {rnd_last:.2f} ({adv_final:+.2f})."
        )
    if lost:
        return head + (
            f"above {SCALE_MAX:.2f}: the forward pass is unchanged but the optimiser's step relative to "
            f"every weight is about {scale:.0f} times smaller than at initialisation (Adam; the effective "
            f"learning rate lr/‖w‖² of SGD {scale**2:.0f} times), so fine-tuning cannot move the features "
            "(lost plasticity) and acts as a linear probe on the final features: "
            f"{pre_last:.2f} at {last} against the twin's {rnd_last:.2f} ({adv_final:+.2f}), judged there "
            "instead of at the best layer."
        )
    if scale > SCALE_MAX:
        return head + "above the lost-plasticity threshold, but the final layer's probes are missing."
    return head + "normal: fine-tuning can move them."

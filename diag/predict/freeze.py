"""Freeze depth: how many blocks to keep frozen, which to tune, and the learning-rate scheme.

The per-layer linear-probe curve says where target-useful features peak; blocks up to that depth are kept
(frozen), the blocks after it — whose features turn source-specific — are tuned (Yosinski et al., "How
transferable are features in deep neural networks?", NeurIPS 2014). The shift profile adjusts the
learning-rate scheme: with good features and a large shift, LP-FT (Kumar et al., ICLR 2022); where the
shift is input-level, surgical fine-tuning (Lee et al., ICLR 2023) says early blocks matter, which the
rationale states. A high negative-transfer risk (:mod:`diag.predict.negative`) is part of the rule's
rationale. Weights far above the He-initialisation scale (lost plasticity;
:func:`diag.predict.negative.weight_scale`) call for a linear probe: fine-tuning cannot move them. Checked
against the sweeps in ``benchmarks/bench_predict.py``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from diag.errors import DataError, param_error
from diag.predict.negative import SCALE_MAX, NegativeTransfer

__all__ = [
    "DEFAULT_SEARCH_BUDGET",
    "SMALL_TARGET",
    "FreezeRecommendation",
    "FreezeRule",
    "calibration",
    "recommend_freeze",
    "search_candidates",
]

#: Below this many examples per class (and from 10 up), only the last block is tuned: with 10 per class
#: freezing all but the last block beat freezing through the probe peak on UCI and OpenCV digits (0.781 vs
#: 0.744, 0.700 vs 0.549; linear probe 0.635, 0.538); at 30 per class the probe peak won. Set between the
#: two sizes measured, on those two tables, after they had been held out from the rest of the rule.
SMALL_TARGET = 20


#: Extra compute of ``diag finetune --freeze search`` by default, in units of one full run
#: (:mod:`diag.train.search`). One, not half: over the 68 benchmark tables the search, simulated from their
#: per-epoch curves, added +0.008 of the best depth's accuracy to the rule alone at half a run (95 %
#: [-0.001, +0.020], paired bootstrap over the tables) and +0.016 at one run ([+0.007, +0.027]), with no
#: table below 0.95 (``benchmarks/bench_search.py``: ``gain_over_rule``). Over 71 (three text tables
#: added): +0.009 [-0.000, +0.020] at half a run, +0.017 [+0.008, +0.028] at one.
DEFAULT_SEARCH_BUDGET = 1.0


#: The measured spread of the rule's ratio (accuracy at its depth / the best depth's) per family of truth
#: tables, leave-one-family-out: written by ``benchmarks/predict_lofo.py``, shipped with the package.
CALIBRATION_FILE = "freeze_calibration.json"


@functools.lru_cache(maxsize=1)
def calibration() -> dict[str, Any] | None:
    """The shipped leave-one-family-out calibration of the freeze rule (None if the file is absent)."""
    try:
        text = resources.files("diag.predict").joinpath(CALIBRATION_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None
    data: dict[str, Any] = json.loads(text)
    return data


def _similar_families(cal: dict[str, Any], basis: str, text: bool, input_level: bool) -> list[str]:
    """The calibration families most like a target: those whose tables the same step of the rule
    decided, of the same modality; an input-level shift narrows image targets to the corruption family."""
    fams = cal.get("families", {})
    same = [
        f for f, v in fams.items() if basis in v.get("bases", []) and (v.get("modality") == "text") == text
    ]
    if input_level and any(fams[f].get("input_level") for f in same):
        same = [f for f in same if fams[f].get("input_level")]
    return sorted(same)


def _how_sure_lost(cal: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """How sure the lost-plasticity step is: its checkpoints were swept at two depths only (tune-all and the
    linear probe), so they are not among the families scored by ratio; the calibration lists them apart."""
    lost = cal.get("lost_plasticity") or {}
    tables = lost.get("tables") or {}
    if not tables:
        return (
            "How sure: no truth table was decided by this step of the rule (unmeasured).",
            {"families": []},
        )
    wins = sum(t["linear_probe_won"] for t in tables.values())
    tune_all = [t["tune_all_ratio"] for t in tables.values()]
    note = (
        f"How sure: on the {len(tables)} benchmark checkpoints above this scale (weights × 10 or × 100; "
        f"tune-all and the linear probe measured, no depth between) the linear probe won on {wins} of "
        f"{len(tables)}, and tuning everything reached {min(tune_all):.2f}-{max(tune_all):.2f} of its "
        "accuracy. The threshold is set from the physics; only this one family of checkpoints checks it."
    )
    return note, {"families": sorted({t["family"] for t in tables.values()}), "n_tables": len(tables)}


def _how_sure(
    basis: str, text: bool, input_level: bool, alternative: bool = False
) -> tuple[str | None, dict[str, Any] | None]:
    """The "How sure" sentence and its figures; ``alternative``: the caller names an alternative depth and
    the search that settles it, so an unmeasured step does not point to the search a second time."""
    cal = calibration()
    if not cal:
        return None, None
    if basis == "lost plasticity":
        return _how_sure_lost(cal)
    fams = _similar_families(cal, basis, text, input_level)
    if not fams:
        return (
            "How sure: no truth table was decided by this step of the rule (unmeasured)"
            + (
                "."
                if alternative
                else "; `diag finetune --freeze search` checks the depth for a fraction of a run."
            ),
            {"families": []},
        )
    ratios = {  # the tables this step of the rule decided
        t: r
        for f in fams
        for t, r in cal["families"][f]["lofo_by_table"].items()
        if cal["families"][f]["basis_by_table"][t] == basis
    }
    worst = min(ratios, key=lambda t: ratios[t])
    mean = sum(ratios.values()) / len(ratios)
    note = (
        f"How sure: with its constants refit without each family of truth tables and scored on the family "
        f"left out, the rule reached {mean:.3f} of the best depth's accuracy on average on the {len(ratios)} "
        f"tables this step decided in the families most like this target ({', '.join(fams)}), from "
        f"{ratios[worst]:.3f} ({worst}) to {max(ratios.values()):.3f}."
    )
    return note, {
        "families": fams,
        "lofo_mean": mean,
        "lofo_min": ratios[worst],
        "lofo_max": max(ratios.values()),
        "n_tables": len(ratios),
    }


@dataclass(frozen=True)
class FreezeRule:
    """The constants of the freeze rule (:func:`recommend_freeze`); the defaults are diag's.

    ``benchmarks/bench_predict.py`` refits them on all but one family of truth tables and scores the
    family left out (leave-one-family-out), so they are parameters rather than literals.

    Attributes
    ----------
    few_examples : float
        Below this many examples per class, a linear probe.
    small_target : float
        From ``few_examples`` up to this, only the last block is tuned.
    min_tuned : int
        At least this many blocks are tuned (when the backbone has more).
    peak_offset : int
        Blocks frozen beyond (positive) or short of (negative) the probe peak.
    scale_max : float
        Weights above this many times the He-initialisation scale have lost plasticity: a linear probe
        (the negative-transfer rule's ``SCALE_MAX``, set from the physics).
    """

    few_examples: float = 10
    small_target: float = SMALL_TARGET
    min_tuned: int = 2
    peak_offset: int = 0
    scale_max: float = SCALE_MAX


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
        ``standard`` (the report format also allows ``lp-ft``, which the rule no longer recommends).
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


def _best_layer(curve: dict[str, float], names: list[str], tol: float) -> tuple[str, float, str]:
    """The argmax layer, and the shallowest layer within ``tol`` of it."""
    best = max(names, key=lambda n: curve[n])
    top = curve[best]
    first = next(n for n in names if curve[n] >= top - tol)
    return best, top, first


def recommend_freeze(
    pretrained: dict[str, dict[str, Any]],
    blocks: Sequence[str],
    *,
    n_target: int,
    n_classes: int,
    shift: dict[str, Any] | None = None,
    shift_layers: Sequence[dict[str, Any]] | None = None,
    rgn: dict[str, float] | None = None,
    negative: NegativeTransfer | None = None,
    weight_scale: float | None = None,
    rule: FreezeRule | None = None,
) -> FreezeRecommendation:
    """Recommend ``K`` (blocks to freeze) from the per-layer probe curve, the shift profile and, when the
    probe curve cannot decide, the relative gradient norms.

    Rule (checked against the sweeps in ``benchmarks/bench_predict.py``):

    0. *Lost plasticity*: conv and linear weights above ``scale_max`` (√10) times the He-initialisation
       scale (:func:`diag.predict.negative.weight_scale`). A normalised network computes the same function
       at any weight scale, but the optimiser's step relative to a weight shrinks with it (``lr/|w|`` per
       Adam step; the effective learning rate ``lr/||w||²`` of SGD, van Laarhoven 2017): fine-tuning
       cannot move the body (Lyle et al., "Understanding plasticity in neural networks", ICML 2023), so
       every block is frozen and the head alone is trained (K = n, a linear probe). Measured on six
       checkpoints with conv weights × 10 or × 100 (ImageNet, shuffled and random-init Lite0 on UCI digits
       and textures): tuning everything ended at 0.14-0.46, far below the linear probe's 0.26-0.75.
    1. Fewer than 10 examples per class: a linear probe (too little data to tune blocks). From 10 to
       ``SMALL_TARGET``: every block but the last frozen (K = n − 1): enough data to adapt the top block,
       not the several after the probe peak.
    2. The probe curve is *informative* when its range over the blocks exceeds the probe's fold spread
       at the peak (the standard deviation of its accuracy over the cross-validation folds, at least 0.01).
       Then the blocks up to and including the layer where the target's linear-probe accuracy peaks
       are frozen, the blocks after it — whose features turn source-specific — are tuned (Yosinski et
       al. 2014). The shallowest layer within one fold-spread of the peak is named in the rationale.
    3. A *flat* curve — its range over the blocks within that fold spread, so the probe cannot tell the
       layers apart — cannot say where to stop freezing; then the relative gradient norms
       (:mod:`diag.train.rgn`) decide: tuning starts at the block the target pulls hardest on (Auto-RGN's
       argmax; Lee et al., "Surgical fine-tuning", ICLR 2023). No constant: both the flatness and the block
       come from the evidence's own scales (this step replaced a range of 0.05 and an RGN level of 0.9,
       set on the one table it decides, MiniLM on the debates). Without RGN the informative-curve rule
       applies.
    4. Otherwise at least the last two blocks are tuned (a head-only probe leaves accuracy on the table
       whenever the target differs from the source).
    5. An informative curve that peaks at the *first* probed layer (the stem) says that no pretrained
       block carries target-useful features beyond the raw input's: nothing is worth keeping frozen, so
       every block is tuned (K = 0) instead of freezing the stem alone. A structural step with no
       constant. Measured where the depths were swept: Lite0's weights shuffled within each tensor
       (statistics kept, features gone; Raghu et al., NeurIPS 2019) on UCI digits, K 0 0.586 vs K 1
       0.429; a backbone trained on synthetic gratings, K 0 0.612 vs K 3 0.587; against it, the
       shuffled weights on textures, K 0 0.347 vs K 1 0.364 (0.95 of the best, a negative-transfer table).
       Out of sample it fails where the stem peaks because heavy input noise blurs the deeper features, not
       because the weights are worthless: the science images with Gaussian noise of sd 97 through ImageNet
       Lite1 and Lite2, K 0 0.825 and 0.720 of the best depth (K 7 on both; ``benchmarks/README.md``).
       Right out of sample on text: MiniLM on the speaker's role in the 2016 debates, where the word
       embeddings probe best, K 0 0.994 of the best depth (K 2).

    6. A probe at its *ceiling* — the peak's accuracy within its fold spread of 1 — cannot rank the layers
       that reach it: every layer within the fold spread of the peak is as good as the argmax by the
       probe's evidence, and which of them scores highest is noise. Then the blocks up to the *middle*
       of the span of those layers (from the shallowest to the deepest; of two middles the deeper) are
       frozen, and the argmax's depth is the "about as defensible" alternative: whichever layer of the
       span truly peaks, the middle is the fewest blocks off (minimax). A structural step with no
       constant, added after two texture tables were missed by the argmax (photos' crops at 30 per
       class, a band from blocks.2 to blocks.6): Lite1 K 4 0.798 against K 6 0.848, Lite2 K 4 0.770
       against K 6 0.843; over the 38 tables of the day it gave 0.983 of the best depth on average against
       the argmax's 0.979, in sample. Out of sample (21 tables built after it, eleven at the ceiling) it
       moved nine off the argmax, five for it and four against, +0.5 points on average: no evidence
       either way yet.

    LP-FT (Kumar et al., ICLR 2022) is not recommended: where it is usually advised — good pretrained
    features (peak accuracy ≥ 0.8) and a large shift (AUC ≥ 0.9) — it was measured worse than the
    standard recipe at the recommended depth on every truth table (8 of 8; ``benchmarks/lpft_column.py``),
    and the rationale says so; ``lr_scheme`` stays ``standard``. With a ``negative`` verdict of high risk,
    the rationale warns that no depth is expected to beat training from scratch, and the evidence records
    the risk.

    Parameters
    ----------
    pretrained : dict
        :func:`diag.predict.layers.layer_transfer` of the target under the pretrained backbone.
    blocks : list of str
        The backbone's blocks in freeze order (their names are probe points).
    n_target, n_classes : int
    shift : dict, optional
        The report's ``shift`` verdict.
    shift_layers : list of dict, optional
        The report's per-layer shift rows (their C2ST AUC goes into the evidence).
    rgn : dict, optional
        Normalised relative gradient norm per block.
    negative : NegativeTransfer, optional
        The negative-transfer verdict on the same target.
    weight_scale : float, optional
        :func:`diag.predict.negative.weight_scale` of the pretrained backbone (the negative-transfer
        verdict's ``signals["weight_scale"]``); None: not measured, step 0 is skipped.
    rule : FreezeRule, optional
        The rule's constants (default: diag's, :class:`FreezeRule`).
    """
    rule = rule or FreezeRule()
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
    flat = spread <= tol  # the probe cannot tell the blocks apart
    rationale: list[str] = []
    curve = ", ".join(f"{k} {lp[k]:.2f}" for k in names)
    rationale.append(f"Linear-probe accuracy of the target by layer: {curve}.")
    basis = "probe"
    cap = n - rule.min_tuned if n > rule.min_tuned else n
    alternative: int | None = None
    alt_layer = peak  # the layer the alternative freezes through

    def through(layer: str) -> int:
        """K that freezes the blocks up to and including ``layer`` (``peak_offset`` more), at most ``cap``;
        a probe point that is not a block (e.g. "cls" for text) maps by depth order."""
        k = blocks.index(layer) + 1 if layer in blocks else min(n, names.index(layer) + 1)
        return max(0, min(k + rule.peak_offset, cap))

    if weight_scale is not None and weight_scale > rule.scale_max:
        depth = n
        basis = "lost plasticity"
        rationale.append(
            f"The conv/linear weights are {weight_scale:.1f}× the He-initialisation scale (above "
            f"{rule.scale_max:.2f}): the forward pass is unaffected, but each optimiser step moves a weight "
            f"by about lr/|w| of its size (Adam; SGD's effective learning rate lr/‖w‖², van Laarhoven 2017), "
            f"some {weight_scale:.0f} times less than at initialisation, so fine-tuning cannot move the "
            "body (lost plasticity, Lyle et al. 2023): keep every block frozen and train the head alone "
            f"(K = {n}, a linear probe). (Measured: with conv weights × 10 or × 100, tuning everything ended "
            "at 0.14-0.46 against the linear probe's 0.26-0.75 on six checkpoints.)"
        )
    elif per_class < rule.few_examples:
        depth = n
        basis = "few examples"
        rationale.append(
            f"Only {per_class:.0f} examples per class: tuning blocks would overfit, so train the head alone."
        )
    elif per_class < rule.small_target and n > 1:
        depth = n - 1
        basis = "small target"
        rationale.append(
            f"Only {per_class:.0f} examples per class (below {rule.small_target:g}): tune the last block "
            f"({blocks[-1]}) and keep the {depth} below frozen — with 10 per class that beat freezing "
            f"through the probe peak (here {best}, {top:.2f}) on two digit targets, and a head alone "
            "did worse than both."
        )
    elif flat and rgn and any(b in rgn for b in blocks):
        # Structural, no constant: flat = within the probe's own fold spread; the block = Auto-RGN's argmax.
        basis = "rgn"
        pull = max((b for b in blocks if b in rgn), key=lambda b: rgn[b])
        depth = min(blocks.index(pull), cap)
        rationale.append(
            f"The probe curve is flat (range {spread:.2f} over the blocks, within the probe's fold spread "
            f"{tol:.2f}): the probe cannot tell the layers apart, so it cannot say where to stop freezing. "
            f"The relative gradient norms decide: the target pulls hardest on {pull} (Auto-RGN, Lee et al. "
            f"2023), so tune from {blocks[depth]} and keep the {depth} block(s) below frozen."
        )
    elif best == names[0] and not flat:
        # Structural, no constant: a peak at the first probe point leaves no pretrained block worth keeping.
        depth = 0
        basis = "first-layer peak"
        rationale.append(
            f"Target-useful features peak at the first probed layer, {best} ({top:.2f}), and no deeper "
            f"layer probes as well (range {spread:.2f}): no pretrained block adds features the target can "
            "use beyond what the raw input gives, so there is nothing worth keeping frozen — tune every "
            "block (K = 0). (Measured: with Lite0's weights shuffled within each tensor, freezing the stem "
            "got 0.429 on UCI digits and tuning everything 0.586; from a backbone trained on synthetic "
            "gratings, 0.612 at K 0 against 0.587 at K 3.)"
        )
    elif top + tol >= 1.0:
        # Structural, no constant: a probe at its ceiling cannot rank the layers that reach it.
        basis = "probe ceiling"
        band = [k for k in names if lp[k] >= top - tol]
        first, last = names.index(band[0]), names.index(band[-1])
        middle = names[(first + last + 1) // 2]  # the middle of the span; of two, the deeper
        depth, at_argmax = through(middle), through(best)
        if at_argmax != depth:
            alternative, alt_layer = at_argmax, best
        rationale.append(
            f"The probe reaches its ceiling: {top:.2f} at {best}, within the fold spread ({tol:.2f}) of "
            f"perfect, and {len(band)} layers from {band[0]} to {band[-1]} probe within that spread of it, "
            "so which of them peaks is noise. Keep the blocks up to the middle of that span, "
            f"{middle}, frozen and tune the {n - depth} block(s) after: whichever of them truly peaks, that "
            "depth is the fewest blocks off. (Measured where the argmax was used: "
            "on textures at 30 per class through Lite1 and Lite2 it froze at blocks.2, 0.94 and 0.91 of the "
            "best depth, blocks.4.)"
        )
    else:
        depth, at_peak = through(best), through(peak)
        if at_peak != depth:
            alternative = at_peak
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
    text = any(b.startswith(("layer.", "embeddings")) for b in blocks)
    input_level = bool(shift and shift.get("is_shift") and shift.get("level") == "input-level")
    sure, cal = _how_sure(basis, text, input_level, alternative is not None)
    if sure:
        rationale.append(
            sure
            + (
                f" The alternative, K = {alternative} (freezing through {alt_layer}), is about as "
                f"defensible (`--freeze {alternative}` trains it); {_search_line(depth, alternative, n)}"
                if alternative is not None
                else ""
            )
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
            # Measured (benchmarks/lpft_column.py): where this condition held, LP-FT at the recommended
            # depth lost to the standard recipe on 8 of 8 truth tables (LP-FT / standard 0.86-0.99).
            rationale.append(
                "Good features and a large shift, where LP-FT (head first, then unfreeze; Kumar et al. "
                "2022) is often advised: on the benchmark's tables it did worse than the standard recipe "
                "at this depth (8 of 8, 1-14 % lower with 2 of 6 epochs head-only), so it is not recommended."
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
        "alternative_depth": alternative,
    }
    if cal is not None:
        evidence["calibration"] = cal
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
    if negative is not None and negative.risk == "high":
        rationale.append(
            f"Negative-transfer risk is high (p = {negative.probability:.2f}): fine-tuning from these "
            "weights is expected to end below training from scratch at any depth. Compare with "
            "`diag finetune --from-scratch` (or `diag sweep`) before trusting this K."
        )
        evidence["negative_transfer_risk"] = negative.risk
    return FreezeRecommendation(
        depth=int(depth),
        n_blocks=n,
        frozen=blocks[:depth],
        tune=blocks[depth:],
        lr_scheme=lr,
        rationale=rationale,
        evidence=evidence,
    )


def _search_line(depth: int, alternative: int | None, n: int) -> str:
    """What ``diag finetune --freeze search`` would try against ``depth``, in words."""

    def name(k: int) -> str:
        if k == 0:
            return "tuning every block"
        if k == n - 2:
            return "tuning only the last two blocks"
        return "the alternative" if k == alternative else f"K = {k}"

    others = [name(k) for k in search_candidates(depth, alternative, n)[1:]]
    more = "one run" if DEFAULT_SEARCH_BUDGET == 1 else f"{DEFAULT_SEARCH_BUDGET:g} of a run"
    return (
        f"`diag finetune --freeze search` checks K = {depth} against {' and '.join(others)} for about "
        f"{more} more."
    )


def search_candidates(depth: int, alternative: int | None, n_blocks: int, *, limit: int = 3) -> list[int]:
    """Candidate depths, most trusted first: the rule's ``depth``; the two ends of the usual range, the last
    two blocks tuned (``n_blocks - 2``) and every block tuned (0); the rule's ``alternative``; then the depths
    one block deeper and one shallower than the rule's; the first ``limit`` of them. The budget decides how
    many are tried (:func:`diag.train.search.plan_rungs`; for a 6-epoch run two at budget 0.25, three at 0.5
    and at 1). Three, not four, by default: ``plan_rungs`` prefers more candidates to longer rungs, and at
    budget 1 a fourth (the alternative) cut the first rung from two epochs to one and the simulated share of
    the best depth from 0.983 to 0.978.

    Why the ends before the neighbours: a trial stopped at a rung can only separate depths whose accuracies
    differ by more than the validation noise. On the 59 benchmark tables the depths next to the rule's
    differ from it by a median 0.76 standard errors of the difference (``sqrt(2 p (1 - p) / n)``; 14 % of
    them by more than 2), tuning every block by 1.63 (40 %), the last two blocks by 0.81 (20 %) — and these
    ends are where the rule's misses lie (corrupted inputs that want every block tuned, heavy noise that
    wants all but the last blocks frozen). Simulated from the tables' per-epoch curves
    (``benchmarks/bench_search.py``), the search reached a higher share of the best depth this way than
    with the rule's neighbours at every budget (0.980 / 0.979 / 0.983 against 0.970 / 0.976 / 0.978 at
    budgets 0.25 / 0.5 / 1, the same margin for both)."""
    if not 0 <= depth <= n_blocks:
        raise param_error("depth", f"must be in [0, {n_blocks}]", depth)
    out: list[int] = []
    for k in (depth, n_blocks - 2, 0, alternative, depth + 1, depth - 1):
        if k is not None and 0 <= k <= n_blocks and k not in out:
            out.append(int(k))
    return out[: max(1, limit)]

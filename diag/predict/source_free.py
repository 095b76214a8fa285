"""The verdict of a source-free profile: per-block distances to the pretraining BatchNorm statistics.

Each block has a score (mean per-channel W2 to the running statistics, in running-variance units), a
null band and a p-value from splits of the target (:func:`diag.reference.batchnorm_profile`). The rule
mirrors the data-based verdict (:mod:`diag.predict.profile`): Holm-adjusted per-block p-values, a
Bonferroni overall p-value, and an onset - the first significant block whose excess over its null median
reaches half of the largest excess - whose position along the depth names the level of the shift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from diag.predict.profile import LEVEL_WHY, LEVELS, ShiftVerdict, holm

__all__ = ["BlockEvidence", "source_free_verdict"]


@dataclass(frozen=True)
class BlockEvidence:
    """What the rule reads of one block, in depth order."""

    name: str
    score: float
    null_median: float
    null_p95: float
    p_value: float

    @property
    def excess(self) -> float:
        return self.score - self.null_median


def source_free_verdict(
    blocks: Sequence[BlockEvidence], *, alpha: float = 0.05, modality: str = "image"
) -> tuple[ShiftVerdict, list[float]]:
    """The shift verdict and the Holm-adjusted p-value of each block (input order)."""
    n = len(blocks)
    adjusted = holm([b.p_value for b in blocks])
    p_overall = min(1.0, n * min(b.p_value for b in blocks))
    is_shift = p_overall <= alpha
    significant = [b.name for b, p in zip(blocks, adjusted, strict=True) if p <= alpha]
    peak = max(blocks, key=lambda b: b.excess)
    onset = None
    if is_shift:
        onset = next(
            (
                b
                for b, p in zip(blocks, adjusted, strict=True)
                if p <= alpha and b.excess >= 0.5 * peak.excess
            ),
            None,
        )
    level = None
    if onset is not None:
        frac = ([b.name for b in blocks].index(onset.name) + 1) / n
        level = next(name for cut, name in LEVELS if frac <= cut + 1e-9)

    def effect(b: BlockEvidence) -> dict[str, object]:
        return {"name": "bn_w2", "layer": b.name, "value": b.score, "ci": [b.null_median, b.null_p95]}

    deepest = blocks[-1]
    if is_shift and onset is not None and level is not None:
        why = LEVEL_WHY.get((level, modality), LEVEL_WHY[(level, "image")])
        summary = (
            f"Shift from the pretraining data detected (p = {p_overall:.2g} over {n} blocks, BatchNorm "
            f"statistics): it appears at {onset.name} (W2 {onset.score:.3g} against a null band up to "
            f"{onset.null_p95:.3g}) and peaks at {peak.name} (W2 {peak.score:.3g}) - a {level} shift ({why})."
        )
    else:
        summary = (
            f"No shift from the pretraining data detected (p = {p_overall:.2g} over {n} blocks): "
            "every block's BatchNorm-input moments are within the spread of splits of the target itself."
        )
    verdict = ShiftVerdict(
        is_shift=is_shift,
        p_value=float(p_overall),
        alpha=alpha,
        effect=effect(deepest),
        peak=effect(peak),
        onset_layer=None if onset is None else onset.name,
        first_significant_layer=significant[0] if significant else None,
        level=level,
        significant_layers=significant,
        summary=summary,
        rules={
            "p_value": f"Bonferroni over {n} blocks of per-block split p-values: min(1, B · min p)",
            "layers": "per-block p-values Holm-adjusted; a block is significant when its adjusted p <= alpha",
            "effect": "mean per-channel W2 to the BatchNorm running statistics (running-variance units); "
            "ci = [median, 95th percentile] of the null band from target splits",
            "onset_layer": "first significant block whose excess over its null median reaches half "
            "the peak's",
            "level": "onset in the first third of the blocks = input-level, middle = feature-level, "
            "last third = semantic",
        },
    )
    return verdict, adjusted

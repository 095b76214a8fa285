"""The per-layer transfer curve: transferability scores of the target's features at every probe point.

One pass of a backbone over the labelled target gives features at each probe point; each gets the cheap
scores of :mod:`diag.stats.transfer` (LogME, k-NN and linear-probe accuracy) and, at the deepest probe,
LEEP and NCE from the source head's logits. The curve feeds :mod:`diag.predict.negative` (the best layer
of the pretrained backbone against its random-init twin's) and :mod:`diag.predict.freeze` (where the
target-useful features peak).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from diag.errors import DataError, DiagError
from diag.stats.transfer import linear_probe_accuracy, transferability

if TYPE_CHECKING:
    from diag.engine.embeddings import Embeddings

__all__ = ["LAYER_SCORES", "layer_transfer", "require_labels"]

log = logging.getLogger(__name__)

#: The scores computed at every probe point (the cheap ones; LEEP/NCE need the head and are added at the
#: last layer when the backbone has one).
LAYER_SCORES = ("logme", "knn_accuracy", "linear_probe_accuracy")


def require_labels(emb: Embeddings, what: str) -> np.ndarray:
    """The integer labels of ``emb``, checked to cover 2+ classes.

    Raises
    ------
    DataError
        When ``emb`` is unlabelled or has a single class (``what`` names it in the message).
    """
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
    y = require_labels(emb, "the target")
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

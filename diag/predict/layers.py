"""The per-layer transfer curve: transferability scores of the target's features at every probe point.

One pass of a backbone over the labelled target gives features at each probe point; each gets the cheap
scores of :mod:`diag.stats.transfer` (LogME, k-NN and linear-probe accuracy) and, at the deepest probe,
LEEP and NCE from the source head's logits. The curve feeds :mod:`diag.predict.negative` (the best layer
of the pretrained backbone against its random-init twin's) and :mod:`diag.predict.freeze` (where the
target-useful features peak).

Above :data:`TRANSFER_MAX_ITEMS` labelled target items the scores are computed on a stratified, seeded
subsample of that size (:func:`transfer_subsample`): the k-NN probe is quadratic in the items and the
cross-validated logistic probe is a fit per fold per layer, so at 100k items one backbone's curve took
minutes. Targets up to the cap (every truth-table target) are never subsampled.
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

__all__ = ["LAYER_SCORES", "TRANSFER_MAX_ITEMS", "layer_transfer", "require_labels", "transfer_subsample"]

log = logging.getLogger(__name__)

#: The scores computed at every probe point (the cheap ones; LEEP/NCE need the head and are added at the
#: last layer when the backbone has one).
LAYER_SCORES = ("logme", "knn_accuracy", "linear_probe_accuracy")

#: The most labelled target items the transfer scores are fitted on; above it, a stratified seeded
#: subsample of this size (every class keeps its share). The freeze and negative-transfer rules were
#: validated on targets of 100-600 items, and none of the truth tables' targets reaches the cap, so their
#: results are unchanged; the probe accuracy is still read on 5000 out-of-fold predictions (standard
#: error at most 0.71 points).
TRANSFER_MAX_ITEMS = 5000

#: Items kept per class at least (when the class has them), so the 5-fold probes still run on every class.
_MIN_PER_CLASS = 5


def transfer_subsample(
    labels: np.ndarray, max_items: int | None = TRANSFER_MAX_ITEMS, seed: int = 0
) -> np.ndarray | None:
    """Sorted row indices of a stratified seeded subsample of ``labels``, or None when none is needed.

    None when ``max_items`` is None or there are at most ``max_items`` items. Otherwise each class gets
    ``min(its count, 5)`` when its share would be less, and the others share the places left in
    proportion to their counts (largest-remainder rounding); drawn without replacement by
    ``numpy.random.default_rng(seed)``. The total is ``max_items`` unless the floors alone exceed it
    (over ``max_items / 5`` classes).
    """
    y = np.asarray(labels)
    n = y.size
    if max_items is None or n <= max_items:
        return None
    classes, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    floor = np.minimum(counts, _MIN_PER_CLASS)
    fixed = np.zeros(classes.size, dtype=bool)  # the classes held at their floor
    while True:  # the places left after the floors, shared in proportion among the other classes
        budget = max(max_items - int(floor[fixed].sum()), 0)
        rest = int(counts[~fixed].sum())
        exact = np.where(fixed, floor, budget * counts / max(rest, 1))
        below = ~fixed & (exact < floor)
        if not below.any():
            break
        fixed |= below
    quota = np.where(fixed, floor, np.floor(exact)).astype(np.int64)
    left = max_items - int(quota.sum())
    for c in np.argsort(-(exact - np.floor(exact)), kind="stable"):  # largest remainders first
        if left <= 0:
            break
        if not fixed[c] and quota[c] < counts[c]:
            quota[c] += 1
            left -= 1
    rng = np.random.default_rng(seed)
    rows = [rng.choice(np.flatnonzero(codes == c), int(quota[c]), replace=False) for c in range(classes.size)]
    return np.sort(np.concatenate(rows))


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
    max_items: int | None = TRANSFER_MAX_ITEMS,
) -> dict[str, dict[str, Any]]:
    """Transferability scores of the target's features at every probe point (depth order).

    Returns ``{layer: {"scores": {...}, "skipped": {...}, "linear_probe_std": float}}``; at the deepest
    probe LEEP and NCE are added when the embeddings carry the source head's logits. Above ``max_items``
    items (None: no cap) the scores are fitted on ``transfer_subsample(labels, max_items, random_state)``.
    """
    y = require_labels(emb, "the target")
    idx = transfer_subsample(y, max_items, random_state)
    if idx is not None:
        log.info("transfer scores on a stratified subsample of %d of %d target items", idx.size, y.size)
        emb = emb.subset(idx)
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

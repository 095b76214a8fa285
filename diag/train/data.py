"""Fine-tuning data: label checks, the train/validation split (:func:`diag.data.stratified_split`), and
decoding once.

The target set is decoded once into memory (uint8 images at the backbone's input size, or token ids)
and the trainer cuts its batches from it, so no epoch re-reads or re-decodes a file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diag.data import DataSet, stratified_split
from diag.errors import DataError
from diag.models import Backbone
from diag.train.config import FinetuneConfig

__all__ = [
    "DecodedSplit",
    "PreparedData",
    "check_labels",
    "prepare_data",
]

log = logging.getLogger(__name__)


@dataclass
class DecodedSplit:
    """One side of the data, decoded: uint8 images ``(n, 3, H, W)`` or token-id lists, and labels."""

    x: torch.Tensor | list[list[int]]
    y: torch.Tensor
    n: int
    feats: torch.Tensor | None = None  # pooled features, when the body is frozen and cached


@dataclass
class PreparedData:
    """What :func:`prepare_data` returns: both sides decoded, the target's classes and how the
    validation side was made (``val_desc``, for the result), and the decoding time in seconds."""

    train: DecodedSplit
    val: DecodedSplit
    classes: tuple[str, ...]
    target: DataSet
    val_desc: dict[str, Any]
    decode_s: float


def check_labels(target: DataSet, val: DataSet | None, modality: str, backbone_name: str) -> None:
    """Check that ``target`` (and ``val``) can train a classifier on a ``modality`` backbone.

    Raises
    ------
    DataError
        Wrong modality, no labels, an empty set, a single target class, or validation classes the
        target lacks; the message names the data and what to do.
    """
    for d, role in ((target, "target"), (val, "val")):
        if d is None:
            continue
        if d.modality != modality:
            raise DataError(
                f"{role} data {d.name}: holds {d.modality}s but backbone {backbone_name!r} takes "
                f"{modality}s. Pick a{'n image' if d.modality == 'image' else ' text'} backbone."
            )
        if d.labels is None:
            raise DataError(
                f"{role} data {d.name}: has no labels. Fine-tuning needs a labelled set: one subfolder per "
                "class for images, or a label column (--label-column) for a table."
            )
        if len(d) == 0:
            raise DataError(f"{role} data {d.name}: the set is empty.")
    assert target.labels is not None
    present = np.unique(target.labels)
    if len(present) < 2:
        only = target.classes[int(present[0])] if len(present) else "none"
        raise DataError(
            f"target data {target.name}: all {len(target)} items have the same label ({only!r}); a "
            "classifier needs at least two classes. Add items of other classes."
        )
    if val is not None:
        unknown = sorted(set(val.classes) - set(target.classes))
        if unknown:
            raise DataError(
                f"val data {val.name}: has class(es) {', '.join(map(repr, unknown[:5]))} that the target "
                f"{target.name} does not have ({', '.join(target.classes[:10])}); the head can only predict "
                "the target's classes. Remove those items or add them to the target."
            )


def _no_val_split_message(target: DataSet) -> str:
    """Why a stratified split left no validation item: every class has one item (a class keeps at least
    one for training, so no --val-fraction helps), and what does help."""
    assert target.labels is not None
    counts = np.bincount(target.labels, minlength=len(target.classes))
    single = [target.classes[i] for i in np.flatnonzero(counts == 1)]
    shown = ", ".join(repr(c) for c in single[:5]) + (
        f" and {len(single) - 5} more" if len(single) > 5 else ""
    )
    hint = (
        " With one item per class the labels may be continuous values or ids rather than classes: check "
        "--label-column."
        if len(single) == len(target) and len(single) > 2
        else ""
    )
    return (
        f"target data {target.name}: no item is left for validation: each of its {len(single)} classes "
        f"({shown}) has a single item, and a class keeps one item for training. Give at least one class 2 or "
        f"more items (every class needs 2 to be validated; about 10 each for a useful accuracy), or pass "
        f"--val DATA.{hint}"
    )


def prepare_data(
    backbone: Backbone, target: DataSet, val: DataSet | None, cfg: FinetuneConfig
) -> PreparedData:
    """Check labels, split (without ``val``: a stratified ``cfg.val_fraction`` of the target), and decode
    (or tokenise) everything once, as ``backbone`` takes it."""
    check_labels(target, val, backbone.modality, backbone.name)
    assert target.labels is not None
    t0 = time.perf_counter()
    if val is None:
        tr_idx, va_idx = stratified_split(target.labels, cfg.val_fraction, cfg.split_seed)
        if len(va_idx) == 0:
            raise DataError(_no_val_split_message(target))
        train_ds, val_ds = target.subset(tr_idx), target.subset(va_idx)
        val_y = target.labels[va_idx]
        val_desc = {
            "source": "split", "fraction": cfg.val_fraction, "split_seed": cfg.split_seed, "n": len(va_idx),
        }  # fmt: skip
    else:
        assert val.labels is not None
        train_ds, val_ds = target, val
        remap = np.array([target.classes.index(c) for c in val.classes], dtype=np.int64)
        val_y = remap[val.labels]
        val_desc = {"source": "data", **val.describe()}
    assert train_ds.labels is not None
    x_tr, x_va = (
        backbone.decode_all(
            d, image_size=cfg.image_size, crop_pct=cfg.crop_pct, max_length=cfg.max_length,
            num_workers=cfg.num_workers,
        )
        for d in (train_ds, val_ds)
    )  # fmt: skip
    decode_s = time.perf_counter() - t0
    log.info("decoded %d train + %d val items in %.1f s", len(train_ds), len(val_ds), decode_s)
    y_tr = torch.from_numpy(train_ds.labels.astype(np.int64))
    y_va = torch.from_numpy(np.asarray(val_y, np.int64))
    return PreparedData(
        train=DecodedSplit(x_tr, y_tr, len(train_ds)),
        val=DecodedSplit(x_va, y_va, len(val_ds)),
        classes=target.classes,
        target=target,
        val_desc=val_desc,
        decode_s=decode_s,
    )

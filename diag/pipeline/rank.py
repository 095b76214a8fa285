"""Ranking candidate backbones on one target, and the freeze recommendation for ``finetune --freeze auto``."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diag.config import RankConfig, with_overrides
from diag.data import DataSet, open_data
from diag.device import resolve_device
from diag.engine.extract import ExtractConfig
from diag.errors import ConfigError, DataError
from diag.models import Backbone, load
from diag.pipeline.diagnose import embed, freeze_blocks
from diag.predict.freeze import FreezeRecommendation, recommend_freeze
from diag.predict.layers import layer_transfer, require_labels
from diag.predict.negative import weight_scale
from diag.predict.rank import Ranking, candidate_names, rank_candidates
from diag.progress import ProgressCallback
from diag.report.schema import Report
from diag.stats.transfer import transferability
from diag.train import FinetuneConfig, relative_gradient_norms

__all__ = ["rank_backbones", "recommend_for_target"]

log = logging.getLogger(__name__)

_LABELLED = "Give an image folder with one subfolder per class, or a table with a label column."


def rank_backbones(
    target: str | Path | DataSet,
    backbones: Sequence[str],
    config: RankConfig | ExtractConfig | None = None,
    *,
    include_random_init: bool | None = None,
    by: str | None = None,
    n_bootstrap: int | None = None,
    image_size: int | None = None,
    max_length: int | None = None,
    seed: int | None = None,
    use_cache: bool | None = None,
    progress: ProgressCallback | None = None,
) -> Ranking:
    """Score every backbone on the labelled target and rank them, with bootstrap rank stability.

    Parameters
    ----------
    target : path, ``samples:NAME`` or DataSet
        Labelled, 2+ classes.
    backbones : list of str
        Backbone names (:func:`diag.models.load`).
    config : RankConfig or ExtractConfig, optional
        Every option with its default (:class:`diag.config.RankConfig`); an ``ExtractConfig`` alone
        stands for ``RankConfig(extract=config)``.
    include_random_init, by, n_bootstrap, image_size, max_length, seed, use_cache
        Each replaces the field of the same name of ``config`` when given (not None).
        ``include_random_init`` adds each backbone's random-init twin as a candidate
        (``NAME (random-init)``): a backbone that does not beat its own twin brings nothing to transfer.
        ``by`` is the score to rank by (bootstrap stability is computed for LogME, the shrinkage H-score
        and SFDA; for the probes, which are cross-validated and costly, the fold spread is shown instead).
    progress : ProgressCallback, optional

    Returns
    -------
    Ranking
        See :mod:`diag.predict.rank`.
    """
    base = config if isinstance(config, RankConfig) else RankConfig(extract=config or ExtractConfig())
    settings: RankConfig = with_overrides(
        base,
        {
            "include_random_init": include_random_init, "by": by, "n_bootstrap": n_bootstrap,
            "image_size": image_size, "max_length": max_length, "seed": seed, "use_cache": use_cache,
        },
    )  # fmt: skip
    names = candidate_names(backbones)
    seed = settings.seed
    device = str(resolve_device(settings.extract.device))
    t0 = time.perf_counter()
    data = open_data(target)
    if data.labels is None:  # before any backbone is loaded or anything embedded
        raise DataError(f"{target}: has no labels; ranking needs a labelled target. {_LABELLED}")
    image_size, max_length = settings.image_size, settings.max_length
    candidates: list[tuple[str, Backbone]] = []
    for name in names:
        candidates.append((name, load(name, image_size=image_size, max_length=max_length)))
        if settings.include_random_init:
            twin = load(name, pretrained=False, seed=seed, image_size=image_size, max_length=max_length)
            candidates.append((f"{name} (random-init)", twin))
    modalities = {bb.modality for _, bb in candidates}
    if len(modalities) > 1:
        raise ConfigError(
            f"backbones mix modalities ({', '.join(sorted(modalities))}); rank image or text backbones, "
            f"matching the target ({data.modality})."
        )
    rows: list[dict[str, Any]] = []
    pooled: dict[str, np.ndarray] = {}
    labels: np.ndarray | None = None
    for label, bb in candidates:
        emb = embed(data, bb, settings.extract, use_cache=settings.use_cache, progress=progress)
        y = require_labels(emb, str(target))
        labels = y if labels is None else labels
        last = emb.probes[-1].name
        per_layer = layer_transfer(emb, random_state=seed, device=device)
        best = max(per_layer, key=lambda k: per_layer[k]["scores"].get("linear_probe_accuracy", -1.0))
        # layer_transfer already scored the last layer (LogME, probes, and LEEP/NCE from the head):
        # only the remaining scores are computed here.
        extra = transferability(
            emb[last],
            y,
            random_state=seed,
            scores=("h_score_shrinkage", "gbc", "transrate", "sfda"),
            device=device,
        ).scores
        scores = {**extra, **per_layer[last]["scores"]}
        pooled[label] = emb[last]
        rows.append(
            {
                "backbone": label,
                "name": bb.name,
                "pretrained": bb.pretrained,
                "num_params": bb.num_params,
                "layer": last,
                "score": float(scores.get(settings.by, float("nan"))),
                "scores": scores,
                "best_layer": best,
                "best_layer_linear_probe": per_layer[best]["scores"].get("linear_probe_accuracy"),
                "layers": {k: v["scores"] for k, v in per_layer.items()},
            }
        )
    assert labels is not None
    return rank_candidates(
        rows, pooled, labels, by=settings.by, n_bootstrap=settings.n_bootstrap, seed=seed,
        seconds=round(time.perf_counter() - t0, 3),
    )  # fmt: skip


def recommend_for_target(
    target: str | Path | DataSet,
    backbone: str | Backbone,
    *,
    report: Report | None = None,
    random_state: int = 0,
    use_cache: bool = True,
    rgn: bool = True,
    config: ExtractConfig | None = None,
) -> FreezeRecommendation:
    """The freeze recommendation for ``diag finetune --freeze auto``.

    With a ``report`` (from ``diag diagnose`` on this target) its ``freeze`` section is used as is.
    Otherwise the target is embedded with ``backbone`` (cached) and the recommendation comes from its
    per-layer probe curve and, with ``rgn``, the relative gradient norms of its blocks on a few target
    batches (no source, so no shift evidence). ``config`` sets the device and batches of the embedding.
    """
    if report is not None:
        fr = report.sections.get("freeze")
        if fr is not None and not isinstance(fr, dict):
            fr = fr.to_dict()  # a typed report section: the recommendation's own fields
        if not fr:
            raise DataError(
                f"{report.folder or 'the report'} has no freeze recommendation (unlabelled target, or "
                "--no-transfer). Run `diag diagnose` with a labelled target, or pass --freeze K."
            )
        return FreezeRecommendation(**fr)
    bb = backbone if isinstance(backbone, Backbone) else load(backbone)
    data = open_data(target)
    emb = embed(data, bb, config, use_cache=use_cache)
    device = str(resolve_device((config or ExtractConfig()).device))
    pre = layer_transfer(emb, scores=("linear_probe_accuracy",), random_state=random_state, device=device)
    y = require_labels(emb, "the target")
    grads = None
    if rgn:
        # input size and token length: the loaded backbone's own, as for the probe curve above
        train_cfg = None if config is None else FinetuneConfig(device=config.device)
        grads = relative_gradient_norms(data, bb, train_cfg, seed=random_state).normalized
    return recommend_freeze(
        pre, freeze_blocks(bb), n_target=len(emb), n_classes=len(np.unique(y)), rgn=grads,
        weight_scale=weight_scale(bb.model),  # lost plasticity: read from the checkpoint, no data
    )  # fmt: skip

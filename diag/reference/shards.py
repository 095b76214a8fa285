"""Building a reference on a Ray cluster: each shard is summarised in its actor, the driver merges.

:func:`summarise_ray` is :func:`diag.reference.summarise` with the forward passes in a Ray Data actor
pool (:func:`diag.engine.distributed.map_shards`). The first chunk is embedded first and fixes every
layer's kernel width exactly as the single-process build does; every later shard of ``chunk_size`` items
comes back as its own :class:`~diag.reference.Reference` (moments, random-feature sums, class sums and a
reservoir), never as embeddings, and the driver merges them in data order. Moments, random-feature
means and class sums equal the single-process build's (sums of the same rows, up to float rounding);
the reservoir is an equally uniform sample of other items (reservoirs merge by hypergeometric draws,
:meth:`diag.stats.summaries.Reservoir.merge`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import replace

import numpy as np

from diag.data import DataSet
from diag.engine.distributed import extract_ray, map_shards
from diag.engine.embeddings import Embeddings
from diag.engine.extract import ExtractConfig
from diag.errors import DataError
from diag.models import Backbone
from diag.progress import ProgressCallback
from diag.reference.build import DEFAULT_CHUNK
from diag.reference.store import Reference, ReferenceSettings
from diag.stats.summaries import Reservoir

__all__ = ["shard_summary", "summarise_ray"]

log = logging.getLogger(__name__)


def shard_summary(
    backbone: Backbone,
    shard: DataSet,
    emb: Embeddings,
    first_row: int,
    *,
    settings: ReferenceSettings,
    bandwidths: dict[str, float],
) -> Reference:
    """The reference of one shard's embeddings with the given kernel widths (runs in a Ray actor).

    Its reservoir is seeded from ``settings.seed`` and ``first_row`` (the shard's first row), so shards
    draw independently.
    """
    ref = Reference.start(emb, backbone.describe(), settings, bandwidths=bandwidths)
    seed = int(np.random.SeedSequence([settings.seed, first_row]).generate_state(1)[0])
    ref.reservoir = Reservoir(ref.reservoir.capacity, ref.reservoir.dim, seed=seed)
    return ref.update(emb)


def summarise_ray(
    backbone: Backbone,
    data: DataSet,
    config: ExtractConfig,
    *,
    settings: ReferenceSettings | None = None,
    bandwidths: dict[str, float] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    progress: ProgressCallback | None = None,
) -> Reference:
    """:func:`diag.reference.summarise` on Ray: shards of ``chunk_size`` items summarised in the actors.

    Parameters are those of :func:`diag.reference.summarise`; ``config.engine`` must be ``ray``.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 2:
        raise DataError(f"chunk_size must be an integer >= 2; got {chunk_size!r}.")
    cfg = settings or ReferenceSettings()
    n = len(data)
    if n == 0:
        raise DataError(f"{data.name}: the set is empty; a reference needs items.")
    head = min(n, chunk_size)
    # The first chunk as one shard on one actor: the same forward batches as the single-process build.
    head_config = replace(config, ray_batch_size=head, ray_concurrency=1)
    head_data = data.subset(np.arange(head), name=data.name)
    first = extract_ray(backbone, head_data, head_config, progress=progress)
    ref = Reference.start(first, backbone.describe(), cfg, bandwidths=bandwidths).update(first)
    if n > head:
        reduce = functools.partial(shard_summary, settings=cfg, bandwidths=ref.bandwidths)
        rest = data.subset(np.arange(head, n), name=data.name)
        shards = map_shards(
            backbone, rest, replace(config, ray_batch_size=chunk_size), reduce, progress=progress
        )
        for _, part in shards:
            if part is not None:
                ref = ref.merge(part)
    log.info("reference of %s: %d items summarised on Ray", data.name, ref.n)
    ref.sources.append(dict(data.describe()))
    return ref

"""Building a reference from data, streaming: memory bounded by the chunk and the summaries, not by n."""

from __future__ import annotations

import logging

import numpy as np

from diag.data import DataSet
from diag.engine.extract import ExtractConfig, extract
from diag.errors import DataError
from diag.models import Backbone
from diag.progress import ProgressCallback
from diag.reference.store import Reference, ReferenceSettings

__all__ = ["DEFAULT_CHUNK", "summarise"]

log = logging.getLogger(__name__)

#: Items embedded per chunk: the embeddings of one chunk are the only per-item memory a build holds.
DEFAULT_CHUNK = 1024


def summarise(
    backbone: Backbone,
    data: DataSet,
    config: ExtractConfig | None = None,
    *,
    settings: ReferenceSettings | None = None,
    bandwidths: dict[str, float] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    progress: ProgressCallback | None = None,
) -> Reference:
    """The reference of ``data`` embedded by ``backbone``, one chunk of ``chunk_size`` items at a time.

    Parameters
    ----------
    backbone, data
        A loaded backbone and an opened data set of its modality.
    config : ExtractConfig, optional
        Device, precision and batch size of the forward passes.
    settings : ReferenceSettings, optional
    bandwidths : dict, optional
        Per-layer kernel widths; give the first shard's (``Reference.bandwidths``) to every other shard
        that is to be merged with it. By default the first chunk fixes them.
    chunk_size : int, default 1024
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 2:
        raise DataError(f"chunk_size must be an integer >= 2; got {chunk_size!r}.")
    ref: Reference | None = None
    n = len(data)
    for start in range(0, n, chunk_size):
        part = data.subset(np.arange(start, min(n, start + chunk_size)), name=data.name)
        emb = extract(backbone, part, config, progress=progress)
        if ref is None:
            ref = Reference.start(emb, backbone.describe(), settings, bandwidths=bandwidths)
        ref.update(emb)
        log.info("reference of %s: %d of %d items summarised", data.name, min(n, start + chunk_size), n)
    if ref is None:
        raise DataError(f"{data.name}: the set is empty; a reference needs items.")
    ref.sources.append(dict(data.describe()))
    return ref

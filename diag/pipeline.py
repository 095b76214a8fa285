"""The one place that orchestrates: data + backbone + engine + cache. The CLI and the dashboard call it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from diag import cache
from diag.backbones import Backbone, load
from diag.data import DataSet, open_data
from diag.embeddings import Embeddings
from diag.extract import ExtractConfig, extract, resolve_device, resolve_precision
from diag.progress import ProgressCallback

__all__ = ["embed"]

log = logging.getLogger(__name__)


def embed(
    data: str | Path | DataSet,
    backbone: str | Backbone,
    config: ExtractConfig | None = None,
    *,
    pretrained: bool = True,
    image_size: int | None = None,
    use_cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> Embeddings:
    """Embed a data set at every probe point of a backbone, reusing the on-disk cache.

    Parameters
    ----------
    data : path, ``samples:NAME`` or DataSet
    backbone : name or Backbone
        See :func:`diag.backbones.load` for names.
    config : ExtractConfig, optional
        Device, precision, batch size, workers.
    pretrained, image_size
        Passed to :func:`diag.backbones.load` when ``backbone`` is a name.
    use_cache : bool, default True
        Read and write the cache (``$DIAG_CACHE_DIR``, default ``~/.cache/diag``).

    Returns
    -------
    Embeddings
        ``emb.from_cache`` tells whether a forward pass ran.
    """
    cfg = config or ExtractConfig()
    t0 = time.perf_counter()
    ds = open_data(data)
    bb = (
        backbone
        if isinstance(backbone, Backbone)
        else load(backbone, pretrained=pretrained, image_size=image_size)
    )
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
    key = cache.cache_key(bb, ds, precision=precision)
    prep_s = time.perf_counter() - t0
    if use_cache:
        hit = cache.lookup(key, root=cache_dir)
        if hit is not None:
            log.info("cache hit %s for %s [%s]", key[:12], ds.name, bb.name)
            timings = {**hit.manifest.get("timings", {}), "prepare_s": round(prep_s, 4)}
            return hit.with_manifest(timings=timings)
    emb = extract(bb, ds, cfg, progress=progress)
    timings = {**emb.manifest["timings"], "prepare_s": round(prep_s, 4)}
    emb = emb.with_manifest(cache_key=key, timings=timings, from_cache=False)
    if use_cache:
        cache.store(emb, root=cache_dir)
    return emb

"""The feature-extraction engine: the only package that knows about devices, batches and precision.

Modules
-------
extract
    :func:`extract` and :class:`ExtractConfig`: one forward pass per batch captures every probe point.
embeddings
    :class:`Embeddings`, the product of one pass, and its on-disk form (safetensors + manifest).
cache
    The content-keyed on-disk cache of :class:`Embeddings` (:func:`cache_key`, :func:`lookup`,
    :func:`store`).
distributed
    ``--engine ray``: the same extraction in a Ray Data actor pool (imported on demand:
    ``from diag.engine.distributed import extract_ray``; Ray itself is the optional ``ray`` extra).
"""

from diag.engine.cache import EXTRACT_VERSION, cache_dir, cache_key, lookup, store
from diag.engine.embeddings import Embeddings, check_finite
from diag.engine.extract import ExtractConfig, extract

__all__ = [
    "EXTRACT_VERSION",
    "Embeddings",
    "ExtractConfig",
    "cache_dir",
    "cache_key",
    "check_finite",
    "extract",
    "lookup",
    "store",
]

"""Backbones: one adapter per model family (timm, transformers), their weights and the registry.

Only this package knows which family is behind a backbone: everything family-specific (batching,
decoding, blocks, pooled features, weights) is a method of :class:`Backbone`.

Modules
-------
base
    :class:`Backbone`, :class:`ProbePoint`, :class:`SourceHead`, :class:`BlockLayout`,
    :class:`TextBatch`, :func:`masked_mean`, the options of loaders and decoding.
decode
    :class:`ImageItems`, the one image-decoding ``Dataset``.
timm, hf
    :class:`TimmBackbone` and :class:`HFTextBackbone` with their loaders.
weights
    The bundled weights (:data:`BUNDLED`) and weights files (``NAME@PATH``).
registry
    :func:`load`, the one factory, and :data:`FAMILIES`, the ``PREFIX:`` -> :data:`Loader` table.
"""

from diag.models.base import (
    Backbone,
    BlockLayout,
    DecodeOptions,
    Failed,
    LoadOptions,
    PixelNormalization,
    ProbePoint,
    SourceHead,
    TextBatch,
    masked_mean,
)
from diag.models.decode import ImageItems
from diag.models.hf import HFTextBackbone, text_layers
from diag.models.registry import BUNDLED, EXAMPLES, FAMILIES, Loader, load
from diag.models.timm import TimmBackbone
from diag.models.weights import package_file

__all__ = [
    "BUNDLED",
    "EXAMPLES",
    "FAMILIES",
    "Backbone",
    "BlockLayout",
    "DecodeOptions",
    "Failed",
    "HFTextBackbone",
    "ImageItems",
    "LoadOptions",
    "Loader",
    "PixelNormalization",
    "ProbePoint",
    "SourceHead",
    "TextBatch",
    "TimmBackbone",
    "load",
    "masked_mean",
    "package_file",
    "text_layers",
]

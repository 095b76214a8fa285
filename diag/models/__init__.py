"""Backbones: one adapter per model family (timm, transformers), their weights and registry.

Only this package knows which family is behind a backbone: everything family-specific (batching,
decoding, blocks, pooled features) is a method of :class:`Backbone`.
"""

from diag.models.backbones import (
    BUNDLED,
    EXAMPLES,
    Backbone,
    BlockLayout,
    Failed,
    HFTextBackbone,
    ImageItems,
    ProbePoint,
    SourceHead,
    TextBatch,
    TimmBackbone,
    load,
    masked_mean,
    text_layers,
)

__all__ = [
    "BUNDLED",
    "EXAMPLES",
    "Backbone",
    "BlockLayout",
    "Failed",
    "HFTextBackbone",
    "ImageItems",
    "ProbePoint",
    "SourceHead",
    "TextBatch",
    "TimmBackbone",
    "load",
    "masked_mean",
    "text_layers",
]

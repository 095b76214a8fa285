"""References: per-layer summaries that stand in for a data set (built from data, merged from shards, or
read off the backbone's own BatchNorm statistics), and what new data is checked against."""

from diag.reference.batchnorm import BatchNormProfile, BlockScore, batchnorm_layers, batchnorm_profile
from diag.reference.build import DEFAULT_CHUNK, summarise
from diag.reference.compare import reference_comparison
from diag.reference.store import (
    REFERENCE_PREFIX,
    LayerSummary,
    Reference,
    ReferenceSettings,
    as_reference_path,
    load_reference,
)

__all__ = [
    "DEFAULT_CHUNK",
    "REFERENCE_PREFIX",
    "BatchNormProfile",
    "BlockScore",
    "LayerSummary",
    "Reference",
    "ReferenceSettings",
    "as_reference_path",
    "batchnorm_layers",
    "batchnorm_profile",
    "load_reference",
    "reference_comparison",
    "summarise",
]

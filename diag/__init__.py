"""diag: domain-adaptation diagnostics for a pretrained backbone and a small labelled target set.

The public API::

    import diag
    emb = diag.embed("samples:mnist", "efficientnet_lite0")       # every probe point, one pass, cached
    emb["blocks.3"]                                                # (n, 80) float32
    bb = diag.load_backbone("minilm", pretrained=False)            # the random-init twin
"""

from diag.data import DataSet, open_data
from diag.engine.embeddings import Embeddings
from diag.engine.extract import ExtractConfig, extract
from diag.errors import BackboneError, CacheError, ConfigError, DataError, DiagError, MissingDependencyError
from diag.models import Backbone, ProbePoint, SourceHead
from diag.models import load as load_backbone
from diag.pipeline import diagnose, embed, rank_backbones
from diag.pipeline.posthoc import compare as compare_runs
from diag.pipeline.posthoc import deploy_check
from diag.predict.rank import Ranking
from diag.progress import ProgressCallback, TqdmProgress
from diag.provenance import __version__
from diag.report.schema import Report, load_report
from diag.train import FinetuneConfig, FinetuneResult, TrainCallback, finetune, load_finetuned
from diag.train.sweep import SweepResult, sweep

__all__ = [
    "Backbone",
    "BackboneError",
    "CacheError",
    "ConfigError",
    "DataError",
    "DataSet",
    "DiagError",
    "Embeddings",
    "ExtractConfig",
    "FinetuneConfig",
    "FinetuneResult",
    "MissingDependencyError",
    "ProbePoint",
    "ProgressCallback",
    "Ranking",
    "Report",
    "SourceHead",
    "SweepResult",
    "TqdmProgress",
    "TrainCallback",
    "__version__",
    "compare_runs",
    "deploy_check",
    "diagnose",
    "embed",
    "extract",
    "finetune",
    "load_backbone",
    "load_finetuned",
    "load_report",
    "open_data",
    "rank_backbones",
    "sweep",
]

"""Fine-tuning: the ground truth every freeze-depth recommendation is checked against.

A backbone, a fresh linear head, the first K blocks frozen (see DESIGN.md, "Freeze depth" and "Negative
transfer"). :func:`finetune` trains one run into a folder; :func:`sweep` runs it over freeze depths and
seeds; :func:`relative_gradient_norms` says where the target pulls hardest on the pretrained weights.

Modules, one concept each:

- :mod:`~diag.train.config`: :class:`FinetuneConfig` (every field a CLI flag and a JSON key) and
  :data:`PRESETS`;
- :mod:`~diag.train.blocks`: the blocks ``freeze=K`` counts (:func:`freeze_units`, :func:`n_blocks`,
  :func:`resolve_freeze`);
- :mod:`~diag.train.model`: :class:`FinetuneModel`, body + head;
- :mod:`~diag.train.data`: label checks, the validation split, decoding once;
- :mod:`~diag.train.callbacks`: :class:`TrainCallback`, :class:`TrainState` and the built-in
  callbacks (metrics file, STOP file, early stopping);
- :mod:`~diag.train.trainer`: :class:`Trainer`, the optimisation recipe and the loop of one epoch;
- :mod:`~diag.train.result`: :class:`FinetuneResult` (``result.json``);
- :mod:`~diag.train.run`: :func:`finetune` (checkpoints, resume) and :func:`load_finetuned`;
- :mod:`~diag.train.sweep`, :mod:`~diag.train.rgn`, and :mod:`~diag.train.jobs` (detached runs for
  the dashboard; not imported here).
"""

from diag.train.blocks import FreezeUnit, freeze_units, n_blocks, resolve_freeze
from diag.train.callbacks import (
    STOP_FILE,
    EarlyStopping,
    MetricsLog,
    StopFile,
    TrainCallback,
    TrainState,
)
from diag.train.config import PRESETS, FinetuneConfig
from diag.train.model import FinetuneModel
from diag.train.result import SCHEMA, FinetuneResult
from diag.train.rgn import BlockGradients, relative_gradient_norms
from diag.train.run import finetune, load_finetuned
from diag.train.sweep import DepthSummary, SweepResult, default_depths, sweep
from diag.train.trainer import Trainer

__all__ = [
    "PRESETS",
    "SCHEMA",
    "STOP_FILE",
    "BlockGradients",
    "DepthSummary",
    "EarlyStopping",
    "FinetuneConfig",
    "FinetuneModel",
    "FinetuneResult",
    "FreezeUnit",
    "MetricsLog",
    "StopFile",
    "SweepResult",
    "TrainCallback",
    "TrainState",
    "Trainer",
    "default_depths",
    "finetune",
    "freeze_units",
    "load_finetuned",
    "n_blocks",
    "relative_gradient_norms",
    "resolve_freeze",
    "sweep",
]

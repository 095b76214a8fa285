"""Rules over the statistics: shift verdict, per-layer transfer, negative transfer, freeze depth, ranking.

Pure functions of :mod:`diag.stats` results (and of the embeddings they were computed on); the pipeline
feeds them and assembles their typed results into the report, never editing them.

Modules
-------
profile
    The layer-by-layer shift profile and its verdict (:func:`shift_profile`, :class:`ShiftVerdict`).
layers
    The per-layer transfer curve of a labelled target (:func:`layer_transfer`).
negative
    Will fine-tuning from the pretrained weights lose to training from scratch (:func:`negative_transfer`)?
freeze
    The whole freeze rule: how many blocks to freeze (:func:`recommend_freeze`).
rank
    Candidate backbones ranked on one target (:func:`rank_candidates`, :class:`Ranking`).
source_free
    The verdict of a source-free (BatchNorm) profile (:func:`source_free_verdict`).
"""

from diag.predict.freeze import SMALL_TARGET, FreezeRecommendation, recommend_freeze
from diag.predict.layers import LAYER_SCORES, layer_transfer, require_labels
from diag.predict.negative import (
    HEAD_START_30,
    HEAD_START_PER_DOUBLING,
    REACH_MIN,
    NegativeTransfer,
    gradient_reach,
    head_start,
    negative_transfer,
)
from diag.predict.profile import (
    LEVEL_WHY,
    LEVELS,
    ClassShift,
    LayerShift,
    ShiftProfile,
    ShiftVerdict,
    check_compatible,
    class_conditional_shift,
    holm,
    shift_profile,
)
from diag.predict.rank import (
    RANK_SCORES,
    Ranking,
    bootstrap_top_frequency,
    candidate_names,
    rank_candidates,
    write_ranking,
)
from diag.predict.source_free import BlockEvidence, source_free_verdict

__all__ = [
    "HEAD_START_30",
    "HEAD_START_PER_DOUBLING",
    "LAYER_SCORES",
    "LEVELS",
    "LEVEL_WHY",
    "RANK_SCORES",
    "REACH_MIN",
    "SMALL_TARGET",
    "BlockEvidence",
    "ClassShift",
    "FreezeRecommendation",
    "LayerShift",
    "NegativeTransfer",
    "Ranking",
    "ShiftProfile",
    "ShiftVerdict",
    "bootstrap_top_frequency",
    "candidate_names",
    "check_compatible",
    "class_conditional_shift",
    "gradient_reach",
    "head_start",
    "holm",
    "layer_transfer",
    "negative_transfer",
    "rank_candidates",
    "recommend_freeze",
    "require_labels",
    "shift_profile",
    "source_free_verdict",
    "write_ranking",
]

"""Pure statistics over arrays: shift tests, transferability scores, streaming summaries, 2-D maps.

Arrays (or tensors) in, a typed result out; nothing here loads a model, embeds data or writes a report.

Modules
-------
shift
    Two-sample shift tests and distances: :func:`mmd_test`, :func:`c2st`, :func:`frechet_distance`,
    :func:`coral_distance`, :func:`knn_shift_scores`, :func:`label_shift`.
transfer
    Transferability scores of features for labels (:func:`logme_score`, :func:`h_score`, ...,
    :func:`transferability`) and the linear probe.
summaries
    Mergeable one-pass summaries (:class:`Moments`, :class:`MeanEmbedding`, :class:`Reservoir`) and the
    tests on them (:func:`rff_mmd_test`, :func:`frechet_from_moments`, :func:`bn_w2_per_channel`).
projection
    2-D maps of source and target (:func:`pca_2d`, :func:`umap_2d`, :func:`joint_projection`).
common
    What the others share: argument checks, the exact k-NN search, Ledoit-Wolf shrinkage, principal axes.
"""

from diag.stats.common import (
    Result,
    check_int,
    class_codes,
    ledoit_wolf_shrinkage,
    nearest_neighbors,
    numeric_matrix,
    principal_axes,
    require_finite,
    require_per_class,
    to_tensor,
)
from diag.stats.projection import (
    MIN_UMAP_SAMPLES,
    JointProjection,
    cached_projection,
    joint_projection,
    nearest_source,
    pca_2d,
    projection_key,
    report_projection,
    umap_2d,
)
from diag.stats.shift import (
    MIN_SAMPLES,
    C2STResult,
    MMDResult,
    c2st,
    coral_distance,
    frechet_distance,
    knn_shift_scores,
    label_shift,
    mmd_test,
)
from diag.stats.summaries import (
    FIXED_POINT_BITS,
    MeanEmbedding,
    Moments,
    Reservoir,
    bn_w2_per_channel,
    frechet_from_moments,
    rff_mmd_test,
)
from diag.stats.transfer import (
    SCORES,
    ProbeResult,
    TransferScores,
    gbc_score,
    h_score,
    knn_accuracy,
    leep_score,
    linear_probe_accuracy,
    logme_score,
    nce_score,
    sfda_score,
    transferability,
    transrate_score,
)

__all__ = [
    "FIXED_POINT_BITS",
    "MIN_SAMPLES",
    "MIN_UMAP_SAMPLES",
    "SCORES",
    "C2STResult",
    "JointProjection",
    "MMDResult",
    "MeanEmbedding",
    "Moments",
    "ProbeResult",
    "Reservoir",
    "Result",
    "TransferScores",
    "bn_w2_per_channel",
    "c2st",
    "cached_projection",
    "check_int",
    "class_codes",
    "coral_distance",
    "frechet_distance",
    "frechet_from_moments",
    "gbc_score",
    "h_score",
    "joint_projection",
    "knn_accuracy",
    "knn_shift_scores",
    "label_shift",
    "ledoit_wolf_shrinkage",
    "leep_score",
    "linear_probe_accuracy",
    "logme_score",
    "mmd_test",
    "nce_score",
    "nearest_neighbors",
    "nearest_source",
    "numeric_matrix",
    "pca_2d",
    "principal_axes",
    "projection_key",
    "report_projection",
    "require_finite",
    "require_per_class",
    "rff_mmd_test",
    "sfda_score",
    "to_tensor",
    "transferability",
    "transrate_score",
    "umap_2d",
]

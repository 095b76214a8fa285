"""The one place that orchestrates: data + backbone + engine + cache, then statistics and rules.

The CLI and the dashboard call it; each entry point opens → loads → embeds → scores:

- :func:`embed`: one data set at every probe point of a backbone, through the cache;
- :func:`diagnose`: the shift profile of source vs target and, with a labelled target, the per-layer
  transfer curve, the negative-transfer verdict and the freeze depth (:mod:`diag.predict`); the source
  may be a saved reference (``ref:FOLDER``);
- :func:`rank_backbones`: candidate backbones scored on one labelled target (:mod:`diag.predict.rank`);
- :func:`recommend_for_target`: the freeze depth for ``diag finetune --freeze auto``;
- :func:`build_reference`, :func:`check` and :func:`diagnose_source_free`: references (:mod:`diag.reference`)
  and new data checked against them, or against the backbone's own BatchNorm statistics;
  :func:`append_history` adds a check to a history file.

Statistics and rules are pure functions; this package only feeds them (with the user's device) and
assembles their results, never editing them.
"""

from diag.pipeline.diagnose import diagnose, embed, freeze_blocks, split_halves
from diag.pipeline.rank import rank_backbones, recommend_for_target
from diag.pipeline.reference import append_history, build_reference, check, diagnose_source_free

__all__ = [
    "append_history",
    "build_reference",
    "check",
    "diagnose",
    "diagnose_source_free",
    "embed",
    "freeze_blocks",
    "rank_backbones",
    "recommend_for_target",
    "split_halves",
]

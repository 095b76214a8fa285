"""The report: its typed schema, the view-model every renderer reads, the charts and the text renderers.

- :mod:`~diag.report.schema`: :class:`Report` (``report.json`` and its sidecars) and :func:`load_report`;
- :mod:`~diag.report.sections`: one frozen dataclass per section of ``report.json``;
- :mod:`~diag.report.tables`: the per-layer table, headline numbers and verdict sentences (the one
  view-model the CLI, the exports and the dashboard read);
- :mod:`~diag.report.figures`: the Plotly charts (optional dependency);
- :mod:`~diag.report.render`: the CLI text, the Markdown summary and the self-contained HTML page;
- :mod:`~diag.report.history`: a check history (`diag check --history`) read back, for its table and chart.
"""

from diag.report.schema import REPORT_FILE, SCHEMA_VERSION, Report, load_report
from diag.report.sections import (
    ClassConditionalSection,
    FreezeSection,
    LabelShiftSection,
    LayerSection,
    LayerShiftStats,
    LayerTransfer,
    NegativeTransferSection,
    ReferenceSection,
    ShiftVerdictSection,
    TransferabilitySection,
)

__all__ = [
    "REPORT_FILE",
    "SCHEMA_VERSION",
    "ClassConditionalSection",
    "FreezeSection",
    "LabelShiftSection",
    "LayerSection",
    "LayerShiftStats",
    "LayerTransfer",
    "NegativeTransferSection",
    "ReferenceSection",
    "Report",
    "ShiftVerdictSection",
    "TransferabilitySection",
    "load_report",
]

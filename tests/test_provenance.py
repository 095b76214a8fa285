"""diag.provenance: what produced a result."""

from __future__ import annotations

from datetime import datetime

import torch

import diag
from diag.provenance import __version__, report_provenance


def test_report_provenance_heads_a_reports_meta() -> None:
    meta = report_provenance(torch.device("cpu"), seed=3)
    assert list(meta) == ["diag_version", "created", "versions", "device", "seed"]  # report.json's order
    assert meta["diag_version"] == __version__ == diag.__version__
    assert datetime.fromisoformat(meta["created"]).tzinfo is not None
    assert meta["versions"]["torch"] in torch.__version__
    assert meta["device"]["type"] == "cpu" and meta["seed"] == 3

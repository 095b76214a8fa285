"""A check history: the JSON-lines file that ``diag check --history FILE`` appends to, read back.

Each line is one check of new data against a saved reference (written by
:func:`diag.pipeline.append_history`): its time, data, size, verdict and, per layer, the effects
(``c2st_auc``, ``mmd2``, ``p_adjusted``, ``rff_mmd2``). :func:`read_history` types the lines,
:func:`history_rows` makes the table of checks and :func:`history_series` the per-layer series that
:func:`diag.report.figures.history_figure` draws; :func:`find_history_files` lists the history files
under a folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag.errors import DataError

__all__ = [
    "HISTORY_METRICS",
    "CheckRecord",
    "find_history_files",
    "history_rows",
    "history_series",
    "read_history",
]

#: The per-layer effects a history line holds, in the order a chooser offers them.
HISTORY_METRICS = ("c2st_auc", "rff_mmd2", "mmd2", "p_adjusted")


@dataclass(frozen=True)
class CheckRecord:
    """One line of a check history (see :func:`diag.pipeline.append_history` for the fields)."""

    time: str
    data: str | None
    n: int | None
    reference: str | None
    is_shift: bool
    p_value: float | None
    onset_layer: str | None
    level: str | None
    report: str | None
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckRecord:
        return cls(
            time=str(d.get("time", "")), data=d.get("data"), n=d.get("n"), reference=d.get("reference"),
            is_shift=bool(d.get("is_shift", False)), p_value=d.get("p_value"),
            onset_layer=d.get("onset_layer"), level=d.get("level"), report=d.get("report"),
            layers=dict(d.get("layers") or {}),
        )  # fmt: skip


def read_history(path: str | Path) -> list[CheckRecord]:
    """The checks in the JSON-lines file ``path``, oldest first (blank lines skipped).

    Raises
    ------
    DataError
        When the file is missing or a line is not a JSON object (the message names the line).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such check history. Write one with `diag check ... --history {p}`.")
    records = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{p}, line {i}: not JSON ({e.msg}). Is this a `diag check --history` file?"
            ) from e
        if not isinstance(d, dict):
            raise DataError(f"{p}, line {i}: expected a JSON object per line, got {type(d).__name__}.")
        records.append(CheckRecord.from_dict(d))
    return sorted(records, key=lambda r: r.time)  # ISO times in UTC sort as text


def history_rows(records: Sequence[CheckRecord]) -> list[dict[str, Any]]:
    """The table of checks: time, data, n, verdict, p-value, onset, level, report folder."""
    return [
        {
            "time": r.time, "data": r.data, "n": r.n, "verdict": "shift" if r.is_shift else "no shift",
            "p_value": r.p_value, "onset_layer": r.onset_layer, "level": r.level, "report": r.report,
        }
        for r in records
    ]  # fmt: skip


def history_series(records: Sequence[CheckRecord], metric: str) -> dict[str, list[tuple[str, float]]]:
    """Per layer (first-seen order), ``(time, value)`` of ``metric`` over the checks that have it."""
    series: dict[str, list[tuple[str, float]]] = {}
    for r in records:
        for layer, values in r.layers.items():
            v = values.get(metric)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                series.setdefault(layer, []).append((r.time, float(v)))
    return series


def find_history_files(root: str | Path, *, limit: int = 200) -> list[Path]:
    """The ``*.jsonl`` files under ``root`` (sorted, at most ``limit``); ``[]`` when it is not a folder."""
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(base.rglob("*.jsonl"))[:limit]

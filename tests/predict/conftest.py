"""Fixtures of the truth-table tests: the committed ``benchmarks/results/predict.json`` rows and the
``benchmarks/predict_lofo.py`` module (a script folder, imported from there)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
PREDICT = ROOT / "benchmarks" / "results" / "predict.json"


@pytest.fixture(scope="module")
def lofo() -> Iterator[ModuleType]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import predict_lofo

        yield predict_lofo
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return json.loads(PREDICT.read_text())["scenarios"]

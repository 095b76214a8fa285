"""diag.fileio: JSON-safe values, JSON read with a clear error, atomic writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from diag.errors import CacheError, DataError
from diag.fileio import atomic_write_bytes, json_safe, read_json


class _Result:
    def to_dict(self) -> dict[str, object]:
        return {"auc": np.float32(0.75), "p": float("nan")}


def test_json_safe_makes_json_native_values() -> None:
    value = {
        1: np.arange(3, dtype=np.int64),
        "x": (np.float64(0.5), math.inf, -math.inf),
        "path": Path("a") / "b",
        "result": _Result(),
        "nested": [{"n": np.int32(7)}],
    }
    out = json_safe(value)
    assert out == {
        "1": [0, 1, 2],
        "x": [0.5, None, None],
        "path": str(Path("a") / "b"),
        "result": {"auc": 0.75, "p": None},
        "nested": [{"n": 7}],
    }
    assert type(out["nested"][0]["n"]) is int
    json.dumps(out, allow_nan=False)  # no NaN, no numpy type left


def test_atomic_write_replaces_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.json"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temporary file left


def test_read_json_names_the_file_and_the_fix(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text('{"kind": "x"}')
    bad.write_bytes(b"\xff{")
    assert read_json(good, what="manifest", fix="Rebuild it.", error=CacheError) == {"kind": "x"}
    for path in (bad, tmp_path / "missing.json"):
        with pytest.raises(CacheError, match=r"unreadable manifest \(.*\)\. Rebuild it\.$") as info:
            read_json(path, what="manifest", fix="Rebuild it.", error=CacheError)
        assert str(info.value).startswith(f"{path}: ")
    with pytest.raises(DataError, match="unreadable report"):
        read_json(tmp_path / "missing.json", what="report", fix="Run it again.", error=DataError)

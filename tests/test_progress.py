"""diag.progress: the stage log (writer and reader), the stage context, the fan-out and the tqdm lines."""

from __future__ import annotations

import json

import pytest

from diag.progress import (
    STAGES,
    MultiProgress,
    ProgressCallback,
    StageLogProgress,
    TqdmProgress,
    read_stage_log,
    stage,
)

KEYS = {"stage", "label", "done", "total", "unit", "elapsed_s", "eta_s", "status", "t", "message"}


class Clock:
    """A settable clock, so elapsed times and ETAs are exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_stage_log_records_counts_eta_and_order(tmp_path):
    path = tmp_path / "sub" / "progress.jsonl"
    clock = Clock()
    log = StageLogProgress(path, clock=clock)
    with stage(log, "embed-source", "embed source (digits)"):
        log.on_start(100, "embed digits")
        clock.now += 2.0
        log.on_advance(25)  # 25 items in 2 s: 75 left at 0.08 s each
        running = read_stage_log(path)[-1]
        assert running["status"] == "running" and running["done"] == 25 and running["total"] == 100
        assert running["elapsed_s"] == pytest.approx(2.0) and running["eta_s"] == pytest.approx(6.0)
        clock.now += 0.1
        log.on_advance(25)  # within 0.5 s of the last write: not rewritten
        assert read_stage_log(path)[-1]["done"] == 25
        clock.now += 1.0
        log.on_advance(50)  # reaches the total: always written
        log.on_end()
    with stage(log, "shift") as note:
        note["message"] = "3 layers"
    recs = read_stage_log(path)
    assert [r["stage"] for r in recs] == ["embed-source", "shift"]
    assert all(set(r) == KEYS for r in recs)
    first, second = recs
    assert first["status"] == "done" and first["done"] == 100 and first["eta_s"] == 0.0
    assert first["elapsed_s"] == pytest.approx(3.1) and first["unit"] == "item"
    assert second["label"] == "shift statistics per layer" and second["total"] is None
    assert second["message"] == "3 layers" and second["status"] == "done"
    # every line is one whole JSON object
    lines = path.read_text().splitlines()
    assert len(lines) >= 6 and all(json.loads(line)["stage"] in STAGES for line in lines)


def test_failed_stage_is_logged_and_reraised(tmp_path):
    path = tmp_path / "p.jsonl"
    log = StageLogProgress(path)
    with pytest.raises(ValueError, match="boom"), stage(log, "transfer"):
        raise ValueError("boom")
    (rec,) = read_stage_log(path)
    assert rec["status"] == "failed" and rec["message"] == "ValueError: boom"


def test_reader_tolerates_partial_last_line_and_missing_file(tmp_path):
    assert read_stage_log(tmp_path / "none.jsonl") == []
    path = tmp_path / "p.jsonl"
    a = {"stage": "embed-source", "status": "done", "done": 5}
    b = {"stage": "embed-target", "status": "running", "done": 1}
    b2 = {**b, "done": 3}
    path.write_text("\n".join(json.dumps(r) for r in (a, b, b2)) + '\n{"stage": "shift", "do')
    assert read_stage_log(path) == [a, b2]


def test_loops_outside_a_stage_are_not_logged(tmp_path):
    path = tmp_path / "p.jsonl"
    log = StageLogProgress(path)
    log.on_start(10, "x")
    log.on_advance(10)
    log.on_end()
    assert read_stage_log(path) == []


def test_multi_progress_forwards_every_hook():
    class Rec(ProgressCallback):
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def on_start(self, total, desc):
            self.calls.append(("start", total))

        def on_advance(self, n):
            self.calls.append(("advance", n))

        def on_end(self):
            self.calls.append(("end",))

        def on_stage(self, name, label):
            self.calls.append(("stage", name))

        def on_stage_end(self, name, status="done", message=None):
            self.calls.append(("stage_end", name, status))

    a, b = Rec(), Rec()
    multi = MultiProgress(a, b)
    with stage(multi, "map"):
        multi.on_start(3, "x")
        multi.on_advance(3)
        multi.on_end()
    want = [("stage", "map"), ("start", 3), ("advance", 3), ("end",), ("stage_end", "map", "done")]
    assert a.calls == want and b.calls == want


def test_tqdm_prints_one_line_per_stage(capsys):
    bar = TqdmProgress(file=None, mininterval=0)
    with stage(bar, "embed-source", "embed source"):
        bar.on_start(4, "embed digits")
        bar.on_advance(4)
        bar.on_end()
    with stage(bar, "write"):
        pass
    err = capsys.readouterr().err
    assert "[1] embed source" in err and "4/4" in err and "[2] write the report" in err

"""Freeze-depth sweep: summary statistics, resumption, CLI. Tiny random EfficientNet at 32 px."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from diag.errors import ConfigError
from diag.models import load
from diag.train import FinetuneConfig, FinetuneResult, TrainCallback, TrainState
from diag.train.sweep import SweepResult, default_depths, sweep
from tests.conftest import write_digit_folder

TINY = "timm:test_efficientnet"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("sweep") / "digits", per_class=6)


@pytest.fixture(scope="module")
def tiny():
    return load(TINY, pretrained=False, image_size=32, seed=0)


CFG = FinetuneConfig(epochs=1, batch_size=6, image_size=32, val_fraction=0.34)


def test_default_depths() -> None:
    assert default_depths(9) == [0, 3, 6, 9]
    assert default_depths(7) == [0, 2, 5, 7]
    assert default_depths(1) == [0, 1]


def test_sweep_writes_the_summary_and_skips_finished_runs(digits: Path, tiny, tmp_path: Path) -> None:
    res = sweep(digits, tiny, CFG, out=tmp_path, depths=[0, "blocks.2", "all"], seeds=[0, 1])
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved == res.to_dict() and SweepResult.load(tmp_path) == res
    assert res.status == "completed" and res.n_runs == res.n_finished == 8
    assert [d["freeze"] for d in res.depths] == [0, 4, 7]
    assert [d["frozen_through"] for d in res.depths] == [None, "blocks.2", "pooled"]
    for d in [*res.depths, res.scratch]:
        assert d is not None
        runs = [FinetuneResult.load(tmp_path / r) for r in d["runs"]]
        assert [r.status for r in runs] == ["completed"] * 2
        assert [r.config["seed"] for r in runs] == [0, 1]
        assert d["values"] == [r.best_val_accuracy for r in runs]
        assert d["mean"] == pytest.approx(statistics.fmean(d["values"]))
        assert d["std"] == pytest.approx(statistics.stdev(d["values"]))
        assert d["min"] == min(d["values"]) and d["max"] == max(d["values"])
    assert res.scratch is not None and res.scratch["from_scratch"] and res.scratch_mean == res.scratch["mean"]
    best = max(res.depths, key=lambda d: (d["mean"], d["freeze"]))
    assert res.best_freeze == best["freeze"] and res.best_mean == best["mean"]
    assert res.negative_transfer_gap == pytest.approx(best["mean"] - res.scratch["mean"])
    assert res.negative_transfer == (res.negative_transfer_gap < 0)
    assert "freeze" not in res.config and res.config["epochs"] == 1

    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/result.json")}
    again = sweep(digits, tiny, CFG, out=tmp_path, depths=[0, "blocks.2", "all"], seeds=[0, 1])
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/result.json")} == stamps  # no retraining
    assert again.depths == res.depths and again.scratch == res.scratch


def test_a_stopped_sweep_resumes_where_it_stopped(digits: Path, tiny, tmp_path: Path) -> None:
    class StopSecondRun(TrainCallback):
        def __init__(self) -> None:
            self.runs = 0

        def on_train_start(self, state: TrainState) -> None:
            self.runs += 1

        def should_stop(self) -> bool:
            return self.runs == 2

    cfg = FinetuneConfig(epochs=2, batch_size=6, image_size=32, val_fraction=0.34)
    part = sweep(digits, tiny, cfg, out=tmp_path, depths=[1, "all"], seeds=[0], callbacks=[StopSecondRun()])
    assert part.status == "stopped" and part.n_finished == 1
    assert [d["values"] for d in part.depths] == [[part.depths[0]["values"][0]], [None]]
    assert FinetuneResult.load(tmp_path / "runs/freeze-7-seed-0").status == "stopped"
    full = sweep(digits, tiny, cfg, out=tmp_path, depths=[1, "all"], seeds=[0])
    assert full.status == "completed" and full.n_finished == 3
    assert full.depths[0]["values"] == part.depths[0]["values"]


def test_a_different_budget_in_the_same_folder_is_refused(digits: Path, tiny, tmp_path: Path) -> None:
    sweep(digits, tiny, CFG, out=tmp_path, depths=["all"], seeds=[0], scratch=False)
    other = FinetuneConfig(epochs=1, batch_size=6, image_size=32, val_fraction=0.34, lr=3e-4)
    with pytest.raises(ConfigError, match="lr"):
        sweep(digits, tiny, other, out=tmp_path, depths=["all"], seeds=[0], scratch=False)
    redo = sweep(digits, tiny, other, out=tmp_path, depths=["all"], seeds=[0], scratch=False, overwrite=True)
    assert redo.config["lr"] == 3e-4 and redo.scratch is None and redo.negative_transfer_gap is None


@pytest.mark.parametrize(
    "kw, match",
    [({"seeds": []}, "seeds"), ({"seeds": [0, 0]}, "repeat"), ({"depths": [99]}, "freeze must be between")],
)
def test_bad_sweep_arguments(digits: Path, tiny, tmp_path: Path, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        sweep(digits, tiny, CFG, out=tmp_path, **kw)


def test_cli_sweep_on_text(tmp_path: Path, capsys) -> None:
    """A local Hugging Face folder is 'pretrained' offline; the text path runs through the sweep too."""
    from diag.cli.main import main
    from tests.train.test_finetune import tiny_bert

    bert = tiny_bert(tmp_path / "bert")
    rows = [("a great and wonderful film", "pos"), ("I loved it so much", "pos"), ("a joy", "pos"),
            ("a dull and boring film", "neg"), ("I hated it so much", "neg"), ("a bore", "neg")]  # fmt: skip
    csv = tmp_path / "reviews.csv"
    csv.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows * 3))
    out = tmp_path / "sweep"
    argv = ["sweep", "-t", str(csv), "-b", f"hf:{bert}", "--out", str(out), "--depths", "0,all",
            "--seeds", "3", "--epochs", "1", "--batch-size", "6", "--val-fraction", "0.34", "-q"]  # fmt: skip
    assert main(argv) == 0
    res = SweepResult.load(out)
    assert res.seeds == [3] and res.blocks == ["embeddings", "layer.0", "layer.1"]
    assert [d["freeze"] for d in res.depths] == [0, 3] and res.scratch is not None
    assert main(argv[:-1]) == 0  # finished runs are reused; the table is printed
    printed = capsys.readouterr().out
    assert "freeze-3" in printed and "linear" in printed and "negative-transfer gap" in printed
    assert main([*argv[:-1], "--seeds", "a,b"]) == 2
    assert "--seeds" in capsys.readouterr().err

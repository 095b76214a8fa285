"""``diag reference build|merge|show``, ``diag check`` (exit codes, history) and ``diag diagnose
--source-free``, through :func:`diag.cli.main.main` on the tiny random-init backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diag.cli.main import main
from diag.cli.reference import SHIFT_EXIT
from tests.conftest import write_digit_folder

TINY = ["-b", "timm:test_efficientnet", "--random-init", "--image-size", "32"]


def noise_folder(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "x").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(root / "x" / f"{i:03d}.png")
    return root


def test_reference_build_merge_show_and_check_exit_codes(tmp_path: Path, capsys, one_torch_thread) -> None:
    a = write_digit_folder(tmp_path / "a", per_class=8, classes=("0", "1", "2"))
    b = write_digit_folder(tmp_path / "b", per_class=4, classes=("0", "1", "2"))
    common = [*TINY, "--reservoir", "40", "--rff-features", "32", "-q"]
    assert main(["reference", "build", str(a), "-o", str(tmp_path / "ra"), *common]) == 0
    shard = [
        "reference",
        "build",
        str(b),
        "-o",
        str(tmp_path / "rb"),
        "--bandwidths-from",
        str(tmp_path / "ra"),
    ]
    assert main([*shard, *common]) == 0
    assert (
        main(["reference", "merge", str(tmp_path / "ra"), str(tmp_path / "rb"), "-o", str(tmp_path / "r")])
        == 0
    )
    assert "36 items from 2 references" in capsys.readouterr().out
    assert main(["reference", "show", str(tmp_path / "r")]) == 0
    assert "36 items, 36 in the reservoir, classes: 0, 1, 2" in capsys.readouterr().out

    history = tmp_path / "checks.jsonl"
    check = ["check", "-r", str(tmp_path / "r"), "--history", str(history), "--permutations", "200", "-q"]
    noise = noise_folder(tmp_path / "noise", 24)
    assert main([*check, str(noise), "-o", str(tmp_path / "c1")]) == 0  # a shift, but no --fail-on-shift
    assert main([*check, str(noise), "-o", str(tmp_path / "c2"), "--fail-on-shift"]) == SHIFT_EXIT == 1
    lines = [json.loads(x) for x in history.read_text().splitlines()]
    assert [x["is_shift"] for x in lines] == [True, True] and [x["n"] for x in lines] == [24, 24]
    report = json.loads((tmp_path / "c2" / "report.json").read_text())
    assert report["source"]["spec"] == f"ref:{tmp_path / 'r'}" and report["reference"]["n"] == 36


def test_check_and_build_errors_are_one_line(tmp_path: Path, capsys, digit_folder: Path) -> None:
    assert main(["check", str(digit_folder), "-r", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a reference folder" in err[0] and "diag reference build" in err[0]
    assert main(["reference", "merge", str(tmp_path / "one"), "-o", str(tmp_path / "out")]) == 2
    assert "at least two reference folders" in capsys.readouterr().err


def test_diagnose_source_free_prints_the_block_table(tmp_path: Path, capsys, one_torch_thread) -> None:
    digits = write_digit_folder(tmp_path / "digits", per_class=12)  # 36 items: two per bucket of 16
    assert main(["diagnose", "--source-free", "-t", str(digits), *TINY, "-o", str(tmp_path / "sf")]) == 0
    out = capsys.readouterr().out.splitlines()
    raw = json.loads((tmp_path / "sf" / "report.json").read_text())
    assert raw["source"]["kind"] == "source-free" and raw["n_target"] == 36
    assert out[0].startswith("source-free: pretraining statistics vs ") and out[1].split()[2] == "W2"
    assert float(out[2].split()[2]) == pytest.approx(raw["layers"][0]["shift"]["bn_w2"], rel=1e-3)
    assert raw["shift"]["summary"] in out
    assert main(["diagnose", "--source-free", "-s", str(digits), "-t", str(digits), *TINY, "-o", "x"]) == 2
    assert "drop --source" in capsys.readouterr().err

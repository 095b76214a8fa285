"""``diag compare`` and ``diag deploy-check`` on the command line: results, files and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diag.cli.main import main
from diag.models import load
from diag.train import FinetuneConfig, finetune
from tests.conftest import write_digit_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_compare_of_a_tiny_run_writes_its_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digits = write_digit_folder(tmp_path / "digits", per_class=8)
    tiny = load("timm:test_efficientnet", pretrained=False, image_size=32, seed=0)
    cfg = FinetuneConfig(epochs=1, batch_size=8, image_size=32, augment="none", val_fraction=0.25, freeze=2)
    finetune(digits, tiny, cfg, out=tmp_path / "run")
    assert main(["compare", str(tmp_path / "run"), "--data", str(digits), "--no-shift", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (run,) = out["runs"]
    assert run["frozen_check_ok"] and [b["frozen"] for b in run["blocks"]][:3] == [True, True, False]
    assert {p.name for p in (tmp_path / "run").glob("compare.*")} == {
        "compare.json",
        "compare.md",
        "compare.html",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "{tmp}/nothing"], "not a diag finetune run folder (no result.json)"),
        (["compare", "{tmp}", "--max-items", "0"], "--max-items must be a positive integer"),
        (["deploy-check", "{tmp}", "--data", "samples:uci-digits"], "not a diag finetune run folder"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_deploy_check_needs_data(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["deploy-check", "somewhere"])
    assert exc.value.code == 2
    assert "--data" in capsys.readouterr().err

"""diag.train.jobs: the flags a background run takes from the dashboard's "More flags" box.

(Launching, polling and stopping runs are tested with the Fine-tune page in tests/dashboard.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diag.cli.main import build_parser
from diag.errors import ConfigError
from diag.train import jobs


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--out", "/elsewhere", "--overwrite"], "--out"),
        (["--overwrite"], "--overwrite"),
        (["--out=/elsewhere"], "--out"),
        (["--ou", "/elsewhere"], "--out"),  # argparse takes the abbreviation
        (["--overw"], "--overwrite"),
        (["-o", "/elsewhere"], "--out"),
        (["-o/elsewhere"], "--out"),
        (["-qo", "/elsewhere"], "--out"),
        (["--lr", "3e-4", "--resume"], "--resume"),
        (["--config", "other.json"], "--config"),
        (["-t", "samples:mnist"], "--target"),
        (["--backbone", "minilm"], "--backbone"),
        (["--list-blocks"], "--list-blocks"),
        (["-h"], "--help"),
    ],
)
def test_output_changing_flags_are_refused(tmp_path: Path, extra: list[str], flag: str) -> None:
    out = tmp_path / "run"
    refused = extra[-1] if flag == "--resume" else extra[0]  # the first refused word is named
    with pytest.raises(ConfigError, match=f"^More flags: {re.escape(refused)} is not allowed"):
        jobs.launch_finetune("samples:uci-digits", "efficientnet_lite0", out, extra_args=extra)
    with pytest.raises(ConfigError, match=re.escape(f"({flag}: ")):
        jobs.check_extra_args(extra)
    assert not out.exists()  # refused before anything was written or started


def test_other_flags_pass_and_the_fixed_ones_win(tmp_path: Path) -> None:
    extra = ["--lr", "3e-4", "--head-lr", "1e-3", "--augment", "light", "--report", "r", "--json", "-q"]
    jobs.check_extra_args(extra)
    cmd = jobs.finetune_command("samples:uci-digits", "efficientnet_lite0", tmp_path / "r", extra_args=extra)
    args = build_parser().parse_args(cmd[3:])
    assert args.out == tmp_path / "r" and args.config == tmp_path / "r" / "run.json"
    assert args.target == "samples:uci-digits" and args.backbone == "efficientnet_lite0"
    assert not args.overwrite and not args.resume and args.lr == 3e-4

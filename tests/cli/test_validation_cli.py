"""Bad parameters are refused before any forward pass, in one line that names the flag as typed."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

import pytest

from diag.cli.flags import DiagParser, with_flag_names
from diag.cli.main import build_parser, main

TINY = ["-b", "timm:test_efficientnet", "--random-init", "--image-size", "32"]


def _no_embedding(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("embedded before the parameters were checked")


@pytest.fixture(autouse=True)
def no_forward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("diag.pipeline.diagnose", "diag.pipeline.rank", "diag.cli.embed"):
        monkeypatch.setattr(importlib.import_module(module), "embed", _no_embedding)
    monkeypatch.setattr(importlib.import_module("diag.pipeline.reference"), "summarise", _no_embedding)


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("command", "where"),
    [
        (["embed", "{data}", *TINY], "file"),
        (["embed", "{data}", *TINY], "under"),
        (["diagnose", "-s", "{data}", "-t", "{data}", *TINY], "under"),
        (["diagnose", "--source-free", "-t", "{data}", *TINY], "file"),
        (["rank", "-t", "{data}", "-b", "timm:test_efficientnet"], "file"),
        (["reference", "build", "{data}", *TINY], "under"),
        (["reference", "merge", "{tmp}/a", "{tmp}/b"], "file"),
        (["check", "{data}", "-r", "{tmp}/ref"], "under"),
    ],
)
def test_an_unusable_out_is_refused_first(
    tmp_path: Path, digit_folder: Path, capsys: pytest.CaptureFixture[str], command: list[str], where: str
) -> None:
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "out"
    argv = [a.format(data=digit_folder, tmp=tmp_path) for a in command] + ["-o", str(out)]
    err = _error(argv, capsys)
    assert f"error: --out {out}" in err and "file" in err and "choose another folder for --out" in err


def test_an_unwritable_out_names_the_reason(capsys: pytest.CaptureFixture[str], digit_folder: Path) -> None:
    # /proc takes no new entries, even for root (a chmod 555 folder would not stop root).
    err = _error(["embed", str(digit_folder), *TINY, "-o", "/proc/diag-out"], capsys)
    assert "--out /proc/diag-out: cannot write in /proc" in err


def test_a_folder_as_history_is_refused_first(
    tmp_path: Path, digit_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _error(
        ["check", str(digit_folder), "-r", str(tmp_path / "ref"), "--history", str(tmp_path)], capsys
    )
    assert f"--history {tmp_path} is a folder, not a file" in err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--alpha", "2"], "error: --alpha must be in (0, 1); got 2.0."),
        (["--image-size", "0"], "error: --image-size must be an integer >= 1"),
        (["--permutations", "100"], "error: --permutations must be at least 139 for 7 layers at alpha 0.05"),
        (["--permutations", "500", "--alpha", "0.01"], "error: --permutations must be at least 699 for 7"),
    ],
)
def test_diagnose_parameters_are_checked_before_embedding_and_named_as_flags(
    tmp_path: Path, digit_folder: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    argv = ["diagnose", "-s", str(digit_folder), "-t", str(digit_folder), *TINY, "-o", str(tmp_path / "r")]
    assert expected in _error([*argv, *extra], capsys)


def test_check_refuses_too_few_permutations_for_the_references_layers(
    tmp_path: Path, digit_folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from diag.pipeline import build_reference
    from diag.reference import ReferenceSettings

    monkeypatch.undo()  # the reference is built for real (seconds); the check must stop before embedding
    build_reference(digit_folder, "timm:test_efficientnet", out=tmp_path / "ref", image_size=32,
                    pretrained=False, settings=ReferenceSettings(n_features=16, reservoir=8))  # fmt: skip
    monkeypatch.setattr(importlib.import_module("diag.pipeline.diagnose"), "embed", _no_embedding)
    err = _error(["check", str(digit_folder), "-r", str(tmp_path / "ref"), "--permutations", "50"], capsys)
    assert "--permutations must be at least 139 for 7 layers" in err


def test_a_bad_data_set_is_named_before_the_backbone_loads(
    tmp_path: Path, digit_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    argv = [
        "diagnose",
        "-s",
        str(digit_folder),
        "-t",
        str(missing),
        "-b",
        "timm:no_such_model",
        "-o",
        str(tmp_path),
    ]
    assert str(missing) in _error(argv, capsys)
    err = _error(["rank", "-t", str(missing), "-b", "timm:no_such_model"], capsys)
    assert str(missing) in err and "no_such_model" not in err


def test_errors_name_flags_not_python_parameters() -> None:
    parser = build_parser()
    args = parser.parse_args(["diagnose", "-s", "a", "-t", "b", "-b", "x", "-o", "o"])
    flags = parser.flag_names(args)
    assert flags["n_permutations"] == "--permutations" and flags["image_size"] == "--image-size"
    assert flags["use_cache"] == "--cache" and flags["alpha"] == "--alpha"
    assert with_flag_names("n_permutations must be at least 19; got 5.", flags) == (
        "--permutations must be at least 19; got 5."
    )
    assert with_flag_names("backbone 'x': image_size must be >= 32; got 8.", flags) == (
        "backbone 'x': --image-size must be >= 32; got 8."
    )
    assert with_flag_names("alpha must be in (0, 1); got 2.", flags) == "--alpha must be in (0, 1); got 2."
    # prose, paths and flags already written as flags stay as they are
    for text in (
        "the alpha of the test must be set", "/data/image_size/x.png: unreadable", "--image-size must be",
        "file image_size.csv is empty", "ref alpha must be",
    ):  # fmt: skip
        assert with_flag_names(text, flags) == text
    nested = parser.parse_args(["reference", "build", "d", "-b", "x", "-o", "o"])
    assert parser.flag_names(nested)["chunk_size"] == "--chunk-size"


def test_subcommand_parsers_are_diag_parsers() -> None:
    parser = build_parser()
    assert isinstance(parser, DiagParser) and isinstance(parser, argparse.ArgumentParser)

"""The `diag` command line, end to end on the bundled samples."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from diag.cli.flags import add_config_flags, config_from_args, flag_values
from diag.cli.main import build_parser, main


def test_embed_mnist_writes_a_manifest_listing_every_probe(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mnist"
    rc = main(
        [
            "embed",
            "samples:mnist",
            "--backbone",
            "efficientnet_lite0",
            "--image-size",
            "64",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert [p["name"] for p in m["probes"]] == ["stem"] + [f"blocks.{i}" for i in range(7)] + ["pooled"]
    assert [p["dim"] for p in m["probes"]] == [32, 16, 24, 40, 80, 112, 192, 320, 1280]
    assert m["n"] == 300 and m["data"]["class_counts"]["7"] == 30 and m["has_logits"]
    assert m["timings"]["items_per_s"] > 0 and len(m["cache_key"]) == 64
    assert (out / "embeddings.safetensors").stat().st_size > 300 * 1280 * 4
    assert "wrote" in capsys.readouterr().out
    assert (
        main(["embed", "samples:mnist", "-b", "efficientnet_lite0", "--image-size", "64", "-o", str(out)])
        == 0
    )
    assert "cache hit (no forward pass)" in capsys.readouterr().out


def test_embed_debates_with_minilm(tmp_path: Path) -> None:
    out = tmp_path / "debates"
    assert main(["embed", "samples:debates", "--backbone", "minilm", "--out", str(out), "-q"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert [p["name"] for p in m["probes"]] == [
        "embeddings",
        *[f"layer.{i}" for i in range(6)],
        "cls",
        "pooled",
    ]
    assert m["classes"] == ["democrat", "republican"] and not m["has_logits"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["embed", "/no/such/dir", "-b", "minilm", "-o", "x"], "/no/such/dir: no such file or folder"),
        (["embed", "samples:nope", "-b", "minilm", "-o", "x"], "mnist"),
        (["embed", "samples:mnist", "-b", "bert", "-o", "x"], "unknown backbone 'bert'"),
        (
            ["embed", "samples:mnist", "-b", "minilm", "-o", "x"],
            "holds images but backbone 'minilm' takes texts",
        ),
        (["embed", "samples:mnist", "-b", "minilm", "-o", "x", "--precision", "fp7"], "precision must be"),
    ],
)
def test_bad_input_is_one_clear_line_and_status_2(argv, message, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_backbones_lists_bundled_names_with_probes(capsys) -> None:
    assert main(["backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "minilm"} <= set(rows)
    assert rows["efficientnet_lite0"]["probes"][-1] == {"name": "pooled", "dim": 1280}
    assert len(rows["minilm"]["probes"]) == 9 and "timm:resnet50" in rows


def test_help_documents_every_flag() -> None:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, p in sub.items():
        text = p.format_help()
        for action in p._actions:
            for opt in action.option_strings:
                assert opt in text, (name, opt)
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.dest)


def test_console_script_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "diag.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "embed" in proc.stdout and "backbones" in proc.stdout


@dataclasses.dataclass(frozen=True)
class _Toy:
    """A config of every kind of field the flags helper reads."""

    switch: bool = dataclasses.field(default=False, metadata={"help": "a switch"})
    count: int | None = dataclasses.field(default=None, metadata={"help": "a count"})
    rate: float = dataclasses.field(default=0.5, metadata={"help": "a rate"})
    name: str = dataclasses.field(default="x", metadata={"help": "a name (default: x)"})
    spec: int | str = dataclasses.field(default=0, metadata={"help": "a number or a name"})


def test_config_flags_take_names_types_defaults_and_help_from_the_dataclass() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, _Toy, "toy", skip=("name",))
    text = parser.format_help()
    assert "--switch, --no-switch" in text and "--count N" in text and "--rate X" in text
    assert "a rate (default: 0.5)" in text and "--name" not in text and "--spec VALUE" in text
    args = parser.parse_args(["--count", "3", "--no-switch", "--spec", "blocks.4"])
    assert flag_values(_Toy, args) == {"switch": False, "count": 3, "spec": "blocks.4"}  # rate: not given
    assert config_from_args(_Toy, args) == _Toy(count=3, spec="blocks.4")
    # Later layers win; flags win over every layer.
    assert config_from_args(_Toy, args, {"rate": 0.1, "count": 9}, {"rate": 0.2}) == _Toy(
        count=3, rate=0.2, spec="blocks.4"
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--count", "many"])


def test_finetune_reads_a_config_file_that_flags_override(tmp_path: Path, capsys) -> None:
    from diag.cli.train import finetune_config

    run = tmp_path / "run.json"
    run.write_text(json.dumps({"epochs": 3, "lr": 0.01, "freeze": "blocks.2"}))
    base = ["finetune", "-b", "efficientnet_lite0", "--preset", "small", "--config", str(run)]
    config = finetune_config(build_parser().parse_args([*base, "--lr", "0.002"]))
    # preset small (image 64, batch 32) < the file (3 epochs, freeze) < the flags (lr)
    assert (config.image_size, config.batch_size, config.epochs) == (64, 32, 3)
    assert config.freeze == "blocks.2" and config.lr == 0.002
    run.write_text(json.dumps({"epochs": 3, "no_such_setting": 1}))
    assert main([*base, "--list-blocks"]) == 2
    err = capsys.readouterr().err
    assert str(run) in err and "no_such_setting" in err and "Traceback" not in err


def test_diagnose_and_rank_flags_fill_their_config_dataclasses() -> None:
    from diag.cli.diagnose import diagnose_config, rank_config
    from diag.config import DiagnoseConfig, RankConfig
    from diag.engine.extract import ExtractConfig

    parser = build_parser()
    base = ["diagnose", "-s", "a", "-t", "b", "-b", "x", "-o", "out"]
    assert diagnose_config(parser.parse_args(base)) == DiagnoseConfig()  # the defaults are the config's
    args = parser.parse_args(
        [*base, "--permutations", "500", "--no-cache", "--no-transfer", "--random-init", "--alpha", "0.01",
         "--text-column", "body", "--batch-size", "8", "--device", "cpu"]
    )  # fmt: skip
    assert diagnose_config(args) == DiagnoseConfig(
        extract=ExtractConfig(batch_size=8, device="cpu"), pretrained=False, n_permutations=500,
        use_cache=False, transfer=False, alpha=0.01, text_column="body",
    )  # fmt: skip
    args = parser.parse_args(["rank", "-t", "a", "-b", "x,y", "--bootstrap", "7", "--no-random-init"])
    assert rank_config(args) == RankConfig(n_bootstrap=7, include_random_init=False)
    assert rank_config(parser.parse_args(["rank", "-t", "a", "-b", "x"])) == RankConfig()


def test_usage_errors_are_one_line_naming_the_command_and_its_help(capsys) -> None:
    """argparse would print its whole usage block before the error; diag prints one line, exit 2."""
    import pytest

    from diag.cli.main import main

    for argv, needle in (
        (["check", "samples:mnist"], "diag check: error: the following arguments are required: --reference"),
        (["nosuch"], "diag: error: argument COMMAND: invalid choice: 'nosuch'"),
        (["diagnose", "--permutations", "many"], "diag diagnose: error: argument --permutations"),
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1, err
        assert err[0].startswith(needle) and err[0].endswith("-h`)")

"""The reliability suite (issue 18): bad input through the real command line, and SIGKILL mid-run.

Every bad input is built inside the test and run through ``python -m diag.cli`` in a subprocess, offline,
with a private cache: it must end with exit status 2 and one line on stderr that names the file or the flag
as the user typed it, and never with a Python traceback. Unreadable items among good ones are the
exception: they are skipped and listed, and the run succeeds.

The kill tests SIGKILL ``diag embed`` and ``diag diagnose`` at a few points and check that no file is torn
(every manifest and report present parses), that the cache is still usable, and that a rerun gives the
same numbers as an uninterrupted run. Two diagnoses sharing one cache at the same time both succeed.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import solid_png, write_digit_folder

#: The tiny random-init backbone: every case is plumbing, not numbers.
TINY = ["-b", "timm:test_efficientnet", "--random-init", "--image-size", "32"]

DIGITS = ("0", "1", "2")
#: The tiny backbone for fine-tuning and ranking (their own flags pick pretrained or not).
TINY_FT = ["-b", "timm:test_efficientnet", "--image-size", "32"]
#: Fine-tuning the tiny backbone from scratch (it has no pretrained weights to download).
FT = [*TINY_FT, "--from-scratch"]
#: A fast diagnosis: no transfer section, few (but enough) permutations.
FAST = ["--no-transfer", "--permutations", "200"]

#: Commands that take --quiet (no progress bar on stderr, so stderr holds only the message).
_QUIET = {"embed", "diagnose", "rank", "finetune", "check"}


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DIAG_DEBUG"}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        DIAG_CACHE_DIR=str(cache),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def run_cli(argv: list[str], cache: Path, *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m diag.cli ARGV`` offline with the cache at ``cache``."""
    if argv and argv[0] in _QUIET:
        argv = [*argv, "--quiet"]
    return subprocess.run(
        [sys.executable, "-m", "diag.cli", *argv],
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_cli(argv: list[str], cache: Path) -> subprocess.Popen[str]:
    """``python -m diag.cli ARGV --quiet`` started in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "diag.cli", *argv, "--quiet"],
        env=_env(cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def message_lines(stderr: str) -> list[str]:
    """The lines of stderr that are the message: argparse's usage block (``usage:`` and its indented
    continuation lines) is not part of it."""
    lines: list[str] = []
    in_usage = False
    for line in stderr.splitlines():
        if line.startswith("usage:"):
            in_usage = True
            continue
        if in_usage and line.startswith(" "):
            continue
        in_usage = False
        if line.strip():
            lines.append(line)
    return lines


# --------------------------------------------------------------------------------------------------------
# The inputs


class Payload:
    """A pickle that, when loaded, creates a folder: its absence proves the file was refused unread."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


@dataclass
class Work:
    """One case's folder, with the good inputs a bad one sits beside."""

    tmp: Path
    checks: list[Callable[[], None]] = field(default_factory=list)

    def digits(self, name: str = "digits", classes: tuple[str, ...] = DIGITS, per_class: int = 4) -> Path:
        return write_digit_folder(self.tmp / name, per_class=per_class, classes=classes)

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return path

    def out(self) -> str:
        return str(self.tmp / "out")

    def payload(self) -> Payload:
        """A pickle payload; the case fails if it ran."""
        marker = self.tmp / "PAYLOAD-RAN"

        def check() -> None:
            assert not marker.exists(), "the pickle payload ran: the file was unpickled"

        self.checks.append(check)
        return Payload(marker)

    def reference(self, name: str = "ref", *, model: str = "timm:test_efficientnet", size: int = 32) -> Path:
        from diag.pipeline import build_reference

        out = self.tmp / name
        build_reference(self.digits(f"{name}-data"), model, out=out, image_size=size, pretrained=False)
        return out


@dataclass(frozen=True)
class Bad:
    """One bad input: ``build`` makes it under a case folder and returns the argv and the strings the error
    line must contain (the file as typed, or the flag)."""

    id: str
    build: Callable[[Work], tuple[list[str], list[str]]]
    absent: tuple[str, ...] = ()  # advice the line must not give (it would not work, or is unsafe)
    xfail: str | None = None


def _missing_path(w: Work) -> tuple[list[str], list[str]]:
    p = str(w.tmp / "no-such-folder")
    return ["embed", p, *TINY, "-o", w.out()], [p]


def _empty_folder(w: Work) -> tuple[list[str], list[str]]:
    p = w.tmp / "empty"
    p.mkdir()
    return ["embed", str(p), *TINY, "-o", w.out()], [str(p)]


def _folder_without_images(w: Work) -> tuple[list[str], list[str]]:
    p = w.tmp / "notes"
    w.file("notes/readme.txt", "no images here")
    return ["embed", str(p), *TINY, "-o", w.out()], [str(p)]


def _unknown_format(w: Work) -> tuple[list[str], list[str]]:
    p = w.file("data.xyz", "1,2,3\n")
    return ["embed", str(p), *TINY, "-o", w.out()], [str(p)]


def _truncated_npz(w: Work) -> tuple[list[str], list[str]]:
    p = w.tmp / "cut.npz"
    np.savez(p, images=np.zeros((8, 8, 8), np.uint8), labels=np.arange(8) % 2)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return ["embed", str(p), *TINY, "-o", w.out()], [str(p)]


def _pickled_npz(w: Work) -> tuple[list[str], list[str]]:
    p = w.tmp / "pickled.npz"
    np.savez(p, images=np.array([w.payload()], dtype=object))
    return ["embed", str(p), *TINY, "-o", w.out()], [str(p)]


def _npz_without_items(w: Work) -> tuple[list[str], list[str]]:
    p = w.tmp / "other.npz"
    np.savez(p, weights=np.zeros(3))
    return ["embed", str(p), *TINY, "-o", w.out()], [str(p)]


def _npz_nan_images(w: Work) -> tuple[list[str], list[str]]:
    p = w.tmp / "nan.npz"
    imgs = np.zeros((4, 8, 8), np.float32)
    imgs[1, 2, 3] = np.nan
    np.savez(p, images=imgs)
    return ["embed", str(p), *TINY, "-o", w.out()], [str(p)]


def _csv_without_text_column(w: Work) -> tuple[list[str], list[str]]:
    p = w.file("table.csv", "sentence,label\nhello,a\nworld,b\n")
    return ["embed", str(p), "-b", "minilm", "--random-init", "-o", w.out()], [str(p), "text"]


def _csv_not_utf8(w: Work) -> tuple[list[str], list[str]]:
    p = w.file("latin1.csv", "text,label\ncaf\u00e9 cr\u00e8me,a\nna\u00efve,b\n".encode("latin-1"))
    return ["embed", str(p), "-b", "minilm", "--random-init", "-o", w.out()], [str(p)]


def _jsonl_malformed(w: Work) -> tuple[list[str], list[str]]:
    p = w.file("rows.jsonl", '{"text": "fine", "label": "a"}\n{"text": "cut off\n')
    return ["embed", str(p), "-b", "minilm", "--random-init", "-o", w.out()], [str(p)]


def _unknown_timm_model(w: Work) -> tuple[list[str], list[str]]:
    d = w.digits()
    return ["embed", str(d), "-b", "timm:no_such_net", "--random-init", "-o", w.out()], ["no_such_net"]


def _unknown_bundled_name(w: Work) -> tuple[list[str], list[str]]:
    d = w.digits()
    return ["embed", str(d), "-b", "efficientnet_lite99", "-o", w.out()], ["efficientnet_lite99"]


def _flag(command: str, flag: str, value: str, *extra: str) -> Callable[[Work], tuple[list[str], list[str]]]:
    """A bad value of one flag of ``command`` on good image data."""

    def build(w: Work) -> tuple[list[str], list[str]]:
        d = str(w.digits())
        base = {
            "embed": ["embed", d, *TINY, "-o", w.out()],
            "diagnose": ["diagnose", "-s", d, "-t", d, *TINY, "-o", w.out(), "--no-transfer"],
            "finetune": ["finetune", "-t", d, *FT, "-o", w.out(), "--epochs", "1"],
            "rank": ["rank", "-t", d, *TINY_FT, "-o", w.out()],
        }[command]
        if flag == "--image-size":
            base = [a for i, a in enumerate(base) if a != "--image-size" and base[i - 1] != "--image-size"]
        return [*base, *extra, f"{flag}={value}"], [flag]

    return build


def _out_under_a_file(command: str) -> Callable[[Work], tuple[list[str], list[str]]]:
    def build(w: Work) -> tuple[list[str], list[str]]:
        d = str(w.digits())
        blocker = w.file("blocker", "a file, not a folder")
        out = str(blocker / "out")
        argv = {
            "embed": ["embed", d, *TINY, "-o", out],
            "diagnose": ["diagnose", "-s", d, "-t", d, *TINY, "-o", out, *FAST],
            "rank": ["rank", "-t", d, *TINY_FT, "-o", out],
        }[command]
        return argv, [str(blocker)]

    return build


def _out_an_existing_file(command: str) -> Callable[[Work], tuple[list[str], list[str]]]:
    def build(w: Work) -> tuple[list[str], list[str]]:
        d = str(w.digits())
        out = str(w.file("report.txt", "an existing file"))
        argv = {
            "embed": ["embed", d, *TINY, "-o", out],
            "diagnose": ["diagnose", "-s", d, "-t", d, *TINY, "-o", out, *FAST],
        }[command]
        return argv, [out]

    return build


def _diagnose_without_target(w: Work) -> tuple[list[str], list[str]]:
    return ["diagnose", "-s", str(w.digits()), *TINY, "-o", w.out()], ["--target"]


def _diagnose_split_and_target(w: Work) -> tuple[list[str], list[str]]:
    d = str(w.digits())
    return ["diagnose", "-s", d, "-t", d, "--split", *TINY, "-o", w.out()], ["--split"]


def _diagnose_missing_source(w: Work) -> tuple[list[str], list[str]]:
    p = str(w.tmp / "gone")
    return ["diagnose", "-s", p, "-t", str(w.digits()), *TINY, "-o", w.out()], [p]


def _reference_tampered(w: Work) -> tuple[list[str], list[str]]:
    ref = w.reference()
    blob = ref / "summaries.safetensors"
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    return ["check", str(w.digits("new")), "-r", str(ref), "-o", w.out()], [str(ref)]


def _reference_of_another_backbone(w: Work) -> tuple[list[str], list[str]]:
    a = w.reference("ref-a")
    b = w.reference("ref-b", model="timm:test_resnet")
    return ["reference", "merge", str(a), str(b), "-o", w.out()], [str(a)]


def _reference_missing(w: Work) -> tuple[list[str], list[str]]:
    p = str(w.tmp / "no-ref")
    return ["check", str(w.digits()), "-r", p], [p]


def _check_without_reference(w: Work) -> tuple[list[str], list[str]]:
    return ["check", str(w.digits())], ["--reference"]


def _finetune_one_class(w: Work) -> tuple[list[str], list[str]]:
    d = str(w.digits(classes=("7",), per_class=6))
    return ["finetune", "-t", d, *FT, "-o", w.out(), "--epochs", "1"], [d]


def _finetune_unlabelled(w: Work) -> tuple[list[str], list[str]]:
    flat = w.tmp / "flat"
    for i in range(6):
        solid_png(flat / f"{i}.png", 20 * i)
    return ["finetune", "-t", str(flat), *FT, "-o", w.out()], [str(flat)]


def _finetune_config_not_json(w: Work) -> tuple[list[str], list[str]]:
    cfg = str(w.file("settings.json", "epochs: 3\n"))
    d = str(w.digits())
    return ["finetune", "-t", d, *FT, "-o", w.out(), "--config", cfg], [cfg]


def _malicious_checkpoint(w: Work) -> tuple[list[str], list[str]]:
    ckpt = w.tmp / "evil.pt"
    torch.save({"state_dict": w.payload()}, ckpt)
    d = str(w.digits())
    argv = ["embed", d, "-b", f"timm:test_efficientnet@{ckpt}", "--image-size", "32", "-o", w.out()]
    return argv, [str(ckpt)]


def _hub_id_offline(w: Work) -> tuple[list[str], list[str]]:
    argv = ["embed", str(w.digits()), "-b", "hf:nobody/no-such-model", "--random-init", "-o", w.out()]
    return argv, ["nobody/no-such-model"]


def _resume_from_a_list(w: Work) -> tuple[list[str], list[str]]:
    out = w.tmp / "run"
    out.mkdir()
    torch.save([1, 2, 3], out / "last.pt")  # loads weights-only, but is not a diag checkpoint
    d = str(w.digits())
    return ["finetune", "-t", d, *FT, "-o", str(out), "--epochs", "1", "--resume"], [str(out / "last.pt")]


BAD: list[Bad] = [
    # what the data is
    Bad("missing-path", _missing_path),
    Bad("empty-folder", _empty_folder),
    Bad("folder-without-images", _folder_without_images),
    Bad("unknown-file-format", _unknown_format),
    Bad("truncated-npz", _truncated_npz),
    Bad("pickled-npz-refused-unread", _pickled_npz),
    Bad("npz-without-images-or-texts", _npz_without_items),
    Bad("npz-with-nan-images", _npz_nan_images),
    Bad("csv-without-text-column", _csv_without_text_column),
    Bad("csv-not-utf8", _csv_not_utf8),
    Bad("jsonl-malformed", _jsonl_malformed),
    Bad("diagnose-missing-source", _diagnose_missing_source),
    # the backbone
    Bad("unknown-timm-model", _unknown_timm_model),
    Bad("unknown-bundled-name", _unknown_bundled_name),
    Bad("malicious-checkpoint-refused-unread", _malicious_checkpoint, absent=("weights_only=False",)),
    Bad("hub-id-offline", _hub_id_offline, absent=("--random-init",)),
    Bad("finetune-resume-from-a-list", _resume_from_a_list),
    # parameters
    Bad("alpha-0", _flag("diagnose", "--alpha", "0")),
    Bad("alpha-1.5", _flag("diagnose", "--alpha", "1.5")),
    Bad("alpha-nan", _flag("diagnose", "--alpha", "nan")),
    Bad("permutations-0", _flag("diagnose", "--permutations", "0")),
    Bad("permutations-negative", _flag("diagnose", "--permutations", "-1")),
    Bad("permutations-too-few-for-7-layers", _flag("diagnose", "--permutations", "10")),
    Bad("image-size-0", _flag("embed", "--image-size", "0")),
    Bad("image-size-negative", _flag("diagnose", "--image-size", "-32", "--permutations", "200")),
    Bad("batch-size-0", _flag("embed", "--batch-size", "0")),
    Bad("device-unknown", _flag("embed", "--device", "tpu")),
    Bad("precision-unknown", _flag("embed", "--precision", "fp8")),
    Bad("finetune-freeze-99", _flag("finetune", "--freeze", "99")),
    Bad("finetune-val-fraction-1.5", _flag("finetune", "--val-fraction", "1.5")),
    Bad("finetune-epochs-0", _flag("finetune", "--epochs", "0")),
    Bad("rank-bootstrap-negative", _flag("rank", "--bootstrap", "-1")),
    # where the results go
    Bad("embed-out-under-a-file", _out_under_a_file("embed")),
    Bad("diagnose-out-under-a-file", _out_under_a_file("diagnose")),
    Bad("rank-out-under-a-file", _out_under_a_file("rank")),
    Bad("embed-out-an-existing-file", _out_an_existing_file("embed")),
    Bad("diagnose-out-an-existing-file", _out_an_existing_file("diagnose")),
    # command lines that do not make sense
    Bad("diagnose-without-target", _diagnose_without_target),
    Bad("diagnose-split-and-target", _diagnose_split_and_target),
    Bad("check-without-reference", _check_without_reference),
    # references
    Bad("reference-missing", _reference_missing),
    Bad("reference-tampered", _reference_tampered),
    Bad("reference-of-another-backbone", _reference_of_another_backbone),
    # labels for fine-tuning
    Bad("finetune-one-class", _finetune_one_class),
    Bad("finetune-unlabelled", _finetune_unlabelled),
    Bad("finetune-config-not-json", _finetune_config_not_json),
]


def _params() -> Iterator[Any]:
    for case in BAD:
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input_exits_2_with_one_line_naming_it(case: Bad, tmp_path: Path) -> None:
    w = Work(tmp_path)
    argv, names = case.build(w)
    proc = run_cli(argv, tmp_path / "cache")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = message_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"diag {argv[0]}"), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    for advice in case.absent:
        assert advice not in lines[0], (advice, lines[0])
    for check in w.checks:
        check()
    # refused before any forward pass: nothing was embedded into the case's private cache
    assert not _cache_entries(tmp_path / "cache")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _not_a_png(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)


def _truncated_png(path: Path) -> None:
    solid_png(path, 128, size=64)
    path.write_bytes(path.read_bytes()[:60])


def _decompression_bomb(path: Path) -> None:
    """A few hundred bytes that claim 40,000 x 40,000 pixels (PIL's bomb limit is ~179 M)."""
    header = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "spoil", [_not_a_png, _truncated_png, _decompression_bomb], ids=["not-a-png", "truncated", "bomb"]
)
def test_unreadable_image_among_good_ones_is_skipped_and_listed(
    spoil: Callable[[Path], None], tmp_path: Path
) -> None:
    d = write_digit_folder(tmp_path / "digits", per_class=3)
    spoil(d / "1" / "broken.png")
    proc = run_cli(["embed", str(d), *TINY, "-o", str(tmp_path / "out")], tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    skipped = manifest["skipped"]
    assert [Path(s["id"]).name for s in skipped] == ["broken.png"], skipped
    assert len(manifest["ids"]) == 9
    assert manifest["data"]["n_skipped"] == 1


def test_one_item_classes_skip_the_transfer_section_and_keep_the_shift_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src, tgt = tmp_path / "src.npz", tmp_path / "tgt.npz"
    np.savez(src, images=(rng.random((12, 16, 16)) * 255).astype(np.uint8))
    # float labels: every item its own class
    np.savez(tgt, images=(rng.random((12, 16, 16)) * 255).astype(np.uint8), labels=rng.random(12))
    out = tmp_path / "out"
    argv = ["diagnose", "-s", str(src), "-t", str(tgt), *TINY, "--permutations", "200", "-o", str(out)]
    proc = run_cli(argv, tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(tgt) in proc.stderr  # the warning that numeric labels made one class per item names the file
    report = json.loads((out / "report.json").read_text())
    assert len(report["layers"]) == 7 and isinstance(report["shift"]["is_shift"], bool)
    assert "per class" in report["transferability"]["skipped"]


def _list_manifest(manifest: dict[str, Any]) -> Any:
    return [manifest]


def _manifest_without_arrays(manifest: dict[str, Any]) -> Any:
    return {k: v for k, v in manifest.items() if k != "arrays"}


def _manifest_with_ids_cut(manifest: dict[str, Any]) -> Any:
    return {**manifest, "ids": manifest["ids"][:3]}


@pytest.mark.parametrize(
    "damage",
    [_list_manifest, _manifest_without_arrays, _manifest_with_ids_cut],
    ids=["manifest-a-json-list", "manifest-without-arrays", "manifest-ids-cut"],
)
def test_a_damaged_cache_entry_is_rebuilt_not_a_crash(damage: Callable[[Any], Any], tmp_path: Path) -> None:
    d = write_digit_folder(tmp_path / "digits", per_class=3)
    cache = tmp_path / "cache"
    argv = ["embed", str(d), *TINY]
    first = run_cli([*argv, "-o", str(tmp_path / "first")], cache)
    assert first.returncode == 0, first.stderr
    (entry,) = _cache_entries(cache)
    manifest = entry / "manifest.json"
    manifest.write_text(json.dumps(damage(json.loads(manifest.read_text()))))
    again = run_cli([*argv, "-o", str(tmp_path / "again")], cache)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert len(json.loads((tmp_path / "again" / "manifest.json").read_text())["ids"]) == 9
    assert _assert_cache_valid(cache) == 1


def test_a_cache_folder_that_is_a_file_is_bypassed_with_a_warning(tmp_path: Path) -> None:
    d = write_digit_folder(tmp_path / "digits", per_class=3)
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("a file")
    proc = run_cli(["embed", str(d), *TINY, "-o", str(tmp_path / "out")], not_a_folder)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "DIAG_CACHE_DIR" in proc.stderr
    assert (tmp_path / "out" / "manifest.json").is_file()


# --------------------------------------------------------------------------------------------------------
# SIGKILL mid-run


def _digits_pair(root: Path, per_class: int = 8) -> tuple[Path, Path]:
    a = write_digit_folder(root / "a", per_class=per_class, classes=("0", "1", "2"))
    b = write_digit_folder(root / "b", per_class=per_class, classes=("3", "4", "5"))
    return a, b


def _json_files_parse(*roots: Path) -> int:
    """Every .json file under the roots parses (no torn file); returns how many there were."""
    n = 0
    for root in roots:
        for path in root.rglob("*.json"):
            json.loads(path.read_text(encoding="utf-8"))
            n += 1
    return n


#: Keys that legitimately differ between runs of the same command: timings, the creation time, the
#: provenance block (which also records cache hits).
_NOT_NUMBERS = {"meta", "seconds", "timings", "created"}


def _numbers(report: Path) -> Any:
    """report.json without what legitimately differs between two runs of the same command."""

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in _NOT_NUMBERS}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(json.loads((report / "report.json").read_text()))


def _wait_for(cond: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 120) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _kill(proc: subprocess.Popen[str]) -> bool:
    """SIGKILL the run; True when it was still running (the kill interrupted it)."""
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    return alive


def _cache_entries(cache: Path) -> list[Path]:
    """The cache's entries (temporary folders of a write in progress start with a dot)."""
    return sorted(p for p in cache.glob("embeddings/*/*") if not p.name.startswith("."))


def _assert_cache_valid(cache: Path) -> int:
    """Every entry loads with its checksum verified and is filed under its own key; returns how many."""
    from diag.engine.embeddings import Embeddings

    entries = _cache_entries(cache)
    for entry in entries:
        assert Embeddings.load(entry).cache_key == entry.name, entry
    return len(entries)


def _assert_no_torn_file(cache: Path, out: Path) -> None:
    _json_files_parse(cache, *([out] if out.exists() else []))
    _assert_cache_valid(cache)


@pytest.mark.slow
def test_sigkill_during_diagnose_leaves_no_torn_file_and_rerun_matches(tmp_path: Path) -> None:
    a, b = _digits_pair(tmp_path)
    argv = ["diagnose", "-s", str(a), "-t", str(b), *TINY, *FAST]
    clean = run_cli([*argv, "-o", str(tmp_path / "clean")], tmp_path / "clean-cache")
    assert clean.returncode == 0, clean.stderr
    expected = _numbers(tmp_path / "clean")

    cache = tmp_path / "cache"
    out = tmp_path / "out"
    # right after the first cache entry is written (the source embedded, the target not yet)
    proc = start_cli([*argv, "-o", str(out)], cache)
    reached = _wait_for(lambda: bool(_cache_entries(cache)), proc)
    _kill(proc)
    assert reached, "the run ended before writing its first cache entry"
    _assert_no_torn_file(cache, out)
    # at a few points in time of a run over the partly filled cache
    for delay in (1.0, 3.0):
        proc = start_cli([*argv, "-o", str(out)], cache)
        time.sleep(delay)
        _kill(proc)
        _assert_no_torn_file(cache, out)

    rerun = run_cli([*argv, "-o", str(out)], cache)
    assert rerun.returncode == 0, rerun.stderr
    assert _numbers(out) == expected
    _assert_no_torn_file(cache, out)
    assert _assert_cache_valid(cache) == 2


@pytest.mark.slow
def test_sigkill_during_embed_mid_forward_leaves_a_valid_cache(tmp_path: Path) -> None:
    d = write_digit_folder(tmp_path / "digits", per_class=40, classes=("0", "1", "2", "3", "4"))
    argv = ["embed", str(d), *TINY, "--batch-size", "4"]
    clean = run_cli([*argv, "-o", str(tmp_path / "clean")], tmp_path / "clean-cache")
    assert clean.returncode == 0, clean.stderr
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    for delay in (2.0, 4.0, 6.0):
        proc = start_cli([*argv, "-o", str(out)], cache)
        time.sleep(delay)
        assert _kill(proc), f"the embedding ended within {delay} s: kill it earlier or give it more items"
        _assert_no_torn_file(cache, out)
    rerun = run_cli([*argv, "-o", str(out)], cache)
    assert rerun.returncode == 0, rerun.stderr

    from diag.engine.embeddings import Embeddings

    got, want = Embeddings.load(out), Embeddings.load(tmp_path / "clean")
    assert got.ids == want.ids
    assert [p.name for p in got.probes] == [p.name for p in want.probes]
    for p in want.probes:
        np.testing.assert_array_equal(got[p.name], want[p.name])
    # and the cache it left is served: a second rerun is a hit with the same rows
    again = run_cli([*argv, "-o", str(tmp_path / "again")], cache)
    assert again.returncode == 0, again.stderr
    hit = Embeddings.load(tmp_path / "again")
    assert hit.ids == want.ids


def _training_numbers(run: Path) -> Any:
    """result.json without timings, speeds, the output folder and the settings that name it."""

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {
                k: strip(v)
                for k, v in x.items()
                if not k.endswith("_s") and k not in {"out", "config", "versions", "resumed", "resume"}
            }
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(json.loads((run / "result.json").read_text()))


def _epochs_done(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines if line.startswith('{"kind": "epoch"'))


@pytest.mark.slow
def test_sigkill_during_finetune_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    d = write_digit_folder(tmp_path / "digits", per_class=10)
    argv = ["finetune", "-t", str(d), *FT, "--epochs", "40", "--batch-size", "8", "--deterministic",
            "--device", "cpu"]  # fmt: skip
    clean = run_cli([*argv, "-o", str(tmp_path / "clean")], tmp_path / "cache")
    assert clean.returncode == 0, clean.stderr
    out = tmp_path / "run"
    for epochs in (2, 10):
        proc = start_cli([*argv, "-o", str(out), "--resume"], tmp_path / "cache")
        reached = _wait_for(lambda: _epochs_done(out) >= epochs and (out / "last.pt").exists(), proc)  # noqa: B023
        assert _kill(proc) and reached, f"the run ended before epoch {epochs}: give it more epochs"
        _json_files_parse(out)
    resumed = run_cli([*argv, "-o", str(out), "--resume"], tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr
    assert _training_numbers(out) == _training_numbers(tmp_path / "clean")


def test_two_diagnoses_sharing_one_cache_at_once_both_succeed(tmp_path: Path) -> None:
    a, b = _digits_pair(tmp_path, per_class=4)
    cache = tmp_path / "cache"
    argv = ["diagnose", "-s", str(a), "-t", str(b), *TINY, *FAST]
    procs = [start_cli([*argv, "-o", str(tmp_path / f"out{i}")], cache) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    assert _numbers(tmp_path / "out0") == _numbers(tmp_path / "out1")
    assert _assert_cache_valid(cache) == 2
    _json_files_parse(cache, tmp_path / "out0", tmp_path / "out1")

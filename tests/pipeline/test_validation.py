"""The pipeline checks its inputs before any forward pass, and keeps the shift report without transfer."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diag.errors import ConfigError, DataError
from diag.models import Backbone, load
from diag.pipeline import build_reference, diagnose

diagnose_module = importlib.import_module("diag.pipeline.diagnose")


def _no_embedding(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("embedded before the inputs were checked")


def _no_backbone() -> Backbone:
    raise AssertionError("loaded the backbone before the data sets were opened")


@pytest.fixture
def no_forward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diagnose_module, "embed", _no_embedding)


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_unusable_out_is_refused_before_anything_runs(
    tmp_path: Path, digit_folder: Path, no_forward_pass: None, where: str
) -> None:
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "report"
    with pytest.raises(ConfigError, match=rf"^out {out}.*file.*choose another folder for out"):
        diagnose(digit_folder, digit_folder, _no_backbone, out=out)


def test_a_bad_data_set_is_reported_before_the_backbone_loads(
    tmp_path: Path, digit_folder: Path, no_forward_pass: None
) -> None:
    with pytest.raises(DataError, match="missing"):
        diagnose(digit_folder, tmp_path / "missing", _no_backbone, out=tmp_path / "r")


def test_strict_refuses_too_few_permutations_before_embedding(
    tmp_path: Path, digit_folder: Path, no_forward_pass: None
) -> None:
    bb = load("timm:test_efficientnet", pretrained=False, image_size=32)  # 7 probe points
    with pytest.raises(ConfigError, match=r"^n_permutations must be at least 139 for 7 layers at alpha 0.05"):
        diagnose(digit_folder, digit_folder, bb, n_permutations=138, strict=True)
    with pytest.raises(ConfigError, match=r"at least 699 for 7 layers at alpha 0.01"):
        diagnose(digit_folder, digit_folder, bb, n_permutations=500, alpha=0.01, strict=True)


def test_build_reference_checks_out_and_data_before_loading(tmp_path: Path, digit_folder: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="^out "):
        build_reference(digit_folder, "no-such-backbone", out=tmp_path / "f")
    with pytest.raises(DataError, match="missing"):
        build_reference(tmp_path / "missing", "no-such-backbone", out=tmp_path / "ref")


def test_one_item_per_class_skips_transfer_and_keeps_the_shift_report(
    tmp_path: Path, digit_folder: Path, tiny_image_backbone: Backbone
) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(12, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "floats.npz", images=images, labels=np.linspace(0.1, 1.2, 12))  # 12 classes of 1
    rep = diagnose(
        digit_folder, tmp_path / "floats.npz", tiny_image_backbone, n_permutations=200, rgn=False,
        out=tmp_path / "r",
    )  # fmt: skip
    assert rep.n_target == 12 and len(rep.layers) == 7 and "is_shift" in rep.shift
    skipped = rep.sections["transferability"]["skipped"]
    assert "linear probe cannot run" in skipped and "several items per class" in skipped
    assert "negative_transfer" not in rep.sections and "freeze" not in rep.sections
    assert (tmp_path / "r" / "report.json").is_file()

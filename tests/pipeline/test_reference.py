"""diag.pipeline.reference: building references, checking new data against them, the source-free report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diag.data import open_data
from diag.engine.extract import ExtractConfig
from diag.errors import DataError
from diag.models import load
from diag.pipeline import build_reference, check, diagnose, diagnose_source_free
from diag.pipeline.reference import HISTORY_FIELDS
from diag.reference import ReferenceSettings, load_reference
from diag.report.schema import load_report


@pytest.mark.slow
def test_check_detects_mnist_to_uci_digits_and_keeps_a_history(tmp_path: Path) -> None:
    """A reference of the MNIST sample (Lite0 at 32 px) against the UCI digits, then against MNIST itself."""
    ref = build_reference("samples:mnist", "efficientnet_lite0", image_size=32, out=tmp_path / "ref")
    assert load_reference(tmp_path / "ref").n == ref.n == len(open_data("samples:mnist"))
    history = tmp_path / "checks.jsonl"
    report = check(
        "samples:uci-digits", tmp_path / "ref", out=tmp_path / "uci", history=history, n_permutations=500
    )
    assert report.shift["is_shift"] and report.shift["p_value"] <= 0.05
    assert report.source["spec"] == f"ref:{tmp_path / 'ref'}" and report.n_source == len(ref.reservoir.ids)
    summary = report.sections["reference"]
    assert summary["n"] == ref.n
    assert summary["layers"]["pooled"]["rff_p_value"] < 0.01 and summary["layers"]["pooled"]["frechet"] > 0
    # The saved report loads back with its reference section.
    assert load_report(tmp_path / "uci").sections["reference"]["layers"]["stem"]["rff_mmd2"] > 0
    # Same-distribution data: the RFF test against all reference items does not reject at the last layer.
    same = check(open_data("samples:mnist").subset(range(0, 300, 2)), tmp_path / "ref", history=history)
    assert same.sections["reference"]["layers"]["pooled"]["rff_p_value"] > 0.05
    lines = [json.loads(x) for x in history.read_text().splitlines()]
    assert len(lines) == 2 and all(set(HISTORY_FIELDS) <= set(x) for x in lines)
    assert lines[0]["is_shift"] is True and lines[0]["report"] == str(tmp_path / "uci")
    assert set(lines[0]["layers"]) == {layer["name"] for layer in report.layers}


def test_check_plumbing_on_a_tiny_backbone(tmp_path: Path, digit_folder: Path, tiny_image_backbone) -> None:
    """The fast version of the test above: a report bound to the reference, and one history line a check."""
    settings = ReferenceSettings(n_features=16, reservoir=8)
    build_reference(digit_folder, tiny_image_backbone, out=tmp_path / "ref", settings=settings)
    history = tmp_path / "h" / "checks.jsonl"
    for k in range(2):
        report = check(
            digit_folder, tmp_path / "ref", out=tmp_path / f"c{k}", history=history, n_permutations=50
        )
        assert report.n_source == 8 and report.n_target == 12
        assert set(report.sections["reference"]["layers"]) == {p.name for p in tiny_image_backbone.probes}
    lines = [json.loads(x) for x in history.read_text().splitlines()]
    assert [x["report"] for x in lines] == [str(tmp_path / "c0"), str(tmp_path / "c1")]


def test_a_reference_of_other_preprocessing_is_refused(tmp_path: Path, digit_folder: Path) -> None:
    small = load("timm:test_efficientnet", pretrained=False, image_size=32)
    build_reference(
        digit_folder, small, out=tmp_path / "ref", settings=ReferenceSettings(n_features=8, reservoir=6)
    )
    bigger = load("timm:test_efficientnet", pretrained=False, image_size=48)
    with pytest.raises(DataError, match=r"preprocessing.*Rebuild the reference"):
        diagnose(f"ref:{tmp_path / 'ref'}", digit_folder, bigger, transfer=False, rgn=False)


def test_the_source_free_report_has_the_report_format(tmp_path: Path, digit_folder: Path) -> None:
    bb = load("timm:test_efficientnet", pretrained=False, image_size=32)
    report = diagnose_source_free(digit_folder, bb, out=tmp_path / "sf", n_buckets=4, n_splits=50)
    back = load_report(tmp_path / "sf")
    assert back.source["kind"] == "source-free" and back.n_target == 12
    names = [layer["name"] for layer in back.layers]
    assert names[0] == "stem" and names == [layer["name"] for layer in report.layers]
    for layer in back.layers:
        s = layer["shift"]
        assert s["method"] == "batchnorm" and s["bn_w2"] >= 0 and 0 < s["p_value"] <= s["p_adjusted"] <= 1
    assert set(back.shift) >= {"is_shift", "p_value", "onset_layer", "level", "summary"}
    assert back.shift["effect"]["name"] == "bn_w2"


def test_source_free_with_the_ray_engine_runs_locally_and_says_so(
    tmp_path: Path, digit_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bb = load("timm:test_efficientnet", pretrained=False, image_size=32)
    with caplog.at_level("WARNING", logger="diag.pipeline.reference"):
        report = diagnose_source_free(digit_folder, bb, ExtractConfig(engine="ray"), n_buckets=4, n_splits=50)
    assert any("--engine ray" in r.getMessage() and "engine local" in r.getMessage() for r in caplog.records)
    assert report.meta["config"]["extract"]["engine"] == "local"
    local = diagnose_source_free(digit_folder, bb, n_buckets=4, n_splits=50)
    assert [layer["shift"]["p_value"] for layer in report.layers] == [
        layer["shift"]["p_value"] for layer in local.layers
    ]

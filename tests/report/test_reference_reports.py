"""The two report shapes of reference profiles in every renderer: a check against a saved reference
(its RFF-MMD/Fréchet columns beside the usual ones) and a source-free report (BatchNorm W2 per block),
built for real on the tiny random-init backbone; and a check history read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diag.errors import DataError
from diag.models import load
from diag.pipeline import build_reference, check, diagnose_source_free
from diag.pipeline.reference import append_history
from diag.reference import ReferenceSettings
from diag.report import ReferenceSection, Report, load_report
from diag.report import tables as t
from diag.report.history import find_history_files, history_rows, history_series, read_history
from diag.report.render import report_html, report_markdown, report_text
from tests.conftest import write_digit_folder


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reference-reports")
    digits = write_digit_folder(root / "digits")
    bb = load("timm:test_efficientnet", pretrained=False, image_size=32)
    diagnose_source_free(digits, bb, out=root / "sf", n_buckets=4, n_splits=50)
    build_reference(digits, bb, out=root / "ref", settings=ReferenceSettings(n_features=16, reservoir=8))
    check(digits, root / "ref", out=root / "check", history=root / "runs" / "checks.jsonl", n_permutations=50)
    return {
        "sf": root / "sf",
        "check": root / "check",
        "history": root / "runs" / "checks.jsonl",
        "root": root,
    }


def test_source_free_report_round_trips_typed(reports: dict[str, Path]) -> None:
    raw = json.loads((reports["sf"] / "report.json").read_text())
    report = load_report(reports["sf"])
    assert report.to_dict() == raw and list(report.to_dict()["layers"][0]["shift"]) == list(
        raw["layers"][0]["shift"]
    )
    s = report.layers[0].shift
    assert s.bn_w2 == raw["layers"][0]["shift"]["bn_w2"] and s.extra == {}
    assert t.is_source_free(report) and report.reference is None


def test_source_free_text_markdown_html(reports: dict[str, Path]) -> None:
    report = load_report(reports["sf"])
    raw = json.loads((reports["sf"] / "report.json").read_text())
    w2 = [layer["shift"]["bn_w2"] for layer in raw["layers"]]
    p_adj = [layer["shift"]["p_adjusted"] for layer in raw["layers"]]
    text = report_text(report, out=reports["sf"])
    assert text[0].startswith("source-free: pretraining statistics vs ")
    assert text[1].split() == ["layer", "dim", "W2", "null", "med", "null", "95%", "p", "p(Holm)"]
    for line, layer, v, p in zip(text[2:], raw["layers"], w2, p_adj, strict=False):
        cells = line.split()
        assert cells[0] == layer["name"] and float(cells[2]) == pytest.approx(v, abs=5e-5)
        assert float(cells[6]) == pytest.approx(p, abs=5e-5)
    md = report_markdown(report)
    assert "| layer | dim | W2 | null median | null 95% | p | p (Holm) |" in md
    assert f"| {raw['layers'][0]['name']} | {raw['layers'][0]['dim']} | {w2[0]:.4f} |" in md
    assert "BatchNorm W2" in md and "Schneider et al. 2020" in md
    html = report_html(report)
    assert f"<td>{w2[-1]:.4f}</td>" in html and "source-free: pretraining statistics" in html
    assert f"<td>{t.fmt(p_adj[0], '.3g')}" in html


def test_check_report_shows_the_reference(reports: dict[str, Path]) -> None:
    report = load_report(reports["check"])
    raw = json.loads((reports["check"] / "report.json").read_text())
    assert isinstance(report.reference, ReferenceSection) and report.to_dict() == raw
    ref = raw["reference"]
    assert t.source_text(report) == f"{ref['name']} ({ref['n']} items, {ref['reservoir']} in the reservoir)"
    assert ref["n"] == 12 and ref["reservoir"] == 8
    head, body = t.shift_table(report)
    assert head[-3:] == ["RFF-MMD²", "RFF p", "Fréchet (all)"] and len(body) == len(raw["layers"])
    first = raw["layers"][0]["name"]
    assert body[0][-3] == f"{ref['layers'][first]['rff_mmd2']:.4f}"
    text = report_text(report)
    assert "12 items, 8 in the reservoir" in text[0] and text[1].split()[-4:] == [
        "RFF-MMD²",
        "RFF",
        "p",
        "Fréchet(all)",
    ]
    assert text[2].split()[-3] == f"{ref['layers'][first]['rff_mmd2']:.4f}"
    metrics = {m.label: m.text for m in t.key_metrics(report)}
    assert metrics["Compared with"] == "reference of 12 items (8 in the reservoir)"
    md = report_markdown(report)
    assert "| RFF-MMD² | RFF p | Fréchet (all) |" in md and "against all 12 items" in md
    html = report_html(report)
    assert f"<td>{ref['layers'][first]['rff_mmd2']:.4f}</td>" in html and ref["note"][:40] in html


def test_a_plain_report_keeps_four_metrics_and_its_table(reports: dict[str, Path]) -> None:
    d = json.loads((reports["check"] / "report.json").read_text())
    d.pop("reference")
    d["source"] = {"name": "mnist"}
    plain = Report.from_dict(d)
    labels = [m.label for m in t.key_metrics(plain)]  # no "Compared with"; the graded effect beside the AUC
    assert len(labels) == 5 and labels[2].startswith("Graded effect: relative energy at ")
    assert t.shift_table(plain)[0] == list(t.LAYER_TABLE_HEAD)
    assert t.report_title(plain).startswith(f"mnist ({plain.n_source}) vs ")


def test_history_read_back(reports: dict[str, Path]) -> None:
    report = load_report(reports["check"])
    append_history(reports["history"], report, reference=str(reports["root"] / "ref"))
    records = read_history(reports["history"])
    assert len(records) == 2 and [r.report for r in records] == [str(reports["check"])] * 2
    rows = history_rows(records)
    assert rows[0]["verdict"] == ("shift" if report.shift.is_shift else "no shift") and rows[0]["n"] == 12
    series = history_series(records, "rff_mmd2")
    assert list(series) == report.layer_names
    first = report.layer_names[0]
    assert series[first][1][1] == pytest.approx(report.sections["reference"]["layers"][first]["rff_mmd2"])
    assert find_history_files(reports["root"]) == [reports["history"]]
    bad = reports["root"] / "bad.jsonl"
    bad.write_text('{"time": "x"}\nnot json\n')
    with pytest.raises(DataError, match=r"line 2: not JSON"):
        read_history(bad)

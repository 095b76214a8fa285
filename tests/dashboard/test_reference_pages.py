"""The dashboard on the reports of reference profiles: a source-free report and a check against a saved
reference open in the existing pages, and the History page plots a real check history (AppTest)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from diag.models import load
from diag.pipeline import build_reference, check, diagnose_source_free
from diag.reference import ReferenceSettings
from tests.conftest import write_digit_folder

PAGES = Path(__file__).resolve().parents[2] / "dashboard" / "views"
sys.path.insert(0, str(PAGES.parent))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reference-pages")
    digits = write_digit_folder(root / "digits")
    bb = load("timm:test_efficientnet", pretrained=False, image_size=32)
    diagnose_source_free(digits, bb, out=root / "sf", n_buckets=4, n_splits=50)
    build_reference(digits, bb, out=root / "ref", settings=ReferenceSettings(n_features=16, reservoir=8))
    history = root / "runs" / "checks.jsonl"
    for k in range(2):
        check(digits, root / "ref", out=root / f"check{k}", history=history, n_permutations=50)
    return {"sf": root / "sf", "check": root / "check1", "history": history, "runs": root / "runs"}


def run(name: str, report_dir: Path | None = None, runs: Path | None = None) -> AppTest:
    at = AppTest.from_file(str(PAGES / name), default_timeout=120)
    if report_dir is not None:
        at.session_state["report_dir"] = str(report_dir)
    if runs is not None:
        at.session_state["runs_dir"] = str(runs)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_source_free_report_opens_in_home_and_shift(made: dict[str, Path]) -> None:
    raw = json.loads((made["sf"] / "report.json").read_text())
    home = run("0_Home.py", made["sf"])
    assert any("source-free: pretraining statistics" in s.value for s in home.subheader)
    assert [m.label for m in home.metric][-1] == "Compared with"
    shift = run("2_Shift.py", made["sf"])
    table = shift.dataframe[0].value
    assert list(table.columns) == ["layer", "dim", "W2", "null median", "null 95%", "p", "p (Holm)"]
    assert table["W2"].iloc[0] == f"{raw['layers'][0]['shift']['bn_w2']:.4f}"


def test_source_free_report_embeddings_and_transfer_say_what_is_missing(made: dict[str, Path]) -> None:
    emb = run("3_Embeddings.py", made["sf"])
    assert any("no source embeddings" in i.value for i in emb.info)
    tr = run("4_Transfer.py", made["sf"])
    assert any("not computed for a source-free report" in i.value for i in tr.info)


def test_check_report_opens_in_shift_with_the_reference_columns(made: dict[str, Path]) -> None:
    raw = json.loads((made["check"] / "report.json").read_text())
    shift = run("2_Shift.py", made["check"])
    ref = shift.dataframe[1].value
    first = raw["layers"][0]["name"]
    assert ref["RFF-MMD²"].iloc[0] == pytest.approx(raw["reference"]["layers"][first]["rff_mmd2"])
    assert any("reference of" in c.value and "8 in the reservoir" in c.value for c in shift.caption)
    tr = run("4_Transfer.py", made["check"])
    assert any("check against a saved reference" in i.value for i in tr.info)


def test_history_page_plots_the_checks_found_under_the_runs_folder(made: dict[str, Path]) -> None:
    lines = [json.loads(x) for x in made["history"].read_text().splitlines()]
    at = run("6_History.py", runs=made["runs"])
    assert at.selectbox(key="history_pick").value == str(made["history"])
    assert [m.label for m in at.metric][:2] == ["Checks", "With a shift"] and at.metric[0].value == "2"
    assert at.metric[1].value == str(sum(x["is_shift"] for x in lines))
    table = at.dataframe[0].value
    assert list(table["report"]) == [x["report"] for x in lines]
    assert list(table["verdict"]) == ["shift" if x["is_shift"] else "no shift" for x in lines]
    at.radio(key="history_metric").set_value("rff_mmd2").run()
    assert not at.exception
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [tr["name"] for tr in chart["data"]] == list(lines[0]["layers"])
    first = next(iter(lines[0]["layers"]))
    assert chart["data"][0]["y"] == pytest.approx([x["layers"][first]["rff_mmd2"] for x in lines])


def test_history_page_without_a_file_says_how_to_make_one(tmp_path: Path) -> None:
    at = run("6_History.py", runs=tmp_path)
    assert any("diag check" in i.value for i in at.info)

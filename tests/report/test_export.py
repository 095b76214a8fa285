"""diag.report.tables, figures and render: the view-model, the charts, the Markdown and the HTML page."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest

from diag.engine.embeddings import Embeddings
from diag.models import ProbePoint
from diag.pipeline import diagnose
from diag.report import figures, render, tables
from diag.report.schema import Report, load_report

LAYERS = ("stem", "blocks.0", "pooled")

# The shape diag.pipeline writes (diag/report/sections.py), trimmed; "ranking" is a field no renderer knows.
TRANSFER_SECTIONS = {
    "transferability": {
        "backbone": "efficientnet_lite0",
        "layer": "pooled",
        "scores": {"logme": 0.279, "knn_accuracy": 0.827, "linear_probe_accuracy": 0.88},
        "random_init_scores": {"logme": 0.085, "knn_accuracy": 0.733, "linear_probe_accuracy": 0.847},
        "best_layer": "blocks.0",
        "ranking": [
            {"backbone": "efficientnet_lite0", "score": 0.279, "rank": 1},
            {"backbone": "efficientnet_lite1", "score": 0.21, "rank": 2},
        ],
    },
    "negative_transfer": {
        "risk": "medium",
        "probability": 0.42,
        "evidence": ["Pretrained features reach 0.95 linear-probe accuracy.", "A large shift adds risk."],
        "rule": "p = sigmoid(...)",
    },
    "freeze": {
        "depth": 2,
        "n_blocks": 3,
        "frozen": ["stem", "blocks.0"],
        "tune": ["pooled"],
        "lr_scheme": "lp-ft",
        "rationale": ["Target-useful features peak at blocks.0.", "Train the head first, then unfreeze."],
    },
}
LAYER_TRANSFER = {
    "stem": ({"linear_probe_accuracy": 0.70, "logme": -0.11}, {"linear_probe_accuracy": 0.66, "logme": -0.2}),
    "blocks.0": (
        {"linear_probe_accuracy": 0.95, "logme": 0.26},
        {"linear_probe_accuracy": 0.80, "logme": 0.1},
    ),
    "pooled": (
        {"linear_probe_accuracy": 0.88, "logme": 0.28},
        {"linear_probe_accuracy": 0.85, "logme": 0.08},
    ),
}


def synthetic_embeddings(n: int, shift: float, seed: int, name: str) -> Embeddings:
    """Three probes; the target differs from the source by ``shift`` from the second probe on."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    feats = {}
    for i, layer in enumerate(LAYERS):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        x[:, 0] += labels  # class structure
        if i >= 1:
            x[:, 1] += shift
        feats[layer] = x
    probes = tuple(
        ProbePoint(name=n_, index=i, dim=6, kind="block", pooling="avg") for i, n_ in enumerate(LAYERS)
    )
    return Embeddings(
        features=feats, logits=None, labels=labels.astype(np.int64), classes=("a", "b", "c"),
        ids=tuple(str(i) for i in range(n)), probes=probes, manifest={"data": {"name": name, "n": n}},
    )  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """A small real report (the pipeline's shift profile on synthetic features) with transfer sections."""
    out = tmp_path_factory.mktemp("export-report")
    src = synthetic_embeddings(60, 0.0, 0, "src")
    tgt = synthetic_embeddings(60, 3.0, 1, "tgt")
    rep = diagnose(src, tgt, "unused", n_permutations=200, transfer=False, out=out)
    layers = []
    for lay in rep.layers:
        pre, rnd = LAYER_TRANSFER[lay["name"]]
        layers.append({**lay, "transfer": {"pretrained": pre, "random_init": rnd}})
    from dataclasses import replace

    return replace(rep, layers=layers).with_sections(**TRANSFER_SECTIONS).save(out)


def test_the_fixture_has_a_shift_with_an_onset(report: Report) -> None:
    assert report.shift["is_shift"] is True
    assert report.shift["onset_layer"] in ("blocks.0", "pooled")


def test_markdown_has_the_verdict_key_numbers_and_the_layer_table(report: Report) -> None:
    md = render.report_markdown(report)
    assert report.shift["summary"] in md
    assert (
        "| layer | dim | MMD² | p | p (Holm) | C2ST AUC [95% CI] | Fréchet (rel.) | CORAL | OOD median |"
        in md
    )
    onset = report.shift["onset_layer"]
    for lay in report.layers:
        x = lay["shift"]
        name = lay["name"] + (" ← onset" if lay["name"] == onset else "")
        row = next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == f"{x['mmd2']:.4f}"
        assert cells[5].startswith(f"{x['c2st_auc']:.3f} [")
    assert f"| Onset layer | {onset} |" in md
    # The text chart: one bar per layer, longer for a larger AUC.
    chart = md.split("```text\n")[1].split("```")[0].splitlines()
    bars = {line.split()[0]: line.count("█") for line in chart}
    aucs = {lay["name"]: lay["shift"]["c2st_auc"] for lay in report.layers}
    hi, lo = max(aucs, key=aucs.__getitem__), min(aucs, key=aucs.__getitem__)
    assert bars[hi] >= bars[lo]


def test_markdown_renders_the_transfer_sections(report: Report) -> None:
    md = render.report_markdown(report)
    assert "## Negative transfer" in md and "Risk: MEDIUM (probability 0.42)." in md
    assert "- A large shift adds risk." in md
    assert "Freeze the first 2 of 3 blocks (stem, blocks.0); tune pooled; learning-rate scheme: lp-ft." in md
    assert "| logme | 0.279 | 0.085 | 0.194 |" in md
    assert "| blocks.0 | 0.95 (0.8) | 0.26 (0.1) |" in md
    # A field the renderer does not know (a ranking) still shows, as a table.
    assert "| efficientnet_lite1 | 0.21 | 2 |" in md


def test_html_is_self_contained_with_the_summary_and_plotly_charts(report: Report) -> None:
    page = render.report_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert html.escape(report.shift["summary"]) in page
    assert (
        page.count('class="plotly-graph-div"') >= 6
    )  # 4 profile charts, labels, class-conditional, transfer
    assert "Plotly.newPlot" in page
    # Offline: plotly.js inlined once, no script or stylesheet fetched from elsewhere.
    assert len(page) > 3_000_000
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=\"?https?:", page)
    assert page.count("/** * plotly.js v") <= 1 and page.count("plotly.js v") >= 1
    onset = report.shift["onset_layer"]
    assert f'<tr class="onset"><td>{html.escape(onset)} ← onset</td>' in page
    assert "Negative transfer" in page and "Risk: MEDIUM" in page


def test_profile_charts_plot_the_report_values(report: Report) -> None:
    figs = figures.shift_figures(report)
    mmd = figs["mmd2"].data[0]
    assert list(mmd.x) == list(LAYERS)
    np.testing.assert_allclose(mmd.y, [lay["shift"]["mmd2"] for lay in report.layers])
    auc = figs["c2st_auc"]
    hi, lo, line = auc.data
    np.testing.assert_allclose(line.y, [lay["shift"]["c2st_auc"] for lay in report.layers])
    np.testing.assert_allclose(lo.y, [lay["shift"]["c2st_auc_ci"][0] for lay in report.layers])
    np.testing.assert_allclose(hi.y, [lay["shift"]["c2st_auc_ci"][1] for lay in report.layers])
    assert lo.fill == "tonexty"
    assert any(s.y0 == 0.5 and s.y1 == 0.5 for s in auc.layout.shapes)  # the chance line
    onset_idx = LAYERS.index(report.shift["onset_layer"])
    assert any(s.x0 == onset_idx - 0.5 and s.x1 == onset_idx + 0.5 for s in auc.layout.shapes)


def test_label_and_class_conditional_charts(report: Report) -> None:
    fig = figures.label_shift_figure(report)
    assert fig is not None and [t.name for t in fig.data] == ["source", "target"]
    np.testing.assert_allclose(fig.data[0].y, report.label_shift["source_proportions"])
    heat = figures.class_conditional_figure(report)
    assert heat is not None and list(heat.data[0].y) == ["a", "b", "c"]
    assert tables.class_conditional_rows(report, "pooled")[0]["label"] == "a"


def test_transfer_chart_and_rows(report: Report) -> None:
    rows = tables.transfer_score_rows(report)
    assert rows[0] == {
        "score": "logme",
        "pretrained": 0.279,
        "random_init": 0.085,
        "difference": pytest.approx(0.194),
    }
    assert tables.layer_score_names(report) == ["linear_probe_accuracy", "logme"]
    fig = figures.transfer_layers_figure(report, "linear_probe_accuracy")
    assert fig is not None
    assert list(fig.data[0].y) == [0.70, 0.95, 0.88] and list(fig.data[1].y) == [0.66, 0.80, 0.85]
    assert any(s.x0 == -0.5 and s.x1 == 1.5 for s in fig.layout.shapes)  # the two frozen blocks
    assert figures.transfer_layers_figure(report, "no_such_score") is None


def test_a_report_without_the_optional_parts_still_exports(report: Report) -> None:
    from dataclasses import replace

    bare = replace(
        report, label_shift=None, class_conditional=None, sections={},
        layers=[{k: v for k, v in lay.items() if k != "transfer"} for lay in report.layers],
    )  # fmt: skip
    md = render.report_markdown(bare)
    assert "Negative transfer" not in md and "Label distribution" not in md
    assert figures.label_shift_figure(bare) is None and figures.class_conditional_figure(bare) is None
    assert render.report_html(bare).count('class="plotly-graph-div"') == 4
    skipped = bare.with_sections(transferability={"skipped": "the target has no labels"})
    assert tables.transfer_skipped(skipped) == "the target has no labels"
    assert "Not computed: the target has no labels" in render.report_markdown(skipped)


def test_embedding_figure_and_selection_mapping() -> None:
    coords = np.arange(20, dtype=float).reshape(10, 2)
    labels = ["x", "y"] * 5
    scores = np.linspace(1, 3, 6)
    fig, rows = figures.embedding_figure(coords, 4, colour_by="domain")
    assert [t.type for t in fig.data] == ["scattergl", "scattergl"] and rows == [
        [0, 1, 2, 3],
        [4, 5, 6, 7, 8, 9],
    ]
    fig, rows = figures.embedding_figure(coords, 4, colour_by="label", labels=labels)
    assert sorted(r for tr in rows for r in tr) == list(range(10)) and len(fig.data) == 4
    fig, rows = figures.embedding_figure(coords, 4, colour_by="ood", target_scores=scores)
    np.testing.assert_allclose(fig.data[1].marker.color, scores)
    assert fig.data[0].marker.color == "#9e9e9e"  # source grey
    # A plotly selection event maps back to rows: by customdata, or by curve and point index.
    points = [{"curve_number": 1, "point_index": 2, "customdata": 6}, {"curve_number": 1, "point_index": 0}]
    assert figures.selection_rows(points, rows) == [4, 6]


def test_saved_report_round_trips_with_sections(report: Report) -> None:
    assert report.folder is not None
    again = load_report(report.folder)
    assert again.sections["freeze"]["depth"] == 2
    assert json.loads((report.folder / "report.json").read_text())["negative_transfer"]["risk"] == "medium"


def test_fmt() -> None:
    assert tables.fmt(None) == "n/a" and tables.fmt(float("nan")) == "n/a"
    assert (
        tables.fmt(1280) == "1280" and tables.fmt(0.00123, ".2e") == "1.23e-03" and tables.fmt(True) == "yes"
    )

"""The Embeddings explorer: its view state (session and URL), selections mapped back to every point they
cover (thinned maps included), exports, and the page under Streamlit's AppTest on a small real report
(MNIST digits against inverted ones, a tiny random-init backbone)."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from PIL import Image, ImageOps
from streamlit.testing.v1 import AppTest

from diag.report.schema import Report
from tests.conftest import write_digit_folder

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
PAGE = str(DASHBOARD / "views" / "3_Embeddings.py")
sys.path.insert(0, str(DASHBOARD))

import _explorer as ex  # noqa: E402

TIMEOUT = 120


@pytest.fixture(scope="module")
def small_report(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Report:
    """12 MNIST digits (3 classes) against the same classes' next 12 digits, inverted: a real shift."""
    from diag.models import load
    from diag.pipeline import diagnose

    root = tmp_path_factory.mktemp("emb-report")
    src = write_digit_folder(root / "source", per_class=4)
    tgt = write_digit_folder(root / "target", per_class=4)
    for path in tgt.rglob("*.png"):
        ImageOps.invert(Image.open(path).convert("L")).save(path)
    bb = load("timm:test_efficientnet", pretrained=False, image_size=32)
    return diagnose(src, tgt, bb, out=root / "report", n_permutations=200, transfer=False, rgn=False)


def page(report: Report, query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.session_state["report_dir"] = str(report.folder)
    for k, v in (query or {"map": "PCA"}).items():  # PCA: no UMAP fit (numba) in the fast tests
        at.query_params[k] = v
    return at


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart_spec(at: AppTest) -> dict:
    (chart,) = at.get("plotly_chart")
    return dict(json.loads(chart.proto.spec))


def values(v: object) -> np.ndarray:
    """A plotly array from a figure's JSON: a list, or a typed array ``{"dtype", "bdata"}``."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v)


def select(at: AppTest, selection: dict) -> AppTest:
    """Send a chart selection as the browser does (the chart's widget state), then rerun."""
    (chart,) = at.get("plotly_chart")
    full = {"points": [], "point_indices": [], "box": [], "lasso": [], **selection}
    try:
        states = at._tree.get_widget_states()
        w = states.widgets.add()
        w.id = chart.proto.id
        w.string_value = json.dumps({"selection": full})
        at._run(states)
    except AttributeError as exc:  # pragma: no cover - AppTest internals moved
        pytest.skip(f"cannot send a chart selection through this streamlit's AppTest: {exc}")
    return ok(at)


def gallery(at: AppTest) -> list[tuple[bool, str]]:
    """The gallery's cells in order, each (has an inline image, caption), from the page's HTML blocks."""
    cells = []
    for block in at.get("html"):
        for fig in re.findall(r"<figure[^>]*>(.*?)</figure>", block.proto.body, flags=re.S):
            cap = re.search(r"<figcaption[^>]*>(.*?)</figcaption>", fig, flags=re.S)
            cells.append(
                ('<img src="data:image/png;base64,' in fig, html.unescape(cap.group(1) if cap else ""))
            )
    return cells


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: str(m.value) for m in at.metric}


# ------------------------------------------------------------------------------------------------------
# Pure helpers


def test_view_round_trips_through_the_url() -> None:
    keys = [f"t:item-{i:05d}" for i in range(500)] + ["s:a/b c.png"]
    v = ex.View(layer="blocks.3", method="PCA", colour="OOD score", domains=["target"], labels=["1", "7"],
                clusters=["C2"], ood=(1.25, 3.5), selection=keys)  # fmt: skip
    q = v.to_query()
    assert len(q["sel"]) < 2000  # 501 ids packed
    back = ex.View.from_query(q)
    assert (back.layer, back.method, back.colour, back.domains) == (
        "blocks.3",
        "PCA",
        "OOD score",
        ["target"],
    )
    assert back.labels == ["1", "7"] and back.clusters == ["C2"] and back.ood == (1.25, 3.5)
    assert back.selection == keys
    assert ex.View.from_query({"colour": "nonsense", "sel": "%%%", "ood": "x"}) == ex.View()
    # A selection too large for a URL is left out of it (and not compressed on every rerun).
    big = ex.View(selection=[f"t:{i:06d}" for i in range(ex.URL_SELECTION_KEYS + 1)])
    assert "sel" not in big.to_query()


def test_thinning_keeps_sparse_points_and_both_domains_and_fits_the_budget() -> None:
    rng = np.random.default_rng(0)
    dense = rng.normal(0, 0.05, size=(100_000, 2))
    outliers = rng.uniform(3, 5, size=(50, 2))
    coords = np.r_[dense, outliers, rng.normal(0, 0.05, size=(100_000, 2))].astype(np.float32)
    groups = np.r_[np.zeros(100_050, bool), np.ones(100_000, bool)]
    mask = np.ones(len(coords), bool)
    shown = ex.thin(coords, mask, groups, 5_000)
    assert 4_000 <= len(shown) <= 5_000 and np.all(np.diff(shown) > 0)
    assert set(range(100_000, 100_050)) <= set(shown.tolist())  # every outlier is drawn
    frac_target = groups[shown].mean()
    assert 0.4 < frac_target < 0.6
    assert np.array_equal(ex.thin(coords, mask, groups, 5_000), shown)  # the same every run
    small = np.zeros(len(coords), bool)
    small[:10] = True
    assert ex.thin(coords, small, groups, 5_000).tolist() == list(range(10))


def test_a_box_or_lasso_on_the_thinned_map_reaches_every_point_it_covers() -> None:
    rng = np.random.default_rng(1)
    coords = rng.uniform(-1, 1, size=(200_000, 2)).astype(np.float32)
    shown = ex.thin(coords, np.ones(len(coords), bool), np.zeros(len(coords), bool), 2_000)
    box = {"box": [{"x": [0.5, -0.25], "y": [-0.5, 0.0]}]}
    got = ex.covered(coords, box)
    expected = np.flatnonzero(
        (coords[:, 0] >= -0.25) & (coords[:, 0] <= 0.5) & (coords[:, 1] >= -0.5) & (coords[:, 1] <= 0.0)
    )
    assert got is not None and np.array_equal(got, expected)
    assert len(expected) > 5 * len(np.intersect1d(expected, shown))  # far more than the drawn ones
    # A lasso: the triangle (0,0), (1,0), (0,1) holds the points with x, y > 0 and x + y < 1.
    tri = {"lasso": [{"x": [0, 1, 0], "y": [0, 0, 1]}]}
    inside = ex.covered(coords, tri)
    x, y = coords[:, 0].astype(float), coords[:, 1].astype(float)
    truth = np.flatnonzero((x > 0) & (y > 0) & (x + y < 1))
    assert inside is not None and abs(len(inside) - len(truth)) <= 2  # boundary ties only
    assert len(np.setdiff1d(truth, inside)) <= 2
    assert ex.covered(coords, {"points": [{"customdata": 3}]}) is None


# ------------------------------------------------------------------------------------------------------
# The page


def test_view_survives_a_colour_change_and_a_page_switch(small_report: Report) -> None:
    at = ok(page(small_report).run())
    assert at.radio(key="emb_method").value == "PCA"  # from the URL
    # The layers whose map diag diagnose precomputed are marked (they open at once).
    maps = small_report.sections["maps"]["layers"]
    assert {
        o.removesuffix(" (map ready)") for o in at.selectbox(key="emb_layer").options if "ready" in o
    } == set(maps)
    spec = chart_spec(at)
    assert sorted(i for t in spec["data"] for i in t["customdata"]) == list(range(24))
    at.radio(key="emb_colour").set_value("OOD score").run()
    ok(at)
    at.selectbox(key="emb_layer").set_value(small_report.layer_names[0]).run()
    ok(at)
    assert at.query_params["colour"] == "OOD score" and at.query_params["map"] == "PCA"
    # A page switch (through the app's router): the widgets' keys are dropped, the view is not.
    app = AppTest.from_file(str(DASHBOARD / "app.py"), default_timeout=TIMEOUT)
    app.session_state["report_dir"] = str(small_report.folder)
    app.session_state[ex.VIEW_KEY] = at.session_state[ex.VIEW_KEY]
    app.run()  # Home, then Embeddings
    app.switch_page("views/3_Embeddings.py").run()
    ok(app)
    app.radio(key="emb_colour").set_value("label").run()
    app.switch_page("views/2_Shift.py").run()
    ok(app)
    assert not app.get("plotly_chart") or "emb_colour" not in app.session_state
    app.switch_page("views/3_Embeddings.py").run()
    ok(app)
    assert app.radio(key="emb_colour").value == "label"
    at.radio(key="emb_colour").set_value("OOD score").run()
    assert at.radio(key="emb_colour").value == "OOD score"
    assert at.selectbox(key="emb_layer").value == small_report.layer_names[0]
    assert at.radio(key="emb_method").value == "PCA"
    spec = chart_spec(at)
    assert spec["data"][0]["marker"]["color"] == "#9e9e9e"  # source grey under the OOD colouring
    # The OOD colour bar sits right of the plot; the legend is a row above it (no overlap).
    bar = next(t["marker"]["colorbar"] for t in spec["data"] if "colorbar" in t.get("marker", {}))
    assert bar["x"] >= 1.0 and spec["layout"]["legend"]["orientation"] == "h"
    assert spec["layout"]["legend"]["y"] >= 1.0


def test_a_selection_survives_colour_and_layer_changes_and_exports_its_ids(small_report: Report) -> None:
    at = ok(page(small_report).run())
    spec = chart_spec(at)
    xs = np.concatenate([values(t["x"]) for t in spec["data"]])
    ys = np.concatenate([values(t["y"]) for t in spec["data"]])
    rows = np.array([i for t in spec["data"] for i in t["customdata"]])
    # A box around the points right of the median x.
    x0 = float(np.median(xs))
    select(at, {"box": [{"x": [x0, float(xs.max()) + 1], "y": [float(ys.min()) - 1, float(ys.max()) + 1]}]})
    want_rows = sorted(rows[xs >= x0].tolist())
    m = metrics(at)
    assert m["Selected points"] == str(len(want_rows))
    source = small_report.embeddings("source")
    target = small_report.embeddings("target")
    keys = [f"s:{i}" for i in source.ids] + [f"t:{i}" for i in target.ids]
    want_keys = sorted(keys[r] for r in want_rows)
    assert sorted(at.session_state[ex.VIEW_KEY]["selection"]) == want_keys
    # The selection stays through a colour change and a layer change (it is kept by item id).
    at.radio(key="emb_colour").set_value("label").run()
    ok(at)
    at.selectbox(key="emb_layer").set_value(small_report.layer_names[-1]).run()
    ok(at)
    assert metrics(at)["Selected points"] == str(len(want_rows))
    assert sorted(at.session_state[ex.VIEW_KEY]["selection"]) == want_keys
    assert ex.unpack_keys(at.query_params["sel"]) == at.session_state[ex.VIEW_KEY]["selection"]
    # The exports hold exactly the selected items, with their paths and scores.
    buttons = {b.proto.label: b for b in at.get("download_button")}
    csv = buttons["Export CSV"].proto
    assert csv is not None
    table = ex.selection_table(*_selection_args(at, small_report))
    got = sorted(f"{s[0]}:{i}" for s, i in zip(table["side"], table["id"], strict=True))
    assert got == want_keys
    for s, p in zip(table["side"], table["path"], strict=True):
        assert p.endswith(".png") and Path(p).is_file() and f"/{s}/" in p
    blob = ex.export_bytes(table, "csv", {})
    import pandas as pd

    back = pd.read_csv(io.BytesIO(blob), dtype={"id": str, "label": str})
    assert sorted(f"{s[0]}:{i}" for s, i in zip(back["side"], back["id"], strict=True)) == want_keys
    ood = small_report.ood_scores()[small_report.layer_names[-1]]
    tgt_rows = [target.ids.index(i) for s, i in zip(back["side"], back["id"], strict=True) if s == "target"]
    np.testing.assert_allclose(back.loc[back["side"] == "target", "ood_score"], ood[tgt_rows], rtol=1e-5)
    doc = json.loads(ex.export_bytes(table, "json", {"layer": "x"}))
    assert doc["meta"] == {"layer": "x"} and len(doc["items"]) == len(want_keys)


def _selection_args(at: AppTest, report: Report) -> tuple:
    """The page's map for its current view, and the item paths, to rebuild the export it offers."""
    view = ex.View(**at.session_state[ex.VIEW_KEY])
    src, tgt = report.embeddings("source"), report.embeddings("target")
    from diag.stats import projection

    proj = projection.joint_projection(src, tgt, view.layer, method="pca", max_per_side=None)
    data = ex.build_map(
        view.layer, "pca", proj.coords, proj.source_rows, proj.target_rows, src, tgt,
        report.ood_scores()[view.layer],
    )  # fmt: skip
    from diag.data import open_data

    paths = {side: open_data(report.source["spec"] if side == "source" else report.target["spec"]).paths
             for side in ("source", "target")}  # fmt: skip
    return data, data.positions(view.selection), paths


def test_thinned_page_still_selects_every_covered_point(
    small_report: Report, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ex, "DISPLAY_BUDGET", 8)
    at = ok(page(small_report).run())
    drawn = [i for t in chart_spec(at)["data"] for i in t["customdata"]]
    assert len(drawn) < 24
    assert any("Drawing" in c.value and "of 24 points" in c.value for c in at.caption)
    select(at, {"box": [{"x": [-1e9, 1e9], "y": [-1e9, 1e9]}]})
    assert metrics(at)["Selected points"] == "24"


def test_one_click_shows_the_drivers_and_the_gallery_flags_other_classes(small_report: Report) -> None:
    at = ok(page(small_report).run())
    layer = at.selectbox(key="emb_layer").value
    # No selection: the most out-of-distribution targets, 12 a page, each with 3 source neighbours.
    assert [has_image for has_image, _ in gallery(at)] == [True] * (12 * 4)
    button = next(b for b in at.button if b.label.startswith("Show the samples that drive the shift"))
    button.click().run()
    ok(at)
    ood = small_report.ood_scores()[layer]
    assert metrics(at)["Target samples"] == str(len(ood))  # 12 targets < the top 50
    # Each neighbour of another class than its target sample is flagged, and only those: checked
    # against an independent exact nearest-neighbour search in the layer's features.
    src, tgt = small_report.embeddings("source"), small_report.embeddings("target")
    captions = [c for _, c in gallery(at)]
    assert len(captions) == 12 * 4
    xs, xt = src[layer].astype(np.float64), tgt[layer].astype(np.float64)
    n_flags = 0
    for k in range(12):
        tid = captions[4 * k].split(" · ")[0]
        t = tgt.ids.index(tid)
        d = ((xs - xt[t]) ** 2).sum(axis=1)
        nn = np.argsort(d, kind="stable")[:3]
        for j, s_row in enumerate(nn):
            cap = captions[4 * k + 1 + j]
            other = src.classes[src.labels[s_row]] != tgt.classes[tgt.labels[t]]
            assert cap.startswith("⚠ other class") == other, cap
            n_flags += other
    assert n_flags > 0  # inverted digits sit near other classes under a random-init backbone
    at.button(key="emb_clear").click().run()
    ok(at)
    assert "Selected points" not in metrics(at)


def test_attribution_colours_clusters_and_the_selections_share_of_the_drift(small_report: Report) -> None:
    from diag.predict.attribution import load_attribution

    attr = load_attribution(small_report.folder)
    layer = attr.layer
    at = ok(page(small_report, {"map": "PCA", "layer": layer}).run())
    assert {"attribution", "cluster"} <= set(at.radio(key="emb_colour").options)
    at.radio(key="emb_colour").set_value("cluster").run()
    ok(at)
    names = {t["name"] for t in chart_spec(at)["data"]}
    assert {f"C{c}" for c in set(attr[layer].cluster.tolist())} <= names
    top = attr[layer].clusters()[0]
    at.button(key="emb_top_cluster").click().run()
    ok(at)
    m = metrics(at)
    assert m["Target samples"] == str(top["size"]) and m["Selected points"] == str(top["size"])
    assert m["Share of the drift"] == f"{top['share']:.1%}"
    # The ids of the selection are the cluster's members.
    sel = at.session_state[ex.VIEW_KEY]["selection"]
    assert sorted(sel) == sorted(f"t:{i}" for i in top["ids"])
    # Any selection's share: the sum of its members' MMD² contributions (library: LayerAttribution).
    at.radio(key="emb_colour").set_value("attribution").run()
    ok(at)
    spec = chart_spec(at)
    assert any(t["name"] == "domain probability" for t in spec["data"])


def test_a_selection_made_on_the_chart_leaves_the_figure_unchanged(small_report: Report) -> None:
    """A lasso/box on the chart: the chart shows the selection itself, so the page sends the very same
    figure (the browser keeps its plot instead of drawing every point again); a selection the chart does
    not show (kept through a colour change, cleared, or set by a button) is drawn as rings."""
    at = ok(page(small_report).run())
    before = at.get("plotly_chart")[0].proto
    spec = chart_spec(at)
    xs = np.concatenate([values(t["x"]) for t in spec["data"]])
    ys = np.concatenate([values(t["y"]) for t in spec["data"]])
    x0 = float(np.median(xs))
    select(at, {"box": [{"x": [x0, float(xs.max()) + 1], "y": [float(ys.min()) - 1, float(ys.max()) + 1]}]})
    n_sel = int((xs >= x0).sum())
    assert metrics(at)["Selected points"] == str(n_sel)
    after = at.get("plotly_chart")[0].proto
    assert after.spec == before.spec and after.id == before.id
    at.run()  # another rerun (as a gallery page change makes): still the same figure
    assert at.get("plotly_chart")[0].proto.spec == before.spec
    # Cleared: no rings, and a fresh chart (Plotly's own selection on the old one must go).
    at.button(key="emb_clear").click().run()
    ok(at)
    cleared = at.get("plotly_chart")[0].proto
    assert not [t for t in chart_spec(at)["data"] if t["name"] == "selected"]
    assert cleared.id != before.id and "Selected points" not in metrics(at)
    # Selected again, then a colour change: a new figure, with the kept selection drawn as rings.
    select(at, {"box": [{"x": [x0, float(xs.max()) + 1], "y": [float(ys.min()) - 1, float(ys.max()) + 1]}]})
    assert at.get("plotly_chart")[0].proto.spec == cleared.spec
    at.radio(key="emb_colour").set_value("label").run()
    ok(at)
    rings = [t for t in chart_spec(at)["data"] if t["name"] == "selected"]
    assert len(rings) == 1 and len(rings[0]["customdata"]) == n_sel
    assert metrics(at)["Selected points"] == str(n_sel)

"""The Embeddings explorer in headless Chromium: a lasso drawn with real mouse events selects samples, the
view (with its selection) is in the URL and a fresh session opened at that URL shows it again, no
resource comes from off this machine, and a screenshot is saved.

Skipped without Debian's ``chromium``. Screenshots go to ``$DIAG_TEST_ARTIFACTS`` (or
``$DIAG_ARTIFACTS``) when set, else to ``tests/artifacts/dashboard`` (git-ignored).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dashboard.test_browser import (
    CHROMIUM,
    DevTools,
    open_chromium,
    serve_dashboard,
)
from tests.dashboard.test_embeddings import small_report  # noqa: F401 - the fixture

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary on PATH"),
    pytest.mark.slow,
]
ws_client = pytest.importorskip("websockets.sync.client")

TEXT = "document.body ? document.body.innerText : ''"
RUNNING = '!!document.querySelector(\'[data-testid="stStatusWidget"] button, [data-testid="stSpinner"]\')'
N_POINTS = (
    "(() => { const p = document.querySelector('.js-plotly-plot');"
    " return p && p.data ? p.data.reduce((n, t) => n + (t.customdata ? t.customdata.length : 0), 0) : 0; })()"
)


@pytest.fixture(scope="module")
def served(small_report, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    with serve_dashboard(small_report.folder, tmp_path_factory.mktemp("emb-server")) as base:
        yield base


@pytest.fixture(scope="module")
def cdp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    with open_chromium(tmp_path_factory.mktemp("emb-chromium"), network=False) as tools:
        yield tools


def settle(cdp: DevTools, done: str, timeout: float = 180) -> None:
    cdp.wait_until(f"({done}) && !({RUNNING})", timeout=timeout)
    time.sleep(1.0)
    cdp.wait_until(f"({done}) && !({RUNNING})", timeout=timeout)


def draw_lasso(cdp: DevTools) -> None:
    """Trace a rectangle over the whole plot area with the left button down (the map's lasso mode)."""
    cdp.evaluate("window.scrollTo(0, 0)")
    time.sleep(0.3)
    left, top, w, h = cdp.evaluate(
        "(() => { const r = document.querySelector('.js-plotly-plot .nsewdrag').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()"
    )
    x0, y0, x1, y1 = left + 2, top + 2, left + w - 2, top + h - 2
    path = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0 + 3)]
    ev = "Input.dispatchMouseEvent"
    cdp.send(ev, {"type": "mouseMoved", "x": x0, "y": y0})
    cdp.send(ev, {"type": "mousePressed", "x": x0, "y": y0, "button": "left", "clickCount": 1})
    for (ax, ay), (bx, by) in itertools.pairwise(path):
        for k in range(1, 8):
            t = k / 7
            cdp.send(ev, {"type": "mouseMoved", "x": ax + t * (bx - ax), "y": ay + t * (by - ay),
                          "button": "left", "buttons": 1})  # fmt: skip
    cdp.send(ev, {"type": "mouseReleased", "x": x0, "y": y0 + 3, "button": "left", "clickCount": 1})


def test_lasso_selection_is_in_the_url_and_reopens_with_no_external_request(
    served: str,
    cdp: DevTools,
    small_report,  # noqa: F811 - the fixture
    record_property,
) -> None:
    cdp.send("Page.navigate", {"url": f"{served}/embeddings?map=PCA"})
    n = small_report.n_source + small_report.n_target
    settle(cdp, f"({N_POINTS}) === {n} && ({TEXT}).includes('Selection')")
    # Hovering a point shows its thumbnail (the hover overlay, a data: URI made on the server).
    x, y = cdp.evaluate(
        "(() => { const gd = document.querySelector('.js-plotly-plot'), fl = gd._fullLayout;"
        " const t = gd._fullData[gd._fullData.length - 1];"
        " const r = gd.querySelector('.nsewdrag').getBoundingClientRect();"
        " return [r.left + fl.xaxis.d2p(t.x[0]), r.top + fl.yaxis.d2p(t.y[0])]; })()"
    )
    cdp.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x - 4, "y": y - 4})
    cdp.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
    tip = cdp.wait_until(
        "(() => { const t = document.getElementById('diag-hover-thumb');"
        " return t && t.style.display === 'block' ? t.src : ''; })()",
        timeout=30,
    )
    assert tip.startswith("data:image/png;base64,")
    cdp.evaluate("document.querySelector('.js-plotly-plot').__tagged = true")
    draw_lasso(cdp)
    settle(cdp, f"({TEXT}).includes('Selected points')")
    text = cdp.evaluate(TEXT)
    assert f"Selected points\n\n{n}\n" in text  # the lasso went round every point
    # The chart shows the selection itself (Plotly's selected points) and was not drawn again: the page
    # sent the same figure, so the plot element is the one the lasso was drawn on.
    kept = cdp.evaluate(
        "(() => { const gd = document.querySelector('.js-plotly-plot');"
        " return [!!gd.__tagged, gd.data.reduce((k, t) => k + (t.selectedpoints || []).length, 0),"
        " gd.data.some(t => t.name === 'selected')]; })()"
    )
    assert kept == [True, n, False], kept
    url = cdp.evaluate("location.href")
    assert "map=PCA" in url and "sel=" in url
    # A fresh session at that URL (as a shared link) shows the same view and selection.
    cdp.send("Page.navigate", {"url": "about:blank"})
    time.sleep(0.5)
    cdp.send("Page.navigate", {"url": url})
    settle(cdp, f"({N_POINTS}) > 0 && ({TEXT}).includes('Selected points')")
    assert f"Selected points\n\n{n}\n" in cdp.evaluate(TEXT)
    # Nothing the page loaded came from off this machine.
    urls = cdp.evaluate("[location.href, ...performance.getEntriesByType('resource').map(e => e.name)]")
    external = sorted({u for u in urls if not u.startswith((served, "data:", "blob:", "about:"))})
    assert urls and external == [], external
    default = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"
    folder = Path(os.environ.get("DIAG_TEST_ARTIFACTS") or os.environ.get("DIAG_ARTIFACTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    shot = cdp.screenshot(folder / "embeddings-selection.png")
    record_property("screenshot", str(shot))
    print(f"\nscreenshot of the Embeddings page with a selection: {shot}")
    assert shot.stat().st_size > 20_000

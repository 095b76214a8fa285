"""The dashboard in a real browser: ``diag dashboard DIR`` served on 127.0.0.1, driven by headless Chromium
over the Chrome DevTools protocol. Checks that every page renders (at 1400 and 800 px wide) with no
request leaving the machine (the browser's network log), that the Shift and Embeddings pages show the
verdict, the charts and the thumbnails, and that a diagnosis started on the Run page survives a page
change and a new browser session and ends with its report; saves screenshots of every page.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped without it. Screenshots go to
``$DIAG_TEST_ARTIFACTS`` (or ``$DIAG_ARTIFACTS``) when set, else to ``tests/artifacts/dashboard``
(git-ignored); their paths are printed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary on PATH (install it with `apt-get install -y chromium`)"
)
pytest.importorskip("streamlit")
ws_client = pytest.importorskip(
    "websockets.sync.client", reason="websockets (a streamlit dependency) is needed"
)

from diag.report.schema import Report  # noqa: E402

CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-unsafe-swiftshader",  # software WebGL, for the Scattergl map
    "--window-size=1400,1600",
)


@pytest.fixture(scope="session")
def report(dashboard_report: Report) -> Report:
    return dashboard_report


@pytest.fixture(scope="module")
def artifacts() -> Path:
    default = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"
    folder = Path(os.environ.get("DIAG_TEST_ARTIFACTS") or os.environ.get("DIAG_ARTIFACTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()
        time.sleep(0.25)
    pytest.fail(f"{url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def serve_dashboard(folder: Path, workdir: Path) -> Iterator[str]:
    """``diag dashboard FOLDER --port P`` on 127.0.0.1 (log and runs under ``workdir``); yields its URL."""
    port = free_port()
    log = workdir / "server.log"
    env = {**os.environ, "DIAG_RUNS_DIR": str(workdir / "runs")}
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "diag.cli", "dashboard", str(folder), "--port", str(port)],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_http(f"{base}/_stcore/health", 120, proc, log).strip() == "ok"
        yield base
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def server(report: Report, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard on the module's report, until the module's tests are done."""
    with serve_dashboard(report.folder, tmp_path_factory.mktemp("server")) as base:
        yield base


class DevTools:
    """A minimal Chrome DevTools protocol client over one page's websocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.requests: list[str] = []  # every URL the page asked for (Network.requestWillBeSent)

    def _event(self, msg: dict[str, Any]) -> None:
        if msg.get("method") == "Network.requestWillBeSent":
            self.requests.append(str(msg["params"]["request"]["url"]))

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        self.next_id += 1
        msg_id = self.next_id
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if "method" in reply:
                self._event(reply)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return res.get("result", {}).get("value")

    def wait_until(self, expression: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for: {expression}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@contextlib.contextmanager
def open_chromium(profile: Path, *, network: bool) -> Iterator[DevTools]:
    """Headless Chromium with its profile in ``profile`` (log beside it), driven over DevTools; the
    ``Network`` domain on when ``network``."""
    assert CHROMIUM is not None
    log = profile.parent / f"{profile.name}.log"
    port = free_port()
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
             "about:blank"],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/json/version", 60, proc, log)
        pages = json.loads(wait_http(f"http://127.0.0.1:{port}/json/list", 10, proc, log))
        target = next(p for p in pages if p.get("type") == "page")
        with ws_client.connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            cdp = DevTools(ws)
            cdp.send("Page.enable")
            cdp.send("Runtime.enable")
            if network:
                cdp.send("Network.enable")
            yield cdp
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    with open_chromium(tmp_path_factory.mktemp("chromium-profile"), network=True) as cdp:
        yield cdp


def open_page(cdp: DevTools, url: str) -> None:
    cdp.send("Page.navigate", {"url": url})


TEXT = "document.body ? document.body.innerText : ''"
PLOTS = "document.querySelectorAll('.js-plotly-plot').length"


def test_shift_page_in_a_browser(
    server: str, browser: DevTools, report: Report, artifacts: Path, record_property
) -> None:
    open_page(browser, f"{server}/shift")
    summary = report.shift["summary"]
    browser.wait_until(f"({TEXT}).includes({json.dumps(summary)}) && {PLOTS} >= 4", timeout=120)
    text = browser.evaluate(TEXT)
    assert "Onset layer" in text and report.shift["onset_layer"] in text
    assert "Per-layer statistics" in text
    # The profile charts are drawn (an SVG plot with the layer names on its x axis).
    ticks = browser.evaluate(
        "Array.from(document.querySelectorAll('.js-plotly-plot .xtick text')).map(t => t.textContent)"
    )
    assert set(report.layer_names) <= set(ticks)
    path = browser.screenshot(artifacts / "dashboard-shift.png")
    record_property("screenshot", str(path))
    print(f"\nscreenshot of the Shift page: {path}")
    assert path.stat().st_size > 20_000


def test_embeddings_page_in_a_browser(
    server: str, browser: DevTools, report: Report, artifacts: Path, record_property
) -> None:
    open_page(browser, f"{server}/embeddings")
    browser.wait_until(
        f"({TEXT}).includes('most out-of-distribution target samples') && {PLOTS} >= 1", timeout=180
    )
    # The map is a WebGL scatter with a point per sample; the gallery shows image thumbnails.
    n_points = browser.wait_until(
        "(() => { const p = document.querySelector('.js-plotly-plot');"
        " return p && p.data ? p.data.reduce((n, t) => n + t.customdata.length, 0) : 0; })()",
        timeout=60,
    )
    assert n_points == report.n_source + report.n_target
    assert browser.evaluate("document.querySelector('.js-plotly-plot').data[0].type") == "scattergl"
    n_images = browser.wait_until(
        "(() => { const n = Array.from(document.querySelectorAll('.diag-gallery img'))"
        ".filter(i => i.complete && i.naturalWidth > 0).length; return n >= 48 ? n : 0; })()",
        timeout=60,
    )
    assert n_images >= 48
    path = browser.screenshot(artifacts / "dashboard-embeddings.png")
    record_property("screenshot", str(path))
    print(f"\nscreenshot of the Embeddings page: {path}")
    assert path.stat().st_size > 20_000


# ------------------------------------------------------------------------------------------------------
# Every page, two widths, no external request; a diagnosis that survives page changes

#: Each page's path and a text it shows once drawn.
PAGES = {
    "": "domain-adaptation diagnostics",
    "home": "domain-adaptation diagnostics",
    "run": "Run a diagnosis",
    "shift": "Shift, layer by layer",
    "embeddings": "Embeddings",
    "transfer": "Negative-transfer risk",
    "fine-tune": "Start fine-tuning",
    "after": "After fine-tuning",
    "history": "Check history",
}
RUNNING = '!!document.querySelector(\'[data-testid="stStatusWidget"] button, [data-testid="stSpinner"]\')'


def local(url: str, server: str) -> bool:
    """Whether the browser's request stays on this machine: the dashboard itself or an inline resource."""
    ws = server.replace("http://", "ws://")
    return url.startswith(
        (server, ws, "data:", "blob:", "about:", "chrome:", "chrome-extension:", "devtools:")
    )


def settle(cdp: DevTools, text: str, timeout: float = 180) -> None:
    cdp.wait_until(f"({TEXT}).includes({json.dumps(text)})", timeout=timeout)
    cdp.wait_until(f"!({RUNNING})", timeout=timeout)
    time.sleep(1.0)  # charts draw after the script ends


def set_width(cdp: DevTools, width: int) -> None:
    cdp.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 1600, "deviceScaleFactor": 1, "mobile": False},
    )


def test_every_page_in_two_widths_with_no_external_request(
    server: str, browser: DevTools, report: Report, artifacts: Path
) -> None:
    """Screenshots of every page at 1400 and 800 px; the network log holds no URL off this machine; the
    page does not overflow sideways at 800 px; ``/home`` is the Home page."""
    browser.requests.clear()
    shots = []
    try:
        for width in (1400, 800):
            set_width(browser, width)
            for path, text in PAGES.items():
                open_page(browser, f"{server}/{path}")
                settle(browser, text)
                body = browser.evaluate(TEXT)
                assert "Page not found" not in body and "Traceback" not in body, path
                if path in ("", "home"):
                    assert "Negative-transfer risk" in body and "Freeze depth" in body
                overflow = browser.evaluate(
                    "(() => { const m = document.querySelector('[data-testid=\"stMain\"]') || document.body;"
                    " return m.scrollWidth - m.clientWidth; })()"
                )
                assert overflow <= 4, f"/{path} overflows by {overflow} px at {width} px"
                name = path or "root"
                shots.append(browser.screenshot(artifacts / f"page-{name}-{width}px.png"))
    finally:
        set_width(browser, 1400)
    print("\nscreenshots:\n" + "\n".join(str(p) for p in shots))
    assert all(p.stat().st_size > 10_000 for p in shots)
    external = sorted({u for u in browser.requests if not local(u, server)})
    assert browser.requests and external == [], external


def _diagnose_has_progress_log() -> bool:
    from diag.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return any("--progress-log" in a.option_strings for a in sub.choices["diagnose"]._actions)


def click_button(cdp: DevTools, label: str, timeout: float = 120) -> None:
    """Click the enabled button labelled ``label`` once it is on the page."""
    cdp.wait_until(
        "(() => { const b = Array.from(document.querySelectorAll('button'))"
        f".find(b => b.innerText.trim() === {json.dumps(label)} && !b.disabled);"
        " if (b) { b.click(); return true; } return false; })()",
        timeout=timeout,
    )


@pytest.mark.slow
def test_a_diagnosis_started_on_run_survives_page_changes_and_ends_with_its_report(
    server: str, browser: DevTools, artifacts: Path
) -> None:
    """Run page defaults (MNIST vs UCI digits, EfficientNet-Lite0, 112 px: embeddings cached by the session's
    report) started in the background; the user goes to Shift in the same tab, then opens Run in a fresh
    session (as after closing the browser); the stages show in pipeline order and the report opens."""
    if not _diagnose_has_progress_log():
        pytest.skip("this build's diag diagnose has no --progress-log yet")
    from diag.progress import read_stage_log

    open_page(browser, f"{server}/run")
    settle(browser, "Background jobs")
    click_button(browser, "Run diagnosis")
    browser.wait_until(f"({TEXT}).includes('Started the diagnosis in the background')", timeout=60)
    folder = browser.evaluate(
        "(() => { const m = document.body.innerText.match(/Started the diagnosis in the background"
        " \\(pid \\d+\\): (\\S+)\\./); return m ? m[1] : null; })()"
    )
    assert folder
    # Leave the page within the session (the sidebar link), then come back in a new session.
    assert browser.evaluate("(() => { const a = document.querySelector('a[href$=\"/shift\"]');"
                            " if (a) { a.click(); return true; } return false; })()")  # fmt: skip
    settle(browser, "Shift, layer by layer")
    open_page(browser, f"{server}/run")
    browser.wait_until(f"({TEXT}).includes('Diagnosis in the background')", timeout=60)
    browser.screenshot(artifacts / "run-progress.png")
    log_path = Path(folder) / "progress.jsonl"
    seen: list[str] = []  # stages in the order the page first showed them running or done
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        body = browser.evaluate(TEXT)
        if "The diagnosis finished" in body:
            break
        assert "The diagnosis failed" not in body, body[-2000:]
        lines = body.splitlines()
        for rec in read_stage_log(log_path):
            shown = any(rec["label"] in ln and ("elapsed" in ln or " / " in ln) for ln in lines)
            if shown and rec["stage"] not in seen:
                seen.append(rec["stage"])
        time.sleep(1.0)
    else:
        raise AssertionError("the diagnosis did not finish within 15 minutes")
    browser.wait_until(f"!({RUNNING})", timeout=60)  # the rerun that opens the report has drawn
    time.sleep(1.0)
    browser.screenshot(artifacts / "run-finished.png")
    assert (Path(folder) / "report.json").is_file()
    ran = read_stage_log(log_path)
    assert [r["status"] for r in ran] == ["done"] * len(ran)
    order = [r["stage"] for r in ran]
    assert {"embed-source", "embed-target", "shift", "write"} <= set(order)
    assert len(seen) >= 3 and seen == [s for s in order if s in seen], (seen, order)
    # Finished, the page lists every stage in the order it ran.
    body = browser.evaluate(TEXT)
    where = [body.find(r["label"]) for r in ran]
    assert min(where) >= 0 and where == sorted(where), where

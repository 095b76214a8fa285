"""The dashboard: every page under Streamlit's AppTest against a real report, the background-job
helpers (diag.train.jobs) and the ``diag dashboard`` command."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from diag.cli.main import main
from diag.errors import ConfigError, DiagError
from diag.report.schema import Report
from diag.train import jobs
from tests.conftest import DASHBOARD_INPUTS
from tests.dashboard.test_embeddings import gallery

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
PAGES = DASHBOARD / "views"
sys.path.insert(0, str(DASHBOARD))

INPUTS = DASHBOARD_INPUTS
TIMEOUT = 180  # seconds per script run: the first UMAP map and model loads are slow on 2 busy cores


@pytest.fixture(scope="session")
def runs_root(dashboard_runs: Path) -> Path:
    return dashboard_runs


@pytest.fixture(scope="session")
def report(dashboard_report: Report) -> Report:
    return dashboard_report


def page(name: str, report_dir: str | Path | None = None) -> AppTest:
    at = AppTest.from_file(
        str(PAGES / name if name != "app.py" else DASHBOARD / name), default_timeout=TIMEOUT
    )
    if report_dir is not None:
        at.session_state["report_dir"] = str(report_dir)
    return at


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in getattr(at, kind)]


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# ------------------------------------------------------------------------------------------------------
# Pages


def test_home_page_opens_the_report_named_by_the_environment(
    report: Report, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIAG_REPORT", str(report.folder))
    at = page("app.py").run()  # the router: its default page is Home
    no_exception(at)
    # Decision first: the three verdicts (shift, negative-transfer risk, freeze depth), then the summary.
    s, nt, fr = report.shift, report.sections["negative_transfer"], report.sections["freeze"]
    assert f"**Yes**, from layer `{s['onset_layer']}` ({s['level']})" in texts(at, "warning")
    shown = texts(at, "success") + texts(at, "warning") + texts(at, "error")
    assert any(t.startswith(f"**{nt['risk'].upper()}**") for t in shown)
    assert any(f"Freeze **{fr['depth']}** of {fr['n_blocks']} blocks" in t for t in texts(at, "info"))
    assert s["summary"] in texts(at, "markdown")
    assert {m.label: m.value for m in at.metric}["Onset layer"] == report.shift["onset_layer"]
    lead = json.loads(at.get("plotly_chart")[0].proto.spec)  # the lead chart: not the saturated AUC
    graded = report.sections.get("graded_effect")
    expect = "relative energy distance" if graded else "relative Fréchet distance"
    assert lead["layout"]["yaxis"]["title"]["text"] == expect
    assert {t["name"] for t in lead["data"]} <= {"significant shift", "not significant"}
    bars = {x: y for t in lead["data"] for x, y in zip(t["x"], t["y"], strict=True)}
    for lay in report.layers:  # one bar per layer, the report's value
        want = graded["layers"][lay["name"]]["value"] if graded else lay["shift"]["frechet_relative"]
        assert bars[lay["name"]] == pytest.approx(want)
    at.switch_page("views/2_Shift.py").run()
    no_exception(at)
    assert any(t.value == "Shift, layer by layer" for t in at.title)


def test_shift_page_shows_verdict_key_numbers_charts_and_downloads(report: Report) -> None:
    at = page("2_Shift.py", report.folder).run()
    no_exception(at)
    s = report.shift
    assert s["is_shift"] and s["summary"] in texts(at, "warning")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["p-value"] == f"{s['p_value']:.3g}"
    effect = next(m for m in at.metric if m.label == f"Effect: C2ST AUC at {s['effect']['layer']}")
    lo, hi = s["effect"]["ci"]
    assert effect.value == f"{s['effect']['value']:.3f}" and effect.delta == f"95% CI [{lo:.3f}, {hi:.3f}]"
    assert metrics["Onset layer"] == s["onset_layer"] and metrics["Level"] == s["level"]
    assert any(f"Shift onset at layer **{s['onset_layer']}**" in m for m in texts(at, "markdown"))
    charts = at.get("plotly_chart")
    assert len(charts) == 7  # the lead chart, AUC, MMD², Fréchet, OOD, labels, class-conditional
    assert "C2ST" in charts[1].proto.spec
    mmd = json.loads(charts[2].proto.spec)  # its colours have a legend
    assert {"significant (Holm p ≤ α)", "not significant"} <= {t.get("name") for t in mmd["data"]}
    table = at.dataframe[0].value
    assert list(table["layer"]) == report.layer_names
    np.testing.assert_allclose(table["MMD²"], [lay["shift"]["mmd2"] for lay in report.layers])
    assert len(at.get("download_button")) == 3


def test_a_bad_report_path_shows_an_error_not_a_traceback(tmp_path: Path) -> None:
    at = page("2_Shift.py", tmp_path / "nowhere").run()
    no_exception(at)
    (err,) = texts(at, "error")
    assert "no report here" in err and "diag diagnose" in err


def test_pages_without_a_report_say_how_to_get_one() -> None:
    for name in ("0_Home.py", "2_Shift.py", "3_Embeddings.py", "4_Transfer.py", "5_Fine-tune.py"):
        at = page(name).run()
        no_exception(at)
        assert any("No report open" in t for t in texts(at, "info")), name


def test_embeddings_page_draws_the_map_and_the_most_ood_targets_with_neighbours(report: Report) -> None:
    at = page("3_Embeddings.py", report.folder).run()
    no_exception(at)
    onset = report.shift["onset_layer"]
    assert at.selectbox(key="emb_layer").value == onset
    (chart,) = at.get("plotly_chart")
    spec = json.loads(chart.proto.spec)
    assert {t["type"] for t in spec["data"]} == {"scattergl"}
    shown = sorted(i for t in spec["data"] for i in t["customdata"])  # each point carries its row
    assert shown == list(range(report.n_source + report.n_target))
    assert list(report.folder.glob(f"projection_{onset}_*.npy"))  # the map is cached with the report
    # Without a selection: the 12 most out-of-distribution targets, each with 3 source neighbours.
    assert [has_image for has_image, _ in gallery(at)] == [True] * (12 * 4)
    ood = report.ood_scores()[onset]
    top = int(np.argmax(ood))
    tgt_ids = report.embeddings("target").ids
    captions = [c for _, c in gallery(at)]
    assert captions[0].startswith(f"{tgt_ids[top]} ") and f"OOD {ood[top]:.2f}" in captions[0]
    assert sum("OOD" in c for c in captions) == 12 and sum("dist" in c for c in captions) == 36
    # Other colourings and layers rerun cleanly.
    at.radio(key="emb_colour").set_value("OOD score").run()
    no_exception(at)
    at.selectbox(key="emb_layer").set_value("pooled").run()
    no_exception(at)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["data"][0]["marker"]["color"] == "#9e9e9e"  # source grey under the OOD colouring


def test_embeddings_page_shows_a_selection(report: Report) -> None:
    """A lasso selection (sent as the chart's widget state, as the browser does) fills the panel."""
    at = page("3_Embeddings.py", report.folder).run()
    (chart,) = at.get("plotly_chart")
    n_src = report.n_source
    points = [{"curve_number": 1, "point_index": i, "customdata": n_src + i} for i in range(4)]
    points.append({"curve_number": 0, "point_index": 0, "customdata": 0})
    try:
        states = at._tree.get_widget_states()
        w = states.widgets.add()
        w.id = chart.proto.id
        w.string_value = json.dumps(
            {"selection": {"points": points, "point_indices": [], "box": [], "lasso": []}}
        )
        at._run(states)
    except AttributeError as exc:  # pragma: no cover - AppTest internals moved
        pytest.skip(f"cannot send a chart selection through this streamlit's AppTest: {exc}")
    no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Selected points"] == "5" and metrics["Target samples"] == "4"
    assert metrics["Share of the target"] == f"{4 / report.n_target:.1%}"
    ood = report.ood_scores()[report.shift["onset_layer"]]
    assert metrics["Mean OOD score (selected target)"] == f"{ood[:4].mean():.2f}"
    assert [has_image for has_image, _ in gallery(at)] == [True] * (4 * 4 + 1)  # 4 targets, 3 neighbours
    # each, then 1 source sample


def test_transfer_page_renders_the_reports_transfer_sections(report: Report) -> None:
    at = page("4_Transfer.py", report.folder).run()
    no_exception(at)
    nt, fr = report.sections["negative_transfer"], report.sections["freeze"]
    shown = texts(at, "success") + texts(at, "warning") + texts(at, "error")
    assert any(f"**{nt['risk'].upper()}**" in t for t in shown)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Blocks to freeze (from the input)"] == str(fr["depth"])
    assert metrics["Blocks in the backbone"] == str(fr["n_blocks"])
    assert len(at.get("plotly_chart")) == 2  # the RGN bars and the score along the depth
    rgn_fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [str(x) for x in rgn_fig["data"][0]["x"]] == list(fr["evidence"]["rgn"])


def test_transfer_page_says_when_the_report_has_no_transfer_analysis(report: Report, tmp_path: Path) -> None:
    from dataclasses import replace

    bare = replace(
        report, sections={}, layers=[{k: v for k, v in x.items() if k != "transfer"} for x in report.layers]
    ).save(tmp_path / "bare")
    at = page("4_Transfer.py", bare.folder).run()
    no_exception(at)
    (info,) = texts(at, "info")
    assert "not in this report" in info and "labelled target" in info


def test_run_page_reopens_the_report_for_the_same_inputs_without_recomputing(
    report: Report, runs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diag.pipeline.jobs

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a diagnosis started although a report for these inputs exists")

    monkeypatch.setattr(diag.pipeline.jobs, "launch_diagnosis", must_not_run)
    at = page("1_Run.py").run()
    no_exception(at)
    assert at.selectbox(key="run_source_choice").value == INPUTS["source"]
    assert at.selectbox(key="run_target_choice").value == INPUTS["target"]
    at.number_input(key="run_permutations").set_value(200)
    at.text_input(key="run_root").set_value(str(runs_root))
    at.run()
    assert any("exists" in c for c in texts(at, "caption"))
    at.button(key="run_go").click().run()
    no_exception(at)
    assert any("Opened the existing report" in t for t in texts(at, "success"))
    assert at.session_state["report_dir"] == str(report.folder)
    assert report.shift["summary"] in texts(at, "warning")


def test_run_page_shows_a_bad_path_as_an_error(tmp_path: Path) -> None:
    at = page("1_Run.py").run()
    at.selectbox(key="run_source_choice").set_value("Other (path or name)…").run()
    at.text_input(key="run_source_path").set_value(str(tmp_path / "no-such-folder"))
    at.text_input(key="run_root").set_value(str(tmp_path / "runs")).run()
    at.button(key="run_go").click().run()
    no_exception(at)
    (err,) = texts(at, "error")
    assert "The diagnosis failed to start" in err and "no such file or folder" in err
    assert not (tmp_path / "runs").exists()  # refused before anything was launched


def write_finished_run(out: Path, accs: list[float]) -> None:
    """A run folder as diag.train.run leaves it (the fields the page reads)."""
    out.mkdir(parents=True)
    lines = []
    for e, acc in enumerate(accs, 1):
        lines.append({"kind": "step", "epoch": e, "step": 2 * e, "loss": 1.0 / e, "train_acc": acc - 0.05})
        lines.append({"kind": "epoch", "epoch": e, "step": 2 * e, "train_loss": 1.0 / e, "val_acc": acc})
    (out / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"kind": "ste')
    result = {
        "status": "completed", "freeze": 3, "epochs_completed": len(accs), "best_val_accuracy": max(accs),
        "best_epoch": int(np.argmax(accs)) + 1, "final_val_accuracy": accs[-1],
        "config": {"epochs": len(accs)},
    }  # fmt: skip
    (out / "result.json").write_text(json.dumps(result))


def test_finetune_page_preselects_the_freeze_depth_and_compares_finished_runs(
    report: Report, tmp_path: Path
) -> None:
    from dataclasses import replace

    rep = replace(report, folder=None).save(tmp_path / "rep")
    write_finished_run(tmp_path / "rep" / "finetune" / "freeze3-a", [0.5, 0.7, 0.65])
    write_finished_run(tmp_path / "rep" / "finetune" / "freeze6-b", [0.6, 0.8])
    at = page("5_Fine-tune.py", rep.folder).run()
    no_exception(at)
    assert at.number_input(key="ft_freeze").value == report.sections["freeze"]["depth"]
    assert at.text_input(key="ft_target").value == INPUTS["target"]
    assert at.text_input(key="ft_backbone").value == INPUTS["backbone"]
    assert at.number_input(key="ft_image_size").value == 112
    table = at.dataframe[0].value
    assert list(table["run"]) == ["freeze3-a", "freeze6-b"]
    assert list(table["best val acc"]) == [0.7, 0.8]
    compare = json.loads(at.get("plotly_chart")[0].proto.spec)
    bars = next(t for t in compare["data"] if t["type"] == "bar")
    assert bars["y"] == [0.7, 0.8]


def test_finetune_page_refuses_flags_that_retarget_the_run(report: Report, tmp_path: Path) -> None:
    """--out DIR --overwrite in "More flags" would overwrite another folder while this page showed its
    own run as died: refused on the page, nothing started."""
    from dataclasses import replace

    rep = replace(report, folder=None).save(tmp_path / "rep")
    victim = tmp_path / "other-run"
    at = page("5_Fine-tune.py", rep.folder).run()
    at.text_input(key="ft_extra").set_value(f"--lr 3e-4 --out {victim} --overwrite")
    at.button(key="ft_start").click().run()
    no_exception(at)
    (error,) = texts(at, "error")
    assert "--out is not allowed" in error and "new folder" in error
    assert not texts(at, "success") and "ft_last_run" not in at.session_state
    assert not victim.exists() and not (tmp_path / "rep" / "finetune").exists()


def _finetune_available() -> bool:
    from diag.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return "finetune" in getattr(sub, "choices", {})


@pytest.mark.slow
@pytest.mark.skipif(not _finetune_available(), reason="`diag finetune` is not registered in this build")
def test_finetune_page_runs_a_real_tiny_finetune_in_the_background(report: Report, tmp_path: Path) -> None:
    from dataclasses import replace

    rep = replace(report, folder=None).save(tmp_path / "rep")
    at = page("5_Fine-tune.py", rep.folder).run()
    at.number_input(key="ft_freeze").set_value(9)  # a linear probe: the quickest real run
    at.number_input(key="ft_epochs").set_value(1)
    at.number_input(key="ft_image_size").set_value(32)
    at.button(key="ft_start").click().run()
    no_exception(at)
    assert any("Started fine-tuning" in t for t in texts(at, "success"))
    out = Path(at.session_state["ft_last_run"])
    deadline = time.monotonic() + 300
    while jobs.run_status(out).alive and time.monotonic() < deadline:
        time.sleep(1)
    status = jobs.run_status(out)
    assert status.state == "completed", status.log_tail
    at.run()
    no_exception(at)
    best = status.result["best_val_accuracy"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Best val accuracy"] == f"{best:.3f}"
    assert list(at.dataframe[0].value["best val acc"]) == [best]
    assert any(r.get("kind") == "epoch" for r in jobs.read_metrics(out))


# ------------------------------------------------------------------------------------------------------
# diag.train.jobs, with stand-in processes (no torch): launch, poll, stop cleanly, terminate

FAKE_RUN = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    def result(status):
        (out / "result.json").write_text(json.dumps({"status": status, "epochs_completed": 0,
                                                     "config": {"epochs": 5}}))
    result("running")
    for step in range(1, 10_000):
        with (out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"kind": "step", "epoch": 1, "step": step, "loss": 1 / step}) + "\\n")
        if (out / "STOP").exists():
            result("stopped")
            (out / "STOP").unlink()
            sys.exit(0)
        time.sleep(0.05)
    """
)


def wait_for(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_job_runs_detached_and_stops_cleanly(tmp_path: Path) -> None:
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    out = tmp_path / "run"
    job = jobs.launch([sys.executable, str(script), str(out)], out)
    assert json.loads((out / "job.json").read_text())["pid"] == job.pid
    wait_for(lambda: len(jobs.read_metrics(out)) >= 3)
    st = jobs.run_status(out)
    assert st.alive and st.state == "running" and st.epochs == 5
    with pytest.raises(ConfigError, match="still going on"):
        jobs.launch([sys.executable, "-c", "pass"], out)
    st = jobs.stop(out, wait_s=30)
    assert not st.alive and st.state == "stopped" and st.finished
    assert not (out / "STOP").exists()
    steps = [r["step"] for r in jobs.read_metrics(out)]
    assert steps == list(range(1, len(steps) + 1))
    assert jobs.list_runs(tmp_path) == [out]


def test_stopping_a_job_before_its_training_loop_interrupts_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # The marker printed is not in the command line (which log.txt starts with).
    jobs.launch(
        [sys.executable, "-c", "import time; print('loading'.upper(), flush=True); time.sleep(60)"], out
    )
    wait_for(lambda: "LOADING" in jobs.run_status(out).log_tail)
    assert jobs.run_status(out).state == "starting"
    st = jobs.stop(out, wait_s=30)
    assert not st.alive and st.state == "died"  # no result.json: it never reached training
    assert "KeyboardInterrupt" in st.log_tail


def test_terminate_ends_a_job_that_ignores_stop_requests(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = (
        "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up'.upper(), flush=True); "
        "time.sleep(60)"
    )
    jobs.launch([sys.executable, "-c", code], out)
    wait_for(lambda: "UP" in jobs.run_status(out).log_tail)
    assert jobs.stop(out, wait_s=0.5).alive
    assert jobs.run_status(out).state == "stopping"
    st = jobs.terminate(out, wait_s=10)
    assert not st.alive


def test_finetune_command_and_run_folders(tmp_path: Path) -> None:
    settings = jobs.run_config(freeze=4, epochs=2, image_size=32)
    assert settings == {"freeze": 4, "epochs": 2, "image_size": 32}  # the rest: diag finetune's defaults
    cmd = jobs.finetune_command(
        "samples:uci-digits", "efficientnet_lite0", tmp_path / "r", extra_args=["--lr", "3e-4"]
    )
    assert cmd[:4] == [sys.executable, "-m", "diag.cli", "finetune"]
    flags = dict(zip(cmd[4::2], cmd[5::2], strict=False))
    assert flags["--config"] == str(tmp_path / "r" / "run.json") and flags["--out"] == str(tmp_path / "r")
    assert flags["--target"] == "samples:uci-digits" and flags["--backbone"] == "efficientnet_lite0"
    assert flags["--lr"] == "3e-4" and cmd[-1] == "--quiet"
    # The command the dashboard launches parses, and its run file gives the settings (flags override).
    from diag.cli.main import build_parser
    from diag.cli.train import finetune_config

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text(json.dumps(settings))
    config = finetune_config(build_parser().parse_args(cmd[3:]))
    assert (config.freeze, config.epochs, config.image_size, config.lr) == (4, 2, 32, 3e-4)
    with pytest.raises(ConfigError, match="epochs"):
        jobs.run_config(epochs=0)
    with pytest.raises(ConfigError, match="target"):
        jobs.finetune_command(" ", "x", tmp_path)
    a = jobs.new_run_dir(tmp_path, "freeze 4")
    a.mkdir()
    b = jobs.new_run_dir(tmp_path, "freeze 4")
    assert a != b and a.name.startswith("freeze-4-")
    assert jobs.run_status(tmp_path / "empty").state == "unknown"
    write_finished_run(tmp_path / "done", [0.4])
    with pytest.raises(ConfigError, match="already holds"):
        jobs.launch_finetune("samples:uci-digits", "efficientnet_lite0", tmp_path / "done")


# ------------------------------------------------------------------------------------------------------
# diag dashboard


def test_dashboard_command_serves_the_app_with_the_report(report: Report, capsys) -> None:
    assert main(["dashboard", str(report.folder), "--port", "8600", "--print-command"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"DIAG_REPORT={report.folder.resolve()} ")
    assert f"-m streamlit run {DASHBOARD / 'app.py'}" in line
    for flag in ("--server.port 8600", "--server.address 127.0.0.1", "--server.headless true"):
        assert flag in line
    assert "--browser.gatherUsageStats false" in line


def test_dashboard_command_rejects_a_folder_without_a_report(tmp_path: Path, capsys) -> None:
    assert main(["dashboard", str(tmp_path), "--print-command"]) == 2
    assert "no report here" in capsys.readouterr().err


def test_dashboard_app_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from diag.cli.dashboard import dashboard_app

    monkeypatch.setenv("DIAG_DASHBOARD_APP", str(tmp_path / "app.py"))
    with pytest.raises(DiagError, match="dashboard app is not there"):
        dashboard_app()


def test_stop_works_when_the_dashboard_itself_ignores_sigint(tmp_path: Path) -> None:
    """A dashboard started in the background by a shell (nohup, CI) has SIGINT ignored; its runs must not
    inherit that, or a run that has not reached its training loop could not be stopped."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        out = tmp_path / "run"
        code = "import time; print('ready'.upper(), flush=True); time.sleep(60)"
        jobs.launch([sys.executable, "-c", code], out)
    finally:
        signal.signal(signal.SIGINT, previous)
    wait_for(lambda: "READY" in jobs.run_status(out).log_tail)
    st = jobs.stop(out, wait_s=30)
    assert not st.alive and "KeyboardInterrupt" in st.log_tail


# ------------------------------------------------------------------------------------------------------
# Background diagnoses on the Run page, state across pages, Fine-tune's recommendation and references


def test_form_values_survive_a_page_switch(report: Report, monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamlit drops the widgets of a page not drawn: the Run form's values come back (ui.keep)."""
    monkeypatch.setenv("DIAG_REPORT", str(report.folder))
    at = page("app.py").run()
    at.switch_page("views/1_Run.py").run()
    no_exception(at)
    at.selectbox(key="run_target_choice").set_value("samples:opencv-digits")
    at.number_input(key="run_permutations").set_value(300)
    at.number_input(key="run_image_size").set_value(64).run()
    at.switch_page("views/2_Shift.py").run()
    no_exception(at)
    assert "run_permutations" not in at.session_state  # Streamlit dropped the widget's own state...
    at.switch_page("views/1_Run.py").run()
    no_exception(at)
    assert at.selectbox(key="run_target_choice").value == "samples:opencv-digits"  # ...and it came back
    assert at.number_input(key="run_permutations").value == 300
    assert at.number_input(key="run_image_size").value == 64
    assert not [w.value for w in at.warning if "default value" in str(w.value)]


def test_run_page_follows_a_background_diagnosis_and_opens_its_report(report: Report, tmp_path: Path) -> None:
    """Stages appear in order as the job writes them; when report.json is written the page opens it."""
    from diag.pipeline import jobs as diag_jobs
    from tests.dashboard.test_jobs import start_fake_diagnosis, wait_for

    out = tmp_path / "runs" / "job"
    stages = ["embed-source", "embed-target", "shift", "write"]
    start_fake_diagnosis(tmp_path, out, stages, report=report.folder)
    at = page("1_Run.py")
    at.session_state["runs_dir"] = str(tmp_path / "runs")
    at.run()  # a new session follows the diagnosis still running under the runs folder
    no_exception(at)
    assert any("samples:mnist** vs **samples:uci-digits" in t for t in texts(at, "markdown"))
    for i in range(2):
        (out / f"GO{i}").touch()
    wait_for(lambda: len(diag_jobs.diagnosis_status(out).stages) == 2)
    at.run()
    lines = [t for t in texts(at, "markdown") if t.startswith((":green-badge[done]", ":orange-badge"))]
    assert [t.split("**")[1] for t in lines] == ["embed-source", "embed-target"]
    waiting = [t for t in texts(at, "markdown") if t.startswith(":gray-badge[to come]")]
    assert len(waiting) >= 1  # stages still to come are listed, greyed
    for i in range(2, len(stages) + 1):
        (out / f"GO{i}").touch()
    wait_for(lambda: diag_jobs.diagnosis_status(out).state == "completed")
    at.run()
    no_exception(at)
    assert at.session_state["report_dir"] == str(out)  # opened: the sidebar and every page now use it
    assert any("The diagnosis finished" in t for t in texts(at, "success"))
    (out / f"GO{len(stages) + 1}").touch()
    table = at.dataframe[0].value  # the job list
    assert list(table["kind"]) == ["diagnosis"] and list(table["state"]) == ["completed"]


def test_finetune_page_applies_the_whole_recommendation(report: Report, tmp_path: Path) -> None:
    from dataclasses import replace

    rep = replace(report, folder=None).save(tmp_path / "rep")
    fr = report.sections["freeze"]
    at = page("5_Fine-tune.py", rep.folder).run()
    at.number_input(key="ft_freeze").set_value(0)
    at.number_input(key="ft_lp_ft").set_value(0).run()
    at.button(key="ft_apply").click().run()
    no_exception(at)
    assert at.number_input(key="ft_freeze").value == fr["depth"]
    lp_ft = at.number_input(key="ft_lp_ft").value
    assert (lp_ft >= 1) == (fr["lr_scheme"] == "lp-ft")
    assert lp_ft < at.number_input(key="ft_epochs").value


def test_finetune_page_compares_every_differing_setting_with_reference_lines(
    report: Report, tmp_path: Path
) -> None:
    from dataclasses import replace

    rep = replace(report, folder=None).save(tmp_path / "rep")
    for name, cfg in (("a", {"lr": 1e-3, "image_size": 32}), ("b", {"lr": 3e-4, "image_size": 64})):
        out = tmp_path / "rep" / "finetune" / name
        write_finished_run(out, [0.5, 0.6])
        res = json.loads((out / "result.json").read_text())
        res["config"] = {"epochs": 2, "lp_ft": 0, **cfg}
        (out / "result.json").write_text(json.dumps(res))
    at = page("5_Fine-tune.py", rep.folder).run()
    no_exception(at)
    table = at.dataframe[0].value
    assert list(table["lr"]) == [1e-3, 3e-4] and list(table["image_size"]) == [32, 64]
    assert "lp_ft" not in table.columns and "epochs" in table.columns  # the same in both: not repeated
    curves = json.loads(at.get("plotly_chart")[-1].proto.spec)
    notes = [a.get("text", "") for a in curves["layout"].get("annotations", [])]
    lp = report.sections["negative_transfer"]["signals"]["pretrained_linear_probe"]
    assert any(n.startswith("linear probe (report") and f"{lp:.2f}" in n for n in notes)

"""Background jobs without torch work in the child: diagnoses (diag.pipeline.jobs) and fine-tuning runs
(diag.train.jobs) driven by stand-in processes that write the same files as the real ones, so the states,
the stage order, the live epoch count and the final state are checked in seconds."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from diag.errors import ConfigError, DataError
from diag.pipeline import jobs as diag_jobs
from diag.progress import STAGES
from diag.train import jobs

# A stand-in diagnosis: each stage runs, then report.json; waits for a GO file between stages so the
# test sees every intermediate state.
FAKE_DIAGNOSIS = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    out, stages, fail = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3] == "fail"
    def gate(i):
        while not (out / f"GO{i}").exists():
            time.sleep(0.02)
    def log(rec):
        with (out / "progress.jsonl").open("a") as f:
            f.write(json.dumps(rec) + "\\n")
    for i, name in enumerate(stages):
        gate(i)
        log({"stage": name, "label": name, "done": 0, "total": 10, "unit": "item", "status": "running"})
        log({"stage": name, "label": name, "done": 10, "total": 10, "unit": "item", "status": "done"})
    gate(len(stages))
    if fail:
        print("diag diagnose: error: samples:nope: no such sample", file=sys.stderr)
        sys.exit(2)
    src = sys.argv[4] if len(sys.argv) > 4 else None
    (out / "report.json").write_bytes(Path(src).read_bytes() if src else b"{}")
    gate(len(stages) + 1)
    """
)


def wait_for(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def start_fake_diagnosis(
    tmp_path: Path, out: Path, stages: list[str], *, fail: bool = False, report: Path | None = None
) -> None:
    """What launch_diagnosis records (diagnose.json, then the job), with the stand-in as the process.

    With ``report`` (a report folder), its files are copied into ``out`` first and its ``report.json``
    is written last, as the real diagnosis does.
    """
    script = tmp_path / "fake_diagnosis.py"
    script.write_text(FAKE_DIAGNOSIS)
    if report is not None:
        import shutil

        shutil.copytree(report, out, ignore=shutil.ignore_patterns("report.json", "finetune"))
    out.mkdir(parents=True, exist_ok=True)
    record = {"inputs": {"source": "samples:mnist", "target": "samples:uci-digits", "backbone": "bb"}}
    (out / diag_jobs.DIAGNOSE_FILE).write_text(json.dumps({**record, "started": time.time() - 1}))
    cmd = [sys.executable, str(script), str(out), ",".join(stages), "fail" if fail else "ok"]
    cmd += [str(report / "report.json")] if report is not None else []
    jobs.launch(cmd, out)


def test_a_background_diagnosis_goes_through_its_stages_in_order_and_completes(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "a-vs-b"
    stages = ["embed-source", "embed-target", "shift", "transfer", "write"]
    start_fake_diagnosis(tmp_path, out, stages)
    assert diag_jobs.diagnosis_status(out).state == "starting"
    states = []
    for i in range(len(stages) + 1):
        (out / f"GO{i}").touch()
        if i < len(stages):
            wait_for(lambda i=i: len(diag_jobs.diagnosis_status(out).stages) == i + 1)
            st = diag_jobs.diagnosis_status(out)
            assert [r["stage"] for r in diag_jobs.stage_rows(st.stages)] == stages[: i + 1]  # as they ran
            assert st.stages[-1]["done"] == 10
            states.append(st.state)
    assert set(states) == {"running"}
    wait_for(lambda: (out / "report.json").exists())
    st = diag_jobs.diagnosis_status(out)
    assert st.alive and st.state == "completed"  # the report is written: final while the process exits
    (out / f"GO{len(stages) + 1}").touch()
    wait_for(lambda: not diag_jobs.diagnosis_status(out).alive)
    st = diag_jobs.diagnosis_status(out)
    assert st.state == "completed" and st.finished and st.error is None
    assert st.inputs["target"] == "samples:uci-digits"
    # The job list has it, with the report folder to open.
    (entry,) = diag_jobs.list_jobs(tmp_path / "runs")
    assert (entry.kind, entry.out, entry.report, entry.state) == ("diagnosis", out, out, "completed")


def test_a_failed_background_diagnosis_says_why(tmp_path: Path) -> None:
    out = tmp_path / "d"
    start_fake_diagnosis(tmp_path, out, ["embed-source"], fail=True)
    for i in range(2):
        (out / f"GO{i}").touch()
    wait_for(lambda: not diag_jobs.diagnosis_status(out).alive)
    st = diag_jobs.diagnosis_status(out)
    assert st.state == "failed" and st.error == "samples:nope: no such sample"


def test_an_old_report_in_the_folder_is_not_taken_for_the_new_one(tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "report.json").write_text("{}")  # from an earlier run
    time.sleep(0.05)
    script = tmp_path / "sleep.py"
    script.write_text("import time; time.sleep(0.3)")
    (out / diag_jobs.DIAGNOSE_FILE).write_text(json.dumps({"inputs": {}, "started": time.time()}))
    jobs.launch([sys.executable, str(script)], out)
    assert diag_jobs.diagnosis_status(out).state == "starting"
    wait_for(lambda: not diag_jobs.diagnosis_status(out).alive)
    assert diag_jobs.diagnosis_status(out).state == "failed"


def test_stage_rows_keep_the_order_the_stages_ran_then_list_those_to_come() -> None:
    ran = [{"stage": "transfer"}, {"stage": "shift"}, {"stage": "extra", "label": "more"}]
    rows = diag_jobs.stage_rows(ran)
    assert [r["stage"] for r in rows] == ["transfer", "shift", "extra"]
    assert all(r["label"] for r in rows) and rows[-1]["label"] == "more"
    rows = diag_jobs.stage_rows(ran, pending=True)
    waiting = [r["stage"] for r in rows if r.get("status") == "waiting"]
    assert waiting == [s for s in STAGES if s not in ("transfer", "shift")]


def test_diagnose_command_is_the_cli_with_a_stage_log(tmp_path: Path) -> None:
    cmd = diag_jobs.diagnose_command(
        "samples:mnist", "samples:uci-digits", "efficientnet_lite0", tmp_path / "r",
        options={"image_size": 112, "n_permutations": 200, "seed": 0, "label_column": None},
    )  # fmt: skip
    assert cmd[:4] == [sys.executable, "-m", "diag.cli", "diagnose"]
    flags = dict(zip(cmd[4::2], cmd[5::2], strict=False))
    assert flags["--source"] == "samples:mnist" and flags["--target"] == "samples:uci-digits"
    assert "--quiet" in cmd and "--label-column" not in cmd
    assert cmd[cmd.index("--permutations") + 1] == "200" and cmd[cmd.index("--image-size") + 1] == "112"
    assert cmd[-2:] == ["--progress-log", str(tmp_path / "r" / "progress.jsonl")]
    from diag.cli.main import build_parser

    try:
        args = build_parser().parse_args(cmd[3:])
    except SystemExit:  # pragma: no cover - diag diagnose without --progress-log (helper 14a pending)
        pytest.skip("this build's diag diagnose has no --progress-log yet")
    assert args.n_permutations == 200 and args.image_size == 112


def test_launch_diagnosis_refuses_missing_data_before_starting(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"source .*no-such: no such file or folder"):
        diag_jobs.launch_diagnosis(str(tmp_path / "no-such"), "samples:mnist", "bb", tmp_path / "o")
    with pytest.raises(DataError, match="no such sample.*mnist"):
        diag_jobs.launch_diagnosis("samples:mnist", "samples:nope", "bb", tmp_path / "o")
    with pytest.raises(ConfigError, match="backbone"):
        diag_jobs.launch_diagnosis("samples:mnist", "samples:mnist", " ", tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------------
# Fine-tuning runs: live epochs, a final state that stays final

FAKE_FINETUNE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    def result(status, n):
        (out / "result.json").write_text(json.dumps({"status": status, "epochs_completed": n,
                                                     "config": {"epochs": 3, "lr": 0.001}}))
    def gate(i):
        while not (out / f"GO{i}").exists():
            time.sleep(0.02)
    result("running", 0)
    for e in range(1, 4):
        gate(e)
        with (out / "metrics.jsonl").open("a") as f:
            for s in range(1, 5):
                rec = {"kind": "step", "epoch": e, "step": 4 * (e - 1) + s, "loss": 1.0}
                f.write(json.dumps(rec) + "\\n")
            f.write(json.dumps({"kind": "epoch", "epoch": e, "step": 4 * e, "val_acc": 0.5}) + "\\n")
    result("completed", 3)
    gate(4)
    """
)


def test_a_finetune_run_counts_epochs_live_and_its_final_state_never_reverts(tmp_path: Path) -> None:
    script = tmp_path / "fake_ft.py"
    script.write_text(FAKE_FINETUNE)
    out = tmp_path / "run"
    jobs.launch([sys.executable, str(script), str(out)], out)
    wait_for(lambda: jobs.run_status(out).state == "running")
    seen = []
    for e in range(1, 4):
        (out / f"GO{e}").touch()
        wait_for(
            lambda e=e: (
                (jobs.run_status(out).epochs_done or 0) >= e or jobs.run_status(out).state != "running"
            )
        )
        st = jobs.run_status(out)
        seen.append((st.state, st.epochs_done, st.epochs))
    assert seen[:2] == [("running", 1, 3), ("running", 2, 3)]
    wait_for(lambda: jobs.run_status(out).state == "completed")
    # The process is still alive (waiting for GO4) but the result is final: never "starting" again.
    states = {jobs.run_status(out).state for _ in range(20)}
    assert jobs.run_status(out).alive and states == {"completed"}
    (out / "GO4").touch()
    wait_for(lambda: not jobs.run_status(out).alive)
    st = jobs.run_status(out)
    assert (st.state, st.epochs_done) == ("completed", 3)


def test_run_config_takes_any_finetune_setting_and_checks_it() -> None:
    assert jobs.run_config(freeze=6, epochs=3, lp_ft=1, lr=3e-4, from_scratch=None) == {
        "freeze": 6, "epochs": 3, "lp_ft": 1, "lr": 3e-4,
    }  # fmt: skip
    with pytest.raises(ConfigError, match="lp_ft must be smaller than epochs"):
        jobs.run_config(epochs=2, lp_ft=2)
    with pytest.raises(ConfigError, match="unknown fine-tuning setting 'lp_ftt'"):
        jobs.run_config(lp_ftt=1)

"""The After page under AppTest: compare.json / deploy.json of runs under a folder."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from diag.report.posthoc import (
    BlockChange,
    CompareReport,
    DeployReport,
    Forgetting,
    LayerDrift,
    RunComparison,
)

PAGE = Path(__file__).resolve().parents[2] / "dashboard" / "views" / "7_After.py"


def run_of(folder: Path, k: int, forgetting: float) -> RunComparison:
    blocks = [
        BlockChange(name=n, index=i, frozen=i < k, n_params=10, weight_change=0.0 if i < k else 0.02,
                    bit_identical=i < k, cka=1.0 if i < k else 0.7)
        for i, n in enumerate(("stem", "blocks.0", "pooled"))
    ]  # fmt: skip
    f = Forgetting("samples:mnist", 100, 0.8, 0.8 - forgetting, 0.7, 0.7 - forgetting, 0.5, 0.6)
    return RunComparison(
        str(folder), "efficientnet_lite0", k, 3, 0.9, "digits", 100, blocks, True, [], f, 1.0
    )


def test_after_page_shows_the_curve_the_blocks_and_the_deploy_check(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    runs = [run_of(sweep / "runs" / f"freeze-{k}", k, 0.1 / (k + 1)) for k in (0, 2)]
    sweep.mkdir()
    CompareReport(runs).save(sweep)
    run = sweep / "runs" / "freeze-0"
    run.mkdir(parents=True)
    DeployReport(
        run=str(run), backbone="efficientnet_lite0", data="digits", n_items=100, n_calibration=50,
        accuracy_fp32=0.9, accuracy_int8=0.88, accuracy_drop=0.02, accuracy_drop_ci=[0.0, 0.05],
        agreement=0.95,
        quantization={"method": "static", "backend": "torch.ao.quantization/x86", "fp32_bytes": 14e6,
                      "int8_bytes": 3.9e6, "message": "static int8 (x86): 18 module(s) quantized."},
        size_ratio=0.28, latency={"batch_1": {"fp32_ms": 5, "int8_ms": 6, "ratio": 1.2},
                                  "batch_32": {"fp32_ms": 50, "int8_ms": 30, "ratio": 0.6}},
        threads=2, cpu_count=2,
        layers=[LayerDrift("stem", 0, 0.01, 0.999, 0.6, [0.5, 0.7], 0.001, 0.5)],
    ).save(run)  # fmt: skip

    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.session_state["after_root"] = str(tmp_path)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [s.value for s in at.selectbox] == ["sweep"]
    assert "What changed, what was forgotten" in [h.value for h in at.subheader]
    assert len(at.dataframe) == 3  # the curve and one table per run
    at.selectbox[0].set_value("sweep/runs/freeze-0").run()
    assert not at.exception
    assert [h.value for h in at.subheader] == ["int8 deployment (CPU)"]
    assert at.metric[2].value == "×0.28"


def test_after_page_without_results_says_how_to_get_them(tmp_path: Path) -> None:
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.session_state["after_root"] = str(tmp_path)
    at.run()
    assert not at.exception
    assert "No compare.json or deploy.json" in at.info[0].value

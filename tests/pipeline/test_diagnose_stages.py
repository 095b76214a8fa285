"""diagnose writes its progress stage by stage, the drift attribution, the graded effect and the maps."""

from __future__ import annotations

import json
from pathlib import Path

from diag.cli.main import main
from diag.pipeline import diagnose
from diag.predict.attribution import load_attribution
from diag.progress import STAGES, StageLogProgress, read_stage_log
from diag.report import load_report
from diag.report.explain import cluster_rows, graded_effect_rows


def test_stages_in_order_attribution_effect_and_maps(tmp_path: Path, tiny_image_backbone) -> None:
    from tests.conftest import write_digit_folder

    target = write_digit_folder(tmp_path / "t", per_class=8)
    log = tmp_path / "progress.jsonl"
    out = tmp_path / "r"
    rep = diagnose(
        "samples:mnist", target, tiny_image_backbone, n_permutations=200, out=out, rgn=False,
        progress=StageLogProgress(log),
    )  # fmt: skip
    stages = read_stage_log(log)
    names = [s["stage"] for s in stages]
    assert names == ["embed-source", "embed-target", "shift", "transfer", "random-init", "map", "write"]
    assert names == [s for s in STAGES if s in names]  # the documented order
    assert all(s["status"] == "done" for s in stages)
    shift = stages[2]
    assert shift["total"] == len(rep.layers) and shift["done"] == shift["total"]
    assert stages[1]["total"] == 24  # the target folder is new: embedded here
    # the MNIST sample may already be in the cache (an earlier test embedded it with this backbone)
    src = stages[0]
    assert src["total"] == 300 or (src["total"] is None and src["message"] == "from cache")

    # graded effect: one value per layer, the headline at the deepest
    g = rep.sections["graded_effect"]
    assert g["layer"] == rep.layer_names[-1] and len(graded_effect_rows(rep)) == len(rep.layers)
    # attribution: section with ranked clusters, sidecar with every target sample
    sec = rep.sections["attribution"]
    layer = sec["layer"]
    assert layer == (rep.shift.onset_layer or rep.shift.peak["layer"])
    back = load_attribution(out)
    assert len(back[layer].ids) == 24
    assert abs(float(back[layer].contribution.sum()) - 1.0) < 1e-4
    rows = cluster_rows(load_report(out))
    assert rows and sum(r["size"] for r in rows) == 24 and rows[0]["rank"] == 1
    # maps for the layers a reader opens first, cached in the report folder
    maps = rep.sections["maps"]
    assert set(maps["layers"]) == set(sec["layers"])
    assert len(list(out.glob("projection_*.npy"))) == len(maps["layers"])


def test_cli_writes_the_progress_log_and_prints_the_top_clusters(tmp_path: Path, capsys) -> None:
    from tests.conftest import write_digit_folder

    target = write_digit_folder(tmp_path / "t", per_class=6)
    out = tmp_path / "r"
    code = main([
        "diagnose", "-s", "samples:mnist", "-t", str(target), "-b", "timm:test_efficientnet",
        "--random-init", "--image-size", "32", "-o", str(out), "--permutations", "200", "--no-rgn",
        "--no-transfer", "--no-maps",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr()
    assert "graded effect: relative energy distance" in printed.out
    assert "drift by target cluster" in printed.out and "#1 cluster" in printed.out
    assert "[1] embed the source" in printed.err
    stages = [json.loads(line)["stage"] for line in (out / "progress.jsonl").read_text().splitlines()]
    assert stages[0] == "embed-source" and stages[-1] == "write" and "maps" not in load_report(out).sections

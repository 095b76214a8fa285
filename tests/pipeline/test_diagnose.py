"""`diag diagnose` end to end on the bundled samples, with the real pretrained backbones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diag.cli.main import main
from diag.errors import ConfigError, DataError
from diag.pipeline import diagnose, embed, split_halves
from diag.report.schema import load_report

LAYER_FIELDS = {"mmd2", "p_value", "c2st_auc", "c2st_auc_ci", "frechet", "coral"}


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory: pytest.TempPathFactory, lite0) -> Path:
    out = tmp_path_factory.mktemp("mnist-uci")
    code = main(
        [
            "diagnose", "--source", "samples:mnist", "--target", "samples:uci-digits",
            "--backbone", "efficientnet_lite0", "--image-size", "112", "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    return out


def test_mnist_vs_uci_digits_is_a_large_input_level_shift(digits_report: Path) -> None:
    raw = json.loads((digits_report / "report.json").read_text())
    for key in ("schema_version", "backbone", "n_source", "n_target", "layers", "shift", "meta"):
        assert key in raw
    assert raw["backbone"]["name"] == "efficientnet_lite0" and raw["backbone"]["pretrained"] is True
    assert raw["n_source"] == 300 and raw["n_target"] == 300
    names = [x["name"] for x in raw["layers"]]
    assert names == ["stem", *[f"blocks.{i}" for i in range(7)], "pooled"]
    assert [x["index"] for x in raw["layers"]] == sorted(x["index"] for x in raw["layers"])
    for lay in raw["layers"]:
        assert set(lay["shift"]) >= LAYER_FIELDS
        lo, hi = lay["shift"]["c2st_auc_ci"]
        assert lo <= lay["shift"]["c2st_auc"] <= hi
    s = raw["shift"]
    assert s["is_shift"] is True and s["p_value"] < 0.01
    assert s["effect"]["value"] > 0.9 and s["effect"]["ci"][0] > 0.8
    assert s["onset_layer"] == "stem" and s["level"] == "input-level"
    assert "Shift detected" in s["summary"] and "stem" in s["summary"]
    assert raw["label_shift"]["total_variation"] == pytest.approx(0.0)  # both 30 per class
    meta = raw["meta"]
    assert {"versions", "device", "seed", "timings", "config"} <= set(meta)
    # Sidecars: per-sample OOD scores, and both embeddings.
    rep = load_report(digits_report)
    scores = rep.ood_scores()
    assert set(scores) == set(names) and scores["pooled"].shape == (300,)
    assert rep.embeddings("source")["pooled"].shape == (300, 1280)


def test_second_run_reuses_cached_embeddings(digits_report: Path, tmp_path: Path, capsys) -> None:
    code = main(
        [
            "diagnose", "-s", "samples:mnist", "-t", "samples:uci-digits", "-b", "efficientnet_lite0",
            "--image-size", "112", "-o", str(tmp_path), "--permutations", "500",
        ]
    )  # fmt: skip
    assert code == 0
    timings = json.loads((tmp_path / "report.json").read_text())["meta"]["timings"]
    assert timings["source_from_cache"] and timings["target_from_cache"]
    out = capsys.readouterr().out
    assert "C2ST AUC" in out and "<- onset" in out and "Shift detected" in out
    assert "embeddings from cache: source, target" in out


def test_disjoint_mnist_halves_show_no_shift(lite0) -> None:
    rep = diagnose("samples:mnist", None, "efficientnet_lite0", image_size=112, n_permutations=1000)
    assert rep.n_source == rep.n_target == 150
    assert rep.shift["is_shift"] is False and rep.shift["p_value"] > 0.05
    assert rep.shift["onset_layer"] is None
    assert 0.35 < rep.shift["effect"]["value"] < 0.65


def test_split_halves_are_disjoint_and_stratified(lite0) -> None:
    emb = embed("samples:mnist", "efficientnet_lite0", image_size=112)
    a, b = split_halves(emb, seed=3)
    assert not set(a.ids) & set(b.ids) and len(a) + len(b) == len(emb)
    assert a.labels is not None and b.labels is not None
    np.testing.assert_array_equal(np.bincount(a.labels), np.full(10, 15))
    assert a.manifest["data"]["parent"] == emb.manifest["data"]["name"]


def test_speeches_vs_debates_shift_and_speeches_halves_none() -> None:
    from diag.models import load

    short = load("minilm", max_length=128)  # passages truncated to 128 tokens: half the time on 2 cores
    rep = diagnose("samples:speeches", "samples:debates", short, n_permutations=1000)
    assert rep.shift["is_shift"] and rep.shift["p_value"] < 0.01
    assert rep.shift["effect"]["value"] > 0.9
    assert rep.label_shift is not None and rep.label_shift["classes"] == ["democrat", "republican"]
    null = diagnose("samples:speeches", None, short, n_permutations=1000)
    assert not null.shift["is_shift"] and null.shift["p_value"] > 0.05
    assert "what is said" in rep.shift["summary"] or "written" in rep.shift["summary"]


def test_mismatched_backbones_are_refused(tiny_image_backbone) -> None:
    from diag.models import load

    other = load("timm:test_efficientnet", pretrained=False, image_size=32, seed=1)
    a = embed("samples:mnist", tiny_image_backbone)
    b = embed("samples:uci-digits", other)
    with pytest.raises(ConfigError, match="different weights"):
        diagnose(a, b, tiny_image_backbone)
    c = embed("samples:uci-digits", load("timm:test_efficientnet", pretrained=False, image_size=48))
    with pytest.raises(ConfigError, match="different preprocessing"):
        diagnose(a, c, tiny_image_backbone)


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    code = main(["diagnose", "-s", "samples:mnist", "-b", "efficientnet_lite0", "-o", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--target is required" in err and "Traceback" not in err
    missing = str(tmp_path / "nope")
    code = main(["diagnose", "-s", missing, "-t", "samples:mnist", "-b", "x", "-o", str(tmp_path)])
    assert code == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_too_few_items_get_a_clear_error(tmp_path: Path, tiny_image_backbone) -> None:
    from tests.conftest import write_digit_folder

    small = write_digit_folder(tmp_path / "few", per_class=1, classes=("0", "1", "2"))
    with pytest.raises(DataError, match="at least 5"):
        diagnose(small, "samples:mnist", tiny_image_backbone)


def test_digits_report_has_transfer_sections(digits_report: Path) -> None:
    raw = json.loads((digits_report / "report.json").read_text())
    tr = raw["transferability"]
    assert tr["layer"] == "pooled"
    # The pretrained backbone beats its random-init twin on the digits.
    assert tr["scores"]["logme"] > tr["random_init_scores"]["logme"]
    assert tr["scores"]["linear_probe_accuracy"] > tr["random_init_scores"]["linear_probe_accuracy"]
    for lay in raw["layers"]:
        assert set(lay["transfer"]) == {"pretrained", "random_init"}
    nt = raw["negative_transfer"]
    assert nt["risk"] == "low" and 0 <= nt["probability"] < 0.3
    assert "linear-probe accuracy" in nt["evidence"][0]
    fr = raw["freeze"]
    assert 0 <= fr["depth"] <= fr["n_blocks"] == 9
    assert fr["frozen"] + fr["tune"] == ["stem", *[f"blocks.{i}" for i in range(7)], "pooled"]
    assert fr["evidence"]["peak_layer"] in fr["rationale"][1]
    rgn = fr["evidence"]["rgn"]  # Auto-RGN evidence: every block, normalised to the largest
    assert list(rgn) == fr["frozen"] + fr["tune"] and max(rgn.values()) == 1.0
    assert fr["evidence"]["basis"] == "probe"  # the digits' probe curve is steep (0.74 -> 0.95)
    assert any("Auto-RGN" in r for r in fr["rationale"])


def test_unlabelled_target_still_gets_a_shift_report(tmp_path: Path, tiny_image_backbone) -> None:
    from tests.conftest import write_digit_folder

    labelled = write_digit_folder(tmp_path / "lab", per_class=4)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, p in enumerate(sorted(labelled.rglob("*.png"))):
        p.rename(flat / f"{i:03d}.png")
    rep = diagnose("samples:mnist", flat, tiny_image_backbone, n_permutations=200, out=tmp_path / "r")
    assert "no labels" in rep.sections["transferability"]["skipped"]
    assert "negative_transfer" not in rep.sections and rep.label_shift is None
    assert load_report(tmp_path / "r").shift["summary"]


def test_a_checkpoint_with_dead_units_is_flagged_for_negative_transfer(tmp_path: Path, lite0) -> None:
    """Lite0 with 60 % of its ReLU6 channels dead (BatchNorm bias -20), as a diverged run leaves it:
    measured, fine-tuning it on UCI digits ends at 0.35 at best where scratch training reaches 0.54. Its
    features still probe nearly as well as the random-init twin's; what gives it away is that the target's
    gradient does not reach the first blocks. The report survives constant layers and says: high risk."""
    import copy

    import torch
    from safetensors.torch import save_file
    from timm.layers import BatchNormAct2d

    model = copy.deepcopy(lite0.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, BatchNormAct2d) and not isinstance(mod.act, torch.nn.Identity):
                mod.bias[torch.rand(mod.num_features, generator=gen) < 0.6] = -20.0
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "dead.safetensors"))
    rep = diagnose(
        "samples:mnist", "samples:uci-digits", f"efficientnet_lite0@{tmp_path / 'dead.safetensors'}",
        image_size=32, n_permutations=100,
    )  # fmt: skip
    nt = rep.sections["negative_transfer"]
    assert nt["risk"] == "high" and nt["probability"] > 0.6
    assert nt["signals"]["feature_advantage"] > -0.2  # the probe alone would not flag it
    assert nt["signals"]["gradient_reach"] < 0.1 and "gradient reach" in nt["drivers"]
    assert any("block the gradient" in e for e in nt["evidence"])
    # Dead units leave the conv weights at ImageNet's scale: plasticity is not what is lost here.
    assert 0.75 < nt["signals"]["weight_scale"] < 0.85 and not nt["signals"]["plasticity_lost"]
    # ... nor in part of the network: the largest tenth of its layers is ImageNet Lite0's, 1.76
    assert 1.7 < nt["signals"]["weight_scale_top"] < 1.8
    assert "--from-scratch" in rep.sections["freeze"]["rationale"][-1]

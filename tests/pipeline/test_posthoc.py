"""compare and deploy_check on real fine-tuning runs (EfficientNet-Lite0 and a tiny timm net on real
digits, MiniLM on real speeches)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diag.data import open_data
from diag.errors import DataError
from diag.models import load
from diag.pipeline.posthoc import compare, deploy_check, finetuned_backbone
from diag.report.posthoc import load_compare, load_deploy
from diag.train import FinetuneConfig, finetune
from tests.conftest import write_digit_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = {"epochs": 1, "batch_size": 16, "image_size": 32, "augment": "none", "val_fraction": 0.25}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 real MNIST digits of 3 classes."""
    return write_digit_folder(tmp_path_factory.mktemp("ph") / "digits", per_class=20)


@pytest.fixture(scope="module")
def lite0_runs(tmp_path_factory: pytest.TempPathFactory, digits: Path) -> dict[str, Path]:
    """EfficientNet-Lite0 (real weights) fine-tuned one epoch with 6 of its 9 blocks frozen, and a
    linear probe (every block frozen)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, k in (("k6", 6), ("all", "all")):
        finetune(digits, "efficientnet_lite0", FinetuneConfig(freeze=k, lr=3e-3, **QUICK), out=root / name)
        out[name] = root / name
    return out


def test_frozen_blocks_of_a_real_run_show_cka_one_and_no_weight_change(lite0_runs, digits) -> None:
    rep = compare([lite0_runs["k6"]], data=digits, max_items=60, shift=False, save=True)
    (run,) = rep.runs
    assert run.freeze == 6 and run.frozen_check_ok and run.frozen_check_violations == []
    frozen = [b for b in run.blocks if b.frozen]
    tuned = [b for b in run.blocks if not b.frozen]
    assert [b.name for b in frozen] == ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4"]
    for b in frozen:
        assert b.bit_identical and b.weight_change == 0.0
        assert b.cka == pytest.approx(1.0, abs=1e-6)
    for b in tuned:
        assert not b.bit_identical and b.weight_change > 0
    assert min(b.cka for b in tuned if b.cka is not None) < 0.9999  # fine-tuning moved the features
    saved = load_compare(lite0_runs["k6"])
    assert saved.runs[0].blocks == run.blocks
    assert (lite0_runs["k6"] / "compare.html").read_text().count("<tr>") == 1 + len(run.blocks)


@pytest.mark.slow
def test_a_run_with_every_block_frozen_forgets_nothing(lite0_runs, digits) -> None:
    ref = open_data("samples:uci-digits").subset(list(range(0, 300, 3)))  # 100 labelled digits, 10 per class
    rep = compare([lite0_runs["all"]], data=digits, reference=ref, max_items=100, shift=False, save=False)
    (run,) = rep.runs
    assert all(b.frozen and b.bit_identical and b.weight_change == 0 for b in run.blocks)
    f = run.forgetting
    assert f is not None and f.n == 100
    assert f.forgetting_linear == 0.0 and f.forgetting_knn == 0.0
    assert f.source_top1_agreement == 1.0  # the ImageNet head reads the same features
    assert f.pooled_cka == pytest.approx(1.0, abs=1e-9)
    assert 0.1 < f.linear_pretrained <= 1


def test_runs_of_different_backbones_and_foreign_checkpoints_are_refused(lite0_runs, tmp_path) -> None:
    other = tmp_path / "other"
    shutil.copytree(lite0_runs["all"], other)
    res = json.loads((other / "result.json").read_text())
    res["backbone"]["name"] = "efficientnet_lite1"
    (other / "result.json").write_text(json.dumps(res))
    with pytest.raises(DataError, match="different backbones"):
        compare([lite0_runs["all"], other], shift=False, save=False)
    with pytest.raises(DataError, match="do not fit backbone 'efficientnet_lite1'"):
        finetuned_backbone(other)


def test_a_run_folder_without_checkpoint_or_result_is_refused(lite0_runs, tmp_path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(lite0_runs["all"] / "result.json", bare / "result.json")
    with pytest.raises(DataError, match=r"holds no checkpoint \(best.pt or last.pt\).*--save-best"):
        compare([bare], save=False)
    with pytest.raises(DataError, match="not a diag finetune run folder"):
        deploy_check(tmp_path, "samples:uci-digits")


def test_unlabelled_data_is_refused_for_accuracies(lite0_runs, tmp_path) -> None:
    flat = write_digit_folder(tmp_path / "one", per_class=3, classes=("0",)) / "0"  # images, no classes
    with pytest.raises(DataError, match="has no labels"):
        deploy_check(lite0_runs["all"], flat)
    with pytest.raises(DataError, match="has no labels"):
        compare([lite0_runs["all"]], data=flat, reference=flat, shift=False, save=False)


def test_deploy_check_of_a_tiny_conv_net(tmp_path, digits) -> None:
    """The fast path: static int8 of a tiny random-init timm net fine-tuned on real digits."""
    cfg = FinetuneConfig(epochs=2, **{k: v for k, v in QUICK.items() if k != "epochs"})
    tiny = load("timm:test_efficientnet", pretrained=False, image_size=32, seed=0)
    finetune(digits, tiny, cfg, out=tmp_path / "run")
    rep = deploy_check(tmp_path / "run", digits, n_calibration=24, n_permutations=20, latency_rounds=2,
                       n_resamples=200)  # fmt: skip
    assert rep.n_calibration == 24 and rep.n_items == 36
    assert rep.accuracy_drop == pytest.approx(rep.accuracy_fp32 - rep.accuracy_int8)
    lo, hi = rep.accuracy_drop_ci
    assert lo <= rep.accuracy_drop <= hi
    assert rep.quantization["method"] == "static" and rep.size_ratio < 1
    assert set(rep.latency) == {"batch_1", "batch_32"}
    assert rep.layers[0].name == "stem" and all(0 <= x.cka <= 1 for x in rep.layers)
    back = load_deploy(tmp_path / "run")
    assert back.layers == rep.layers and back.accuracy_drop == rep.accuracy_drop
    assert "accuracy: fp32" in (tmp_path / "run" / "deploy.md").read_text()


@pytest.mark.slow
def test_static_int8_lite0_accuracy_drop_on_real_digits(lite0_runs) -> None:
    data = open_data("samples:uci-digits")
    classes = {"0", "1", "2"}
    idx = [i for i, c in enumerate(data.labels) if data.classes[c] in classes]
    rep = deploy_check(lite0_runs["k6"], data.subset(idx), n_calibration=30, n_permutations=20,
                       latency_rounds=3, n_resamples=500, save=False)  # fmt: skip
    assert rep.quantization["method"] == "static" and rep.n_items == 60
    assert rep.quantization["left_in_float"] == {}
    assert 0.25 <= rep.size_ratio <= 0.3  # int8 weights; fp32 biases, scales, zero points
    assert abs(rep.accuracy_drop) <= 0.15
    assert rep.agreement >= 0.8


@pytest.mark.slow
def test_dynamic_int8_minilm_accuracy_drop_on_real_speeches(tmp_path) -> None:
    data = open_data("samples:speeches")
    idx = np.random.default_rng(0).permutation(len(data))
    train, test = data.subset(np.sort(idx[:160])), data.subset(np.sort(idx[160:320]))
    cfg = FinetuneConfig(freeze="all", epochs=3, batch_size=32, max_length=64, lr=1e-2)
    finetune(train, "minilm", cfg, out=tmp_path / "run")
    rep = deploy_check(tmp_path / "run", test, n_permutations=20, latency_rounds=3, n_resamples=500)
    assert rep.quantization["method"] == "dynamic" and rep.n_calibration == 0 and rep.n_items == 160
    assert "Embedding" in rep.quantization["left_in_float"]
    assert abs(rep.accuracy_drop) <= 0.1 and rep.agreement >= 0.85
    assert rep.accuracy_fp32 > 0.55  # above chance for two parties

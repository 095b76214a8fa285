"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) with a private embedding cache."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA, and this machine has no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One private embedding cache for the whole session, set before any module-scoped fixture runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIAG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "diag-cache"))
        yield


@pytest.fixture(scope="session")
def lite0():
    from diag.models import load

    return load("efficientnet_lite0")


@pytest.fixture(scope="session")
def minilm():
    from diag.models import load

    return load("minilm")


@pytest.fixture(scope="session")
def tiny_image_backbone():
    """timm's tiny EfficientNet, random init: fast plumbing tests, no weights needed."""
    from diag.models import load

    return load("timm:test_efficientnet", pretrained=False, image_size=32)


def write_digit_folder(root: Path, *, per_class: int = 4, classes: tuple[str, ...] = ("0", "1", "2")) -> Path:
    """A small labelled image folder of real MNIST digits from the bundled sample."""
    from diag.data.samples import open_sample

    src = open_sample("mnist")
    assert src.labels is not None
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(np.asarray(src.classes)[src.labels] == c)[:per_class]
        for j, i in enumerate(idx):
            src.load_image(int(i)).save(root / c / f"{j:03d}.png")
    return root


@pytest.fixture
def digit_folder(tmp_path: Path) -> Path:
    return write_digit_folder(tmp_path / "digits")


def solid_png(path: Path, value: int, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """The 2-core test machines are shared: one intra-op thread avoids OpenMP spin-waits under load."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: The dashboard tests' report, as the Run page would be filled in for it.
DASHBOARD_INPUTS = {
    "source": "samples:mnist",
    "target": "samples:uci-digits",
    "backbone": "efficientnet_lite0",
    "image_size": 112,
    "n_permutations": 200,
    "seed": 0,
    "text_column": "text",
    "label_column": "label",
}


@pytest.fixture(scope="session")
def dashboard_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's runs folder for the dashboard tests (test_dashboard.py and test_browser.py)."""
    root = tmp_path_factory.getbasetemp() / "dashboard-runs"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def dashboard_report(dashboard_runs: Path):
    """MNIST vs UCI digits under EfficientNet-Lite0 at 112 px, built once per session in the folder the Run
    page picks for these inputs. 112 px as in tests/pipeline/test_diagnose.py: the embedding cache serves
    both."""
    import sys

    from diag.pipeline import diagnose

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dashboard"))
    import _common

    i = DASHBOARD_INPUTS
    out = _common.report_folder_for(dashboard_runs, **i)
    return diagnose(
        i["source"], i["target"], i["backbone"], out=out, image_size=i["image_size"],
        n_permutations=i["n_permutations"],
    )  # fmt: skip


def run_finetune_cli(tmp_path: Path, capsys: Any, freeze: str, epochs: int) -> tuple[Path, str]:
    """``diag finetune`` on a 4-class, 10-per-class digit folder with Lite0 at 32 px and ``--freeze
    freeze``; asserts it exits 0 and returns the run folder and what it printed."""
    from diag.cli.main import main

    folder = write_digit_folder(tmp_path / "d", per_class=10, classes=("0", "1", "2", "3"))
    out = tmp_path / "ft"
    args = ["finetune", "--target", str(folder), "--backbone", "efficientnet_lite0", "--freeze", freeze]
    args += ["--image-size", "32", "--epochs", str(epochs), "--out", str(out)]
    assert main(args) == 0
    return out, capsys.readouterr().out

"""The transfer stage's item cap: a stratified seeded subsample above it, identical results below it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import diag.predict.layers as layers_mod
from diag.predict.layers import TRANSFER_MAX_ITEMS, layer_transfer, transfer_subsample
from tests.predict.test_profile import make_embeddings


def _separable(n_per: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(n_per)), n_per)
    d = len(n_per) + 2
    x = rng.standard_normal((y.size, d)) + 4 * np.eye(d)[y]
    return x, y


def test_subsample_is_none_at_or_below_the_cap() -> None:
    y = np.repeat([0, 1], 50)
    assert transfer_subsample(y, 100) is None
    assert transfer_subsample(y, None) is None
    assert transfer_subsample(y, 99) is not None
    assert TRANSFER_MAX_ITEMS >= 5000  # every truth-table target (100-600 items, a few thousand at most)


def test_subsample_keeps_every_class_its_share() -> None:
    y = np.repeat([0, 1, 2, 3], [700, 250, 47, 3])  # 1000 items, one class below the per-class floor
    idx = transfer_subsample(y, 200, seed=3)
    assert idx is not None
    assert idx.size == 200 and np.all(np.diff(idx) > 0)  # at most the cap, sorted, no repeats
    kept = np.bincount(y[idx], minlength=4)
    assert kept[3] == 3  # the tiny class kept whole (the 5-fold probes need its items)
    # the others: their share of the 197 places left, within one item
    share = 197 * np.array([700, 250, 47]) / 997
    assert np.all(np.abs(kept[:3] - share) <= 1)
    again = transfer_subsample(y, 200, seed=3)
    assert again is not None and np.array_equal(idx, again)
    other = transfer_subsample(y, 200, seed=4)
    assert other is not None and not np.array_equal(idx, other)


def test_layer_transfer_below_the_cap_is_unchanged() -> None:
    x, y = _separable((40, 30, 30))
    emb = make_embeddings({"a": x[:, ::-1].copy(), "b": x}, labels=y, classes=("p", "q", "r"))
    uncapped = layer_transfer(emb, max_items=None)
    assert layer_transfer(emb) == uncapped  # the default cap: 100 items is far below it
    assert layer_transfer(emb, max_items=100) == uncapped  # exactly at the cap


def test_layer_transfer_fits_on_at_most_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _separable((300, 120, 80), seed=1)
    emb = make_embeddings({"a": x}, labels=y, classes=("p", "q", "r"))
    seen: list[tuple[str, int, np.ndarray]] = []

    def spy(name: str, fn: Any) -> Any:
        def wrapped(features: Any, labels: Any, **kw: Any) -> Any:
            seen.append((name, np.asarray(features).shape[0], np.bincount(np.asarray(labels), minlength=3)))
            return fn(features, labels, **kw)

        return wrapped

    monkeypatch.setattr(layers_mod, "linear_probe_accuracy", spy("probe", layers_mod.linear_probe_accuracy))
    monkeypatch.setattr(layers_mod, "transferability", spy("scores", layers_mod.transferability))
    res = layer_transfer(emb, max_items=100)
    assert {name for name, _, _ in seen} == {"probe", "scores"}
    for _, n, counts in seen:
        assert n == 100
        assert counts.tolist() == [60, 24, 16]  # 300:120:80 of 100
    assert res["a"]["scores"]["linear_probe_accuracy"] > 0.9  # well-separated classes still read as such


def test_diagnose_fits_the_twin_and_reports_on_the_subsample(
    tmp_path: Path, tiny_image_backbone: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    from diag.pipeline import diagnose

    diag_mod = importlib.import_module(
        "diag.pipeline.diagnose"
    )  # the module (the package exports the function)
    from tests.conftest import write_digit_folder

    target = write_digit_folder(tmp_path / "t", per_class=20)  # 60 items, 3 classes
    monkeypatch.setattr(diag_mod, "TRANSFER_MAX_ITEMS", 30)
    sizes: list[int] = []
    real = diag_mod.layer_transfer

    def spy(emb: Any, **kw: Any) -> Any:
        out = real(emb, **kw)
        sizes.append(len(emb) if kw.get("max_items") is None else min(len(emb), kw["max_items"]))
        return out

    monkeypatch.setattr(diag_mod, "layer_transfer", spy)
    rep = diagnose("samples:mnist", target, tiny_image_backbone, n_permutations=200, rgn=False)
    assert sizes == [30, 30]  # the pretrained curve and the twin's, on 30 of the 60 items
    items = rep.sections["transferability"]["items"]
    assert items == {"n_target": 60, "n_fitted": 30, "max_items": 30, "subsampled": True}
    assert "negative_transfer" in rep.sections

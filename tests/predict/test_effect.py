"""diag.predict.effect: a graded effect that keeps growing where the C2ST AUC saturates."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from diag.predict.effect import EFFECT_NAME, graded_effect
from diag.stats.shift import c2st


def test_graded_effect_section_is_monotone_on_a_synthetic_ladder():
    rng = np.random.default_rng(0)
    src = {"low": rng.normal(size=(200, 6)), "deep": rng.normal(size=(200, 6))}
    base = {"low": rng.normal(size=(200, 6)), "deep": rng.normal(size=(200, 6))}
    values = []
    for shift in (0.0, 0.5, 1.0, 2.0, 3.0, 5.0):
        tgt = {"low": base["low"], "deep": base["deep"] + shift * np.r_[1.0, 1, 0, 0, 0, 0]}
        g = graded_effect(src, tgt, ["low", "deep"], device="cpu")
        assert g["name"] == EFFECT_NAME and g["layer"] == "deep" and set(g["layers"]) == {"low", "deep"}
        assert g["ci"][0] <= g["value"] <= g["ci"][1]
        values.append(g["value"])
    assert abs(values[0]) < 0.02
    assert all(b > a for a, b in itertools.pairwise(values))


def _ladder_folder(root: Path, images: list[Image.Image], transform) -> Path:
    root.mkdir(parents=True)
    for i, im in enumerate(images):
        transform(im, i).save(root / f"{i:03d}.png")
    return root


@pytest.mark.slow
def test_relative_energy_grows_on_noise_and_blur_ladders_of_real_digits(tmp_path):
    """MNIST digits through EfficientNet-Lite0 at 32 px: clean source, target with pixel noise σ 0.05 →
    0.35 (the same noise pattern scaled) and Gaussian blur radius 0.5 → 3; 150 items per side."""
    import diag
    from diag.data.samples import open_sample
    from diag.models import load

    data = open_sample("mnist")
    images = [data.load_image(i).convert("RGB") for i in range(300)]
    bb = load("efficientnet_lite0", image_size=32)
    src = diag.embed(_ladder_folder(tmp_path / "src", images[:150], lambda im, i: im), bb)
    base = images[150:]
    eps = np.random.default_rng(0).normal(size=(150, *np.asarray(base[0]).shape))

    def noisy(sigma: float):
        def f(im: Image.Image, i: int) -> Image.Image:
            a = np.asarray(im, dtype=float) / 255.0 + sigma * eps[i]
            return Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))

        return f

    def blurred(radius: float):
        return lambda im, i: im.filter(ImageFilter.GaussianBlur(radius))

    layer = src.probes[-1].name
    for name, ladder in (
        ("noise", [noisy(s) for s in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35)]),
        ("blur", [blurred(r) for r in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)]),
    ):
        effects, aucs = [], []
        for k, f in enumerate(ladder):
            tgt = diag.embed(_ladder_folder(tmp_path / f"{name}{k}", base, f), bb)
            g = graded_effect(src, tgt, [layer], device="cpu")
            effects.append(g["value"])
            aucs.append(c2st(src[layer], tgt[layer], n_permutations=10, random_state=0).auc)
        assert all(b > a for a, b in itertools.pairwise(effects)), (name, effects, aucs)
        assert effects[-1] > 2 * effects[1], (name, effects)

"""Linear CKA against its closed forms, relative weight change, the paired bootstrap of a difference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diag.errors import DiagError
from diag.stats.similarity import linear_cka, paired_bootstrap_diff, relative_change


def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The kernel form of Kornblith et al. (2019), eq. 3: HSIC with the centering matrix H = I - 11ᵀ/n,
    HSIC(K, L) = tr(K H L H) / (n-1)², on linear kernels K = XXᵀ, L = YYᵀ (no column centering)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h)) / (n - 1) ** 2

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_cka_of_a_representation_with_itself_and_its_rotations_is_one() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12)) + 3.0
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 7.5 * x @ q + 2.0) == pytest.approx(1.0, abs=1e-10)  # isotropic scale and shift


@pytest.mark.parametrize(("n", "p", "q"), [(50, 8, 5), (20, 40, 30)])  # feature form, then Gram form
def test_cka_matches_the_hsic_formula(n: int, p: int, q: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, p))
    y = x[:, :1] @ rng.normal(size=(1, q)) + rng.normal(size=(n, q))
    got = linear_cka(x, y)
    assert got == pytest.approx(hsic_cka(x, y), rel=1e-9)
    assert 0 < got < 1


def test_cka_of_one_dimensional_features_is_the_squared_correlation() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 1))
    b = 0.5 * a + rng.normal(size=(200, 1))
    r = np.corrcoef(a[:, 0], b[:, 0])[0, 1]
    assert linear_cka(a, b) == pytest.approx(r**2, rel=1e-9)


def test_cka_refuses_mismatched_rows_and_constant_features() -> None:
    x = np.random.default_rng(2).normal(size=(10, 3))
    with pytest.raises(DiagError, match="same rows"):
        linear_cka(x, x[:9])
    with pytest.raises(DiagError, match="constant"):
        linear_cka(x, np.ones((10, 4)))


def test_relative_change_and_bit_identity() -> None:
    before = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[0.0, 4.0]])}
    after = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[0.0, 9.0]])}
    assert relative_change(before, after) == (pytest.approx(1.0), False)  # ||(0,0,0,5)|| / ||(3,0,0,4)||
    assert relative_change(before, after, ["a"]) == (0.0, True)
    with pytest.raises(DiagError, match="missing"):
        relative_change(before, after, ["c"])


def test_paired_bootstrap_of_a_difference() -> None:
    a = np.array([1, 1, 1, 1, 0, 1, 0, 1, 1, 1] * 10)
    b = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 0] * 10)
    d, (lo, hi) = paired_bootstrap_diff(a, b, n_resamples=4000)
    assert d == pytest.approx(0.2)
    # the paired differences are 0/1 with p = 0.2: the normal CI is 0.2 ± 1.96 * 0.04
    assert lo == pytest.approx(0.2 - 1.96 * 0.04, abs=0.02)
    assert hi == pytest.approx(0.2 + 1.96 * 0.04, abs=0.02)
    assert paired_bootstrap_diff(a, a) == (0.0, [0.0, 0.0])

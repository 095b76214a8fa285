"""diag.stats.attribution against independent implementations of the published formulas."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import norm
from sklearn.metrics import adjusted_rand_score

from diag.errors import DiagError
from diag.stats.attribution import domain_probabilities, energy_effect, kmeans_clusters, mmd_witness
from diag.stats.shift import mmd_test


def _gauss(a: np.ndarray, b: np.ndarray, widths: list[float]) -> np.ndarray:
    d2 = cdist(a, b, "sqeuclidean")
    return np.mean([np.exp(-d2 / (2 * w * w)) for w in widths], axis=0)


def test_witness_is_gretton_witness_and_decomposes_unbiased_mmd2():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    y = rng.normal(size=(45, 4)) + np.r_[1.5, 0, 0, 0]
    widths = [0.8, 1.6, 3.2]
    wx, wy = mmd_witness(x, y, widths, device="cpu")
    kxx, kyy, kxy = _gauss(x, x, widths), _gauss(y, y, widths), _gauss(x, y, widths)
    # f(z) = mean_j k(z, y_j) - mean_i k(z, x_i), each row left out of its own side's mean
    want_y = (kyy.sum(1) - 1.0) / (len(y) - 1) - kxy.mean(0)
    want_x = kxy.mean(1) - (kxx.sum(1) - 1.0) / (len(x) - 1)
    np.testing.assert_allclose(wy, want_y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(wx, want_x, rtol=1e-10, atol=1e-12)
    mmd2 = mmd_test(x, y, bandwidths=widths, n_permutations=1, device="cpu").mmd2
    assert wy.mean() - wx.mean() == pytest.approx(mmd2, rel=1e-9)
    assert wy.mean() > 0 > wx.mean()  # the target's region is where the witness is positive


def test_witness_rejects_bad_bandwidths():
    x = np.zeros((5, 2))
    with pytest.raises(DiagError, match="bandwidths"):
        mmd_witness(x, x + 1, [0.0])


def _energy_direct(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    m, n = len(x), len(y)
    a = cdist(x, y).mean()
    b = cdist(x, x).sum() / (m * (m - 1))
    c = cdist(y, y).sum() / (n * (n - 1))
    return 2 * a - b - c, b


def test_energy_effect_matches_the_u_statistic_and_the_gaussian_closed_form():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(80, 3)), rng.normal(size=(70, 3)) * 1.5
    r = energy_effect(x, y, device="cpu")
    e, b = _energy_direct(x, y)
    # distances from the Gram matrix: about 1e-9 relative from cdist's direct differences
    assert r.energy == pytest.approx(e, rel=1e-6) and r.scale == pytest.approx(b, rel=1e-6)
    assert r.value == pytest.approx(e / b, rel=1e-6)
    # 1-d N(0,1) vs N(δ,1): E|X-Y| for X-Y ~ N(δ, 2), E|X-X'| = 2/√π (Székely & Rizzo 2013)
    delta, s = 1.0, math.sqrt(2.0)
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-(delta**2) / (2 * s * s)) + delta * (
        1 - 2 * norm.cdf(-delta / s)
    )
    truth = (2 * e_xy - 2 * (2 / math.sqrt(math.pi))) / (2 / math.sqrt(math.pi))
    covered = 0
    for rep in range(20):
        g = np.random.default_rng(100 + rep)
        r = energy_effect(g.normal(size=(400, 1)), g.normal(size=(400, 1)) + delta, device="cpu")
        covered += r.ci[0] <= truth <= r.ci[1]
    assert covered >= 16  # nominal 95%: 19 of 20 expected


def test_energy_effect_is_zero_without_shift_and_grows_without_saturating():
    rng = np.random.default_rng(2)
    null = [
        energy_effect(rng.normal(size=(150, 8)), rng.normal(size=(150, 8)), device="cpu").value
        for _ in range(20)
    ]
    assert abs(np.mean(null)) < 3 * np.std(null) / math.sqrt(len(null)) + 1e-3
    x = rng.normal(size=(200, 8))
    values = [energy_effect(x, rng.normal(size=(200, 8)) + d, device="cpu").value for d in (0.5, 1, 2, 4, 8)]
    assert all(b > a for a, b in itertools.pairwise(values))
    assert values[-1] > 5  # far past the point where a classifier is perfect


def test_domain_probabilities_find_the_injected_rows_out_of_fold():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 20))
    y = rng.normal(size=(300, 20))
    y[:30, :2] += 6.0  # a 10% sub-population the source lacks
    d = domain_probabilities(x, y, random_state=0)
    assert d.source.shape == (300,) and d.target.shape == (300,)
    top = np.argsort(-d.target)[:30]
    assert np.mean(top < 30) >= 0.9
    # no shift: probabilities hover around 0.5 and the AUC near chance
    d0 = domain_probabilities(x, rng.normal(size=(300, 20)), random_state=0)
    assert 0.4 < d0.auc < 0.6 and abs(np.median(d0.target) - 0.5) < 0.1


def test_kmeans_chooses_the_number_of_separated_blobs():
    rng = np.random.default_rng(4)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    truth = np.repeat(np.arange(3), 40)
    z = centres[truth] + rng.normal(size=(120, 2))
    labels, k, sil = kmeans_clusters(z, random_state=0)
    assert k == 3 and sil > 0.7 and adjusted_rand_score(truth, labels) == 1.0
    with pytest.raises(DiagError, match="k_range"):
        kmeans_clusters(z, k_range=(1, 3))

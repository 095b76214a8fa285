"""diag.stats.summaries: mergeable moments, the RFF mean embedding, the reservoir, and the BN distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from diag.errors import DataError
from diag.stats.summaries import (
    FIXED_POINT_BITS,
    MeanEmbedding,
    Moments,
    Reservoir,
    bn_w2_per_channel,
    frechet_from_moments,
    rff_mmd_test,
)


def test_moments_give_numpy_mean_and_covariance_and_merge_like_concatenation() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(2.0, 3.0, size=(50, 6)), rng.normal(-1.0, 0.5, size=(70, 6))
    whole = Moments(6).update(np.concatenate([a, b]))
    merged = Moments(6).update(a[:20]).update(a[20:]).merge(Moments(6).update(b))
    assert merged.count == whole.count == 120
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.covariance, whole.covariance, rtol=1e-9)
    both = np.concatenate([a, b])
    np.testing.assert_allclose(whole.mean, both.mean(0), rtol=1e-12)
    np.testing.assert_allclose(whole.covariance, np.cov(both, rowvar=False), rtol=1e-9, atol=1e-12)


def test_moments_refuse_too_few_rows_and_wrong_widths() -> None:
    m = Moments(3).update(np.ones((1, 3)))
    with pytest.raises(DataError, match="at least 2"):
        _ = m.covariance
    with pytest.raises(DataError, match="4 features; this summary was built on 3"):
        m.update(np.ones((2, 4)))


def test_frechet_from_moments_matches_scipy_sqrtm_form() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    cx, cy = a @ a.T + np.eye(5), b @ b.T + 0.3 * np.eye(5)
    mx, my = rng.normal(size=5), rng.normal(size=5)
    want = np.sum((mx - my) ** 2) + np.trace(cx + cy - 2 * scipy.linalg.sqrtm(cx @ cy).real)
    assert frechet_from_moments(mx, cx, my, cy) == pytest.approx(want, rel=1e-9)
    assert frechet_from_moments(mx, cx, mx, cx) == pytest.approx(0.0, abs=1e-9)


def test_rff_inner_products_approximate_the_gaussian_kernel() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 3))
    emb = MeanEmbedding(3, bandwidth=1.5, n_features=20000, seed=3)
    phi = emb.features(x)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    kernel = np.exp(-d2 / (2 * 1.5**2))
    # Monte Carlo error of a D-term average of bounded terms: about 1/sqrt(D) = 0.007.
    assert np.abs(phi @ phi.T - kernel).max() < 0.05


def test_mean_embedding_merges_exactly_in_any_order() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 8))
    whole = MeanEmbedding(8, 2.0, 64, seed=5).update(x)
    parts = [MeanEmbedding(8, 2.0, 64, seed=5).update(x[i : i + 70]) for i in range(0, 300, 70)]
    merged = parts[3].merge(parts[0]).merge(parts[4]).merge(parts[2]).merge(parts[1])
    assert merged.count == 300
    np.testing.assert_array_equal(merged.fixed_sum, whole.fixed_sum)
    np.testing.assert_array_equal(merged.mean, whole.mean)
    # The fixed-point mean is the float mean to the grid's resolution.
    assert np.abs(whole.mean - whole.features(x).mean(0)).max() <= 2.0 ** -(FIXED_POINT_BITS + 1)


def test_mean_embeddings_of_other_maps_do_not_merge() -> None:
    a, b = MeanEmbedding(4, 1.0, 16, seed=0), MeanEmbedding(4, 2.0, 16, seed=0)
    with pytest.raises(DataError, match="same bandwidth"):
        a.merge(b)


def test_rff_mmd_test_is_calibrated_and_has_power() -> None:
    rng = np.random.default_rng(6)
    rejections = 0
    trials = 200
    for t in range(trials):
        ref = MeanEmbedding(4, 2.0, 128, seed=t).update(rng.normal(size=(2000, 4)))
        res = rff_mmd_test(ref, rng.normal(size=(300, 4)), n_draws=2000, random_state=t)
        rejections += res.p_value <= 0.05
    # Binomial(200, 0.05): sd 0.015; [0.02, 0.09] is beyond 2 sd either way.
    assert 0.02 <= rejections / trials <= 0.09
    ref = MeanEmbedding(4, 2.0, 128, seed=0).update(rng.normal(size=(2000, 4)))
    assert rff_mmd_test(ref, rng.normal(size=(300, 4)) + 0.4, n_draws=2000).p_value < 0.001


def test_reservoir_is_uniform_over_the_stream() -> None:
    counts = np.zeros(100)
    for seed in range(400):
        res = Reservoir(10, 1, seed=seed)
        x = np.arange(100, dtype=np.float64)[:, None]
        for i in range(0, 100, 7):  # uneven batches
            res.update(x[i : i + 7], [str(j) for j in range(i, min(i + 7, 100))])
        assert res.seen == 100 and len(res.ids) == 10 and len(set(res.ids)) == 10
        np.testing.assert_array_equal(res.rows[:, 0], [float(i) for i in res.ids])
        counts[[int(i) for i in res.ids]] += 1
    # Each item is kept with probability 0.1: 40 expected per item over 400 streams (sd 6).
    assert counts.min() > 15 and counts.max() < 70
    assert abs(counts[:50].sum() - counts[50:].sum()) < 0.1 * counts.sum()


def test_reservoir_merge_draws_each_side_in_proportion() -> None:
    from_a = []
    for seed in range(300):
        a = Reservoir(20, 1, seed=seed).update(np.zeros((300, 1)), [f"a{i}" for i in range(300)])
        b = Reservoir(20, 1, seed=seed + 1000).update(np.ones((100, 1)), [f"b{i}" for i in range(100)])
        m = a.merge(b, seed=seed)
        assert m.seen == 400 and len(m.ids) == 20 and len(set(m.ids)) == 20
        np.testing.assert_array_equal(m.rows[:, 0], [0.0 if i.startswith("a") else 1.0 for i in m.ids])
        from_a.append(sum(i.startswith("a") for i in m.ids))
    # Hypergeometric mean 20 * 300 / 400 = 15.
    assert np.mean(from_a) == pytest.approx(15.0, abs=0.3)


def test_small_reservoirs_merge_into_everything() -> None:
    a = Reservoir(10, 2).update(np.zeros((3, 2)), ["a", "b", "c"])
    b = Reservoir(10, 2).update(np.ones((4, 2)), ["d", "e", "f", "g"])
    assert sorted(a.merge(b).ids) == list("abcdefg")


def test_bn_w2_is_the_closed_form_of_one_dimensional_gaussians() -> None:
    got = bn_w2_per_channel([0.0, 1.0], [4.0, 1.0], [1.0, 1.0], [9.0, 1.0])
    # (1 - 0)² + (3 - 2)² = 2 in units of 4; identical channel: 0.
    np.testing.assert_allclose(got, [2.0 / 4.0, 0.0])
    # Against a numerical W2: quantile functions of the two Gaussians, integrated.
    from scipy import stats

    q = (np.arange(20000) + 0.5) / 20000
    w2 = np.mean((stats.norm.ppf(q, 0.3, 1.7) - stats.norm.ppf(q, -0.2, 0.9)) ** 2)
    assert bn_w2_per_channel([-0.2], [0.81], [0.3], [1.7**2])[0] * 0.81 == pytest.approx(w2, rel=1e-3)
    assert math.isfinite(bn_w2_per_channel([0.0], [0.0], [0.0], [0.0])[0])

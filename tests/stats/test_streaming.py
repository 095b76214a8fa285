"""diag.stats.streaming: the random-feature MMD from summaries, its null law, and moment distances."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from diag.errors import DataError
from diag.stats.projection import joint_projection
from diag.stats.shift import coral_distance, frechet_distance
from diag.stats.streaming import (
    FourierMap,
    KernelSummary,
    covariance_distances,
    linear_mmd_test,
    moments_in_blocks,
    place_on_map,
    placed_projection,
    stratified_rows,
    weighted_chi2_sf,
)


def test_weighted_chi2_with_equal_weights_is_the_chi2_law() -> None:
    for k, lam in ((1, 1.0), (5, 0.3), (50, 2.0)):
        for x in (0.1, 1.0, 3.0, 10.0):
            p, how = weighted_chi2_sf(x * k * lam, [lam] * k)
            assert how == "chi2"
            assert p == pytest.approx(stats.chi2.sf(x * k, k), rel=1e-9, abs=1e-300)


def test_weighted_chi2_matches_monte_carlo_and_its_tail_is_bounded() -> None:
    rng = np.random.default_rng(0)
    lam = np.array([3.0, 1.0, 0.5, 0.2, 0.1, 0.05])
    draws = (rng.standard_normal((200_000, lam.size)) ** 2) @ lam
    for x in np.quantile(draws, [0.3, 0.8, 0.95, 0.99]):
        p, how = weighted_chi2_sf(float(x), lam)
        share = float(np.mean(draws >= x))
        assert how == "imhof"
        assert abs(p - share) < 4.0 * np.sqrt(share * (1 - share) / draws.size) + 1e-4
    # Q = Z₁² + 0.5 Z₂² is sandwiched: P(Z₁² ≥ x) ≤ P(Q ≥ x) ≤ P(Z₁² + Z₂² ≥ x).
    # Deep in the tail the value is at most the Chernoff bound min_t E[e^{tQ}] e^{-tx} (on a grid of t).
    t = np.linspace(1e-4, 0.4999, 20_000)
    for x in (2.0, 10.0, 40.0, 120.0):
        p, _ = weighted_chi2_sf(x, [1.0, 0.5])
        chernoff = np.min((1 - 2 * t) ** -0.5 * (1 - t) ** -0.5 * np.exp(-t * x))
        assert stats.chi2.sf(x, 1) * (1 - 1e-6) <= p <= min(stats.chi2.sf(x, 2), chernoff) * (1 + 1e-3) + 2e-6
    assert weighted_chi2_sf(-1.0, [1.0, 0.5])[0] == 1.0
    assert weighted_chi2_sf(1e5, [1.0, 0.5]) == (np.finfo(float).tiny, "chernoff")  # no p-value of 0


def test_weighted_chi2_deep_in_the_tail_skips_the_imhof_integral(monkeypatch: pytest.MonkeyPatch) -> None:
    # Where the Chernoff bound is below Imhof's floor, the integral's value could not be returned; it
    # oscillates q·top/4π times there and cost 17 s per call at q = 1e4 on 1020 weights (the streaming
    # profile's time per layer on strongly shifted data), so it must not be computed at all.
    import scipy.integrate

    rng = np.random.default_rng(0)
    lam = np.sort(rng.exponential(size=1020)) ** 3
    lam /= lam.sum()
    expected = {q: weighted_chi2_sf(q, lam) for q in (30.0, 1e4)}
    calls: list[float] = []

    def no_quad(*args: object, **kwargs: object) -> None:
        calls.append(1.0)
        raise AssertionError("the Imhof integral was computed")

    monkeypatch.setattr(scipy.integrate, "quad", no_quad)
    for q, (p, how) in expected.items():
        assert how == "chernoff" and p < 1e-6
        assert weighted_chi2_sf(q, lam) == (p, how)
        # The bound itself, min over t of E[e^{tQ}] e^{-tq}, recomputed on a grid of t (denser towards
        # 1 / (2 λ_max), where the minimum lies deep in the tail): the value returned is that bound.
        t_max = 0.5 / lam.max()
        near = t_max * (1.0 - np.geomspace(1e-9, 1e-3, 2000))
        t = np.concatenate([np.linspace(0.0, t_max, 2001)[:-1], near])
        log_mgf = -0.5 * np.log1p(-2.0 * t[:, None] * lam[None, :]).sum(axis=1) - t * q
        grid = max(np.exp(log_mgf.min()), np.finfo(float).tiny)
        assert grid * 0.99 <= p <= grid * (1 + 1e-6)
    assert not calls


def test_fourier_map_has_unit_rows_and_approximates_the_width_averaged_kernel() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((60, 5))
    widths = (1.0, 2.0, 4.0)
    fmap = FourierMap(5, widths, n_frequencies=3000, seed=3)
    phi = fmap(a)
    np.testing.assert_allclose(np.sum(phi * phi, axis=1), 1.0, rtol=1e-6)
    d2 = np.sum((a[:, None, :] - a[None, :, :]) ** 2, axis=-1)
    kernel = np.mean([np.exp(-d2 / (2 * w * w)) for w in widths], axis=0)
    assert np.abs(phi @ phi.T - kernel).max() < 0.1  # a few times 1/sqrt(1000) per width
    with pytest.raises(DataError, match="takes 5 features"):
        fmap(a[:, :4])


def test_linear_mmd2_is_the_unbiased_u_statistic_of_the_feature_kernel() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((40, 3)), rng.standard_normal((55, 3)) + 0.3
    fmap = FourierMap(3, (1.0, 2.0), n_frequencies=64, seed=0)
    px, py = fmap(x), fmap(y)
    res = linear_mmd_test(KernelSummary(128).update(px), KernelSummary(128).update(py))
    kxx, kyy, kxy = px @ px.T, py @ py.T, px @ py.T
    m, n = len(x), len(y)
    u_stat = (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )
    # ‖φ‖² = 1 up to the float32 rounding of the projection: the same sums, to about 1e-8.
    assert res.mmd2 == pytest.approx(u_stat, rel=1e-6)
    assert res.statistic == pytest.approx(np.sum((px.mean(0) - py.mean(0)) ** 2), rel=1e-12)


def test_kernel_summaries_of_shards_merge_into_the_one_pass_summary() -> None:
    rng = np.random.default_rng(3)
    phi = FourierMap(4, (1.0,), n_frequencies=32, seed=0)(rng.standard_normal((300, 4)))
    whole = KernelSummary(64, sample_size=100).update(phi)
    cuts = ((0, 70), (70, 210), (210, 300))
    shards = [KernelSummary(64, sample_size=100).update(phi[a:b]) for a, b in cuts]
    merged = shards[0].merge(shards[1]).merge(shards[2])
    assert merged.count == whole.count == 300
    np.testing.assert_allclose(merged.total, whole.total, rtol=1e-12)
    np.testing.assert_array_equal(merged.sample, whole.sample)  # the first 100 rows, in stream order
    with pytest.raises(DataError, match="64 and 8 features"):
        whole.merge(KernelSummary(8))


def _null_rejections(n: int, splits: int, n_frequencies: int, sample: int, seed: int) -> float:
    """Share of random splits of one pooled sample (a mixture, not Gaussian) rejected at 0.05."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 8)) * 3
    pool = centres[rng.integers(0, 5, 2 * n)] + rng.standard_normal((2 * n, 8))
    fmap = FourierMap(8, (2.0, 4.0, 8.0), n_frequencies=n_frequencies, seed=seed)
    phi = fmap(pool)
    rejected = 0
    for _ in range(splits):
        order = rng.permutation(2 * n)
        sides = []
        for rows in (order[:n], order[n:]):
            s = KernelSummary(fmap.n_features, sample_size=sample, count=n, total=phi[rows].sum(axis=0))
            s.sample = phi[rows[:sample]]
            sides.append(s)
        rejected += linear_mmd_test(*sides).p_value <= 0.05
    return rejected / splits


def test_linear_mmd_is_calibrated_over_null_splits_at_20k_per_side() -> None:
    fpr = _null_rejections(20_000, splits=600, n_frequencies=32, sample=1024, seed=0)
    assert 0.03 <= fpr <= 0.07, fpr


@pytest.mark.slow
def test_linear_mmd_is_calibrated_over_independent_null_draws_at_production_size() -> None:
    """Fresh draws each time (not splits of one pool), with the profile's 4096 covariance rows a side."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(5, 8)) * 3
    fmap = FourierMap(8, (2.0, 4.0, 8.0), n_frequencies=128, seed=1)
    rejected = 0
    draws = 400  # binomial sd of the rate: 0.011
    for _ in range(draws):
        sides = []
        for _side in range(2):
            x = centres[rng.integers(0, 5, 20_000)] + rng.standard_normal((20_000, 8))
            sides.append(KernelSummary(fmap.n_features, 4096).update(fmap(x)))
        rejected += linear_mmd_test(*sides).p_value <= 0.05
    assert 0.03 <= rejected / draws <= 0.07, rejected / draws


def test_linear_mmd_has_power_on_a_small_shift() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((20_000, 8)), rng.standard_normal((20_000, 8))
    y[:, 0] += 0.08
    fmap = FourierMap(8, (2.0, 4.0, 8.0), n_frequencies=64, seed=0)
    res = linear_mmd_test(*(KernelSummary(fmap.n_features, 2048).update(fmap(a)) for a in (x, y)))
    assert res.p_value < 1e-3 and res.mmd2 > 0


def test_moment_distances_equal_the_row_formulas() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((900, 12)) @ rng.standard_normal((12, 12)) + 50.0
    y = rng.standard_normal((700, 12)) * 1.3 + 49.0
    centre = x[:100].mean(axis=0)
    mx = moments_in_blocks(x[:400], centre=centre).merge(moments_in_blocks(x[400:], centre=centre))
    got = covariance_distances(mx, moments_in_blocks(y, centre=centre))
    assert got["frechet"] == pytest.approx(frechet_distance(x, y), rel=1e-6)
    assert got["coral"] == pytest.approx(coral_distance(x, y), rel=1e-6)
    scale = np.var(x, axis=0, ddof=1).sum() + np.var(y, axis=0, ddof=1).sum()
    assert got["frechet_relative"] == pytest.approx(frechet_distance(x, y) / scale, rel=1e-6)
    np.testing.assert_allclose(mx.mean + centre, x.mean(axis=0), rtol=1e-12)


def test_stratified_rows_sample_each_side_apart() -> None:
    a, b = stratified_rows([50, 10_000], 100, seed=0)
    np.testing.assert_array_equal(a, np.arange(50))
    assert len(b) == 100 and len(np.unique(b)) == 100 and np.all(np.diff(b) > 0) and b.max() < 10_000
    np.testing.assert_array_equal(b, stratified_rows([50, 10_000], 100, seed=0)[1])


def test_rows_are_placed_next_to_their_nearest_fitted_rows() -> None:
    rng = np.random.default_rng(6)
    centres = np.zeros((3, 20))
    centres[1, 0], centres[2, 1] = 30.0, 30.0
    fit = np.concatenate([c + rng.standard_normal((50, 20)) for c in centres])
    coords = np.repeat([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], 50, axis=0) + rng.normal(size=(150, 2)) * 0.1
    new = np.concatenate([c + rng.standard_normal((40, 20)) for c in centres])
    placed = place_on_map(fit, coords, np.concatenate([fit[:5], new]), k=5)
    np.testing.assert_allclose(placed[:5], coords[:5], atol=1e-5)  # fitted rows stay where they were
    for i, where in enumerate(([0.0, 0.0], [10.0, 0.0], [0.0, 10.0])):
        assert np.abs(placed[5 + 40 * i : 5 + 40 * (i + 1)] - where).max() < 0.5
    # One neighbour at distance a, one at 3a: weights 3/4 and 1/4 (inverse distance).
    line = np.array([[0.0, 0.0], [4.0, 0.0]])
    got = place_on_map(line, [[0.0, 0.0], [1.0, 1.0]], [[1.0, 0.0]], k=2, n_components=2)
    np.testing.assert_allclose(got, [[0.25, 0.25]], rtol=1e-6)


def test_placed_projection_maps_every_row_and_keeps_the_fitted_ones() -> None:
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((700, 6)), rng.standard_normal((500, 6)) + 1.0
    full = placed_projection(x, y, "layer", max_per_side=200, method="pca")
    assert full.coords.shape == (1200, 2) and full.method == "pca+knn"
    np.testing.assert_array_equal(full.source_rows, np.arange(700))
    fitted = joint_projection(x, y, "layer", max_per_side=200, method="pca")
    np.testing.assert_allclose(full.coords[fitted.source_rows], fitted.coords[:200])
    np.testing.assert_allclose(full.coords[700 + fitted.target_rows], fitted.coords[200:])
    small = placed_projection(x, y, "layer", max_per_side=1000, method="pca")
    assert small.method == "pca"

"""Shift statistics against reference formulas, closed forms and calibration rates."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import stats
from scipy.spatial.distance import cdist

from diag.errors import ConfigError, DataError
from diag.stats import shift
from diag.stats.shift import c2st, coral_distance, frechet_distance, knn_shift_scores, label_shift, mmd_test


def gaussian_pair(m: int, n: int, d: int, *, shift_by: float = 0.0, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, d)), rng.normal(size=(n, d)) + shift_by


def direct_mmd2(x: np.ndarray, y: np.ndarray, widths: list[float]) -> float:
    """The unbiased MMD² of Gretton et al. (2012), eq. (3), written as plain sums over pairs."""

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = cdist(a, b, "sqeuclidean")
        return np.mean([np.exp(-d2 / (2 * w * w)) for w in widths], axis=0)

    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    xx = sum(kxx[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(kyy[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.sum() / (m * n))


# --------------------------------------------------------------------------------------------------
# MMD


@pytest.mark.parametrize("widths", [[0.8], [0.4, 0.8, 1.6]])
def test_mmd2_equals_direct_formula(widths: list[float]) -> None:
    x, y = gaussian_pair(7, 9, 3, shift_by=0.5, seed=1)
    res = mmd_test(x, y, bandwidths=widths, n_permutations=10, random_state=0, device="cpu")
    assert res.mmd2 == pytest.approx(direct_mmd2(x, y, widths), abs=1e-10)
    assert res.bandwidths == widths
    assert res.method == "exact"


def test_batched_permutation_statistics_equal_direct_formula() -> None:
    # Every permuted statistic comes from K @ A; check each against the formula on the permuted data.
    x, y = gaussian_pair(6, 8, 2, shift_by=1.0, seed=2)
    z = np.concatenate([x, y])
    widths = [0.7, 1.4]
    k = shift._gaussian_kernel_matrix(torch.as_tensor(z, dtype=torch.float64), widths)
    sums = shift._exact_sums(k)
    perms = np.random.default_rng(3).permuted(np.tile(np.arange(14), (5, 1)), axis=1)
    a = shift._indicator(perms[:, :6], 14, torch.float64, torch.device("cpu"))
    batched = shift._unbiased_mmd2(*sums(a), 6, 8).numpy()
    for p, value in zip(perms, batched, strict=True):
        assert value == pytest.approx(direct_mmd2(z[p[:6]], z[p[6:]], widths), abs=1e-6)


def test_rff_sums_equal_exact_sums_of_the_feature_kernel() -> None:
    # The random-feature path must compute the same statistic as the exact path on K = ΦΦᵀ.
    x, y = gaussian_pair(10, 12, 3, shift_by=0.5, seed=4)
    z = torch.as_tensor(np.concatenate([x, y]))
    phi = shift._fourier_features(z, [1.0, 2.0], np.random.default_rng(0))
    assert torch.allclose((phi * phi).sum(dim=1), torch.ones(22, dtype=torch.float64))
    perms = np.random.default_rng(5).permuted(np.tile(np.arange(22), (4, 1)), axis=1)[:, :10]
    a = shift._indicator(perms, 22, torch.float64, torch.device("cpu"))
    via_features = shift._unbiased_mmd2(*shift._rff_sums(phi)(a), 10, 12)
    via_matrix = shift._unbiased_mmd2(*shift._exact_sums(phi @ phi.T)(a), 10, 12)
    torch.testing.assert_close(via_features, via_matrix, rtol=0, atol=1e-12)


def test_rff_kernel_approximates_gaussian_kernel() -> None:
    z = torch.as_tensor(np.random.default_rng(6).normal(size=(30, 4)))
    phi = shift._fourier_features(z, [2.0], np.random.default_rng(0))
    exact = shift._gaussian_kernel_matrix(z, [2.0])
    assert float((phi @ phi.T - exact).abs().max()) < 0.15  # 512 frequencies: error ~ 1/sqrt(512)


def test_mmd_calibrated_on_same_distribution_splits() -> None:
    # A level-α test must reject about α of the time when there is no shift.
    p_values = []
    for i in range(200):
        z = np.random.default_rng(1000 + i).normal(size=(80, 5))
        p_values.append(mmd_test(z[:40], z[40:], n_permutations=200, random_state=i, device="cpu").p_value)
    p = np.array(p_values)
    assert 0.02 <= np.mean(p <= 0.05) <= 0.09
    assert stats.kstest(p, "uniform").pvalue > 0.01


def test_mmd_identical_sets_near_zero_and_not_significant() -> None:
    x, y = gaussian_pair(50, 50, 4, shift_by=1.0, seed=7)
    same = mmd_test(x, x, n_permutations=200, random_state=0, device="cpu")
    shifted = mmd_test(x, y, n_permutations=200, random_state=0, device="cpu")
    assert abs(same.mmd2) < 0.1 * shifted.mmd2
    assert same.p_value > 0.5
    assert not same.is_shift()


def test_clear_mean_shift_is_detected() -> None:
    x, y = gaussian_pair(60, 60, 5, shift_by=1.0, seed=8)
    res = mmd_test(x, y, n_permutations=200, random_state=0, device="cpu")
    assert res.p_value < 0.01 and res.p_value == pytest.approx(1 / 201)
    assert res.is_shift(0.01)
    c = c2st(x, y, random_state=0)
    assert c.auc > 0.9
    assert c.auc_ci[0] < c.auc < c.auc_ci[1] and c.auc_ci[0] > 0.8
    assert c.p_value < 0.01
    assert c.accuracy > 0.8 and c.proxy_a_distance == pytest.approx(2 * (1 - 2 * (1 - c.accuracy)))


def test_mmd_is_symmetric_and_reproducible() -> None:
    x, y = gaussian_pair(30, 45, 6, shift_by=0.3, seed=9)
    xy = mmd_test(x, y, n_permutations=100, random_state=0, device="cpu")
    yx = mmd_test(y, x, n_permutations=100, random_state=0, device="cpu")
    # Sums over the kernel matrix in another order: rounding of ~n² eps, well inside 1e-10.
    assert xy.mmd2 == pytest.approx(yx.mmd2, rel=1e-10)
    assert xy.bandwidths == pytest.approx(yx.bandwidths, rel=1e-10)
    assert mmd_test(x, y, n_permutations=100, random_state=0, device="cpu") == xy


def test_mmd_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = gaussian_pair(20, 25, 3, shift_by=0.4, seed=10)
    whole = mmd_test(x, y, n_permutations=150, random_state=3, device="cpu")
    monkeypatch.setattr(shift, "_CHUNK_ELEMS", 100)  # row blocks of 2 and permutation batches of 2
    chunked = mmd_test(x, y, n_permutations=150, random_state=3, device="cpu")
    assert chunked.mmd2 == pytest.approx(whole.mmd2, abs=1e-12)
    assert chunked.p_value == whole.p_value


def test_median_heuristic_bandwidths() -> None:
    x, y = gaussian_pair(20, 20, 3, seed=11)
    z = np.concatenate([x, y])
    median = np.median(cdist(z, z)[np.triu_indices(40, 1)])
    res = mmd_test(x, y, n_permutations=10, random_state=0, device="cpu")
    assert res.bandwidths == pytest.approx([0.5 * median, median, 2 * median], rel=1e-9)


def test_rff_path_detects_shift_and_holds_level() -> None:
    x, y = gaussian_pair(150, 150, 4, shift_by=0.7, seed=12)
    res = mmd_test(x, y, n_permutations=100, random_state=0, device="cpu", max_exact=50)
    assert res.method == "rff"
    assert res.p_value < 0.01
    p = []
    for i in range(30):
        z = np.random.default_rng(2000 + i).normal(size=(200, 4))
        r = mmd_test(z[:100], z[100:], n_permutations=100, random_state=i, device="cpu", max_exact=50)
        p.append(r.p_value)
    assert np.mean(np.array(p) <= 0.05) <= 0.15
    assert np.median(p) > 0.2


def test_mmd_result_is_frozen_and_json_native() -> None:
    x, y = gaussian_pair(10, 10, 2, seed=13)
    res = mmd_test(x, y, n_permutations=20, random_state=0, device="cpu")
    assert json.loads(json.dumps(res.to_dict())) == res.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.mmd2 = 0.0  # type: ignore[misc]
    with pytest.raises(ConfigError, match="alpha"):
        res.is_shift(1.5)


# --------------------------------------------------------------------------------------------------
# C2ST


def within_fold_relabellings(fit: shift._CrossFit, b: int, seed: int) -> np.ndarray:
    """``(b, N)`` 0/1 labellings, each permuting the domain labels within every fold."""
    rng = np.random.default_rng(seed)
    a = np.tile(fit.labels, (b, 1))
    for _, test in fit.folds:
        for row in a:
            row[test] = rng.permutation(row[test])
    return a


def naive_c2st_statistic(fit: shift._CrossFit, labels: np.ndarray, ridge: float) -> float:
    """Weighted mean held-out AUC, refitting scikit-learn's Ridge (intercept unpenalised) in every fold."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import roc_auc_score

    total, weight = 0.0, 0.0
    for train, test in fit.folds:
        model = Ridge(alpha=ridge * train.size).fit(fit.features[train], labels[train])
        n1 = labels[test].sum()
        w = n1 * (test.size - n1)
        total += w * roc_auc_score(labels[test], model.predict(fit.features[test]))
        weight += w
    return total / weight


def test_c2st_calibrated_and_interval_covers_half_on_same_distribution_splits() -> None:
    # Exact level: the p-value is uniform under no shift. The former per-fold Bonferroni p-value rejected
    # 2-7% and its bootstrap interval covered 0.5 in only 78-85% of such splits.
    p, covers = [], []
    for i in range(300):
        z = np.random.default_rng(3000 + i).normal(size=(80, 5))
        res = c2st(z[:40], z[40:], n_permutations=200, random_state=i)
        p.append(res.p_value)
        covers.append(res.auc_ci[0] <= 0.5 <= res.auc_ci[1])
    p_arr = np.array(p)
    assert 0.03 <= np.mean(p_arr <= 0.05) <= 0.07  # 300 splits; measured 0.063
    assert stats.kstest(p_arr, "uniform").pvalue > 0.01
    assert 0.91 <= np.mean(covers) <= 0.99


def test_c2st_interval_covers_true_auc_under_shift() -> None:
    # For Gaussian data a linear score w·v has AUC Φ(wᵀδ / sqrt(2 wᵀΣw)): the truth the interval targets
    # is that of the fitted fold classifiers (weighted like the statistic).
    d, covers, errors = 6, [], []
    scale = np.linspace(0.5, 2.0, d)
    delta = np.r_[0.6, 0.3, np.zeros(d - 2)] * scale
    for i in range(150):
        rng = np.random.default_rng(4000 + i)
        x, y = rng.normal(size=(60, d)) * scale, rng.normal(size=(70, d)) * scale + delta
        res = c2st(x, y, n_permutations=200, random_state=i)
        fit = shift._fit_cross(x, y, 5, 128, 0.03, np.random.default_rng(i))  # c2st's own fit
        w = fit.raw_directions()
        weights = np.array([np.sum(fit.labels[t] == 0) * np.sum(fit.labels[t] == 1) for _, t in fit.folds])
        truth = weights @ stats.norm.cdf(w @ delta / np.sqrt(2 * (w * w) @ scale**2)) / weights.sum()
        covers.append(res.auc_ci[0] <= truth <= res.auc_ci[1])
        errors.append(res.auc - truth)
    assert 0.9 <= np.mean(covers) <= 0.99
    assert abs(np.mean(errors)) < 0.01  # the held-out AUC is unbiased for the fold classifiers' AUC


def test_c2st_permuted_statistics_equal_refitting_every_fold() -> None:
    # Each relabelling's statistic comes from two matrix products; it must equal refitting the ridge.
    x, y = gaussian_pair(23, 31, 4, shift_by=0.3, seed=24)
    fit = shift._fit_cross(x, y, 4, 128, 0.03, np.random.default_rng(0))
    a = np.concatenate([fit.labels[None, :], within_fold_relabellings(fit, 6, seed=1)])
    batched = fit.statistic(a)
    for j in range(a.shape[0]):
        assert batched[j] == pytest.approx(naive_c2st_statistic(fit, a[j], 0.03), abs=1e-12)
    res = c2st(x, y, n_splits=4, n_permutations=10, random_state=0)
    assert res.auc == pytest.approx(batched[0], abs=1e-12)


# Recorded with the implementation before the permutations ran in float32 with the observed labelling
# among them (commit 0002ee6: c2st(x, y, n_permutations=4000, random_state=7) on
# gaussian_pair(m, n, d, shift_by, seed)): (m, n, d, shift_by, seed) -> (auc, auc_ci, p_value,
# variance_inflation, accuracy). Folds, principal basis, held-out scores and the permutations come from
# the same draws, so AUC and accuracy must be equal, the p-value equal up to a permuted statistic that
# float32 rounding moves across the observed one, and the inflation (a variance ratio of float32
# statistics) equal to float32 rounding.
RECORDED_C2ST = {
    (60, 70, 6, 0.25, 40): (
        0.6428571428571429,
        [0.5032818889510079, 0.7824323967632779],
        0.0189952511872032,
        1.9111533383015058,
        0.5857142857142856,
    ),
    (150, 150, 40, 0.05, 41): (
        0.5777777777777777,
        [0.48571201557760335, 0.6698435399779521],
        0.04123969007748063,
        1.9249996491445263,
        0.5466666666666666,
    ),
    (200, 180, 300, 0.0, 42): (
        0.4759722222222223,
        [0.39519866535962944, 0.5567457790848152],
        0.7268182954261435,
        1.8567709398115217,
        0.47555555555555556,
    ),
}


@pytest.mark.parametrize("case", list(RECORDED_C2ST), ids=["small", "mid", "pca"])
def test_c2st_agrees_with_the_former_implementation(case: tuple) -> None:
    m, n, d, shift_by, seed = case
    auc, ci, p_old, inflation_old, accuracy = RECORDED_C2ST[case]
    x, y = gaussian_pair(m, n, d, shift_by=shift_by, seed=seed)
    res = c2st(x, y, n_permutations=4000, random_state=7)
    assert res.auc == pytest.approx(auc, abs=1e-12) and res.accuracy == pytest.approx(accuracy, abs=1e-12)
    assert abs(res.p_value - p_old) <= 2 / 4001
    assert res.variance_inflation == pytest.approx(inflation_old, rel=1e-4)
    assert res.auc_ci == pytest.approx(ci, abs=1e-5)


def test_c2st_features_are_standardised_principal_components() -> None:
    rng = np.random.default_rng(25)
    low_rank = rng.normal(size=(90, 3)) @ rng.normal(size=(3, 40)) * np.linspace(1, 5, 40)
    x, y = low_rank[:50] + 0.01 * rng.normal(size=(50, 40)), low_rank[50:] + 0.01 * rng.normal(size=(40, 40))
    fit = shift._fit_cross(x, y, 5, 3, 0.03, np.random.default_rng(0))
    assert fit.basis is not None and fit.basis.shape == (40, 3)
    np.testing.assert_allclose(fit.basis.T @ fit.basis, np.eye(3), atol=1e-10)
    z = np.concatenate([x, y])
    z = (z - z.mean(0)) / z.std(0)
    top = np.linalg.svd(z, full_matrices=False)[2][:3].T
    assert np.linalg.svd(top.T @ fit.basis, compute_uv=False).min() > 0.999  # same subspace
    np.testing.assert_allclose(fit.features, (z @ fit.basis)[fit.order], atol=1e-10)
    np.testing.assert_array_equal(fit.labels, (np.arange(90) >= 50)[fit.order])
    assert c2st(x, y, max_components=3, n_permutations=10, random_state=0).n_components == 3


def test_orthonormal_falls_back_on_rank_deficient_input() -> None:
    a = np.random.default_rng(26).normal(size=(30, 2)) @ np.ones((2, 4))  # rank 2, 4 columns
    q = shift._orthonormal(a)
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-10)


def test_row_aucs_match_roc_auc_and_ignore_sample_order() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(27)
    scores, labels = rng.normal(size=(7, 50)), np.zeros((7, 50))
    for row in labels:
        row[rng.choice(50, size=20, replace=False)] = 1
    got = shift._row_aucs(scores, labels)
    np.testing.assert_allclose(got, [roc_auc_score(lab, s) for lab, s in zip(labels, scores, strict=True)])
    tied = np.round(scores, 0)  # many ties: broken by label, the same whatever the order of the samples
    order = rng.permutation(50)
    np.testing.assert_array_equal(
        shift._row_aucs(tied, labels), shift._row_aucs(tied[:, order], labels[:, order])
    )


@pytest.mark.parametrize("size", [shift._FLOAT32_RANKS, shift._FLOAT32_RANKS + 1])
def test_row_aucs_exact_on_both_sides_of_the_float32_rank_sums(size: int) -> None:
    # Up to _FLOAT32_RANKS per row the rank sums run in float32 (exact below 2^24), above in float64.
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(28)
    labels = np.zeros((3, size))
    labels[:, : size // 3] = 1
    labels = rng.permuted(labels, axis=1)
    # Distinct scores, exact in float32 (integers for one class, half-integers for the other): no ties.
    scores = np.stack([rng.permutation(size) for _ in range(3)]) + 1000.5 * labels
    got = shift._row_aucs(scores, labels)
    want = [roc_auc_score(lab, s) for lab, s in zip(labels, scores, strict=True)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_delong_matches_the_placement_formula() -> None:
    rng = np.random.default_rng(28)
    s0, s1 = np.round(rng.normal(size=30), 1), np.round(rng.normal(size=25) + 0.7, 1)  # with ties
    psi = (s1[:, None] > s0[None, :]) + 0.5 * (s1[:, None] == s0[None, :])  # (n1, n0) kernel
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    auc, var = shift._delong(s0, s1)
    assert auc == pytest.approx(psi.mean(), abs=1e-12)
    assert var == pytest.approx(np.var(v10, ddof=1) / 25 + np.var(v01, ddof=1) / 30, rel=1e-12)


def test_c2st_unequal_sizes_and_json() -> None:
    x, y = gaussian_pair(30, 90, 4, shift_by=1.5, seed=14)
    res = c2st(x, y, n_splits=3, n_permutations=200, random_state=0)
    assert res.auc > 0.9 and 0.5 < res.accuracy <= 1.0 and res.p_value == pytest.approx(1 / 201)
    assert (res.n_x, res.n_y, res.n_splits, res.n_permutations, res.n_components) == (30, 90, 3, 200, 4)
    assert res.auc_ci[0] < res.auc <= res.auc_ci[1] <= 1.0 and res.variance_inflation >= 1.0
    assert json.loads(json.dumps(res.to_dict())) == res.to_dict()
    assert c2st(x, y, n_splits=3, n_permutations=200, random_state=0) == res


def test_c2st_degenerate_samples() -> None:
    x = np.ones((12, 3))
    res = c2st(x, x.copy(), n_permutations=50, random_state=0)  # nothing to learn: every score ties
    assert res.auc == 0.5 and res.p_value == 1.0 and res.auc_ci == [0.5, 0.5]
    z = np.random.default_rng(29).normal(size=(20, 300))  # d > m + n, plus a constant column
    z[:, 0] = 3.0
    res = c2st(z[:10], z[10:], n_permutations=50, random_state=0)
    assert res.n_components == 19 and 0.0 <= res.p_value <= 1.0


def test_c2st_n_bootstrap_is_deprecated() -> None:
    x, y = gaussian_pair(20, 20, 3, shift_by=1.0, seed=30)
    with pytest.warns(FutureWarning, match="n_bootstrap is deprecated"):
        old = c2st(x, y, n_bootstrap=100, n_permutations=50, random_state=0)
    assert old == c2st(x, y, n_permutations=50, random_state=0)


# --------------------------------------------------------------------------------------------------
# Fréchet and CORAL


def reference_frechet(x: np.ndarray, y: np.ndarray, cov_x=None, cov_y=None) -> float:
    cov_x = np.cov(x, rowvar=False) if cov_x is None else cov_x
    cov_y = np.cov(y, rowvar=False) if cov_y is None else cov_y
    root = scipy.linalg.sqrtm(cov_x @ cov_y)
    mean = np.sum((x.mean(0) - y.mean(0)) ** 2)
    return float(mean + np.trace(cov_x) + np.trace(cov_y) - 2 * np.trace(root).real)


def test_frechet_matches_closed_form_of_two_gaussians() -> None:
    rng = np.random.default_rng(16)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([1.0, 1.0, 0.5])
    cov1 = np.diag([1.0, 2.0, 0.5])
    a = rng.normal(size=(3, 3))
    cov2 = a @ a.T + 0.5 * np.eye(3)
    x = rng.multivariate_normal(mu1, cov1, size=20000)
    y = rng.multivariate_normal(mu2, cov2, size=20000)
    truth = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * scipy.linalg.sqrtm(cov1 @ cov2).real))
    got = frechet_distance(x, y)
    assert got == pytest.approx(truth, rel=0.05)
    assert got == pytest.approx(reference_frechet(x, y), rel=1e-6)
    assert frechet_distance(y, x) == got  # symmetric by construction: the same operations either way


def test_frechet_more_dimensions_than_samples() -> None:
    x, y = gaussian_pair(10, 12, 30, shift_by=0.3, seed=17)
    got = frechet_distance(x, y)
    assert got == pytest.approx(reference_frechet(x, y), rel=1e-6)
    # Independent exact form: Tr (Σx Σy)^½ is the nuclear norm of X̃Ỹᵀ / sqrt((m-1)(n-1)).
    xc, yc = x - x.mean(0), y - y.mean(0)
    nuclear = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt(9 * 11)
    exact = np.sum((x.mean(0) - y.mean(0)) ** 2) + (xc**2).sum() / 9 + (yc**2).sum() / 11 - 2 * nuclear
    # Both sides sum singular values (absolute error ~ eps * largest), so 1e-10 holds on any BLAS; the
    # eigenvalue route it replaced drifted by ~1e-9 between OpenBLAS kernels (sqrt of rounding noise).
    assert got == pytest.approx(exact, rel=1e-10)
    assert frechet_distance(y, x) == got
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


SHAPES = [(10, 12, 30), (12, 10, 30), (8, 200, 30), (40, 6, 64), (5, 5, 3)]


@pytest.mark.parametrize(("m", "n", "dim"), SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_of_rank_deficient_covariances_is_accurate(m: int, n: int, dim: int, seed: int) -> None:
    # A singular covariance puts zero eigenvalues under the square root, where rounding noise of 1e-16
    # becomes an error of 1e-8; the exact form (nuclear norm of the centred cross product) has none.
    x, y = gaussian_pair(m, n, dim, shift_by=0.3, seed=100 + seed)
    xc, yc = x - x.mean(0), y - y.mean(0)
    nuclear = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt((m - 1) * (n - 1))
    traces = (xc**2).sum() / (m - 1) + (yc**2).sum() / (n - 1)
    exact = np.sum((x.mean(0) - y.mean(0)) ** 2) + traces - 2 * nuclear
    assert frechet_distance(x, y) == pytest.approx(exact, rel=1e-10)
    assert frechet_distance(y, x) == frechet_distance(x, y)


@pytest.mark.parametrize("dim", [4, 40])  # d < m + n and the projected path d > m + n
def test_frechet_shrinkage_matches_shrunk_covariances(dim: int) -> None:
    from sklearn.covariance import ledoit_wolf_shrinkage

    x, y = gaussian_pair(12, 15, dim, shift_by=0.2, seed=18)

    def shrunk(a: np.ndarray, alpha: float) -> np.ndarray:
        c = np.cov(a, rowvar=False)
        return (1 - alpha) * c + alpha * np.trace(c) / dim * np.eye(dim)

    got = frechet_distance(x, y, shrinkage=0.3)
    assert got == pytest.approx(reference_frechet(x, y, shrunk(x, 0.3), shrunk(y, 0.3)), rel=1e-8)
    ax, ay = ledoit_wolf_shrinkage(x), ledoit_wolf_shrinkage(y)
    assert shift._ledoit_wolf_of(x - x.mean(0)) == pytest.approx(ax, rel=1e-10)
    got = frechet_distance(x, y, shrinkage="ledoit-wolf")
    assert got == pytest.approx(reference_frechet(x, y, shrunk(x, ax), shrunk(y, ay)), rel=1e-8)
    assert frechet_distance(x, y, shrinkage=0.0) == pytest.approx(frechet_distance(x, y), rel=1e-10)


@pytest.mark.parametrize("dim", [3, 60])  # direct d x d path and the Gram path (d > m + n)
def test_coral_equals_direct_formula(dim: int) -> None:
    x, y = gaussian_pair(20, 15, dim, seed=19)
    y = y * np.linspace(0.5, 2.0, dim)
    diff = np.cov(x, rowvar=False) - np.cov(y, rowvar=False)
    want = float(np.sum(diff**2) / (4 * dim**2))
    assert coral_distance(x, y) == pytest.approx(want, rel=1e-10)
    assert coral_distance(y, x) == pytest.approx(want, rel=1e-10)
    assert coral_distance(x, x) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# k-NN scores


def test_knn_scores_typical_and_shifted() -> None:
    rng = np.random.default_rng(20)
    source = rng.normal(size=(600, 5))
    same = knn_shift_scores(source, rng.normal(size=(300, 5)), k=10, device="cpu")
    far = knn_shift_scores(source, rng.normal(size=(300, 5)) + 3.0, k=10, device="cpu")
    assert same.shape == (300,) and same.dtype == np.float64
    assert 0.8 <= np.median(same) <= 1.25
    assert np.median(far) > 2.0


def test_knn_scores_equal_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shift, "_CHUNK_ELEMS", 200)  # several row blocks
    rng = np.random.default_rng(21)
    source, target = rng.normal(size=(50, 3)), rng.normal(size=(23, 3)) + 0.5
    k = 4
    d_ss = cdist(source, source)
    np.fill_diagonal(d_ss, np.inf)
    reference = np.median(np.sort(d_ss, axis=1)[:, :k].mean(axis=1))
    want = np.sort(cdist(target, source), axis=1)[:, :k].mean(axis=1) / reference
    got = knn_shift_scores(source, target, k=k, device="cpu")
    np.testing.assert_allclose(got, want, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# Label shift


def test_label_shift_counts_tv_and_chi2() -> None:
    out = label_shift(["a", "b", "b", "c", "a", "a"], ["a", "c", "c", "c"], classes=["a", "b", "c"])
    assert out["source_counts"] == [3, 2, 1] and out["target_counts"] == [1, 0, 3]
    assert out["source_proportions"] == pytest.approx([0.5, 1 / 3, 1 / 6])
    assert out["total_variation"] == pytest.approx(0.5 * (0.25 + 1 / 3 + (0.75 - 1 / 6)))
    ref = stats.chi2_contingency(np.array([[3, 2, 1], [1, 0, 3]]), correction=False)
    assert out["chi2"] == pytest.approx(ref.statistic) and out["p_value"] == pytest.approx(ref.pvalue)
    assert json.loads(json.dumps(out)) == out


def test_label_shift_index_labels_and_no_shift() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2])
    out = label_shift(labels, labels[::-1].copy(), classes=("cat", "dog", "eel"))
    assert out["classes"] == ["cat", "dog", "eel"]
    assert out["total_variation"] == 0.0 and out["p_value"] == pytest.approx(1.0)
    with pytest.raises(DataError, match=r"outside 0\.\.2"):
        label_shift(np.array([0, 3]), labels, classes=("cat", "dog", "eel"))
    with pytest.raises(DataError, match="not in classes"):
        label_shift([1, 2, 7], [1, 2], classes=[1, 2])


# --------------------------------------------------------------------------------------------------
# Bad input


ALL_PAIR_STATISTICS = [
    lambda x, y: mmd_test(x, y, n_permutations=5, device="cpu"),
    lambda x, y: c2st(x, y, n_permutations=5),
    frechet_distance,
    coral_distance,
    lambda x, y: knn_shift_scores(x, y, k=2, device="cpu"),
]


@pytest.mark.parametrize("statistic", ALL_PAIR_STATISTICS)
def test_bad_input_is_a_data_error(statistic) -> None:
    x, y = gaussian_pair(10, 10, 3)
    with pytest.raises(DataError, match=r"same number of features.*\(10, 3\).*\(10, 4\)"):
        statistic(x, np.ones((10, 4)))
    with pytest.raises(DataError, match="has 3 samples.*at least 5"):
        statistic(x[:3], y)
    bad = y.copy()
    bad[0, 0], bad[1, 1], bad[2, 2] = np.nan, np.nan, np.inf
    with pytest.raises(DataError, match="2 NaN and 1 inf"):
        statistic(x, bad)
    with pytest.raises(DataError, match=r"2-D.*reshape\(-1, 1\)"):
        statistic(x[:, 0], y)


def test_bad_parameters_are_config_errors() -> None:
    x, y = gaussian_pair(10, 10, 3)
    with pytest.raises(ConfigError, match="n_permutations must be an integer >= 1; got 0"):
        mmd_test(x, y, n_permutations=0)
    with pytest.raises(ConfigError, match="bandwidths"):
        mmd_test(x, y, bandwidths=[1.0, -2.0])
    with pytest.raises(ConfigError, match="device"):
        mmd_test(x, y, device="tpu")
    with pytest.raises(ConfigError, match="n_splits must be at most"):
        c2st(x[:6], y, n_splits=7)
    with pytest.raises(ConfigError, match="ridge must be a positive finite number; got 0"):
        c2st(x, y, ridge=0)
    with pytest.raises(ConfigError, match="max_components must be an integer >= 1"):
        c2st(x, y, max_components=0)
    with pytest.raises(ConfigError, match="n_permutations must be an integer >= 1"):
        c2st(x, y, n_permutations=0)
    with pytest.raises(ConfigError, match="k must be at most"):
        knn_shift_scores(x, y, k=10)
    with pytest.raises(ConfigError, match="shrinkage"):
        frechet_distance(x, y, shrinkage="oas")
    with pytest.raises(ConfigError, match="shrinkage"):
        frechet_distance(x, y, shrinkage=1.5)


# --------------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    x, y = gaussian_pair(300, 200, 16, shift_by=0.2, seed=22)
    cpu = mmd_test(x, y, n_permutations=200, random_state=0, device="cpu")
    gpu = mmd_test(x, y, n_permutations=200, random_state=0, device="cuda")
    assert gpu.mmd2 == pytest.approx(cpu.mmd2, rel=1e-6)
    assert gpu.p_value == pytest.approx(cpu.p_value, abs=2 / 201)
    big = mmd_test(x, y, n_permutations=200, random_state=0, device="cuda", max_exact=100)
    assert big.method == "rff" and big.p_value < 0.05
    np.testing.assert_allclose(
        knn_shift_scores(x, y, device="cuda"), knn_shift_scores(x, y, device="cpu"), rtol=1e-4
    )

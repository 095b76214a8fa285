"""Transferability scores against plain reference formulas, closed forms and known orderings."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import scipy.optimize
from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from diag.errors import ConfigError, DataError
from diag.stats import common
from diag.stats.transfer import (
    SCORES,
    TransferScores,
    gbc_score,
    h_score,
    knn_accuracy,
    leep_score,
    linear_probe_accuracy,
    logme_score,
    nce_score,
    sfda_score,
    transferability,
    transrate_score,
)

# --------------------------------------------------------------------------------------------------
# Data and reference implementations (straight from the papers' formulas, no tricks)


def blobs(
    per_class: int, d: int, n_classes: int, *, sep: float, seed: int = 0, noise_dims: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes with means ``sep`` apart along random directions, plus optional pure-noise dims."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, d)) * sep / math.sqrt(2 * d)
    y = np.repeat(np.arange(n_classes), per_class)
    x = means[y] + rng.normal(size=(y.size, d))
    if noise_dims:
        x = np.concatenate([x, rng.normal(size=(y.size, noise_dims))], axis=1)
    perm = rng.permutation(y.size)
    return x[perm], y[perm]


def ref_logme(f: np.ndarray, labels: np.ndarray, *, tol: float = 1e-6, max_iter: int = 1000) -> float:
    """Per class: the fixed point of You et al. (2021), with m from a d x d solve and the full spectrum."""
    n, d = f.shape
    sigma = np.clip(np.linalg.eigvalsh(f.T @ f), 0.0, None)  # all d eigenvalues of FᵀF
    out = []
    for c in np.unique(labels):
        y = (labels == c).astype(float)
        alpha, beta = 1.0, 1.0

        def fit(alpha: float, beta: float, y: np.ndarray = y) -> tuple[float, float]:
            m = beta * np.linalg.solve(alpha * np.eye(d) + beta * f.T @ f, f.T @ y)
            return float(m @ m), float(np.sum((y - f @ m) ** 2))

        for _ in range(max_iter):
            t = alpha / beta
            gamma = float(np.sum(sigma / (sigma + t)))
            m2, r2 = fit(alpha, beta)
            alpha, beta = gamma / m2, (n - gamma) / r2
            if abs(alpha / beta - t) <= tol * t:
                break
        else:
            raise AssertionError("the reference did not converge: the maximum is not inside (0, ∞)")
        m2, r2 = fit(alpha, beta)
        evidence = (
            n / 2 * math.log(beta)
            + d / 2 * math.log(alpha)
            - n / 2 * math.log(2 * math.pi)
            - beta / 2 * r2
            - alpha / 2 * m2
            - 0.5 * float(np.sum(np.log(alpha + beta * sigma)))
        )
        out.append(evidence / n)
    return float(np.mean(out))


def ref_leep(theta: np.ndarray, labels: np.ndarray) -> float:
    """Nguyen et al. (2020) with explicit loops over the joint distribution."""
    n, n_source = theta.shape
    classes = sorted(set(labels.tolist()))
    joint = {
        (y, z): sum(theta[i, z] for i in range(n) if labels[i] == y) / n
        for y in classes
        for z in range(n_source)
    }
    marginal = {z: sum(joint[y, z] for y in classes) for z in range(n_source)}
    total = 0.0
    for i in range(n):
        eep = sum(joint[labels[i], z] / marginal[z] * theta[i, z] for z in range(n_source) if marginal[z] > 0)
        total += math.log(eep)
    return total / n


def ref_nce(z: np.ndarray, labels: np.ndarray) -> float:
    n = len(labels)
    pairs = Counter(zip(labels.tolist(), z.tolist(), strict=True))
    pz = Counter(z.tolist())
    return sum(count / n * math.log(count / pz[zz]) for (_, zz), count in pairs.items())


def class_mean_features(f: np.ndarray, labels: np.ndarray) -> np.ndarray:
    g = np.empty_like(f)
    for c in np.unique(labels):
        g[labels == c] = f[labels == c].mean(axis=0)
    return g


def ref_h_score(f: np.ndarray, labels: np.ndarray) -> float:
    """Bao et al. (2019): tr(pinv(cov f) cov(E[f|y]))."""
    cov_f = np.cov(f, rowvar=False)
    cov_g = np.cov(class_mean_features(f, labels), rowvar=False)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))


def ref_shrunk_h_score(f: np.ndarray, labels: np.ndarray) -> float:
    """Ibrahim et al. (2022) with scikit-learn's Ledoit–Wolf covariance (both covariances with ddof=0)."""
    lw = LedoitWolf().fit(f)
    cov_g = np.cov(class_mean_features(f, labels), rowvar=False, bias=True)
    return float(np.trace(np.linalg.inv(lw.covariance_) @ ((1 - lw.shrinkage_) * cov_g)))


def ref_gbc(f: np.ndarray, labels: np.ndarray) -> float:
    """Pándy et al. (2022): diagonal Gaussians, Bhattacharyya distance per ordered pair, loops."""
    classes = np.unique(labels)
    stats = {c: (f[labels == c].mean(axis=0), f[labels == c].var(axis=0)) for c in classes}
    total = 0.0
    for ci in classes:
        for cj in classes:
            if ci == cj:
                continue
            (mi, vi), (mj, vj) = stats[ci], stats[cj]
            bd = 0.0
            for k in range(f.shape[1]):
                v = (vi[k] + vj[k]) / 2
                bd += (mi[k] - mj[k]) ** 2 / v / 8 + 0.5 * (
                    math.log(v) - 0.5 * (math.log(vi[k]) + math.log(vj[k]))
                )
            total += math.exp(-bd)
    return -total


def ref_transrate(f: np.ndarray, labels: np.ndarray, eps: float = 1e-4) -> float:
    """Huang et al. (2022): centre by the overall mean, d x d log-determinants of I + ZᵀZ / (n ε)."""
    z = f - f.mean(axis=0)

    def rate(a: np.ndarray) -> float:
        n, d = a.shape
        sign, logdet = np.linalg.slogdet(np.eye(d) + a.T @ a / (n * eps))
        assert sign > 0
        return 0.5 * logdet

    return rate(z) - float(np.mean([rate(z[labels == c]) for c in np.unique(labels)]))


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------
# LogME


@pytest.mark.parametrize(("n", "d", "seed"), [(60, 12, 1), (40, 90, 2)], ids=["n>d", "d>n"])
def test_logme_equals_per_class_reference(n: int, d: int, seed: int) -> None:
    # A decaying spectrum, as real features have. With d > n the supremum is often the noise-free fit
    # (α/β → 0, where the reference's loop drifts without converging); this draw has its maximum inside
    # (0, ∞) for every class, which the reference checks.
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    f = rng.normal(size=(n, d)) * np.geomspace(3, 0.1, d) + 0.3 * np.eye(3)[y] @ rng.normal(size=(3, d))
    expected = ref_logme(f, y, tol=1e-12)
    assert logme_score(f, y, tol=1e-12, device="cpu") == pytest.approx(expected, rel=1e-9)
    assert logme_score(f, y, device="cpu") == pytest.approx(expected, rel=1e-5)  # default tol


def brute_force_log_evidence(f: np.ndarray, y: np.ndarray) -> float:
    """max over (α, β) of the closed-form evidence, by dense solve and slogdet, no eigen-trick.

    L(α, β) = n/2 log β + d/2 log α - n/2 log 2π - β/2 ||y - Fm||² - α/2 ||m||² - 1/2 logdet(αI + βFᵀF),
    m = β A⁻¹ Fᵀy, maximised by Nelder–Mead over (log α, log β) from a coarse grid's best point.
    """
    n, d = f.shape
    gram, fy = f.T @ f, f.T @ y

    def neg(p: np.ndarray) -> float:
        alpha, beta = math.exp(p[0]), math.exp(p[1])
        a = alpha * np.eye(d) + beta * gram
        m = beta * np.linalg.solve(a, fy)
        sign, logdet = np.linalg.slogdet(a)
        assert sign > 0
        value = (
            n / 2 * math.log(beta)
            + d / 2 * math.log(alpha)
            - n / 2 * math.log(2 * math.pi)
            - beta / 2 * float(np.sum((y - f @ m) ** 2))
            - alpha / 2 * float(m @ m)
            - 0.5 * logdet
        )
        return -value

    grid = [np.array([la, lb]) for la in np.linspace(-8, 8, 17) for lb in np.linspace(-8, 8, 17)]
    start = min(grid, key=neg)
    res = scipy.optimize.minimize(neg, start, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14})
    return float(-res.fun / n)


@pytest.mark.parametrize(("n", "d", "seed"), [(80, 10, 3), (30, 50, 4)], ids=["n>d", "d>n"])
def test_logme_equals_brute_force_evidence_maximum(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    f = rng.normal(size=(n, d)) * np.geomspace(2, 0.2, d) + 0.5 * np.eye(3)[y] @ rng.normal(size=(3, d))
    expected = float(np.mean([brute_force_log_evidence(f, (y == c).astype(float)) for c in range(3)]))
    assert logme_score(f, y, tol=1e-12, device="cpu") == pytest.approx(expected, rel=1e-10)


def test_logme_closed_forms_at_the_boundaries() -> None:
    # Features whose columns sum to zero within every class explain nothing linearly (Fᵀy = 0): α → ∞,
    # and the evidence is that of y ~ N(0, I/β), β = n/||y||²: 1/2 log(n/n_c) - 1/2 - 1/2 log 2π.
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), [6, 10, 14])
    g = rng.normal(size=(30, 5))
    for c in range(3):
        g[y == c] -= g[y == c].mean(axis=0)
    closed = np.mean([0.5 * math.log(30 / k) - 0.5 - 0.5 * math.log(2 * math.pi) for k in (6, 10, 14)])
    assert logme_score(g, y, device="cpu") == pytest.approx(closed, rel=1e-9)
    # d > n, isotropic features with a class signal: the supremum is the noise-free fit (α/β → 0), the
    # evidence of y ~ N(0, F Fᵀ/α) at the best α: n/2 log n - n/2 log yᵀ(FFᵀ)⁻¹y - 1/2 logdet FFᵀ - ...
    n, d = 40, 90
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=n)
    f = rng.normal(size=(n, d)) + 0.8 * np.eye(3)[y] @ rng.normal(size=(3, d))
    gram = f @ f.T
    limit = []
    for c in range(3):
        yc = (y == c).astype(float)
        value = n / 2 * math.log(n / (yc @ np.linalg.solve(gram, yc))) - 0.5 * np.linalg.slogdet(gram)[1]
        limit.append((value - n / 2 - n / 2 * math.log(2 * math.pi)) / n)
    assert logme_score(f, y, device="cpu") == pytest.approx(float(np.mean(limit)), rel=1e-6)


def test_logme_warns_when_the_evidence_is_unbounded(caplog: pytest.LogCaptureFixture) -> None:
    # Duplicated rows with d above the distinct count: y lies in the span of F with rank < n.
    x, y = blobs(10, 50, 3, sep=3.0, seed=3)
    idx = np.random.default_rng(3).integers(0, 30, 30)
    with caplog.at_level("WARNING", logger="diag.stats.transfer"):
        logme_score(x, y, device="cpu")
        assert not caplog.records
        logme_score(x[idx], y[idx], device="cpu")
    assert "grows without bound" in caplog.text


def test_logme_rank_deficient_features_equal_reference() -> None:
    # Rank 5 in 20 columns, with n > d and with d > n: the zero eigenvalues must enter as log(alpha).
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 10)
    low = (rng.normal(size=(30, 5)) + np.eye(3)[y] @ rng.normal(size=(3, 5))) @ rng.normal(size=(5, 20))
    assert logme_score(low, y, device="cpu") == pytest.approx(ref_logme(low, y), rel=1e-6)
    wide = np.concatenate([low, low, low], axis=1)  # 30 x 60, rank 5
    assert logme_score(wide, y, device="cpu") == pytest.approx(ref_logme(wide, y), rel=1e-6)


def test_logme_wide_features_are_stable() -> None:
    # 300 x 1280, the shape of pooled EfficientNet features on a small target set.
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(10), 30)
    signal = np.eye(10)[y] @ rng.normal(size=(10, 1280))
    noise = rng.normal(size=(300, 1280))
    good = logme_score(signal + 3.0 * noise, y, device="cpu")
    bad = logme_score(noise, y, device="cpu")
    assert math.isfinite(good) and math.isfinite(bad)
    assert good > bad


def test_logme_prefers_predictive_features_to_noise() -> None:
    x, y = blobs(30, 8, 3, sep=6.0, seed=4)
    noise = np.random.default_rng(4).normal(size=x.shape)
    assert logme_score(x, y, device="cpu") > logme_score(noise, y, device="cpu") + 0.1


def test_logme_and_h_score_invariant_to_sample_order_and_label_names() -> None:
    x, y = blobs(12, 6, 3, sep=3.0, seed=5)
    perm = np.random.default_rng(5).permutation(len(y))
    renamed = np.array([7, -2, 40])[y]
    for score in (logme_score, h_score):
        base = score(x, y, device="cpu")
        assert score(x[perm], y[perm], device="cpu") == pytest.approx(base, rel=1e-9)
        assert score(x, renamed, device="cpu") == pytest.approx(base, rel=1e-9)


def test_every_score_is_invariant_to_renaming_labels() -> None:
    x, y = blobs(10, 5, 3, sep=3.0, seed=6)
    logits = np.random.default_rng(6).normal(size=(len(y), 4))
    renamed = np.array([9, 3, 5])[y]  # a different order of the class ids, too
    base = transferability(x, y, logits=logits, device="cpu").scores
    other = transferability(x, renamed, logits=logits, device="cpu").scores
    assert other.keys() == base.keys() == set(SCORES)
    for name, value in base.items():
        assert other[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


# --------------------------------------------------------------------------------------------------
# LEEP and NCE


def test_leep_equals_explicit_joint_distribution() -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(25, 5)) * 2
    y = rng.integers(0, 3, size=25)
    expected = ref_leep(softmax(logits), y)
    assert leep_score(logits, y) == pytest.approx(expected, rel=1e-12)  # auto: logits
    assert leep_score(softmax(logits), y) == pytest.approx(expected, rel=1e-12)  # auto: probabilities
    assert leep_score(logits, y, from_logits=True) == pytest.approx(expected, rel=1e-12)


def test_leep_of_a_perfect_source_head_is_zero() -> None:
    y = np.repeat(np.arange(4), 5)
    theta = np.eye(6)[y]  # class c always predicted as source class c, with certainty
    assert leep_score(theta, y) == pytest.approx(0.0, abs=1e-12)
    assert leep_score(np.eye(6)[y] * 50.0, y, from_logits=True) == pytest.approx(0.0, abs=1e-12)
    noisy = softmax(np.random.default_rng(8).normal(size=(20, 6)))
    assert leep_score(noisy, y) < -0.5


def test_leep_of_an_uninformative_head_is_minus_label_entropy() -> None:
    # The same θ for every sample: P(y|z) = P(y), so LEEP = mean log P(y_i) = -H(Y).
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    theta = np.tile([0.2, 0.5, 0.3], (10, 1))
    p = np.bincount(y) / y.size
    assert leep_score(theta, y) == pytest.approx(float(np.sum(p * np.log(p))), rel=1e-12)


def test_nce_equals_reference_and_known_cases() -> None:
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(40, 6))
    y = rng.integers(0, 4, size=40)
    assert nce_score(logits, y) == pytest.approx(ref_nce(logits.argmax(axis=1), y), rel=1e-12)
    # Z determines Y (two source classes per target class): NCE = 0.
    z = rng.integers(0, 6, size=40)
    assert nce_score(np.eye(6)[z], z // 2) == pytest.approx(0.0, abs=1e-12)
    # Z constant: NCE = -H(Y).
    y2 = np.array([0, 0, 1, 2])
    assert nce_score(np.tile([0.0, 1.0], (4, 1)), y2) == pytest.approx(-(0.5 * math.log(2) + math.log(4) / 2))


# --------------------------------------------------------------------------------------------------
# H-score


def test_h_score_equals_pinv_formula() -> None:
    x, y = blobs(15, 6, 3, sep=3.0, seed=10)
    assert h_score(x, y, device="cpu") == pytest.approx(ref_h_score(x, y), rel=1e-9)


def test_h_score_ignores_duplicated_columns() -> None:
    # cov(f) is singular; the pseudo-inverse makes the score that of the distinct columns.
    x, y = blobs(15, 6, 3, sep=3.0, seed=11)
    assert h_score(np.concatenate([x, x], axis=1), y, device="cpu") == pytest.approx(
        h_score(x, y, device="cpu"), rel=1e-8
    )


def test_h_score_saturates_at_c_minus_1_when_d_exceeds_n() -> None:
    rng = np.random.default_rng(12)
    y = np.repeat(np.arange(4), 5)
    x = rng.normal(size=(20, 50))
    assert h_score(x, y, device="cpu") == pytest.approx(3.0, rel=1e-9)
    assert h_score(x, rng.permutation(y), device="cpu") == pytest.approx(3.0, rel=1e-9)


def test_h_score_higher_for_separated_means_than_shuffled_labels() -> None:
    x, y = blobs(20, 5, 3, sep=10.0, seed=13)
    shuffled = np.random.default_rng(13).permutation(y)
    for shrink in (False, True):
        assert h_score(x, y, shrinkage=shrink, device="cpu") > 1.5
        assert h_score(x, shuffled, shrinkage=shrink, device="cpu") < 0.5


@pytest.mark.parametrize(("per_class", "d"), [(15, 6), (8, 40)], ids=["n>d", "d>n"])
def test_shrunk_h_score_equals_ledoit_wolf_reference(per_class: int, d: int) -> None:
    x, y = blobs(per_class, d, 3, sep=3.0, seed=14)
    assert h_score(x, y, shrinkage=True, device="cpu") == pytest.approx(ref_shrunk_h_score(x, y), rel=1e-8)


@pytest.mark.parametrize(("n", "d"), [(30, 5), (10, 40)])
def test_ledoit_wolf_coefficient_equals_sklearn(n: int, d: int) -> None:
    x = np.random.default_rng(15).normal(size=(n, d)) * np.linspace(0.5, 3.0, d)
    xc = x - x.mean(axis=0)
    lam = np.linalg.eigvalsh(xc.T @ xc if d <= n else xc @ xc.T)
    alpha = common.ledoit_wolf_shrinkage((xc * xc).sum(axis=1), np.sum(lam**2) / n**2, lam.sum() / (n * d), d)
    assert alpha == pytest.approx(ledoit_wolf_shrinkage(xc, assume_centered=True), rel=1e-9)


def test_shrunk_h_score_ranks_when_d_exceeds_n() -> None:
    x, y = blobs(8, 60, 3, sep=12.0, seed=16)
    shuffled = np.random.default_rng(16).permutation(y)
    # Ledoit–Wolf shrinks little here, so the shuffled score stays high; it still ranks.
    assert (
        h_score(x, y, shrinkage=True, device="cpu") > h_score(x, shuffled, shrinkage=True, device="cpu") + 0.2
    )


# --------------------------------------------------------------------------------------------------
# GBC and TransRate


def test_gbc_equals_reference_with_and_without_pca() -> None:
    x, y = blobs(10, 6, 3, sep=2.0, seed=17)
    assert gbc_score(x, y, n_components=None) == pytest.approx(ref_gbc(x, y), rel=1e-10)
    reduced = PCA(n_components=4).fit_transform(x)
    assert gbc_score(x, y, n_components=4) == pytest.approx(ref_gbc(reduced, y), rel=1e-8)


def test_gbc_near_zero_for_far_classes_and_more_negative_for_overlapping() -> None:
    far, y = blobs(20, 4, 3, sep=60.0, seed=18)
    same = np.random.default_rng(18).normal(size=far.shape)
    assert -1e-6 < gbc_score(far, y) <= 0.0
    assert gbc_score(same, y) < -0.5 * 3 * 2  # at least half of the maximal overlap C(C-1)


def test_gbc_constant_feature_within_a_class_stays_finite() -> None:
    x, y = blobs(10, 3, 2, sep=4.0, seed=19)
    x[y == 0, 0] = 1.0
    assert math.isfinite(gbc_score(x, y, n_components=None))


def test_transrate_equals_reference_and_prefers_separable() -> None:
    for per_class, d in ((12, 5), (6, 30)):  # n > d and d > n
        x, y = blobs(per_class, d, 3, sep=4.0, seed=20)
        x = 5.0 * x + 2.0  # off-centre and not unit scale: the published score does not rescale rows
        assert transrate_score(x, y, device="cpu") == pytest.approx(ref_transrate(x, y), rel=1e-9)
    x, y = blobs(20, 5, 3, sep=8.0, seed=21)
    shuffled = np.random.default_rng(21).permutation(y)
    assert transrate_score(x, y, device="cpu") > transrate_score(x, shuffled, device="cpu") + 0.5


def test_transrate_closed_form_for_orthogonal_classes() -> None:
    """Two classes of two points each on orthogonal axes: every log-determinant is a product of scalars."""
    a = 3.0
    x = np.array([[a, 0.0], [-a, 0.0], [0.0, a], [0.0, -a]])  # mean zero already
    y = np.array([0, 0, 1, 1])
    eps = 0.01
    whole = 2 * 0.5 * math.log1p(2 * a * a / (4 * eps))  # ZᵀZ = diag(2a², 2a²), n = 4
    within = 0.5 * math.log1p(2 * a * a / (2 * eps))  # each class: one axis, ZᵀZ = 2a², n = 2
    assert transrate_score(x, y, eps=eps, device="cpu") == pytest.approx(whole - within, rel=1e-12)


# --------------------------------------------------------------------------------------------------
# Probes


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_accuracy_equals_sklearn_pipeline(metric: str) -> None:
    x, y = blobs(12, 6, 3, sep=2.5, seed=22)
    res = knn_accuracy(x, y, k=3, metric=metric, n_splits=4, random_state=5, device="cpu")
    model = make_pipeline(StandardScaler(), KNeighborsClassifier(3, metric=metric, algorithm="brute"))
    cv = StratifiedKFold(n_splits=4, shuffle=True, random_state=5)
    pred = cross_val_predict(model, x, y, cv=cv)
    assert res.accuracy == pytest.approx(float(np.mean(pred == y)), abs=1e-12)
    per_fold = [float(np.mean(pred[t] == y[t])) for _, t in cv.split(x, y)]
    assert res.fold_accuracies == pytest.approx(per_fold)
    assert res.accuracy_std == pytest.approx(float(np.std(per_fold, ddof=1)))
    assert res.n_splits == 4 and res.chance == pytest.approx(1 / 3)


def test_linear_probe_equals_sklearn_pipeline_when_d_exceeds_n() -> None:
    # The fit in the span of the training rows must give the same classifier as on all d columns.
    x, y = blobs(10, 80, 3, sep=5.0, seed=23)
    res = linear_probe_accuracy(x, y, n_splits=3, random_state=1)
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=1)
    for (train, test), acc in zip(cv.split(x, y), res.fold_accuracies, strict=True):
        full = make_pipeline(StandardScaler(), LogisticRegression(tol=1e-10, max_iter=5000)).fit(
            x[train], y[train]
        )
        assert acc == pytest.approx(float(np.mean(full.predict(x[test]) == y[test])))


def test_probes_near_one_on_blobs_and_near_chance_on_shuffled_labels() -> None:
    x, y = blobs(20, 10, 4, sep=20.0, seed=24)
    shuffled = np.random.default_rng(24).permutation(y)
    for probe in (knn_accuracy, linear_probe_accuracy):
        assert probe(x, y).accuracy >= 0.95
        assert probe(x, shuffled).accuracy <= 0.5  # chance 0.25


# --------------------------------------------------------------------------------------------------
# The convenience and its result


def test_transferability_matches_the_functions_and_serialises() -> None:
    x, y = blobs(10, 6, 3, sep=3.0, seed=25)
    logits = np.random.default_rng(25).normal(size=(30, 5))
    res = transferability(x, y, logits=logits, random_state=3, device="cpu")
    assert isinstance(res, TransferScores)
    assert res.skipped == {}
    assert (res.n_samples, res.n_features, res.n_classes) == (30, 6, 3)
    assert res.scores["logme"] == logme_score(x, y, device="cpu")
    assert res.scores["leep"] == leep_score(logits, y)
    assert res.scores["nce"] == nce_score(logits, y)
    assert res.scores["h_score_shrinkage"] == h_score(x, y, shrinkage=True, device="cpu")
    assert res.scores["gbc"] == gbc_score(x, y)
    assert res.scores["knn_accuracy"] == knn_accuracy(x, y, random_state=3, device="cpu").accuracy
    assert res.scores["linear_probe_accuracy"] == linear_probe_accuracy(x, y, random_state=3).accuracy
    assert json.loads(json.dumps(res.to_dict())) == res.to_dict()


def test_transferability_records_what_it_cannot_compute() -> None:
    x, y = blobs(6, 4, 3, sep=3.0, seed=26)
    y = np.append(y, 9)  # a class with a single sample
    x = np.concatenate([x, np.zeros((1, 4))])
    res = transferability(x, y, device="cpu")
    assert set(res.skipped) == {"leep", "nce", "gbc", "knn_accuracy", "linear_probe_accuracy"}
    assert "logits" in res.skipped["leep"]
    assert "9: 1" in res.skipped["gbc"] and "n_splits=5" in res.skipped["knn_accuracy"]
    assert set(res.scores) == {"logme", "h_score", "h_score_shrinkage", "transrate", "sfda"}
    only = transferability(x, y, scores=["logme"], device="cpu")
    assert list(only.scores) == ["logme"] and only.skipped == {}


# --------------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_raise_clear_errors() -> None:
    x, y = blobs(5, 3, 2, sep=3.0, seed=27)
    with pytest.raises(DataError, match="labels has 9 entries but the features have 10 rows"):
        logme_score(x, y[:9])
    with pytest.raises(DataError, match="at least 2 classes"):
        h_score(x, np.zeros(10, dtype=int))
    bad = x.copy()
    bad[0, 0], bad[1, 1] = np.nan, np.inf
    with pytest.raises(DataError, match="features contains 1 NaN and 1 inf"):
        transrate_score(bad, y)
    with pytest.raises(DataError, match="integer class ids; got dtype float64"):
        gbc_score(x, y.astype(float))
    with pytest.raises(DataError, match="integer class ids; got dtype <U"):
        logme_score(x, np.array(["a", "b"] * 5))
    with pytest.raises(DataError, match="2-D array"):
        h_score(x[:, 0], y)
    with pytest.raises(DataError, match=r"at least 2 samples per class.*\(5: 1\)"):
        gbc_score(np.concatenate([x, x[:1]]), np.append(y, 5))
    with pytest.raises(DataError, match="n_splits=5 needs at least 5 samples per class"):
        knn_accuracy(x[:8], np.array([0] * 4 + [1] * 4))
    with pytest.raises(ConfigError, match="k must be at most the smallest training part"):
        knn_accuracy(x, y, k=9, n_splits=5)
    with pytest.raises(ConfigError, match="metric must be 'cosine' or 'euclidean'"):
        knn_accuracy(x, y, metric="manhattan")
    with pytest.raises(ConfigError, match="eps must be a positive finite number"):
        transrate_score(x, y, eps=0.0)
    with pytest.raises(DataError, match="from_logits=False"):
        leep_score(np.full((10, 3), 2.0), y, from_logits=False)
    with pytest.raises(DataError, match="labels has 10 entries but source_output has 4 rows"):
        leep_score(np.ones((4, 3)) / 3, y)
    with pytest.raises(DataError, match="logits has 4 rows but the features have 10"):
        transferability(x, y, logits=np.zeros((4, 3)))
    with pytest.raises(ConfigError, match="scores must be distinct names"):
        transferability(x, y, scores=["logme", "fid"])
    with pytest.raises(DataError, match="all zero"):
        logme_score(np.zeros((10, 3)), y)


# --------------------------------------------------------------------------------------------------
# Devices


@pytest.mark.gpu
def test_gpu_and_cpu_agree() -> None:
    x, y = blobs(30, 200, 4, sep=3.0, seed=28)
    for name, score in [
        ("logme", lambda dev: logme_score(x, y, device=dev)),
        ("h_score", lambda dev: h_score(x, y, shrinkage=True, device=dev)),
        ("transrate", lambda dev: transrate_score(x, y, device=dev)),
        ("knn", lambda dev: knn_accuracy(x, y, device=dev).accuracy),
    ]:
        assert score("cuda") == pytest.approx(score("cpu"), rel=1e-8), name


# --------------------------------------------------------------------------------------------------
# Real data: the pretrained backbone against its random-init twin, at the `pooled` probe


def digit_scores(per_class: int | None, scores: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Scores of EfficientNet-Lite0 (64 px) on the bundled UCI digits, pretrained and random-init."""
    from diag.data.samples import open_sample
    from diag.models import load
    from diag.pipeline import embed

    data = open_sample("uci-digits")
    assert data.labels is not None
    if per_class is not None:
        data = data.subset(np.concatenate([np.flatnonzero(data.labels == c)[:per_class] for c in range(10)]))
    out = {}
    for name, pretrained in (("pretrained", True), ("random", False)):
        emb = embed(data, load("efficientnet_lite0", pretrained=pretrained, image_size=64))
        assert emb.labels is not None
        res = transferability(emb["pooled"], emb.labels, logits=emb.logits, scores=scores)
        assert res.skipped == {} and res.n_classes == 10
        out[name] = res.scores
    return out


def test_pretrained_beats_random_init_on_a_digit_subset() -> None:
    # 15 digits per class: the linear probe's margin is within its noise at this size, the rest is not.
    names = ("logme", "leep", "nce", "knn_accuracy")
    scores = digit_scores(15, names)
    for name in names:
        assert scores["pretrained"][name] > scores["random"][name], (name, scores)


@pytest.mark.slow
def test_pretrained_features_transfer_better_than_random_init() -> None:
    names = ("logme", "leep", "nce", "knn_accuracy", "linear_probe_accuracy")
    scores = digit_scores(None, names)
    pre, rnd = scores["pretrained"], scores["random"]
    for name in names:
        assert pre[name] > rnd[name], (name, pre[name], rnd[name])
    assert pre["knn_accuracy"] > 0.5 and pre["linear_probe_accuracy"] > 0.5  # chance is 0.1


# --------------------------------------------------------------------------------------------------
# SFDA (Shao et al., ECCV 2022)


def ref_sfda(f: np.ndarray, labels: np.ndarray, *, a: float = 5.0, soften: bool = True) -> float:
    """SFDA written out: scatters by loops, the Fisher space from scipy's generalised symmetric eigensolver
    (the leading C - 1 directions), Gaussian posteriors there, ConfMix per sample, the mean log-likelihood."""
    import scipy.linalg

    classes = sorted(set(labels.tolist()))
    n, d = f.shape
    n_cls = len(classes)

    def fit(x: np.ndarray, lam: float | None) -> tuple[np.ndarray, float, dict[int, np.ndarray]]:
        mu = x.mean(axis=0)
        means = {c: x[labels == c].mean(axis=0) for c in classes}
        prior = {c: float(np.mean(labels == c)) for c in classes}
        sw = np.zeros((d, d))
        sb = np.zeros((d, d))
        for i in range(n):
            r = x[i] - means[int(labels[i])]
            sw += np.outer(r, r) / n
        for c in classes:
            sb += prior[c] * np.outer(means[c] - mu, means[c] - mu)
        if lam is None:
            lam = max(math.exp(-a * float(np.linalg.eigvalsh(sw).max())), 1e-10)
        sw_lam = (1 - lam) * sw + lam * np.trace(sw) / d * np.eye(d)
        rho, u = scipy.linalg.eigh(sb, sw_lam)  # uᵀ sw_lam u = I
        u = u[:, np.argsort(rho)[::-1][: n_cls - 1]]
        post = np.zeros((n, n_cls))
        for i in range(n):
            xt = u.T @ x[i]
            mt = {c: u.T @ means[c] for c in classes}
            delta = [xt @ mt[c] - 0.5 * np.sum(mt[c] ** 2) + math.log(prior[c]) for c in classes]
            post[i] = softmax(np.array([delta]))[0]
        return post, lam, means

    post, lam, means = fit(f, None)
    mixed = f.copy()
    for i in range(n):
        k = classes.index(int(labels[i]))
        p = softmax(post[i : i + 1])[0] if soften else post[i]
        other = sum(means[c] for c in classes if c != labels[i]) / (n_cls - 1)
        mixed[i] = p[k] * f[i] + (1 - p[k]) * other
    post2, _, _ = fit(mixed, lam)
    return float(np.mean([math.log(post2[i, classes.index(int(labels[i]))]) for i in range(n)]))


@pytest.mark.parametrize("soften", [True, False])
@pytest.mark.parametrize(
    ("per_class", "d", "scale"), [(20, 5, 1.0), (20, 5, 0.05), (6, 30, 0.1)], ids=["n>d", "n>d-shrunk", "d>n"]
)
def test_sfda_equals_reference_fisher_space(per_class: int, d: int, scale: float, soften: bool) -> None:
    # scale 0.05 / 0.1: σ(S_W) is small, so λ = exp(-5 σ) is far from 0 and the shrinkage matters.
    x, y = blobs(per_class, d, 3, sep=2.5, seed=21)
    x = scale * x + 3.0  # off-centre, too
    got = sfda_score(x, y, soften=soften, device="cpu")
    assert got == pytest.approx(ref_sfda(x, y, soften=soften), rel=1e-7, abs=1e-10)
    assert -math.log(3) * 5 < got < 0


def test_sfda_closed_form_in_one_dimension() -> None:
    # d = 1: S_W^λ = (1 - λ) s + λ s = s whatever λ, and the posterior is a logistic in x.
    x = np.array([[0.0], [2.0], [4.0], [6.0]])
    y = np.array([0, 0, 1, 1])
    sig = lambda t: 1.0 / (1.0 + math.exp(-t))  # noqa: E731

    def p_true(xs: list[float]) -> list[float]:
        m0, m1 = (xs[0] + xs[1]) / 2, (xs[2] + xs[3]) / 2
        s = sum((v - m) ** 2 for v, m in zip(xs, (m0, m0, m1, m1), strict=True)) / 4
        diff = [(v * (m1 - m0) - (m1**2 - m0**2) / 2) / s for v in xs]  # logit of class 1 minus class 0
        return [sig(-diff[0]), sig(-diff[1]), sig(diff[2]), sig(diff[3])]

    p = p_true([0.0, 2.0, 4.0, 6.0])  # σ(12), σ(4), σ(4), σ(12)
    q = [sig(2 * v - 1) for v in p]  # softmax over (p, 1 - p): the true entry
    other = [5.0, 5.0, 1.0, 1.0]  # the other class's mean
    mixed = [qi * v + (1 - qi) * o for qi, v, o in zip(q, [0.0, 2.0, 4.0, 6.0], other, strict=True)]
    expected = float(np.mean(np.log(p_true(mixed))))
    assert sfda_score(x, y, device="cpu") == pytest.approx(expected, rel=1e-10)


def test_sfda_invariant_to_translation_rotation_order_and_label_names() -> None:
    for per_class, d in ((15, 6), (5, 24)):
        x, y = blobs(per_class, d, 3, sep=2.0, seed=22)
        x = 0.2 * x
        rng = np.random.default_rng(22)
        q = np.linalg.qr(rng.normal(size=(d, d)))[0]
        perm = rng.permutation(len(y))
        base = sfda_score(x, y, device="cpu")
        assert sfda_score(x @ q + 7.0, y, device="cpu") == pytest.approx(base, rel=1e-8)
        assert sfda_score(x[perm], y[perm], device="cpu") == pytest.approx(base, rel=1e-8)
        assert sfda_score(x, np.array([8, -1, 3])[y], device="cpu") == pytest.approx(base, rel=1e-8)


def test_sfda_orders_features_and_saturates_when_separable() -> None:
    x, y = blobs(30, 8, 3, sep=4.0, seed=23)
    noise = np.random.default_rng(23).normal(size=x.shape)
    assert sfda_score(0.3 * x, y, device="cpu") > sfda_score(0.3 * noise, y, device="cpu") + 0.1
    # d > n with unit-scale features: λ hits its floor and the Fisher space separates any labels.
    wide = np.random.default_rng(24).normal(size=(30, 100))
    assert sfda_score(wide, np.repeat(np.arange(3), 10), device="cpu") > -1e-6
    assert sfda_score(x, y, soften=False, device="cpu") >= sfda_score(x, y, device="cpu")


def test_sfda_rejects_bad_input() -> None:
    x, y = blobs(5, 4, 2, sep=2.0)
    for bad in (0.0, -1.0, float("nan"), True, "5"):
        with pytest.raises(ConfigError, match="a must be a positive finite number"):
            sfda_score(x, y, a=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="soften must be True or False"):
        sfda_score(x, y, soften="yes")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="zero within-class scatter"):
        sfda_score(np.repeat(np.eye(2), 5, axis=0), np.repeat([0, 1], 5))
    with pytest.raises(DataError, match="at least 2 classes"):
        sfda_score(x, np.zeros(len(y), dtype=int))
    with pytest.raises(DataError, match="finite"):
        sfda_score(np.where(x > 1, np.nan, x), y)
    with pytest.raises(DataError, match="must match"):
        sfda_score(x, y[:-1])


@pytest.mark.parametrize(("d", "rank"), [(1, 1), (7, 7), (60, 25)])
def test_logme_eigen_projection_equals_a_full_eigendecomposition(d: int, rank: int) -> None:
    # LogME's CPU path never forms the eigenvectors (tridiagonal reduction, reflections applied to the
    # label columns); eigenvalues and squared projections must equal those of numpy's full eigh.
    import torch

    from diag.stats import transfer

    rng = np.random.default_rng(d)
    f = rng.normal(size=(80, rank)) @ rng.normal(size=(rank, d))
    gram = f.T @ f
    b = f.T @ np.eye(4)[rng.integers(0, 4, size=80)]
    want_w, want_v = np.linalg.eigh(gram)
    w, proj = transfer._eigh_project(torch.from_numpy(gram.copy()), torch.from_numpy(b))
    scale = want_w.max()
    np.testing.assert_allclose(w.numpy(), want_w, rtol=0, atol=1e-12 * scale)
    # Squared: eigenvector signs are arbitrary; within the zero eigenspace only the total is defined.
    big = want_w > 1e-9 * scale
    np.testing.assert_allclose((proj.numpy() ** 2)[big], ((want_v.T @ b) ** 2)[big], rtol=1e-9, atol=0)
    np.testing.assert_allclose((proj.numpy() ** 2).sum(axis=0), (b**2).sum(axis=0), rtol=1e-12)

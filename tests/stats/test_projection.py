"""diag.stats.projection: 2-D maps (PCA, UMAP), their on-disk cache, and nearest-source look-ups."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from diag.errors import ConfigError, DataError
from diag.stats import projection
from diag.stats.common import nearest_neighbors, principal_axes
from diag.stats.projection import cached_projection, joint_projection, nearest_source, pca_2d, umap_2d


def blobs(n_per: int = 60, d: int = 20, gap: float = 12.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two well-separated Gaussian blobs in ``d`` dimensions."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n_per, d))
    b = rng.normal(size=(n_per, d))
    b[:, 0] += gap
    return np.vstack([a, b]).astype(np.float32), np.repeat([0, 1], n_per)


@pytest.fixture(scope="module")
def two_blobs() -> tuple[np.ndarray, np.ndarray]:
    return blobs()


@pytest.fixture(scope="module")
def umap_map(two_blobs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return umap_2d(two_blobs[0], random_state=0)


def test_umap_has_one_row_per_sample_and_two_columns(umap_map: np.ndarray, two_blobs) -> None:
    assert umap_map.shape == (len(two_blobs[0]), 2)
    assert umap_map.dtype == np.float32
    assert np.isfinite(umap_map).all()


def test_umap_is_deterministic_for_a_seed(umap_map: np.ndarray, two_blobs) -> None:
    again = umap_2d(two_blobs[0], random_state=0)
    np.testing.assert_array_equal(again, umap_map)


def test_umap_keeps_separated_clusters_apart(umap_map: np.ndarray, two_blobs) -> None:
    _, y = two_blobs
    c0, c1 = umap_map[y == 0].mean(axis=0), umap_map[y == 1].mean(axis=0)
    spread = max(umap_map[y == 0].std(axis=0).max(), umap_map[y == 1].std(axis=0).max())
    assert np.linalg.norm(c0 - c1) > 3 * spread
    # Every point is nearer its own cluster's centre on the map.
    own = np.where(y[:, None] == 0, c0, c1)
    other = np.where(y[:, None] == 0, c1, c0)
    assert (np.linalg.norm(umap_map - own, axis=1) < np.linalg.norm(umap_map - other, axis=1)).all()


def test_pca_2d_matches_the_leading_principal_components() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 5)) * np.array([10.0, 3.0, 1.0, 0.5, 0.1])
    got = pca_2d(x)
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    ref = xc @ vt[:2].T
    # Same axes up to sign; variances are the squared singular values / (n - 1).
    for j in range(2):
        assert abs(abs(np.corrcoef(got[:, j], ref[:, j])[0, 1]) - 1) < 1e-6
    np.testing.assert_allclose(got.var(axis=0, ddof=1), s[:2] ** 2 / (len(x) - 1), rtol=1e-4)


def test_tiny_inputs_fall_back_to_pca_with_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    x = np.random.default_rng(2).normal(size=(8, 6))
    with caplog.at_level(logging.INFO, logger="diag.stats.projection"):
        got = umap_2d(x)
    np.testing.assert_allclose(got, pca_2d(x), rtol=1e-6)
    assert any("too few for UMAP" in r.getMessage() for r in caplog.records)


def test_bad_inputs_name_the_parameter() -> None:
    with pytest.raises(ConfigError, match="features"):
        umap_2d(np.zeros(10))
    with pytest.raises(ConfigError, match="n_neighbors"):
        umap_2d(np.zeros((20, 3)), n_neighbors=1)
    with pytest.raises(DataError, match="NaN"):
        umap_2d(np.full((20, 3), np.nan))
    with pytest.raises(ConfigError, match="method"):
        cached_projection(np.zeros((20, 3)), ".", "x", method="tsne")


def test_cache_hit_returns_the_same_map_without_recomputing(
    tmp_path: Path, two_blobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = two_blobs[0]
    calls: list[int] = []
    real = projection.umap_2d

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(projection, "umap_2d", counting)
    first = cached_projection(x, tmp_path, "blocks.3", random_state=0)
    files = list(tmp_path.glob("projection_blocks.3_*.npy"))
    assert len(files) == 1 and calls == [1]
    second = cached_projection(x, tmp_path, "blocks.3", random_state=0)
    assert calls == [1]  # read back, not recomputed
    np.testing.assert_array_equal(first, second)
    # Other parameters or other features get their own file.
    cached_projection(x, tmp_path, "blocks.3", method="pca")
    cached_projection(x[:-1], tmp_path, "blocks.3", method="pca")
    assert len(list(tmp_path.glob("projection_blocks.3_*.npy"))) == 3
    assert calls == [1]


def test_a_corrupt_cache_file_is_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x = np.random.default_rng(3).normal(size=(30, 4))
    first = cached_projection(x, tmp_path, "pooled", method="pca")
    (path,) = tmp_path.glob("projection_pooled_*.npy")
    path.write_bytes(b"not an npy file")
    with caplog.at_level(logging.WARNING, logger="diag.stats.projection"):
        again = cached_projection(x, tmp_path, "pooled", method="pca")
    np.testing.assert_array_equal(first, again)
    assert any("recomputing" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.load(path), first)  # and the file is good again


def test_joint_projection_puts_source_first_and_subsamples_per_side() -> None:
    rng = np.random.default_rng(4)
    src, tgt = rng.normal(size=(40, 6)), rng.normal(size=(30, 6)) + 5
    proj = joint_projection(src, tgt, "x", method="pca", max_per_side=25, seed=0)
    assert proj.coords.shape == (50, 2) and proj.n_source == 25 and proj.n_target == 25
    assert len(set(proj.source_rows.tolist())) == 25 and proj.source_rows.max() < 40
    # The first principal axis separates the two sides (target shifted by 5 in every dimension).
    side = np.r_[np.zeros(25), np.ones(25)]
    assert abs(np.corrcoef(proj.coords[:, 0], side)[0, 1]) > 0.9
    with pytest.raises(DataError, match="same width"):
        joint_projection(src, tgt[:, :3], "x", method="pca")


def test_nearest_source_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    src, q = rng.normal(size=(200, 8)), rng.normal(size=(17, 8))
    idx, dist = nearest_source(src, q, k=4)
    full = np.linalg.norm(q[:, None, :] - src[None, :, :], axis=2)
    ref = np.argsort(full, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(dist, np.take_along_axis(full, ref, axis=1), rtol=1e-6, atol=1e-9)
    # A query equal to a source sample finds it first, at distance 0.
    idx, dist = nearest_source(src, src[[7]], k=1)
    assert idx[0, 0] == 7 and dist[0, 0] == pytest.approx(0.0, abs=1e-6)
    # k larger than the source is capped.
    assert nearest_source(src[:3], q, k=10)[0].shape == (17, 3)


# --------------------------------------------------------------------------------------------------
# The shared numerics behind the maps and the neighbour look-ups (diag.stats.common)


@pytest.mark.parametrize("metric", ["sqeuclidean", "inner"])
def test_nearest_neighbors_equal_brute_force_in_blocks(metric: str) -> None:
    import torch

    rng = np.random.default_rng(6)
    ref, q = rng.normal(size=(40, 5)), rng.normal(size=(13, 5))
    full = ((q[:, None, :] - ref[None, :, :]) ** 2).sum(axis=2) if metric == "sqeuclidean" else -(q @ ref.T)
    want = np.argsort(full, axis=1, kind="stable")[:, :3]
    for block in (7, 1 << 20):  # several row blocks, and one
        vals, idx = nearest_neighbors(
            torch.as_tensor(q), torch.as_tensor(ref), 3, metric=metric, block_elems=block
        )
        np.testing.assert_array_equal(idx.numpy(), want)
        sign = 1.0 if metric == "sqeuclidean" else -1.0
        np.testing.assert_allclose(sign * vals.numpy(), np.take_along_axis(full, want, axis=1), atol=1e-12)


def test_nearest_neighbors_leave_one_out_and_ties_in_row_order() -> None:
    import torch

    x = torch.as_tensor(np.repeat(np.arange(4.0), 3)[:, None])  # each value three times
    vals, idx = nearest_neighbors(x, x, 2, leave_one_out=True, block_elems=5)
    # Each row's two neighbours are its two copies (never itself), in row order, at distance 0.
    assert idx.tolist() == [[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4], [7, 8], [6, 8], [6, 7], [10, 11],
                            [9, 11], [9, 10]]  # fmt: skip
    assert (vals == 0).all()
    with pytest.raises(ConfigError, match="metric"):
        nearest_neighbors(x, x, 1, metric="cosine")


@pytest.mark.parametrize(("n", "d"), [(50, 4), (4, 50)])  # the eigh path (n > d) and the SVD path
def test_principal_axes_span_the_leading_components(n: int, d: int) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, d)) * np.linspace(3.0, 0.5, d)
    xc = x - x.mean(axis=0)
    axes = principal_axes(xc, 2)
    vt = np.linalg.svd(xc, full_matrices=False)[2][:2]
    np.testing.assert_allclose(axes.T @ axes, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(np.abs(axes.T @ vt.T), np.eye(2), atol=1e-8)  # same axes up to sign

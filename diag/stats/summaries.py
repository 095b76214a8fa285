"""Mergeable summaries of a sample: moments, a random-Fourier-feature mean embedding and a reservoir.

A summary stands in for the rows it was built from. Each one is built in one pass over batches (memory
bounded by the batch and the summary, not by the number of rows), and two summaries of disjoint rows
**merge** into the summary of their union — so shards can be summarised apart and combined:

* :class:`Moments` — count, Σx and Σxxᵀ in float64: mean and covariance follow, and the Fréchet
  distance (:func:`frechet_from_moments`) needs nothing else.
* :class:`MeanEmbedding` — the mean of random Fourier features φ(x) = √(2/D) cos(xW + b) with
  W ~ N(0, σ⁻² I), b ~ U[0, 2π) (Rahimi & Recht, "Random features for large-scale kernel machines",
  NIPS 2007): ⟨φ(x), φ(y)⟩ approximates the Gaussian kernel of width σ, so ‖φ̄_X − φ̄_Y‖² is a linear-time
  MMD² estimate (Gretton et al., "A kernel two-sample test", JMLR 2012). The seed and the bandwidth are
  part of the summary. The sum is kept in fixed point (int64 at 2⁻²⁴ resolution), so merging is exact
  whatever the order of the batches.
* :class:`Reservoir` — a seeded uniform sample of at most ``capacity`` rows with their ids (Vitter,
  "Random sampling with a reservoir", ACM TOMS 1985, algorithm R); two reservoirs merge into a uniform
  sample of the union by drawing how many rows come from each side from the hypergeometric law.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from diag.errors import DataError, param_error
from diag.stats.common import numeric_matrix, require_finite

__all__ = [
    "FIXED_POINT_BITS",
    "MeanEmbedding",
    "Moments",
    "Reservoir",
    "bn_w2_per_channel",
    "frechet_from_moments",
    "rff_mmd_test",
]

#: Resolution of the fixed-point sum of Fourier features: 2⁻²⁴ ≈ 6e-8, far below any sampling noise.
FIXED_POINT_BITS = 24
#: Marks a summary field not given to the constructor (it starts at zero).
_EMPTY = np.zeros(0)


def _rows(x: ArrayLike, dim: int | None, what: str) -> np.ndarray:
    arr = numeric_matrix(x, what)
    if dim is not None and arr.shape[1] != dim:
        raise DataError(f"{what} has {arr.shape[1]} features; this summary was built on {dim}.")
    require_finite(arr, what, needed_by="a summary needs finite features")
    return arr


# ------------------------------------------------------------------------------------------------------
# Moments


@dataclass
class Moments:
    """Count, sum and sum of outer products of ``d``-dimensional rows, in float64.

    Parameters
    ----------
    dim : int
        The number of features ``d``.
    """

    dim: int
    count: int = 0
    total: np.ndarray = field(default_factory=lambda: _EMPTY)
    outer: np.ndarray = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if self.total is _EMPTY:
            self.total = np.zeros(self.dim, np.float64)
        if self.outer is _EMPTY:
            self.outer = np.zeros((self.dim, self.dim), np.float64)

    def update(self, x: ArrayLike) -> Moments:
        """Add the rows of ``x`` (n, d); returns ``self``."""
        arr = _rows(x, self.dim, "rows").astype(np.float64, copy=False)
        self.count += arr.shape[0]
        self.total += arr.sum(axis=0)
        self.outer += arr.T @ arr
        return self

    def merge(self, other: Moments) -> Moments:
        """The moments of the union of both sets of rows (a new object)."""
        if other.dim != self.dim:
            raise DataError(f"cannot merge moments of {self.dim} and {other.dim} features.")
        return Moments(self.dim, self.count + other.count, self.total + other.total, self.outer + other.outer)

    @property
    def mean(self) -> np.ndarray:
        """``(d,)`` sample mean."""
        self._need(1)
        return self.total / self.count

    @property
    def covariance(self) -> np.ndarray:
        """``(d, d)`` sample covariance (``ddof=1``): ``(Σxxᵀ − n μμᵀ) / (n − 1)``."""
        self._need(2)
        mu = self.mean
        cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return 0.5 * (cov + cov.T)

    def _need(self, n: int) -> None:
        if self.count < n:
            raise DataError(f"these moments summarise {self.count} rows; at least {n} are needed.")


def frechet_from_moments(mean_x: ArrayLike, cov_x: ArrayLike, mean_y: ArrayLike, cov_y: ArrayLike) -> float:
    """Fréchet distance between two Gaussians given by their moments (Heusel et al., NeurIPS 2017).

    ``||μ_x − μ_y||² + Tr(Σ_x + Σ_y − 2 (Σ_x Σ_y)^½)``, with ``Tr (Σ_x Σ_y)^½`` the nuclear norm of
    ``L_xᵀ L_y`` for factors ``Σ = L Lᵀ`` from the eigen-decompositions (see
    :func:`diag.stats.shift.frechet_distance`, which works from the rows and handles ``d > n`` exactly).
    """
    mx, my = np.asarray(mean_x, np.float64), np.asarray(mean_y, np.float64)
    cx, cy = np.asarray(cov_x, np.float64), np.asarray(cov_y, np.float64)
    if mx.shape != my.shape or cx.shape != cy.shape or cx.shape != (mx.size, mx.size):
        raise DataError(
            f"moments of different shapes: means {mx.shape} and {my.shape}, "
            f"covariances {cx.shape} and {cy.shape}."
        )

    def factor(c: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(0.5 * (c + c.T))
        return v * np.sqrt(np.clip(w, 0.0, None))

    trace_root = float(np.linalg.svd(factor(cx).T @ factor(cy), compute_uv=False).sum())
    value = float(np.sum((mx - my) ** 2)) + float(np.trace(cx) + np.trace(cy)) - 2.0 * trace_root
    return max(0.0, value)


# ------------------------------------------------------------------------------------------------------
# Random-Fourier-feature mean embedding


@dataclass
class MeanEmbedding:
    """The running sum of random Fourier features of the rows, with the map's seed and bandwidth.

    Parameters
    ----------
    dim : int
        Input features ``d``.
    bandwidth : float
        Gaussian kernel width σ (fixed for the life of the summary: pick it from a first batch with the
        median heuristic, or pass the same value to every shard).
    n_features : int, default 512
        ``D``; the kernel approximation error falls as ``1/√D``.
    seed : int, default 0
    """

    dim: int
    bandwidth: float
    n_features: int = 512
    seed: int = 0
    count: int = 0
    fixed_sum: np.ndarray = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if not (
            isinstance(self.bandwidth, (int, float)) and math.isfinite(self.bandwidth) and self.bandwidth > 0
        ):
            raise param_error("bandwidth", "must be a positive finite number", self.bandwidth)
        if self.fixed_sum is _EMPTY:
            self.fixed_sum = np.zeros(self.n_features, np.int64)
        rng = np.random.default_rng(self.seed)
        self._w = rng.normal(size=(self.dim, self.n_features)) / self.bandwidth
        self._b = rng.uniform(0.0, 2.0 * np.pi, size=self.n_features)

    def features(self, x: ArrayLike) -> np.ndarray:
        """``φ(x)``, shape ``(n, D)``, float64."""
        arr = _rows(x, self.dim, "rows").astype(np.float64, copy=False)
        return math.sqrt(2.0 / self.n_features) * np.cos(arr @ self._w + self._b)

    def update(self, x: ArrayLike) -> MeanEmbedding:
        """Add the rows of ``x``; returns ``self``."""
        phi = self.features(x)
        self.count += phi.shape[0]
        self.fixed_sum += np.rint(phi * 2.0**FIXED_POINT_BITS).astype(np.int64).sum(axis=0)
        return self

    def merge(self, other: MeanEmbedding) -> MeanEmbedding:
        """The embedding of the union (exact: integer sums). Maps must share d, D, seed and bandwidth."""
        mine = (self.dim, self.n_features, self.seed, self.bandwidth)
        theirs = (other.dim, other.n_features, other.seed, other.bandwidth)
        if mine != theirs:
            raise DataError(
                "cannot merge mean embeddings built with different random features: "
                f"(dim, n_features, seed, bandwidth) = {mine} vs {theirs}. "
                "Build both with the same bandwidth."
            )
        return MeanEmbedding(
            self.dim, self.bandwidth, self.n_features, self.seed, self.count + other.count,
            self.fixed_sum + other.fixed_sum,
        )  # fmt: skip

    @property
    def mean(self) -> np.ndarray:
        """``φ̄``, shape ``(D,)``."""
        if self.count == 0:
            raise DataError("this mean embedding summarises no rows.")
        return self.fixed_sum.astype(np.float64) / 2.0**FIXED_POINT_BITS / self.count


@dataclass(frozen=True)
class RFFMMDResult:
    """``mmd2 = ||φ̄_X − φ̄_Y||²`` and its asymptotic p-value."""

    mmd2: float
    p_value: float
    n_reference: int
    n_new: int
    bandwidth: float
    n_features: int


def rff_mmd_test(
    reference: MeanEmbedding,
    new: ArrayLike,
    *,
    n_draws: int = 20000,
    random_state: int | None = 0,
) -> RFFMMDResult:
    """Linear-time MMD test of new rows against a reference mean embedding.

    Under the null hypothesis (same distribution), φ̄_new − φ̄_ref is asymptotically
    ``N(0, (1/n + 1/m) Σ_φ)`` by the central limit theorem, so ``T = ||φ̄_new − φ̄_ref||²`` is distributed
    as ``(1/n + 1/m) Σ_k λ_k Z_k²`` with ``λ_k`` the eigenvalues of the covariance of φ (estimated on the
    new rows, the same distribution under the null) — the spectral null of Gretton et al., "A fast,
    consistent kernel two-sample test", NIPS 2009. The p-value is the share of ``n_draws`` simulated
    weighted χ² values at least ``T`` (with the +1 correction).

    Parameters
    ----------
    reference : MeanEmbedding
        The reference summary (``m`` rows).
    new : array-like of shape (n, d)
    n_draws, random_state
        Monte Carlo draws of the null distribution, and their seed.
    """
    phi = reference.features(new)
    n, m = phi.shape[0], reference.count
    if n < 2:
        raise DataError(f"the new data has {n} rows; the test needs at least 2.")
    diff = phi.mean(axis=0) - reference.mean
    stat = float(diff @ diff)
    lam = np.clip(np.linalg.eigvalsh(np.cov(phi, rowvar=False)), 0.0, None)
    lam = lam[lam > lam.max() * 1e-10] if lam.max() > 0 else lam[:1]
    rng = np.random.default_rng(random_state)
    null = np.zeros(n_draws)
    for start in range(0, n_draws, 2000):  # bounded memory: 2000 x len(lam) normals at a time
        z = rng.standard_normal((min(2000, n_draws - start), lam.size))
        null[start : start + z.shape[0]] = (z**2) @ lam
    null *= 1.0 / n + 1.0 / m
    p = (1.0 + float(np.sum(null >= stat))) / (n_draws + 1.0)
    return RFFMMDResult(stat, p, m, n, float(reference.bandwidth), reference.n_features)


# ------------------------------------------------------------------------------------------------------
# Reservoir


@dataclass
class Reservoir:
    """A uniform random sample of at most ``capacity`` rows of a stream, with the rows' ids.

    Parameters
    ----------
    capacity : int
    dim : int
    seed : int, default 0
        Seeds the stream's replacement draws: the same rows in the same order give the same sample.
    """

    capacity: int
    dim: int
    seed: int = 0
    seen: int = 0
    rows: np.ndarray = field(default_factory=lambda: _EMPTY)
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise param_error("capacity", "must be at least 1", self.capacity)
        if self.rows is _EMPTY:
            self.rows = np.zeros((0, self.dim), np.float32)
        self._rng = np.random.default_rng([self.seed, self.seen])

    def update(self, x: ArrayLike, ids: Sequence[str]) -> Reservoir:
        """Offer the rows of ``x`` (n, d) with their ``ids``; returns ``self`` (algorithm R)."""
        arr = _rows(x, self.dim, "rows").astype(np.float32, copy=False)
        if len(ids) != arr.shape[0]:
            raise DataError(f"{arr.shape[0]} rows but {len(ids)} ids.")
        free = max(0, self.capacity - len(self.ids))
        head = min(free, arr.shape[0])
        if head:
            self.rows = np.concatenate([self.rows, arr[:head]])
            self.ids.extend(str(i) for i in ids[:head])
        rest = arr.shape[0] - head
        if rest:
            # Item number k (0-based over the stream) replaces slot j ~ U{0..k} when j < capacity.
            k = self.seen + head + np.arange(rest)
            slots = self._rng.integers(0, k + 1)
            for r in np.flatnonzero(slots < self.capacity):  # later items overwrite earlier ones, in order
                j = int(slots[r])
                self.rows[j] = arr[head + r]
                self.ids[j] = str(ids[head + r])
        self.seen += arr.shape[0]
        return self

    def merge(self, other: Reservoir, *, seed: int = 0) -> Reservoir:
        """A uniform sample of the union of both streams, of this reservoir's capacity.

        The number of rows taken from ``self`` is hypergeometric (``seen`` rows against
        ``other.seen``), then each side contributes a uniform subset of its own sample.
        """
        if other.dim != self.dim:
            raise DataError(f"cannot merge reservoirs of {self.dim} and {other.dim} features.")
        rng = np.random.default_rng([seed, self.seen, other.seen])
        total = self.seen + other.seen
        size = min(self.capacity, total)
        take = int(rng.hypergeometric(self.seen, other.seen, size)) if self.seen and other.seen else None
        if take is None:
            take = size if self.seen else 0
        a = rng.choice(len(self.ids), size=take, replace=False) if take else np.zeros(0, int)
        b = rng.choice(len(other.ids), size=size - take, replace=False) if size - take else np.zeros(0, int)
        out = Reservoir(self.capacity, self.dim, self.seed, total)
        out.rows = np.concatenate([self.rows[np.sort(a)], other.rows[np.sort(b)]])
        out.ids = [self.ids[i] for i in np.sort(a)] + [other.ids[i] for i in np.sort(b)]
        return out


# ------------------------------------------------------------------------------------------------------
# BatchNorm statistics


def bn_w2_per_channel(
    mean_ref: ArrayLike, var_ref: ArrayLike, mean_new: ArrayLike, var_new: ArrayLike, *, eps: float = 0.0
) -> np.ndarray:
    """Squared Wasserstein-2 distance between per-channel Gaussians, in units of the reference variance.

    ``W₂²(N(μ_r, σ_r²), N(μ_n, σ_n²)) = (μ_n − μ_r)² + (σ_n − σ_r)²`` (the closed form for 1-D Gaussians),
    divided by ``σ_r² + eps`` so that channels and layers of any scale compare. With a BatchNorm layer's
    running statistics as the reference, this is the per-channel distance of the covariate-shift view of
    Schneider et al., "Improving robustness against common corruptions by covariate shift adaptation",
    NeurIPS 2020.

    Returns
    -------
    ndarray of the inputs' shape ``(..., channels)``: several comparisons at once along leading axes.
    """
    mr, vr = np.asarray(mean_ref, np.float64), np.asarray(var_ref, np.float64)
    mn, vn = np.asarray(mean_new, np.float64), np.asarray(var_new, np.float64)
    if not (mr.shape == vr.shape == mn.shape == vn.shape) or mr.ndim == 0:
        raise DataError(
            f"per-channel statistics of different shapes: {mr.shape}, {vr.shape}, {mn.shape}, {vn.shape}."
        )
    if (vr < 0).any() or (vn < 0).any():
        raise DataError("a variance is negative; per-channel variances must be >= 0.")
    w2 = (mn - mr) ** 2 + (np.sqrt(vn) - np.sqrt(vr)) ** 2
    return w2 / (vr + eps + np.finfo(np.float64).tiny)

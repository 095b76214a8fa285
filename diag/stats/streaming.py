"""Two-sample statistics from mergeable summaries, for samples too large to compare pair by pair.

The exact tests of :mod:`diag.stats.shift` hold a pooled kernel matrix or rerun a permutation over every
row; at 100k rows per side that is out of reach on one CPU. The pieces here need one pass over the rows,
keep memory bounded by the summary (not by the rows), and two summaries of disjoint rows merge by
addition, so shards can be summarised apart (see :mod:`diag.stats.summaries` for the reference
profiles' summaries they build on):

* :class:`FourierMap` — random Fourier features φ(z) = [cos(zW), sin(zW)] / √F for the mean of Gaussian
  kernels at several widths (Rahimi & Recht, "Random features for large-scale kernel machines", NIPS
  2007), ``‖φ(z)‖ = 1`` (to float32 rounding): the kernel the exact test averages, in a form whose
  mean is a summary.
* :class:`KernelSummary` — count, Σφ and a bounded sample of φ per side (the sample only estimates the
  covariance of φ for the null distribution; it need not be the whole side).
* :func:`linear_mmd_test` — the unbiased MMD² of the random-feature kernel from two summaries, and an
  asymptotic p-value: under "same distribution" ``T = ‖φ̄_X − φ̄_Y‖²`` is ``(1/m + 1/n) Σ λ_k Z_k²``
  (central limit theorem; λ the eigenvalues of the within-side covariance of φ), the spectral null of
  Gretton, Fukumizu, Harchaoui & Sriperumbudur, "A fast, consistent kernel two-sample test", NIPS 2009.
  Its tail comes from Imhof's inversion formula (Imhof, "Computing the distribution of quadratic forms in
  normal variables", Biometrika 48 (1961)), and deep in the tail, where the integral is lost in
  error, from the Chernoff bound, which is conservative.
* :func:`covariance_distances` — the Fréchet and CORAL distances from two :class:`~diag.stats.summaries.
  Moments`, the same formulas as :func:`diag.stats.shift.frechet_distance` and
  :func:`diag.stats.shift.coral_distance` on the rows.
* :func:`stratified_rows` — a seeded uniform subsample of each side (the bounded sample the C2ST, the
  out-of-distribution index and the map are computed on).
* :func:`place_on_map` and :func:`placed_projection` — a 2-D map fitted on a subsample
  (:func:`diag.stats.projection.joint_projection`), with every other row placed at the
  inverse-distance-weighted mean position of its nearest fitted rows (in their principal subspace), so
  that a selection on the map reaches every row.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.integrate
import scipy.optimize
import scipy.stats
import torch
from numpy.typing import ArrayLike
from threadpoolctl import threadpool_limits

from diag.device import resolve_device
from diag.errors import DataError, param_error
from diag.stats.common import check_int, nearest_neighbors, numeric_matrix, principal_axes, to_tensor
from diag.stats.projection import JointProjection, joint_projection
from diag.stats.summaries import Moments, frechet_from_moments

__all__ = [
    "BLOCK_ROWS",
    "FourierMap",
    "KernelSummary",
    "LinearMMDResult",
    "covariance_distances",
    "linear_mmd_test",
    "moments_in_blocks",
    "place_on_map",
    "placed_projection",
    "stratified_rows",
    "weighted_chi2_sf",
]

#: Rows per block when a side is summarised from memory (bounds the float64 temporaries).
BLOCK_ROWS = 8192
# Below this, Imhof's integral is within a few times its error (about 3e-8 measured): the Chernoff
# bound takes over.
_IMHOF_FLOOR = 1e-6


@dataclass(frozen=True)
class FourierMap:
    """Random Fourier features of the mean of Gaussian kernels ``exp(-‖a − b‖² / (2σ²))`` over ``widths``.

    ``n_frequencies`` frequencies split evenly over the widths, drawn ``N(0, I/σ²)`` with ``seed``; each
    gives a cosine and a sine feature, so ``φ(a)ᵀφ(b) = mean_j cos(w_jᵀ(a − b))`` estimates the kernel and
    ``‖φ(a)‖² = 1``. Two sides must be mapped by the same map (same dim, widths and seed) to be compared.
    """

    dim: int
    widths: tuple[float, ...]
    n_frequencies: int = 512
    seed: int = 0
    _w: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int("dim", self.dim, minimum=1)
        check_int("n_frequencies", self.n_frequencies, minimum=len(self.widths) or 1)
        if not self.widths or not all(math.isfinite(w) and w > 0 for w in self.widths):
            raise param_error("widths", "must be one or more positive finite kernel widths", self.widths)
        rng = np.random.default_rng(self.seed)
        per = self.n_frequencies // len(self.widths)
        w = np.concatenate([rng.standard_normal((self.dim, per)) / s for s in self.widths], axis=1)
        object.__setattr__(self, "_w", w.astype(np.float32))

    @property
    def n_features(self) -> int:
        """``2F``: a cosine and a sine per frequency."""
        return 2 * self._w.shape[1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``φ(x)``, shape ``(n, 2F)``, float64 (the projection is computed in float32)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"rows of shape {x.shape}; this map takes {self.dim} features.")
        proj = np.asarray(x, dtype=np.float32) @ self._w
        scale = 1.0 / math.sqrt(self._w.shape[1])
        return np.concatenate([np.cos(proj), np.sin(proj)], axis=1).astype(np.float64) * scale


@dataclass
class KernelSummary:
    """One side's mergeable summary for :func:`linear_mmd_test`: ``count``, ``Σφ`` and a sample of φ.

    ``sample`` holds at most ``sample_size`` rows of φ (the first offered, or as passed): it estimates the
    covariance of φ, which sets the scale of the null distribution; ``Σφ`` covers every row.
    """

    n_features: int
    sample_size: int = 4096
    count: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sample: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def __post_init__(self) -> None:
        if self.total.size == 0:
            self.total = np.zeros(self.n_features, np.float64)
        if self.sample.size == 0:
            self.sample = np.zeros((0, self.n_features), np.float64)

    def update(self, phi: np.ndarray, *, keep: bool = True) -> KernelSummary:
        """Add rows of φ; the first ones (up to ``sample_size``) are kept for the covariance when ``keep``."""
        self.count += phi.shape[0]
        self.total += phi.sum(axis=0)
        room = self.sample_size - self.sample.shape[0]
        if keep and room > 0:
            self.sample = np.concatenate([self.sample, phi[:room]])
        return self

    def merge(self, other: KernelSummary) -> KernelSummary:
        """The summary of both sets of rows: counts and sums add; the samples are pooled, up to the cap."""
        if other.n_features != self.n_features:
            raise DataError(
                f"cannot merge kernel summaries of {self.n_features} and {other.n_features} features."
            )
        both = np.concatenate([self.sample, other.sample])[: self.sample_size]
        return KernelSummary(
            self.n_features, self.sample_size, self.count + other.count, self.total + other.total, both
        )


@dataclass(frozen=True)
class LinearMMDResult:
    """``mmd2``: unbiased MMD² of the random-feature kernel; ``statistic``: ``‖φ̄_X − φ̄_Y‖²``; ``p_value``:
    its asymptotic p-value (``p_method``: ``imhof`` or the conservative ``chernoff`` bound)."""

    mmd2: float
    statistic: float
    p_value: float
    p_method: str
    n_x: int
    n_y: int
    covariance_rows: int


def linear_mmd_test(x: KernelSummary, y: KernelSummary) -> LinearMMDResult:
    """MMD² and its asymptotic p-value from the two sides' summaries (module docstring).

    With ``‖φ‖ = 1`` (to the float32 rounding of the projection), the unbiased statistic of Gretton et
    al., "A kernel two-sample test", JMLR 13 (2012),
    eq. (3), for the kernel ``φᵀφ`` follows from the sums alone:
    ``(‖S_x‖² − m) / (m(m−1)) + (‖S_y‖² − n) / (n(n−1)) − 2 S_xᵀS_y / (mn)``.
    """
    m, n = x.count, y.count
    if m < 2 or n < 2:
        raise DataError(f"the MMD test needs at least 2 rows per side; got {m} and {n}.")
    if x.sample.shape[0] + y.sample.shape[0] < 3:
        raise DataError("the summaries keep too few rows of φ to estimate its covariance (need 3).")
    sx, sy = x.total, y.total
    mmd2 = (sx @ sx - m) / (m * (m - 1.0)) + (sy @ sy - n) / (n * (n - 1.0)) - 2.0 * (sx @ sy) / (m * n)
    diff = sx / m - sy / n
    stat = float(diff @ diff)
    parts = [s.sample - s.sample.mean(axis=0) for s in (x, y) if s.sample.shape[0]]
    centred = np.concatenate(parts)
    cov = centred.T @ centred / max(1, centred.shape[0] - len(parts))
    with threadpool_limits(1):  # a 1024² eigenproblem: threads only contend (4 s against 0.3 s, 2 busy cores)
        lam = np.clip(np.linalg.eigvalsh(cov), 0.0, None) * (1.0 / m + 1.0 / n)
    p, how = weighted_chi2_sf(stat, lam)
    return LinearMMDResult(float(mmd2), stat, p, how, int(m), int(n), int(centred.shape[0]))


def weighted_chi2_sf(x: float, weights: ArrayLike) -> tuple[float, str]:
    """``P(Σ λ_k Z_k² ≥ x)`` for independent standard normals ``Z_k``, and how it was computed.

    Imhof (1961), eq. (3.2) with central χ²₁ terms:
    ``1/2 + (1/π) ∫₀^∞ sin θ(u) / (u ρ(u)) du``, ``θ(u) = ½ Σ atan(λ_k u) − ½ x u``,
    ``ρ(u) = Π (1 + λ_k² u²)^¼``, on weights scaled to sum 1 (equal weights: the χ²_k law). Where that
    falls below 1e-6 (a few times the integral's error) or above the Chernoff bound
    ``min_t E[e^{tQ}] e^{−tx}``, that bound is returned instead (an upper bound, so the test stays valid;
    never below the smallest positive float).
    """
    lam = np.asarray(weights, np.float64).ravel()
    lam = lam[lam > 0]
    if lam.size == 0:
        return (1.0 if x <= 0 else 0.0), "degenerate"
    scale = lam.sum()
    lam, q = lam / scale, float(x) / scale
    if q <= 0:
        return 1.0, "imhof"
    lam = lam[lam > 1e-12]
    if lam.max() <= lam.min() * (1.0 + 1e-9):  # equal weights: a scaled χ²_k, in closed form
        return float(scipy.stats.chi2.sf(q / lam[0], lam.size)), "chi2"

    # Chernoff: log E e^{tQ} = −½ Σ log(1 − 2 t λ_k), t < 1 / (2 λ_max); an upper bound on the tail. It is
    # computed first: where it is below the floor, Imhof's value could not be returned (it would have to
    # lie between the floor and the bound), so the integral is not computed. Deep in the tail the
    # integrand oscillates ``q·top / 4π`` times, so the integral costs seconds (17 s at q = 1e4 on 1020
    # weights, one thread) for a value that is discarded: that was the streaming profile's cost per layer
    # on strongly shifted data at 100k per side (benchmarks/bench_scale.py, part d).
    t_max = 0.5 / lam.max()

    def log_bound(t: float) -> float:
        return float(-0.5 * np.log1p(-2.0 * t * lam).sum() - t * q)

    best = scipy.optimize.minimize_scalar(log_bound, bounds=(0.0, t_max * (1 - 1e-9)), method="bounded")
    bound = math.exp(min(0.0, best.fun))
    if bound < _IMHOF_FLOOR:
        return _chernoff(bound)

    def integrand(u: float) -> float:
        if u == 0.0:
            return 0.5 * (lam.sum() - q)
        theta = 0.5 * np.arctan(lam * u).sum() - 0.5 * q * u
        log_rho = 0.25 * np.log1p((lam * u) ** 2).sum()
        return 0.0 if log_rho > 700.0 else math.sin(theta) / (u * math.exp(log_rho))

    # Integrate piece by piece (about one oscillation each) up to where ρ(u) reaches 1e3, then to ∞ at
    # once: past there the integrand is a thousandth of its size at the origin and decays like a power.
    top = 1.0 / lam.max()
    while 0.25 * np.log1p((lam * top) ** 2).sum() < math.log(1e3) and top < 1e12:
        top *= 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.integrate.IntegrationWarning)
        value = sum(
            scipy.integrate.quad(integrand, a, b, limit=200, epsabs=1e-13)[0]
            for a, b in _pieces(0.0, top, 4.0 * math.pi / q)
        )
        value += scipy.integrate.quad(integrand, top, math.inf, limit=400, epsabs=1e-13)[0]
    p = 0.5 + value / math.pi
    # An integral above the bound is rounding error (few weights, slow decay): the bound is the better
    # value.
    if p >= _IMHOF_FLOOR and p <= bound:
        return float(min(1.0, p)), "imhof"
    return _chernoff(bound)


def _chernoff(bound: float) -> tuple[float, str]:
    """The Chernoff bound as the p-value; far in the tail it underflows: the smallest positive float
    stands for "below 1e-308"."""
    return float(min(1.0, max(bound, np.finfo(np.float64).tiny))), "chernoff"


def _pieces(a: float, b: float, period: float, most: int = 200) -> Iterator[tuple[float, float]]:
    """``[a, b]`` cut into at most ``most`` pieces of about ``period`` (quad keeps its accuracy per piece)."""
    count = int(min(most, max(1, math.ceil((b - a) / period))))
    edges = np.linspace(a, b, count + 1)
    yield from zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)


# ------------------------------------------------------------------------------------------------------
# Moments


def moments_in_blocks(x: ArrayLike, *, centre: np.ndarray | None = None, what: str = "rows") -> Moments:
    """:class:`~diag.stats.summaries.Moments` of ``x − centre``, in blocks of rows (bounded temporaries).

    A common ``centre`` for both sides (a rough mean) keeps ``Σxxᵀ − nμμᵀ`` free of cancellation; the
    covariance does not depend on it, and the mean is ``moments.mean + centre``.
    """
    arr = numeric_matrix(x, what)
    c = np.zeros(arr.shape[1]) if centre is None else np.asarray(centre, np.float64)
    out = Moments(arr.shape[1])
    for start in range(0, arr.shape[0], BLOCK_ROWS):
        out = out.update(arr[start : start + BLOCK_ROWS].astype(np.float64) - c)
    return out


def covariance_distances(x: Moments, y: Moments) -> dict[str, float]:
    """Fréchet distance, its relative form and the CORAL distance from two sides' moments.

    ``frechet``: :func:`~diag.stats.summaries.frechet_from_moments` (Heusel et al., NeurIPS 2017);
    ``frechet_relative``: divided by ``tr Σ_x + tr Σ_y``; ``coral``: ``‖Σ_x − Σ_y‖²_F / (4d²)`` (Sun &
    Saenko, "Deep CORAL", ECCV Workshops 2016). Covariances with ``ddof=1``, as on the rows.
    """
    if x.dim != y.dim:
        raise DataError(f"moments of {x.dim} and {y.dim} features cannot be compared.")
    cx, cy = x.covariance, y.covariance
    fr = frechet_from_moments(x.mean, cx, y.mean, cy)
    scale = float(np.trace(cx) + np.trace(cy))
    diff = cx - cy
    return {
        "frechet": fr,
        "frechet_relative": fr / scale if scale > 0 else 0.0,
        "coral": float(np.sum(diff * diff)) / (4.0 * x.dim * x.dim),
    }


# ------------------------------------------------------------------------------------------------------
# Bounded samples


def stratified_rows(sizes: Sequence[int], cap: int, seed: int) -> list[np.ndarray]:
    """For each side, a sorted seeded uniform sample of at most ``cap`` of its ``sizes[i]`` row numbers
    (every row when it has no more): the sides are sampled apart, so each keeps its own share."""
    check_int("cap", cap, minimum=1)
    rng = np.random.default_rng(seed)
    return [
        np.arange(s, dtype=np.int64) if s <= cap else np.sort(rng.choice(s, size=cap, replace=False))
        for s in sizes
    ]


# ------------------------------------------------------------------------------------------------------
# Maps of every row


def place_on_map(
    fit_features: ArrayLike,
    fit_coords: ArrayLike,
    features: ArrayLike,
    *,
    k: int = 10,
    n_components: int = 50,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Map positions for ``features`` from a map of ``fit_features`` (rows of the same space).

    Each row goes to the inverse-distance-weighted mean of the ``fit_coords`` of its ``k`` nearest fitted
    rows (a row equal to a fitted one goes exactly onto it), the neighbours found by exact search
    (:func:`diag.stats.common.nearest_neighbors`) in the top ``n_components`` principal axes of the
    fitted rows — the space UMAP's own neighbour graph is built in after its PCA step. The same
    weighting initialises ``umap.UMAP.transform`` (McInnes, Healy & Melville, 2018, §3.2), here without
    the optimisation that follows, so that 200k rows take seconds.

    Returns
    -------
    ndarray of shape (n, 2), float32
    """
    fit = numeric_matrix(fit_features, "fit_features").astype(np.float64)
    rows = numeric_matrix(features, "features").astype(np.float64)
    coords = np.asarray(fit_coords, np.float64)
    if coords.shape != (fit.shape[0], 2) or rows.shape[1] != fit.shape[1]:
        raise DataError(
            f"fit_coords must be ({fit.shape[0]}, 2) and features {fit.shape[1]} wide; got {coords.shape} "
            f"and {rows.shape}."
        )
    check_int("k", k, minimum=1)
    centre = fit.mean(axis=0)
    axes = principal_axes(fit - centre, min(n_components, *fit.shape))
    dev = resolve_device(device)
    ref = to_tensor((fit - centre) @ axes, dev, torch.float32)
    out = np.empty((rows.shape[0], 2), np.float32)
    for start in range(0, rows.shape[0], 65_536):  # bounded host memory for the neighbour lists
        query = to_tensor((rows[start : start + 65_536] - centre) @ axes, dev, torch.float32)
        d2, idx = nearest_neighbors(query, ref, min(k, fit.shape[0]))
        dist = d2.clamp_min(0.0).sqrt().cpu().numpy().astype(np.float64)
        near = idx.cpu().numpy()
        weight = 1.0 / np.maximum(dist, 1e-12 * max(1.0, float(dist.max(initial=0.0))))
        exact = dist[:, 0] <= 1e-6 * max(1.0, float(np.median(dist)))
        weight[exact] = 0.0
        weight[exact, 0] = 1.0
        weight /= weight.sum(axis=1, keepdims=True)
        out[start : start + len(near)] = np.einsum("nk,nkc->nc", weight, coords[near])
    return out


def placed_projection(
    source: np.ndarray,
    target: np.ndarray,
    layer: str,
    *,
    max_per_side: int = 5000,
    seed: int = 0,
    **kwargs: Any,
) -> JointProjection:
    """A map of every row of both sides: :func:`~diag.stats.projection.joint_projection` on at most
    ``max_per_side`` rows per side (``kwargs`` go to it), then :func:`place_on_map` for the rest.

    ``method`` is the fitted map's with ``+knn`` when rows were placed; rows in the fitted subsample keep
    their fitted positions exactly.
    """
    fitted = joint_projection(source, target, layer, max_per_side=max_per_side, seed=seed, **kwargs)
    both = np.concatenate([source[fitted.source_rows], target[fitted.target_rows]])
    if fitted.n_source == len(source) and fitted.n_target == len(target):
        return fitted
    coords = np.concatenate([place_on_map(both, fitted.coords, side) for side in (source, target)])
    m = len(source)
    coords[fitted.source_rows] = fitted.coords[: fitted.n_source]
    coords[m + fitted.target_rows] = fitted.coords[fitted.n_source :]
    every = (np.arange(m, dtype=np.int64), np.arange(len(target), dtype=np.int64))
    return JointProjection(layer, coords, every[0], every[1], f"{fitted.method}+knn")

"""2-D maps of embeddings (PCA, then UMAP), cached in the report folder, and nearest-neighbour look-ups.

The dashboard's embedding view draws source and target together at one probe point. The map is
computed here, never in a page:

- :func:`pca_2d` and :func:`umap_2d` are pure functions, arrays in, an ``(n, 2)`` array out;
  :func:`umap_2d` first reduces to at most ``pca_dims`` dimensions with PCA (faster, and UMAP's
  neighbour graph is more stable on the leading components), and falls back to PCA for tiny inputs;
- :func:`cached_projection` stores the map as ``projection_<layer>_<key>.npy`` beside ``report.json``,
  the key a hash of the features' bytes and every parameter, so a second visit (or another browser tab)
  reads it back instead of recomputing;
- :func:`joint_projection` maps a report's source and target at one layer, and :func:`nearest_source`
  finds the source samples nearest to chosen target samples in the layer's *feature* space (not on the
  2-D map, whose distances UMAP does not preserve).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diag.device import resolve_device
from diag.errors import DataError, MissingDependencyError, param_error, require
from diag.fileio import atomic_write_bytes
from diag.stats.common import nearest_neighbors, principal_axes, to_tensor

if TYPE_CHECKING:
    from diag.report.schema import Report

__all__ = [
    "MIN_UMAP_SAMPLES",
    "JointProjection",
    "cached_projection",
    "joint_projection",
    "nearest_source",
    "pca_2d",
    "precompute_maps",
    "projection_key",
    "report_projection",
    "umap_2d",
]

log = logging.getLogger(__name__)

#: Below this many samples UMAP's neighbour graph is degenerate; :func:`umap_2d` uses PCA instead.
MIN_UMAP_SAMPLES = 15
#: Bump when the computation changes so that stale cached maps are not reused.
_CACHE_VERSION = 1
_METHODS = ("umap", "pca")
# Entries per block of the query-to-source distance matrix (32 MiB in float64).
_BLOCK_ELEMS = 1 << 22


def _check_features(features: Any, name: str = "features") -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise param_error(name, "must be a 2-d array of shape (n_samples, n_features) with n >= 1", x.shape)
    if not np.issubdtype(x.dtype, np.number):
        raise param_error(name, "must be numeric", x.dtype)
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise DataError(f"{name}: holds NaN or inf values; a 2-D map needs finite features.")
    return x


def _pca(x: np.ndarray, n_components: int) -> np.ndarray:
    """Centre ``x`` and project it on its ``n_components`` leading principal axes (deterministic signs)."""
    xc = x - x.mean(axis=0, keepdims=True)
    k = max(1, min(n_components, xc.shape[0], xc.shape[1]))
    axes = principal_axes(xc, k)  # (d, k)
    # Fix each axis' sign (largest |loading| positive) so that the map does not flip between runs.
    flip = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(k)])
    flip[flip == 0] = 1.0
    out = xc @ (axes * flip)
    if out.shape[1] < n_components:  # fewer informative axes than asked for: pad with zeros
        out = np.pad(out, ((0, 0), (0, n_components - out.shape[1])))
    return out


def pca_2d(features: Any) -> np.ndarray:
    """The first two principal components of ``features``.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)

    Returns
    -------
    ndarray of shape (n_samples, 2), float32
    """
    x = _check_features(features)
    return _pca(x, 2).astype(np.float32)


def umap_2d(
    features: Any,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    pca_dims: int | None = 50,
    random_state: int = 0,
) -> np.ndarray:
    """A 2-D UMAP map of ``features``, after PCA to at most ``pca_dims`` dimensions.

    UMAP (McInnes, Healy & Melville, 2018) keeps local neighbourhoods; distances between far clusters on
    the map mean little. The neighbour graph is exact (Euclidean, after the PCA step). The result is
    deterministic for a given ``random_state`` (UMAP then runs on a single thread). With fewer than
    :data:`MIN_UMAP_SAMPLES` samples the map is the PCA one (logged).

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
    n_neighbors : int, default 15
        Size of the local neighbourhood (capped at ``n_samples - 1``).
    min_dist : float, default 0.1
        How tightly points may pack on the map, in [0, 1].
    pca_dims : int or None, default 50
        Reduce to this many principal components first; None skips the PCA step.
    random_state : int, default 0

    Returns
    -------
    ndarray of shape (n_samples, 2), float32
    """
    x = _check_features(features)
    if not isinstance(n_neighbors, (int, np.integer)) or isinstance(n_neighbors, bool) or n_neighbors < 2:
        raise param_error("n_neighbors", "must be an integer >= 2", n_neighbors)
    if not isinstance(min_dist, (int, float)) or not 0.0 <= float(min_dist) <= 1.0:
        raise param_error("min_dist", "must be a number in [0, 1]", min_dist)
    if pca_dims is not None and (not isinstance(pca_dims, (int, np.integer)) or pca_dims < 2):
        raise param_error("pca_dims", "must be an integer >= 2, or None to skip the PCA step", pca_dims)
    n = x.shape[0]
    if n < MIN_UMAP_SAMPLES:
        log.info("%d samples are too few for UMAP (< %d): using the 2-D PCA map", n, MIN_UMAP_SAMPLES)
        return _pca(x, 2).astype(np.float32)
    if pca_dims is not None and x.shape[1] > pca_dims:
        x = _pca(x, pca_dims)
    with warnings.catch_warnings():
        # umap-learn warns on import that TensorFlow (for ParametricUMAP, unused here) is missing, and
        # numba/pynndescent emit performance notes on first compilation: none of them concern the map.
        warnings.simplefilter("ignore", ImportWarning)
        warnings.filterwarnings("ignore", module=r"(numba|pynndescent|umap)(\..*)?")
        warnings.filterwarnings(
            "ignore", message=r".*(n_jobs|spectral initiali[sz]ation|graph is not fully).*"
        )
        _numba_cache_dir()
        require("umap", feature="UMAP projections", extra="dashboard")
        import umap

        _enable_numba_cache()

        # The exact k-NN graph (self included, as UMAP expects) computed here with numpy: for the sizes
        # a browser can draw it is fast, and it spares UMAP's numba nearest-neighbour kernels, whose
        # compilation costs tens of seconds on the first map of every process.
        k = int(min(n_neighbors, n - 1))
        knn_idx, knn_dist = nearest_source(x, x, k=k)
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=k,
            min_dist=float(min_dist),
            random_state=int(random_state),
            n_jobs=1,  # a seeded UMAP is single-threaded anyway; saying so silences its warning
            precomputed_knn=(knn_idx.astype(np.int32), knn_dist.astype(np.float32), None),
        )
        emb = reducer.fit_transform(x.astype(np.float32))
    return np.asarray(emb, dtype=np.float32)


def _numba_cache_dir() -> str | None:
    """``$NUMBA_CACHE_DIR``, else ``~/.cache/diag/numba`` (``$XDG_CACHE_HOME/diag/numba``), set in the
    environment before numba is first imported; None when that folder cannot be written."""
    path = os.environ.get("NUMBA_CACHE_DIR")
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = str(Path(base) / "diag" / "numba")
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(path, os.W_OK):
        return None
    if "numba" not in sys.modules:
        os.environ.setdefault("NUMBA_CACHE_DIR", path)
    return path


def _enable_numba_cache() -> None:
    """Keep UMAP's and pynndescent's numba-compiled functions on disk between processes.

    Most of them are compiled without ``cache=True``, so every new process (a dashboard server, a
    diagnosis) spent 20-25 s compiling them before its first map on two shared cores; with the
    compiled code cached the first map of a later process took 2.5 s (600 points; 1.9-2.5 s for any
    later map). Turning caching on for an already-defined numba dispatcher is numba's own
    ``Dispatcher.enable_caching``; nothing is done when the cache folder cannot be written.
    """
    path = _numba_cache_dir()
    numba = sys.modules.get("numba")
    if path is None or numba is None:
        return
    if not os.environ.get("NUMBA_CACHE_DIR"):
        numba.config.CACHE_DIR = path
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("umap", "pynndescent")):
            continue
        for obj in list(vars(module).values()):
            cache = getattr(obj, "_cache", None)
            if type(cache).__name__ == "NullCache" and hasattr(obj, "enable_caching"):
                try:
                    obj.enable_caching()
                except Exception as exc:  # a function numba cannot cache stays uncached
                    log.debug("numba cache not enabled for %s: %s", getattr(obj, "__name__", obj), exc)


# ------------------------------------------------------------------------------------------------------
# On-disk cache


def projection_key(features: Any, params: dict[str, Any]) -> str:
    """A hex key for a map: a SHA-256 of the features (shape, dtype, bytes) and the parameters."""
    x = np.ascontiguousarray(features)
    h = hashlib.sha256()
    h.update(f"v{_CACHE_VERSION}|{x.shape}|{x.dtype}|".encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(x.tobytes())
    return h.hexdigest()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "layer"


def cached_projection(
    features: Any,
    folder: str | Path,
    layer: str,
    *,
    method: str = "umap",
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    pca_dims: int | None = 50,
    random_state: int = 0,
) -> np.ndarray:
    """:func:`umap_2d` (or :func:`pca_2d`) of ``features``, read from or written to ``folder``.

    The file is ``folder/projection_<layer>_<key16>.npy``, written atomically; the key covers the
    features' bytes and every parameter, so a changed report or setting never reads a stale map.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
    folder : path
        The report folder (created if missing).
    layer : str
        The probe point's name (part of the file name).
    method : {"umap", "pca"}, default "umap"
    n_neighbors, min_dist, pca_dims, random_state
        See :func:`umap_2d` (ignored for ``method="pca"``).

    Returns
    -------
    ndarray of shape (n_samples, 2), float32
    """
    if method not in _METHODS:
        raise param_error("method", f"must be one of {', '.join(_METHODS)}", method)
    x = _check_features(features)
    params: dict[str, Any] = {"method": method}
    if method == "umap":
        params.update(
            n_neighbors=n_neighbors, min_dist=min_dist, pca_dims=pca_dims, random_state=random_state
        )
    key = projection_key(np.asarray(features), params)
    path = Path(folder) / f"projection_{_safe(layer)}_{key[:16]}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == (x.shape[0], 2):
                log.debug("projection cache hit %s", path.name)
                return cached.astype(np.float32, copy=False)
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable cached projection (%s); recomputing", path, exc)
    if method == "umap":
        coords = umap_2d(
            x, n_neighbors=n_neighbors, min_dist=min_dist, pca_dims=pca_dims, random_state=random_state
        )
    else:
        coords = pca_2d(x)
    buf = io.BytesIO()
    np.save(buf, coords, allow_pickle=False)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:  # a read-only report folder still gets its map, just not cached
        log.warning("%s: could not cache the projection (%s)", path, exc)
    return coords


# ------------------------------------------------------------------------------------------------------
# A report's joint map


@dataclass(frozen=True)
class JointProjection:
    """Source and target of a report mapped together at one layer.

    Attributes
    ----------
    layer : str
    coords : ndarray of shape (n_source_shown + n_target_shown, 2)
        Source rows first, then target rows.
    source_rows, target_rows : ndarray of int64
        Which rows of the source and target embeddings are shown (all of them unless subsampled).
    method : str
    """

    layer: str
    coords: np.ndarray
    source_rows: np.ndarray
    target_rows: np.ndarray
    method: str

    @property
    def n_source(self) -> int:
        return len(self.source_rows)

    @property
    def n_target(self) -> int:
        return len(self.target_rows)


def _rows(n: int, max_n: int | None, seed: int) -> np.ndarray:
    if max_n is None or n <= max_n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False)).astype(np.int64)


def joint_projection(
    source: Any,
    target: Any,
    layer: str,
    *,
    folder: str | Path | None = None,
    method: str = "umap",
    max_per_side: int | None = 5000,
    seed: int = 0,
    **params: Any,
) -> JointProjection:
    """Map source and target features of one layer together (one fit, so both share the map).

    Parameters
    ----------
    source, target : Embeddings or array-like of shape (n, d)
        Embeddings are indexed by ``layer``.
    layer : str
    folder : path, optional
        Cache the map there (see :func:`cached_projection`); computed afresh when None.
    method : {"umap", "pca"}
    max_per_side : int or None, default 5000
        Show at most this many (seeded random) samples of each side: UMAP on 10k points takes a
        minute on two cores, and a browser draws more points than anyone can select.
    seed : int
        Seed of the subsample and of UMAP.
    **params
        ``n_neighbors``, ``min_dist``, ``pca_dims``.

    Returns
    -------
    JointProjection
    """
    xs = np.asarray(source[layer] if not isinstance(source, np.ndarray) else source)
    xt = np.asarray(target[layer] if not isinstance(target, np.ndarray) else target)
    if xs.ndim != 2 or xt.ndim != 2 or xs.shape[1] != xt.shape[1]:
        raise DataError(
            f"layer {layer!r}: source and target features must be 2-d with the same width; "
            f"got {xs.shape} and {xt.shape}."
        )
    rs, rt = _rows(len(xs), max_per_side, seed), _rows(len(xt), max_per_side, seed + 1)
    both = np.concatenate([xs[rs], xt[rt]], axis=0)
    if folder is not None:
        coords = cached_projection(both, folder, layer, method=method, random_state=seed, **params)
    elif method == "umap":
        coords = umap_2d(both, random_state=seed, **params)
    elif method == "pca":
        coords = pca_2d(both)
    else:
        raise param_error("method", f"must be one of {', '.join(_METHODS)}", method)
    return JointProjection(layer=layer, coords=coords, source_rows=rs, target_rows=rt, method=method)


def report_projection(report: Report, layer: str, **kwargs: Any) -> JointProjection:
    """:func:`joint_projection` of a report's saved embeddings, cached in the report's folder."""
    if layer not in report.layer_names:
        raise param_error("layer", f"must be a layer of the report ({', '.join(report.layer_names)})", layer)
    return joint_projection(
        report.embeddings("source"), report.embeddings("target"), layer, folder=report.folder, **kwargs
    )


def nearest_source(
    source_features: Any, query_features: Any, *, k: int = 5, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest source samples of each query, by Euclidean distance in feature space.

    Exact search in float64 (:func:`diag.stats.common.nearest_neighbors`), in blocks of queries.

    Parameters
    ----------
    source_features : array-like of shape (n_source, d)
    query_features : array-like of shape (n_query, d)
    k : int, default 5
        Capped at ``n_source``.
    device : str or torch.device, default "cpu"

    Returns
    -------
    indices : ndarray of shape (n_query, k), int64
        Rows of ``source_features``, nearest first.
    distances : ndarray of shape (n_query, k), float64
    """
    xs = _check_features(source_features, "source_features")
    xq = _check_features(query_features, "query_features")
    if xs.shape[1] != xq.shape[1]:
        raise param_error("query_features", f"must have {xs.shape[1]} columns like source_features", xq.shape)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise param_error("k", "must be a positive integer", k)
    k = min(int(k), xs.shape[0])
    dev = resolve_device(device)
    d2, idx = nearest_neighbors(
        to_tensor(xq, dev, torch.float64), to_tensor(xs, dev, torch.float64), k, block_elems=_BLOCK_ELEMS
    )
    return idx.cpu().numpy(), d2.clamp_min(0.0).sqrt().cpu().numpy()


def precompute_maps(
    source: Any,
    target: Any,
    layers: list[str],
    folder: str | Path,
    *,
    method: str = "umap",
    seed: int = 0,
    progress: Any = None,
) -> dict[str, Any]:
    """Compute and cache (:func:`joint_projection` with ``folder``) the default map of each of ``layers``.

    Called at diagnosis time for the layers a reader opens first (onset, freeze, deepest), so that the
    dashboard's first view reads a file instead of fitting UMAP. Without umap-learn the maps are PCA's.
    Returns the report's ``maps`` section: ``{"method", "layers": {layer: {"seconds", "n_points"}},
    "max_per_side", "seed"}``; a layer whose map fails is listed with its ``error``.
    """
    out: dict[str, Any] = {"method": method, "layers": {}, "max_per_side": 5000, "seed": seed}
    if progress is not None:
        progress.on_start(len(layers), "2-D maps")
    try:
        for layer in layers:
            t0 = time.perf_counter()
            try:
                proj = joint_projection(source, target, layer, folder=folder, method=out["method"], seed=seed)
            except MissingDependencyError as exc:
                log.info("no UMAP maps (%s): PCA maps instead", exc)
                out["method"] = "pca"
                proj = joint_projection(source, target, layer, folder=folder, method="pca", seed=seed)
            except DataError as exc:
                out["layers"][layer] = {"error": str(exc)}
                continue
            out["layers"][layer] = {
                "seconds": round(time.perf_counter() - t0, 3),
                "n_points": int(proj.n_source + proj.n_target),
            }
            if progress is not None:
                progress.on_advance(1)
    finally:
        if progress is not None:
            progress.on_end()
    return out

"""Extraction on a Ray cluster: the items as a Ray Dataset, the backbone in a Ray Data actor pool.

``--engine ray`` (``ExtractConfig(engine="ray")``) sends the forward passes here instead of to
:func:`diag.engine.extract`. The data set's items become a Ray Dataset (``ray.data.from_items``: one row
per item with its row number, id and, for files, its path); ``map_batches`` runs the backbone over
shards of ``ray_batch_size`` items in an actor pool: one actor per GPU (``num_gpus=1``) when the cluster
has GPUs, CPU actors otherwise. Each actor decodes and embeds its shard with the very loop of the
single-process path (:func:`diag.engine.extract.forward_pass`), so the numbers are the same; the
driver puts the rows back in data order (:func:`diag.engine.extract.assemble`). The cache key does not
depend on the engine: an entry written by one engine is read by the other.

Two products: :func:`extract_ray` returns the :class:`~diag.engine.Embeddings` (every row, as the local
path does), and :func:`map_shards` returns what a function computes from each shard's embeddings inside
its actor (a reference's mergeable summaries, :func:`diag.reference.shards.summarise_ray`), so only
summaries cross to the driver. With ``ray_parquet`` each shard's embeddings are also written as Parquet
files.

Ray is optional (``pip install 'diag[ray]'``). Without ``ray_address`` a local Ray instance is started
once per process (every core, no dashboard) and reused; it ends with the process. A running Ray
(``ray.init`` called by the caller) is used as it is. Precision ``auto`` is resolved on the driver (it is
part of the cache key): pass ``--precision bf16`` to run bf16 on GPU workers from a CPU-only driver.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from diag.data.dataset import DataSet
from diag.device import resolve_device, resolve_precision
from diag.engine.embeddings import Embeddings
from diag.engine.extract import ExtractConfig, ForwardPass, assemble, check_input, forward_pass
from diag.errors import ConfigError, MissingDependencyError
from diag.models import Backbone
from diag.progress import ProgressCallback

__all__ = [
    "DEFAULT_SHARD",
    "RAY_INSTALL",
    "ShardEmbedder",
    "connect",
    "extract_ray",
    "map_shards",
    "pool_plan",
    "require_ray",
]

log = logging.getLogger(__name__)

#: Items per shard (one Ray batch, one call of an actor) when ``ray_batch_size`` is not set.
DEFAULT_SHARD = 1024
#: How to get Ray.
RAY_INSTALL = "pip install 'diag[ray]'"
_FEATURE = "feature:"
#: Seconds to wait for a cluster's head to answer before saying the address is wrong.
_CONNECT_TIMEOUT_S = 5.0


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data loaded, or :class:`MissingDependencyError` saying how to get it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingDependencyError(
            f"--engine ray needs the package 'ray' with Ray Data, which is not installed ({exc}). "
            f"Install it with: {RAY_INSTALL} (or use --engine local)."
        ) from None
    return ray


def connect(address: str | None = None) -> ModuleType:
    """Ray, connected: the running instance, the cluster at ``address``, or a new local instance.

    A given ``address`` (``HOST:PORT``) is checked first (a TCP connection, seconds at most), whether or
    not Ray is already running in this process.

    Raises
    ------
    ConfigError
        ``address`` is malformed, or no Ray cluster answers there.
    MissingDependencyError
        Ray is not installed.
    """
    ray = require_ray()
    fix = (
        "Start a cluster with `ray start --head` and pass the address it prints (HOST:6379), 'auto' on "
        "a node of a running cluster, or drop --ray-address to start a local Ray."
    )
    if address and address != "auto" and not address.startswith("ray://"):
        _check_reachable(address, fix)  # before ray.init, which retries a wrong address for minutes
    if not ray.is_initialized():
        _init(ray, address, fix)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    return ray


def _init(ray: ModuleType, address: str | None, fix: str) -> None:
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
    except (ConnectionError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"--ray-address {address}: no Ray cluster there ({exc}). {fix}") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _check_reachable(address: str, fix: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--ray-address must be HOST:PORT, auto or ray://HOST:PORT; got {address!r}. {fix}")
    try:
        socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(
            f"--ray-address {address}: nothing answers there ({exc.strerror or exc}). {fix}"
        ) from None


def pool_plan(ray: ModuleType, config: ExtractConfig, n: int) -> dict[str, Any]:
    """How many actors, with which resources, and how big the shards are, for ``n`` items.

    One actor per GPU (``num_gpus=1``) when the cluster has GPUs and the device is not ``cpu``; else
    CPU actors, one per node by default, each taking its share of the cluster's CPUs as torch threads.
    Shards are ``ray_batch_size`` items, smaller when that would leave an actor idle.
    """
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if config.device != "cpu" else 0
    cpus = max(1, int(resources.get("CPU", 1)))
    nodes = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
    actors = config.ray_concurrency or (gpus if gpus else nodes)
    per_actor_cpus = 1 if gpus else max(1, cpus // actors)
    shard = config.ray_batch_size or DEFAULT_SHARD
    shard = max(1, min(shard, -(-n // actors)))
    return {
        "actors": actors,
        "num_gpus": 1 if gpus else 0,
        "num_cpus": per_actor_cpus,
        "shard_size": shard,
        "cluster": {"nodes": nodes, "cpus": cpus, "gpus": gpus},
    }


class ShardEmbedder:
    """The Ray Data actor: embeds one shard (a batch of row numbers) per call.

    Without ``reduce`` a call returns the shard's rows as columns (``index``, ``error`` for unreadable
    items, ``feature:<probe>`` and ``logits``); with ``reduce(backbone, shard_data, embeddings, first_row)``
    it returns one row, ``first_row`` and ``summary``, whatever ``reduce`` made of the shard (None when
    no item of the shard could be read).
    """

    def __init__(
        self,
        backbone: Backbone,
        data: DataSet,
        config: ExtractConfig,
        reduce: Callable[[Backbone, DataSet, Embeddings, int], Any] | None = None,
    ) -> None:
        self.backbone, self.data, self.config, self.reduce = backbone, data, config, reduce

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.asarray(batch["index"], np.int64)
        part = self.data.subset(rows, name=self.data.name)
        passed = forward_pass(self.backbone, part, self.config)
        if self.reduce is not None:
            summary = None
            if len(passed.rows):
                emb = assemble(self.backbone, part, passed)
                summary = self.reduce(self.backbone, part, emb, int(rows[0]))
            return {"first_row": rows[:1], "summary": np.array([summary], dtype=object)}
        bad = [i for i, _ in passed.skipped]
        index = np.concatenate([rows[passed.rows], rows[np.asarray(bad, np.int64)]])
        out: dict[str, np.ndarray] = {
            "index": index,
            "error": np.array([""] * len(passed.rows) + [e for _, e in passed.skipped], dtype=object),
            "settings": np.array([json.dumps(passed.settings)] * len(index), dtype=object),
        }
        for name, arr in passed.arrays.items():
            pad = np.zeros((len(bad), arr.shape[1]), np.float32)
            out[_FEATURE + name] = np.concatenate([arr, pad]).astype(np.float32, copy=False)
        return out


def _actor_config(config: ExtractConfig, plan: dict[str, Any]) -> ExtractConfig:
    """The config each actor runs: local, with the driver's precision and its share of the CPUs."""
    precision = resolve_precision(config.precision, resolve_device(config.device))
    return replace(
        config,
        engine="local",
        ray_address=None,
        ray_batch_size=None,
        ray_concurrency=None,
        ray_parquet=None,
        precision=precision,
        num_threads=config.num_threads or plan["num_cpus"],
    )


def _run(
    backbone: Backbone,
    data: DataSet,
    config: ExtractConfig,
    reduce: Callable[[Backbone, DataSet, Embeddings, int], Any] | None,
) -> tuple[Any, dict[str, Any], Callable[[], Iterator[dict[str, np.ndarray]]]]:
    ray = connect(config.ray_address)
    plan = pool_plan(ray, config, len(data))
    items = [{"index": i, "id": data.ids[i]} for i in range(len(data))]
    if data.paths is not None:
        for item, path in zip(items, data.paths, strict=True):
            item["path"] = str(path)
    dataset = ray.data.from_items(items)
    mapped = dataset.map_batches(
        ShardEmbedder,
        fn_constructor_args=(backbone, data, _actor_config(config, plan), reduce),
        batch_size=plan["shard_size"],
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan["actors"]),
        num_cpus=plan["num_cpus"],
        num_gpus=plan["num_gpus"],
    )
    if config.ray_parquet and reduce is None:
        mapped = mapped.materialize()
        mapped.drop_columns(["settings"]).write_parquet(str(Path(config.ray_parquet)))

    def batches() -> Iterator[dict[str, np.ndarray]]:
        return mapped.iter_batches(batch_size=None, batch_format="numpy")

    return ray, plan, batches


def extract_ray(
    backbone: Backbone,
    data: DataSet,
    config: ExtractConfig,
    *,
    progress: ProgressCallback | None = None,
) -> Embeddings:
    """:func:`diag.engine.extract` on a Ray cluster: the same embeddings, rows in ``data``'s order.

    The manifest's ``engine`` entry records the pool (actors, GPUs, shard size, cluster size).
    """
    check_input(backbone, data)
    progress = progress or ProgressCallback()
    t0 = time.perf_counter()
    ray, plan, batches = _run(backbone, data, config, None)
    rows: list[np.ndarray] = []
    errors: list[tuple[int, str]] = []
    arrays: dict[str, list[np.ndarray]] = {}
    settings: dict[str, Any] = {}
    progress.on_start(len(data), f"embed {data.name} [{backbone.name}] on Ray ({plan['actors']} actors)")
    try:
        for batch in batches():
            index, error = batch["index"], batch["error"]
            ok = np.array([not e for e in error], dtype=bool)
            rows.append(index[ok])
            errors += [(int(i), str(e)) for i, e in zip(index[~ok], error[~ok], strict=True)]
            for key, value in batch.items():
                if key.startswith(_FEATURE):
                    arrays.setdefault(key[len(_FEATURE) :], []).append(np.asarray(value)[ok])
            if not settings and len(index):
                settings = json.loads(str(batch["settings"][0]))
            progress.on_advance(len(index))
    finally:
        progress.on_end()
    elapsed = time.perf_counter() - t0
    for i, err in errors:
        log.warning("skipped unreadable item %s: %s", data.ids[i], err)
    # The actors mapped their shards' row numbers back to rows of ``data``; assemble sorts them.
    passed = ForwardPass(
        np.concatenate(rows) if rows else np.zeros(0, np.int64),
        {k: np.concatenate(v) for k, v in arrays.items()},
        errors,
        settings,
        elapsed,
    )
    engine = {"name": "ray", "address": config.ray_address, "ray_version": ray.__version__, **plan}
    if config.ray_parquet:
        engine["parquet"] = str(config.ray_parquet)
    return assemble(backbone, data, passed, engine=engine)


def map_shards(
    backbone: Backbone,
    data: DataSet,
    config: ExtractConfig,
    reduce: Callable[[Backbone, DataSet, Embeddings, int], Any],
    *,
    progress: ProgressCallback | None = None,
) -> list[tuple[int, Any]]:
    """``reduce(backbone, shard, embeddings, first_row)`` of every shard of ``data``, in the actors.

    Returns ``(first row of the shard, result)`` in data order; a shard none of whose items could be
    read gives None. ``reduce`` must be picklable (a module-level function or a ``functools.partial``
    of one), and so must its result.
    """
    check_input(backbone, data)
    progress = progress or ProgressCallback()
    _, plan, batches = _run(backbone, data, config, reduce)
    out: list[tuple[int, Any]] = []
    progress.on_start(len(data), f"summarise {data.name} [{backbone.name}] on Ray ({plan['actors']} actors)")
    try:
        for batch in batches():
            for first, summary in zip(batch["first_row"], batch["summary"], strict=True):
                out.append((int(first), summary))
                progress.on_advance(min(plan["shard_size"], len(data) - int(first)))
    finally:
        progress.on_end()
    return sorted(out, key=lambda pair: pair[0])

"""The extraction engine: one forward pass per batch captures every probe point.

This is the only module that knows about devices, batches and precision. On CUDA it uses bf16 autocast,
channels_last for conv nets, decoding in DataLoader worker processes, pinned host memory and
non-blocking device-to-host copies; on CPU it uses every core. Images travel as uint8 up to the device
and are normalised there (by :meth:`diag.models.Backbone.capture`). Pooling happens on the device (inside
:meth:`diag.models.Backbone.capture`), so only ``(batch, dim)`` vectors cross to the host. Rows come
back in the data set's order, whatever the batching.

:func:`extract` is :func:`forward_pass` (the loop) then :func:`assemble` (rows in data order, the
manifest); :mod:`diag.engine.distributed` runs the loop on shards in Ray actors and assembles on the
driver, so both paths give the same :class:`~diag.engine.Embeddings`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from diag.data.dataset import DataSet
from diag.device import resolve_device, resolve_precision
from diag.engine.embeddings import Embeddings, check_finite
from diag.errors import ConfigError, DataError
from diag.models import Backbone
from diag.progress import ProgressCallback
from diag.provenance import device_description, versions

__all__ = [
    "ENGINES",
    "ExtractConfig",
    "ForwardPass",
    "assemble",
    "check_input",
    "compiled_blocks",
    "default_workers",
    "extract",
    "forward_pass",
]

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Where the forward passes run: this process, or a Ray Data actor pool (the ``ray`` extra).
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class ExtractConfig:
    """How to run the extraction. Every field is also a CLI flag (``--batch-size``, ...)."""

    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto (CUDA when present)"})
    precision: str = field(
        default="auto", metadata={"help": "fp32, bf16, fp16 or auto (bf16 on CUDA, fp32 on CPU)"}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "items per forward pass (default: 256 on CUDA, 64 on CPU)"}
    )
    num_workers: int | None = field(
        default=None,
        metadata={"help": "image-decoding worker processes (default: cores - 2 up to 16 on CUDA, 1 on CPU)"},
    )
    channels_last: bool | None = field(
        default=None, metadata={"help": "channels_last memory format for conv nets (default: on CUDA)"}
    )
    num_threads: int | None = field(
        default=None, metadata={"help": "CPU threads of the forward pass (default: every core)"}
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the backbone's blocks (a slower first batch; see benchmarks/README.md)"
        },
    )
    engine: str = field(
        default="local",
        metadata={
            "help": "local (this process) or ray (a Ray Data actor pool, one actor per GPU; "
            "needs pip install 'diag[ray]')",
            "metavar": "{local,ray}",
        },
    )
    ray_address: str | None = field(
        default=None,
        metadata={
            "help": "with --engine ray: the cluster to join (HOST:PORT printed by `ray start --head`, "
            "or auto); default: start a local one",
            "metavar": "ADDR",
        },
    )
    ray_batch_size: int | None = field(
        default=None, metadata={"help": "with --engine ray: items per shard (one Ray batch; default 1024)"}
    )
    ray_concurrency: int | None = field(
        default=None,
        metadata={"help": "with --engine ray: actors in the pool (default: one per GPU, else one per node)"},
    )
    ray_parquet: str | None = field(
        default=None,
        metadata={
            "help": "with --engine ray: also write each shard's embeddings as Parquet files in this folder",
            "metavar": "DIR",
        },
    )

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be one of auto, fp32, bf16, fp16; got {self.precision!r}.")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"batch_size must be a positive integer; got {self.batch_size!r}.")
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise ConfigError(f"num_workers must be an integer >= 0; got {self.num_workers!r}.")
        for name in ("num_threads", "ray_batch_size", "ray_concurrency"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer; got {value!r}.")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be True or False; got {self.compile!r}.")
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}; got {self.engine!r}.")
        ray_set = [
            n for n in ("ray_address", "ray_batch_size", "ray_concurrency", "ray_parquet") if getattr(self, n)
        ]
        if ray_set and self.engine != "ray":
            raise ConfigError(
                f"{', '.join(ray_set)} only apply with engine ray; got engine {self.engine!r}. "
                "Add --engine ray, or drop them."
            )
        resolve_device(self.device)  # validates the name


def extract(
    backbone: Backbone,
    data: DataSet,
    config: ExtractConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> Embeddings:
    """Embed ``data`` at every probe point of ``backbone`` in one forward pass per batch.

    Returns rows in ``data``'s order; unreadable images are skipped and listed in
    ``manifest["skipped"]``. Does not use the cache (see :func:`diag.pipeline.embed`). Runs in this
    process whatever ``config.engine`` says (:func:`diag.pipeline.embed` dispatches the Ray engine).
    """
    cfg = config or ExtractConfig()
    check_input(backbone, data)
    return assemble(backbone, data, forward_pass(backbone, data, cfg, progress=progress))


def check_input(backbone: Backbone, data: DataSet) -> None:
    """Raise :class:`DataError` when ``data`` is empty or not of ``backbone``'s modality."""
    if backbone.modality != data.modality:
        raise DataError(
            f"{data.name}: holds {data.modality}s but backbone {backbone.name!r} takes {backbone.modality}s. "
            f"Pick a{'n image' if data.modality == 'image' else ' text'} backbone "
            f"({'efficientnet_lite0' if data.modality == 'image' else 'minilm'}, for instance)."
        )
    if len(data) == 0:
        raise DataError(f"{data.name}: the set is empty. An empty set cannot be embedded.")


@dataclass
class ForwardPass:
    """What one pass over (part of) a data set produced, before it is put in data order.

    Attributes
    ----------
    rows : ndarray of int64, (k,)
        The rows of the data set embedded, in the order the batches came.
    arrays : dict of str to ndarray, each (k, dim) float32
        Every probe point (and ``logits``) for those rows.
    skipped : list of (int, str)
        ``(row, reason)`` of the items that could not be read.
    settings : dict
        Device, precision, batch size, workers, channels_last and compile as resolved.
    seconds : float
        Wall time of the loop.
    """

    rows: np.ndarray
    arrays: dict[str, np.ndarray]
    skipped: list[tuple[int, str]]
    settings: dict[str, Any]
    seconds: float


def forward_pass(
    backbone: Backbone,
    data: DataSet,
    config: ExtractConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> ForwardPass:
    """The batch loop of :func:`extract`: every item of ``data`` through ``backbone`` once, on the device.

    An empty or all-unreadable ``data`` gives an empty pass (no error: a shard of a larger set may be so).
    """
    cfg = config or ExtractConfig()
    progress = progress or ProgressCallback()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    cuda = device.type == "cuda"
    batch_size = cfg.batch_size or (256 if cuda else 64)
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else cuda
    # Every core for the pass, then the caller's setting back: a process-wide thread count left behind
    # made later CPU work (diagnose's gradient norms) depend on whether the embeddings came from the cache.
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)

    model = backbone.model.to(device).eval()
    if channels_last and backbone.modality == "image":
        model.to(memory_format=torch.channels_last)
    autocast = (
        torch.autocast(device.type, dtype=_DTYPES[precision])
        if precision in _DTYPES
        else contextlib.nullcontext()
    )

    n = len(data)
    pending: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
    skipped: list[tuple[int, str]] = []
    t0 = time.perf_counter()
    progress.on_start(n, f"embed {data.name} [{backbone.name}]")
    try:
        with compiled_blocks(backbone) if cfg.compile else contextlib.nullcontext():
            batches = backbone.batches(data, batch_size, workers, pin=cuda)
            with torch.inference_mode(), autocast:
                for idx, batch, failed in batches:
                    for i, err in failed:
                        skipped.append((int(i), err))
                        log.warning("skipped unreadable item %s: %s", data.ids[i], err)
                    if batch is not None and len(batch) > 0:
                        batch = batch.to(device, non_blocking=cuda)
                        if channels_last and isinstance(batch, torch.Tensor):
                            batch = batch.contiguous(memory_format=torch.channels_last)
                        out = backbone.capture(batch)
                        pending.append((idx, {k: _to_host(v, cuda) for k, v in out.items()}))
                    progress.on_advance(len(idx) + len(failed))
            if cuda:
                torch.cuda.synchronize(device)
    finally:
        progress.on_end()
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - t0
    if pending:
        rows = torch.cat([i for i, _ in pending]).numpy().astype(np.int64)
        arrays = {k: torch.cat([o[k] for _, o in pending]).numpy() for k in pending[0][1]}
    else:
        rows, arrays = np.zeros(0, np.int64), {}
    settings = {
        "device": device_description(device),
        "precision": precision,
        "batch_size": batch_size,
        "num_workers": workers,
        "channels_last": bool(channels_last and backbone.modality == "image"),
        "compile": cfg.compile,
    }
    return ForwardPass(rows, arrays, skipped, settings, elapsed)


def default_workers(device: torch.device) -> int:
    """Image-decoding worker processes when ``num_workers`` is not set: on CUDA every core but two, at
    most 16; on CPU 1.

    On CUDA the workers must keep up with the GPU: Lite0 at 224 px takes ~22,000 img/s on an H200, while
    one worker decodes, up-scales and crops a small PNG in ~1.4-1.6 ms, 650-720 img/s (benchmarks/README.md,
    "Data path: uint8 workers"). Two cores stay free for the main process (receiving batches, the
    pin-memory thread, kernel launches). Past 16, the main process and the shared memory held by
    prefetched batches (4 per worker) limit more than decoding does.
    On CPU one worker decodes the next batch while the forward pass runs: measured on 2 cores, 1.7x
    the items/s of decoding in the main process on JPEG photos and 1.5x on small PNG digits
    (benchmarks/README.md, "Ray Data and one-machine throughput"). A single core keeps 0.
    """
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(16, cores - 2))
    return 1 if cores >= 2 else 0


@contextlib.contextmanager
def compiled_blocks(backbone: Backbone) -> Iterator[None]:
    """``torch.compile`` the forward of each of the backbone's blocks for the duration of the block.

    The blocks (:meth:`diag.models.Backbone.block_layout`), not the whole model, so that the probe
    points' forward hooks, which pool each block's output, stay outside the compiled graphs.
    """
    model = backbone.model
    patched = []
    for path, _ in backbone.block_layout(model).modules:
        module = model.get_submodule(path)
        module.forward = torch.compile(module.forward, dynamic=False)
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


def assemble(backbone: Backbone, data: DataSet, passed: ForwardPass, **manifest: Any) -> Embeddings:
    """The :class:`~diag.engine.Embeddings` of a pass: rows in ``data``'s order, skipped rows listed.

    ``manifest`` adds (or replaces) manifest fields.
    """
    skipped = [{"id": data.ids[i], "reason": err} for i, err in sorted(passed.skipped)]
    if len(passed.rows) == 0:
        raise DataError(
            f"{data.name}: none of the {len(data)} items could be read (first error: "
            f"{skipped[0]['reason'] if skipped else 'unknown'}). Check the files."
        )
    order = np.argsort(passed.rows, kind="stable")
    rows = passed.rows[order]
    arrays = {k: np.ascontiguousarray(v[order], dtype=np.float32) for k, v in passed.arrays.items()}
    logits = arrays.pop("logits", None)
    features = {p.name: arrays[p.name] for p in backbone.probes}
    check_finite(features, where=f"{data.name} [{backbone.name}]")
    elapsed = passed.seconds
    meta = {
        "backbone": backbone.describe(),
        # Items skipped here (unreadable) are not counted per class; rows dropped when the set was opened
        # (data.skipped, listed in its description) count among the skipped too.
        "data": {
            **data.describe(exclude={s["id"] for s in skipped}),
            "n_embedded": len(rows),
            "n_skipped": len(skipped) + len(data.skipped),
        },
        "skipped": skipped,
        **passed.settings,
        "timings": {"extract_s": round(elapsed, 4), "items_per_s": round(len(rows) / max(elapsed, 1e-9), 2)},
        "versions": versions(),
        **manifest,
    }
    return Embeddings(
        features=features,
        logits=logits,
        labels=None if data.labels is None else data.labels[rows],
        classes=data.classes,
        ids=tuple(data.ids[i] for i in rows),
        probes=tuple(backbone.probes),
        manifest=meta,
    )


def _to_host(t: torch.Tensor, cuda: bool) -> torch.Tensor:
    if not cuda:
        return t.detach().float().clone()
    host = torch.empty(t.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(t.detach().float(), non_blocking=True)
    return host

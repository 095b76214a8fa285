"""The extraction engine: one forward pass per batch captures every probe point.

This is the only module that knows about devices, batches and precision. On CUDA it uses bf16 autocast,
channels_last for conv nets, decoding in DataLoader worker processes, pinned host memory and
non-blocking device-to-host copies; on CPU it uses every core. Pooling happens on the device (inside
:meth:`diag.models.Backbone.capture`), so only ``(batch, dim)`` vectors cross to the host. Rows come
back in the data set's order, whatever the batching.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from diag.data.dataset import DataSet
from diag.device import resolve_device, resolve_precision
from diag.engine.embeddings import Embeddings, check_finite
from diag.errors import ConfigError, DataError
from diag.models import Backbone
from diag.progress import ProgressCallback
from diag.provenance import device_description, versions

__all__ = ["ExtractConfig", "extract"]

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
        metadata={"help": "image-decoding worker processes (default: up to 8 on CUDA, 0 on CPU)"},
    )
    channels_last: bool | None = field(
        default=None, metadata={"help": "channels_last memory format for conv nets (default: on CUDA)"}
    )

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be one of auto, fp32, bf16, fp16; got {self.precision!r}.")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"batch_size must be a positive integer; got {self.batch_size!r}.")
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise ConfigError(f"num_workers must be an integer >= 0; got {self.num_workers!r}.")
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
    ``manifest["skipped"]``. Does not use the cache (see :func:`diag.pipeline.embed`).
    """
    cfg = config or ExtractConfig()
    progress = progress or ProgressCallback()
    if backbone.modality != data.modality:
        raise DataError(
            f"{data.name}: holds {data.modality}s but backbone {backbone.name!r} takes {backbone.modality}s. "
            f"Pick a{'n image' if data.modality == 'image' else ' text'} backbone "
            f"({'efficientnet_lite0' if data.modality == 'image' else 'minilm'}, for instance)."
        )
    if len(data) == 0:
        raise DataError(f"{data.name}: the set is empty. An empty set cannot be embedded.")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    cuda = device.type == "cuda"
    batch_size = cfg.batch_size or (256 if cuda else 64)
    workers = cfg.num_workers if cfg.num_workers is not None else (min(8, os.cpu_count() or 1) if cuda else 0)
    channels_last = cfg.channels_last if cfg.channels_last is not None else cuda
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)

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
    skipped: list[dict[str, str]] = []
    t0 = time.perf_counter()
    progress.on_start(n, f"embed {data.name} [{backbone.name}]")
    try:
        batches = backbone.batches(data, batch_size, workers, pin=cuda)
        with torch.inference_mode(), autocast:
            for idx, batch, failed in batches:
                for i, err in failed:
                    skipped.append({"id": data.ids[i], "reason": err})
                    log.warning("skipped unreadable item %s: %s", data.ids[i], err)
                if batch is not None and len(batch) > 0:
                    batch = batch.to(device, non_blocking=cuda)
                    if channels_last and isinstance(batch, torch.Tensor):
                        batch = batch.contiguous(memory_format=torch.channels_last)
                    out = backbone.capture(batch)
                    pending.append((idx, {k: _to_host(v, cuda) for k, v in out.items()}))
                step = len(idx) + len(failed)
                progress.on_advance(step)
        if cuda:
            torch.cuda.synchronize(device)
    finally:
        progress.on_end()
    elapsed = time.perf_counter() - t0

    if not pending:
        raise DataError(
            f"{data.name}: none of the {n} items could be read (first error: "
            f"{skipped[0]['reason'] if skipped else 'unknown'}). Check the files."
        )
    # Scatter back to data order, dropping skipped rows.
    all_idx = torch.cat([i for i, _ in pending]).numpy()
    keys = list(pending[0][1])
    stacked = {k: torch.cat([o[k] for _, o in pending]).numpy() for k in keys}
    order = np.argsort(all_idx, kind="stable")
    rows = all_idx[order]
    arrays = {k: np.ascontiguousarray(v[order], dtype=np.float32) for k, v in stacked.items()}
    logits = arrays.pop("logits", None)
    features = {p.name: arrays[p.name] for p in backbone.probes}
    check_finite(features, where=f"{data.name} [{backbone.name}]")

    manifest = {
        "backbone": backbone.describe(),
        # Items skipped here (unreadable) are not counted per class; rows dropped when the set was opened
        # (data.skipped, listed in its description) count among the skipped too.
        "data": {
            **data.describe(exclude={s["id"] for s in skipped}),
            "n_embedded": len(rows),
            "n_skipped": len(skipped) + len(data.skipped),
        },
        "skipped": skipped,
        "device": device_description(device),
        "precision": precision,
        "batch_size": batch_size,
        "num_workers": workers,
        "channels_last": bool(channels_last and backbone.modality == "image"),
        "timings": {"extract_s": round(elapsed, 4), "items_per_s": round(len(rows) / max(elapsed, 1e-9), 2)},
        "versions": versions(),
    }
    return Embeddings(
        features=features,
        logits=logits,
        labels=None if data.labels is None else data.labels[rows],
        classes=data.classes,
        ids=tuple(data.ids[i] for i in rows),
        probes=tuple(backbone.probes),
        manifest=manifest,
    )


def _to_host(t: torch.Tensor, cuda: bool) -> torch.Tensor:
    if not cuda:
        return t.detach().float().clone()
    host = torch.empty(t.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(t.detach().float(), non_blocking=True)
    return host

"""Source-free shift: the target against the pretraining data's BatchNorm statistics.

A BatchNorm layer's running mean and variance are the pretraining data's per-channel moments of that
layer's input, over batch and spatial positions. In one forward pass over the target (eval mode, as the
model will run), a pre-hook on every BatchNorm layer collects the same moments of its input; each layer
is scored by the mean over channels of the squared Wasserstein-2 distance between the two per-channel
Gaussians in units of the running variance (:func:`diag.stats.summaries.bn_w2_per_channel`; Schneider et
al., "Improving robustness against common corruptions by covariate shift adaptation", NeurIPS 2020), and
each block by the mean over its BatchNorm layers.

The null band comes from the target itself. Items fall into ``n_buckets`` seeded buckets; a random half
of the buckets against the other half gives the distance two samples of the same distribution show. The
difference of two half-sample means has four times the variance of a full-sample mean's difference from
the population mean (2·σ²/(n/2) against σ²/n), so split distances are scaled by 1/4 before they serve as
the null distribution of the block score; the p-value is the share of splits at least as far (+1
correction). Models without running statistics (LayerNorm transformers such as MiniLM) cannot be
profiled this way: they need a data reference.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from diag.data import DataSet
from diag.device import resolve_device
from diag.engine.extract import ExtractConfig
from diag.errors import ConfigError, DataError
from diag.models import Backbone
from diag.progress import ProgressCallback
from diag.stats.summaries import bn_w2_per_channel

__all__ = ["BatchNormProfile", "BlockScore", "batchnorm_layers", "batchnorm_profile"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class BlockScore:
    """One block's distance to the pretraining statistics, with its null band."""

    name: str
    index: int
    score: float
    null_median: float
    null_p95: float
    p_value: float
    n_bn_layers: int
    layer_scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bn_w2": self.score,
            "null_median": self.null_median,
            "null_p95": self.null_p95,
            "excess": self.score - self.null_median,
            "p_value": self.p_value,
            "n_bn_layers": self.n_bn_layers,
            "bn_layers": self.layer_scores,
        }


@dataclass(frozen=True)
class BatchNormProfile:
    """Per-block scores (depth order), the items used and the split settings."""

    blocks: list[BlockScore]
    n_items: int
    n_buckets: int
    n_splits: int
    seconds: float


def batchnorm_layers(backbone: Backbone) -> list[tuple[str, str, nn.Module]]:
    """``(module path, block name, module)`` of every BatchNorm layer with running statistics.

    A BatchNorm inside a block's module belongs to that block; those before the first block to the
    backbone's input-side group (``stem``), those after the last to its output side (``pooled``).

    Raises
    ------
    ConfigError
        The backbone keeps no running statistics (LayerNorm models): a data reference is needed.
    """
    layout = backbone.block_layout(backbone.model)
    paths = [(path, name) for path, name in layout.modules]
    order = {n: i for i, (n, _) in enumerate(backbone.model.named_modules())}
    first_block = min((order.get(p, math.inf) for p, _ in paths), default=math.inf)
    out: list[tuple[str, str, nn.Module]] = []
    for name, module in backbone.model.named_modules():
        if not isinstance(module, _BN) or module.running_mean is None or module.running_var is None:
            continue
        block = next((b for p, b in paths if name == p or name.startswith(p + ".")), None)
        if block is None:
            block = layout.before if order[name] < first_block else layout.after
        out.append((name, block, module))
    if not out:
        raise ConfigError(
            f"backbone {backbone.name!r} has no BatchNorm layers with running statistics (it normalises "
            "with LayerNorm, as transformers do), so there are no pretraining statistics to compare with. "
            "Build a data reference instead: `diag reference build DATA -b BACKBONE -o REF`, then "
            "`diag check NEWDATA --reference REF`."
        )
    return out


def batchnorm_profile(
    backbone: Backbone,
    data: DataSet,
    config: ExtractConfig | None = None,
    *,
    n_buckets: int = 16,
    n_splits: int = 1000,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> BatchNormProfile:
    """Score every block of ``backbone`` by the distance of ``data``'s BatchNorm-input moments to the
    layers' running statistics, with a null band from splits of ``data`` (see the module docstring).

    Parameters
    ----------
    backbone, data
        A loaded image backbone with BatchNorm layers, and a data set of at least ``n_buckets`` items.
    config : ExtractConfig, optional
        Device and batch size (the pass runs in fp32: moments are summed in float64).
    n_buckets, n_splits, seed
        The null band: items in ``n_buckets`` seeded buckets, ``n_splits`` random halvings of them.
    """
    cfg = config or ExtractConfig()
    progress = progress or ProgressCallback()
    layers = batchnorm_layers(backbone)
    if backbone.modality != data.modality:
        raise DataError(f"{data.name}: holds {data.modality}s but backbone {backbone.name!r} takes images.")
    if len(data) < 2 * n_buckets:
        raise DataError(
            f"{data.name}: {len(data)} items; the source-free profile needs at least {2 * n_buckets} "
            f"(two per bucket of the null band). Add items or lower n_buckets."
        )
    device = resolve_device(cfg.device)
    backbone.model.to(device).eval()
    rng = np.random.default_rng(seed)
    bucket_of = torch.from_numpy(rng.permutation(len(data)) % n_buckets)
    # Per layer, per bucket: count of positions, per-channel sum and sum of squares (float64).
    counts = torch.zeros(len(layers), n_buckets, dtype=torch.float64, device=device)
    widths = [int(m.get_buffer("running_mean").numel()) for _, _, m in layers]
    sums = [torch.zeros(n_buckets, w, dtype=torch.float64, device=device) for w in widths]
    sqs = [torch.zeros_like(s) for s in sums]
    current: dict[str, torch.Tensor] = {}

    def make_hook(i: int) -> Any:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().float()
            dims = tuple(range(2, x.dim()))  # positions: (H, W) of a map, none of a vector
            onehot = current["buckets"]  # (B, G)
            # Sums over one item's positions in float32 (at most a few thousand terms: ~1e-7 relative),
            # everything across items in float64.
            sums[i].add_(onehot.T @ (x.sum(dims) if dims else x).double())
            sqs[i].add_(onehot.T @ ((x * x).sum(dims) if dims else x * x).double())
            counts[i].add_(onehot.sum(0) * (x[0, 0].numel()))

        return hook

    handles = [m.register_forward_pre_hook(make_hook(i)) for i, (_, _, m) in enumerate(layers)]
    batch_size = cfg.batch_size or (256 if device.type == "cuda" else 64)
    t0 = time.perf_counter()
    progress.on_start(len(data), f"BatchNorm statistics of {data.name} [{backbone.name}]")
    n_seen = 0
    try:
        with torch.inference_mode():
            for idx, batch, failed in backbone.batches(data, batch_size, 0, pin=False):
                if failed:
                    raise DataError(f"{data.name}: cannot read {data.ids[failed[0][0]]}: {failed[0][1]}.")
                ix = torch.as_tensor(np.asarray(idx), dtype=torch.long)
                current["buckets"] = nn.functional.one_hot(bucket_of[ix], n_buckets).to(device, torch.float64)
                backbone.capture(batch.to(device))
                n_seen += len(ix)
                progress.on_advance(len(ix))
    finally:
        for h in handles:
            h.remove()
        progress.on_end()

    layer_score: list[float] = []
    layer_null: list[np.ndarray] = []
    halves = np.stack([rng.permutation(n_buckets) < n_buckets // 2 for _ in range(n_splits)])  # (S, G)
    for i, (_, _, module) in enumerate(layers):
        c, s, q = counts[i].cpu().numpy(), sums[i].cpu().numpy(), sqs[i].cpu().numpy()
        eps = float(getattr(module, "eps", 0.0))
        run_mean = _buffer(module, "running_mean")
        run_var = _buffer(module, "running_var")
        mean, var = _moments(c.sum(), s.sum(0), q.sum(0))
        layer_score.append(float(bn_w2_per_channel(run_mean, run_var, mean, var, eps=eps).mean()))
        # Null: half A against half B for each split, in units of half A's variance, scaled by 1/4.
        ma, va = _moments((halves @ c)[:, None], halves @ s, halves @ q)
        mb, vb = _moments(((~halves) @ c)[:, None], (~halves) @ s, (~halves) @ q)
        null = 0.25 * bn_w2_per_channel(ma, va, mb, vb, eps=eps).mean(axis=1)  # every split at once
        layer_null.append(null)

    blocks: list[BlockScore] = []
    names = [p.name for p in backbone.probes]
    for block in dict.fromkeys(b for _, b, _ in layers):
        members = [i for i, (_, b, _) in enumerate(layers) if b == block]
        score = float(np.mean([layer_score[i] for i in members]))
        null = np.mean([layer_null[i] for i in members], axis=0)
        blocks.append(
            BlockScore(
                name=block,
                index=names.index(block) if block in names else len(names),
                score=score,
                null_median=float(np.median(null)),
                null_p95=float(np.quantile(null, 0.95)),
                p_value=(1.0 + float(np.sum(null >= score))) / (n_splits + 1.0),
                n_bn_layers=len(members),
                layer_scores={layers[i][0]: layer_score[i] for i in members},
            )
        )
    blocks.sort(key=lambda b: b.index)
    return BatchNormProfile(blocks, n_seen, n_buckets, n_splits, time.perf_counter() - t0)


def _moments(count: Any, total: np.ndarray, total_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) variance from counts and the sums of x and x² (broadcasting)."""
    if np.any(np.asarray(count) <= 0):
        raise DataError("no positions reached a BatchNorm layer; the data set is empty.")
    mean = total / count
    return mean, np.clip(total_sq / count - mean**2, 0.0, None)


def _buffer(module: nn.Module, name: str) -> np.ndarray:
    t = module.get_buffer(name)
    return t.detach().double().cpu().numpy()

"""Relative gradient norm per block: where does the target pull hardest on the pretrained weights?

Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts" (ICLR 2023), Auto-RGN: for
block ``l`` with parameters ``θ_l``, ``RGN_l = ‖∇_θl L‖ / ‖θ_l‖`` on target batches; blocks with a large
relative gradient are the ones the target wants to change (the paper scales each block's learning rate by
its RGN normalised to the largest).

The loss needs a head that already reads the pretrained features: with diag's zero-initialised head the
body's gradient is exactly zero, and a random head's gradient says more about the head than about the
target. So a linear head is first fitted (L-BFGS, L2-regularised cross-entropy) to the pooled features of
the target's training split, then the gradient of the mean cross-entropy over ``n_batches`` seeded
batches is taken with the body in eval mode (BatchNorm statistics are read, not updated) and without
augmentation. Only the target's training split is used (the same split :func:`diag.train.run.finetune`
makes), so nothing of the validation set leaks into a recommendation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diag.data import DataSet, open_data
from diag.device import resolve_device
from diag.models import Backbone, load
from diag.stats.common import check_int
from diag.train.blocks import units_of_model
from diag.train.config import FinetuneConfig
from diag.train.data import prepare_data
from diag.train.model import build_model
from diag.train.trainer import Trainer

__all__ = ["BlockGradients", "relative_gradient_norms"]


@dataclass(frozen=True)
class BlockGradients:
    """Relative gradient norms of the blocks, input side first.

    Attributes
    ----------
    blocks : list of str
        Block names (the freeze order of :func:`diag.train.blocks.freeze_units`).
    rgn : dict
        ``‖g‖/‖θ‖`` per block.
    normalized : dict
        ``rgn`` divided by its largest value (Auto-RGN's per-block learning-rate factor).
    n_items : int
        Target items the gradient was averaged over.
    head_accuracy : float
        Training accuracy of the fitted linear head (how well the frozen features already fit).
    """

    blocks: list[str]
    rgn: dict[str, float]
    normalized: dict[str, float]
    n_items: int
    head_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def strongest(self) -> str:
        """The block with the largest relative gradient."""
        return max(self.blocks, key=lambda b: self.rgn[b])


def _fit_head(head: nn.Linear, feats: torch.Tensor, y: torch.Tensor, l2: float) -> float:
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=100, line_search_fn="strong_wolfe")
    loss_fn = nn.CrossEntropyLoss()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(head(feats), y) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((head(feats).argmax(1) == y).float().mean())


def relative_gradient_norms(
    target: str | Path | DataSet,
    backbone: str | Backbone,
    config: FinetuneConfig | None = None,
    *,
    n_batches: int = 4,
    seed: int = 0,
    l2: float = 1e-3,
) -> BlockGradients:
    """Per-block relative gradient norms of the target's cross-entropy at the pretrained weights.

    Parameters
    ----------
    target : str, Path or DataSet
        Labelled target data (what :func:`diag.train.run.finetune` would train on).
    backbone : str or Backbone
        Never modified (its model is copied).
    config : FinetuneConfig, optional
        Input size, token length, batch size, validation split and device, as fine-tuning would use them.
    n_batches : int, default 4
        Batches of ``config.batch_size`` training items (a seeded draw) to average the gradient over.
    seed : int, default 0
    l2 : float, default 1e-3
        L2 penalty of the head fit (on the sum of squared weights).
    """
    check_int("n_batches", n_batches, minimum=1)
    cfg = config or FinetuneConfig()
    cfg = dataclasses.replace(cfg, augment="none", freeze=0, lp_ft=0, epochs=1)
    bb = backbone if isinstance(backbone, Backbone) else load(
        backbone, image_size=cfg.image_size, max_length=cfg.max_length
    )  # fmt: skip
    data = target if isinstance(target, DataSet) else open_data(target)
    prep = prepare_data(bb, data, None, cfg)
    model = build_model(bb, len(prep.classes))
    units = units_of_model(model.body, bb)
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tr = Trainer(
            model,
            units,
            0,
            prep.train,
            prep.val,
            cfg,
            device,
            "fp32",
            bb.input_normalization,
            bb.pad_token_id,
        )
        model.eval()
        feats = tr.features_of(tr.train)
        head_acc = _fit_head(model.head, feats, tr.train.y, l2)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(tr.train.n, generator=gen)
        bs = cfg.batch_size
        batches = [order[i : i + bs] for i in range(0, tr.train.n, bs)][:n_batches]
        n_items = sum(len(b) for b in batches)
        model.zero_grad(set_to_none=True)
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        for idx in batches:
            loss = loss_fn(model(tr.batch_inputs(tr.train, idx, None)), tr.train.y[idx.to(device)]) / n_items
            loss.backward()
    params = dict(model.body.named_parameters())
    rgn: dict[str, float] = {}
    for u in units:
        grads = [params[p].grad for p in u.params]
        g2 = sum(float(g.pow(2).sum()) for g in grads if g is not None)
        w2 = sum(float(params[p].detach().pow(2).sum()) for p in u.params)
        rgn[u.name] = math.sqrt(g2) / max(math.sqrt(w2), 1e-12)
    top = max(rgn.values()) or 1.0
    return BlockGradients(
        blocks=[u.name for u in units],
        rgn=rgn,
        normalized={k: v / top for k, v in rgn.items()},
        n_items=n_items,
        head_accuracy=head_acc,
    )

"""The model that fine-tuning trains: a backbone's body and a fresh linear head on its pooled features."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from diag.models import Backbone

__all__ = ["FinetuneModel", "build_model"]


class FinetuneModel(nn.Module):
    """A backbone body and a linear head on its pooled features (the ``pooled`` probe point).

    Parameters
    ----------
    body : nn.Module
        A copy of the backbone's model, its source head removed (:meth:`Backbone.strip_source_head`).
    head : nn.Linear
        ``(dim, n_classes)``.
    backbone : Backbone
        The backbone ``body`` was copied from: it knows how its family pools features
        (:meth:`Backbone.pooled_features`). Its own model is never used.
    """

    def __init__(self, body: nn.Module, head: nn.Linear, backbone: Backbone) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.modality = backbone.modality
        self._pool = backbone.pooled_features

    def features(self, batch: Any) -> torch.Tensor:
        """Pooled features ``(B, dim)``, differentiable (timm's ``forward_head(pre_logits=True)``, a
        text encoder's masked token mean)."""
        return self._pool(self.body, batch)

    def forward(self, batch: Any) -> torch.Tensor:
        return self.head(self.features(batch))


def build_model(backbone: Backbone, n_classes: int) -> FinetuneModel:
    """A :class:`FinetuneModel` for ``n_classes``: a deep copy of ``backbone.model`` (the caller's
    backbone is never touched) without its source head, and a zero-initialised linear head."""
    body = copy.deepcopy(backbone.model)
    backbone.strip_source_head(body)
    dim = next(p.dim for p in backbone.probes if p.name == "pooled")
    head = nn.Linear(dim, n_classes)
    # A zero head: no random projection to distort the features in the first steps, and no RNG use.
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return FinetuneModel(body, head, backbone)

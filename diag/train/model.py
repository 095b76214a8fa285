"""The model that fine-tuning trains: a backbone's body and a fresh linear head on its pooled features."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from diag.models.backbones import Backbone, TimmBackbone, _masked_mean

__all__ = ["FinetuneModel", "build_model"]


class FinetuneModel(nn.Module):
    """A backbone body and a linear head on its pooled features (the ``pooled`` probe point).

    Parameters
    ----------
    body : nn.Module
        The timm model (its source classifier removed) or the Hugging Face encoder.
    head : nn.Linear
        ``(dim, n_classes)``.
    modality : {"image", "text"}
    """

    def __init__(self, body: nn.Module, head: nn.Linear, modality: str) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.modality = modality

    def features(self, batch: Any) -> torch.Tensor:
        """Pooled features ``(B, dim)``: timm's ``forward_head(pre_logits=True)``, or the token mean."""
        body: Any = self.body
        if self.modality == "image":
            return body.forward_head(body.forward_features(batch), pre_logits=True)
        input_ids, attention_mask = batch
        h = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return _masked_mean(h, attention_mask).to(h.dtype)

    def forward(self, batch: Any) -> torch.Tensor:
        return self.head(self.features(batch))


def build_model(backbone: Backbone, n_classes: int) -> FinetuneModel:
    body = copy.deepcopy(backbone.model)  # never touch the caller's backbone
    if isinstance(backbone, TimmBackbone):
        reset: Any = getattr(body, "reset_classifier", None)
        if callable(reset):
            reset(0)
    elif getattr(body, "pooler", None) is not None:
        # Unused (the head reads the masked mean of the last layer): dropping it saves its compute.
        body.register_module("pooler", None)
    dim = next(p.dim for p in backbone.probes if p.name == "pooled")
    head = nn.Linear(dim, n_classes)
    # A zero head: no random projection to distort the features in the first steps, and no RNG use.
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return FinetuneModel(body, head, backbone.modality)

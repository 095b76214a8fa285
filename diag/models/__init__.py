"""Backbones: one adapter per model family (timm, transformers), their weights and registry."""

"""Which device and precision a computation runs on: one resolution of ``auto`` for every package."""

from __future__ import annotations

import torch

from diag.errors import ConfigError

__all__ = ["resolve_device", "resolve_precision"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; a CUDA device without CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} was asked for but CUDA is not available here; use --device cpu."
        )
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}.")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` on CUDA, else ``fp32``; an explicit precision is kept."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision

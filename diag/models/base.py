"""The :class:`Backbone` base: probe points, identity, and the family-specific behaviour as methods.

A :class:`Backbone` wraps a network and knows what the rest of diag needs: its **probe points** (stem,
every block/stage, the pooled embedding, with names and dims), its **preprocessing**, its **source-task
head** when it has one (ImageNet logits), and, as methods each family implements, how to batch and
decode a data set, where its blocks are, and how to read its pooled features. Nothing outside
:mod:`diag.models` asks which family is behind a backbone.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from diag.data.dataset import DataSet
from diag.errors import BackboneError

__all__ = [
    "Backbone",
    "BlockLayout",
    "DecodeOptions",
    "Failed",
    "LoadOptions",
    "Modality",
    "PixelNormalization",
    "ProbePoint",
    "SourceHead",
    "TextBatch",
    "masked_mean",
    "seeded",
]

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


@dataclass(frozen=True)
class LoadOptions:
    """What :func:`diag.models.load` passes to a family's loader (see :data:`diag.models.FAMILIES`)."""

    pretrained: bool = True
    seed: int = 0
    image_size: int | None = None  # image families only
    max_length: int | None = None  # text families only


@dataclass(frozen=True)
class DecodeOptions:
    """The options of :meth:`Backbone.decode_all`; a family reads those of its modality."""

    image_size: int | None = None
    crop_pct: float | None = None
    max_length: int | None = None
    num_workers: int = 0


#: ``(index, error message)`` of the items a batch could not read.
Failed = list[tuple[int, str]]


class Backbone:
    """A pretrained (or random-init) network with named probe points.

    A family (a subclass and its loader, registered in :data:`diag.models.FAMILIES`) implements
    :meth:`capture`, :meth:`batches`, :meth:`block_layout`, :meth:`strip_source_head`,
    :meth:`pooled_features` and ``_decode`` (behind :meth:`decode_all`), and overrides
    :attr:`input_normalization`, :attr:`pad_token_id` and :meth:`load_weights` where its defaults do
    not fit. Identity, description and fingerprint are shared.
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

        ``batch`` is what :meth:`batches` yields, moved to the device; a family finishes its
        preprocessing here (image families normalise uint8 images on the device). The result also holds
        ``"logits"`` when the backbone has a source head.
        """
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Backbone:
        self.model.to(device)
        return self

    # -- weights -------------------------------------------------------------------------------------

    def load_weights(
        self, body: dict[str, torch.Tensor], head: dict[str, torch.Tensor], *, name: str, path: Path
    ) -> None:
        """Load a state dict read from ``path`` (:func:`diag.models.weights.read_weights`) into
        :attr:`model`, strictly: every tensor of the model must be there, and nothing else.

        ``head`` is a fine-tuned task head; a family without a source head ignores it.

        Raises
        ------
        BackboneError
            The tensors do not fit the architecture (the message counts and names them).
        """
        self._load_body(body, set(self.model.state_dict()), name=name, path=path)

    def _load_body(self, body: dict[str, torch.Tensor], expected: set[str], *, name: str, path: Path) -> None:
        arch = name.partition("@")[0]
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
            self.model.load_state_dict(body, strict=False)
        except RuntimeError as exc:
            raise BackboneError(
                f"backbone {name!r}: {path} does not fit {arch!r} "
                f"({str(exc).splitlines()[-1].strip()[:300]})."
            ) from None
        self.model.eval()
        self.weights = f"file:{path}"
        self._fingerprint = None

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

        ``image_size`` and ``crop_pct`` (images) and ``max_length`` (texts) override the backbone's
        preprocessing; an option of the other modality is ignored. ``num_workers`` decoding processes
        (0: this one).

        Raises
        ------
        DataError
            An item cannot be read (the message names the first one).
        """
        return self._decode(data, DecodeOptions(image_size, crop_pct, max_length, num_workers))

    def _decode(self, data: DataSet, options: DecodeOptions) -> torch.Tensor | list[list[int]]:
        """:meth:`decode_all` for this family."""
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


@dataclass(frozen=True)
class PixelNormalization:
    """uint8 images ``(B, C, H, W)`` -> float32 ``(x / 255 - mean) / std``, in ``x``'s memory format: the
    operations (and their order) of torchvision's ``ToTensor`` + ``Normalize``, so the result equals timm's
    float eval transform bit for bit. Extraction (:meth:`diag.models.TimmBackbone.normalize`) and
    fine-tuning (:class:`diag.train.trainer.Trainer`) both normalise through it, so their inputs are the
    same bits. The divisors are tensors, not Python numbers, because CUDA divides by a Python number as a
    multiplication by its reciprocal (which can differ in the last bit). Build one per device
    (:meth:`on`): no host-to-device copy (and stream sync) per batch."""

    scale: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def on(cls, mean: Sequence[float], std: Sequence[float], device: torch.device) -> PixelNormalization:
        """The per-channel ``mean`` and ``std`` (of images scaled to [0, 1]) as tensors on ``device``."""
        return cls(
            torch.tensor(255.0, dtype=torch.float32, device=device),
            torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1),
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(self.scale).sub_(self.mean).div_(self.std)


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


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Fork the RNG and seed it, so a random init is reproducible and the caller's RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield

"""The training loop of one run over in-memory data: :class:`Trainer`.

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
features stayed near chance. Images get a light augmentation by default (zoom, shift, rotation; on UCI
digits at freeze depth 6 it lifted held-out accuracy from 0.93 to 0.97); with ``augment="none"`` a frozen
body's features are computed once and the head trains on them directly (linear probes, and the
head-only epochs of LP-FT).

On CUDA the trainer uses bf16 autocast and channels_last for conv nets. The data order, augmentation
and dropout are seeded per epoch (:func:`mix_seed`), so the same seed gives the same numbers on CPU and
a run resumed from a checkpoint (:meth:`Trainer.state_dict`) repeats them exactly.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diag.models import PixelNormalization
from diag.train.blocks import FreezeUnit
from diag.train.config import FinetuneConfig
from diag.train.data import DecodedSplit
from diag.train.model import FinetuneModel

__all__ = ["Trainer", "mix_seed"]


def mix_seed(*xs: int) -> int:
    """A 63-bit seed from several integers (seed, epoch, stream), independent streams for each
    (NumPy's ``SeedSequence`` hashing)."""
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
    theta = torch.stack([torch.stack([cos, -sin, shift[0]], 1), torch.stack([sin, cos, shift[1]], 1)], 1)
    if x.device.type == "cuda":
        # From pinned memory, asynchronously: a copy from pageable memory waits for the stream first.
        theta = theta.pin_memory().to(x.device, non_blocking=True)
    theta = theta.to(x.device, x.dtype)
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
    train, val : DecodedSplit
        Decoded data (:func:`diag.train.data.prepare_data`).
    config : FinetuneConfig
    device : torch.device
    precision : str
        ``fp32`` or ``bf16``.
    image_stats : (mean, std), optional
        Per-channel normalisation of image batches (:attr:`Backbone.input_normalization`).
    pad_id : int, default 0
        The token id that pads text batches (:attr:`Backbone.pad_token_id`).
    """

    def __init__(
        self,
        model: FinetuneModel,
        units: list[FreezeUnit],
        k: int,
        train: DecodedSplit,
        val: DecodedSplit,
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
        if image_stats is not None:  # the extraction's normalisation, so the inputs are the same bits
            self.normalize = PixelNormalization.on(*image_stats, device)
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

    @staticmethod
    def _index_device(s: DecodedSplit) -> torch.device:
        """Where indices into ``s`` should live: with its tensors, or on the host for token-id lists."""
        return s.x.device if isinstance(s.x, torch.Tensor) else torch.device("cpu")

    def _to_device(self, s: DecodedSplit) -> DecodedSplit:
        x = s.x.to(self.device) if isinstance(s.x, torch.Tensor) else s.x
        return DecodedSplit(x, s.y.to(self.device), s.n)

    def _param_groups(self, body_params: dict[str, nn.Parameter]) -> list[dict[str, Any]]:
        cfg = self.cfg
        body_lr, head_lr = cfg.learning_rates(self.model.modality)  # lr None: the modality's defaults
        groups: list[dict[str, Any]] = []
        n = len(self.units)
        for u in self.units[self.k :]:
            lr = body_lr * cfg.layer_decay ** (n - 1 - u.index)
            decay = [body_params[p] for p in u.params if body_params[p].ndim > 1]
            no_decay = [body_params[p] for p in u.params if body_params[p].ndim <= 1]
            for ps, wd, tag in ((decay, cfg.weight_decay, ""), (no_decay, 0.0, ":no_decay")):
                if ps:
                    groups.append({"params": ps, "lr": lr, "weight_decay": wd, "name": u.name + tag})
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

    def batch_inputs(self, split: DecodedSplit, idx: torch.Tensor, gen: torch.Generator | None) -> Any:
        """The model's input for items ``idx`` of ``split`` on the device: normalised images (augmented
        when ``gen`` is given and the config asks for it), or padded token ids and their mask."""
        if self.image:
            assert isinstance(split.x, torch.Tensor)
            x = self.normalize(split.x[idx.to(split.x.device)])
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
            s.feats = self.features_of(s)
        self._cached_for = "body"

    def features_of(self, s: DecodedSplit) -> torch.Tensor:
        """Pooled features ``(s.n, dim)`` (float32) of every item of ``s``, without gradient or
        augmentation, in the model's current mode."""
        out = []
        bs = max(self.cfg.batch_size, 64)
        with torch.inference_mode(), self._autocast():
            for start in range(0, s.n, bs):
                idx = torch.arange(start, min(start + bs, s.n), device=self._index_device(s))
                out.append(self.model.features(self.batch_inputs(s, idx, None)).float())
        return torch.cat(out)

    def _drop_cache(self) -> None:
        self.train.feats = None
        self.val.feats = None
        self._cached_for = None

    def _logits(self, split: DecodedSplit, idx: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if split.feats is None and self.head_norm is None:
            return self.model(self.batch_inputs(split, idx, gen))
        if split.feats is not None:
            feats = split.feats[idx.to(split.feats.device)]
        else:
            feats = self.model.features(self.batch_inputs(split, idx, gen))
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
            feats = self.features_of(self.train)
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
            self.train.n, generator=torch.Generator().manual_seed(mix_seed(cfg.seed, epoch, 0))
        )
        # The indices go to the device once per epoch, not once per step: CUDA waits for the stream
        # before every copy from pageable host memory, so a per-step copy would stop the host from
        # queueing the next step while this one runs. (Token-id lists are indexed on the host.)
        order = order.to(self._index_device(self.train))
        aug = torch.Generator().manual_seed(mix_seed(cfg.seed, epoch, 1))
        torch.manual_seed(mix_seed(cfg.seed, epoch, 2))
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

    def evaluate(self, split: DecodedSplit | None = None) -> tuple[float, float]:
        """(loss, accuracy) on the validation split (or ``split``), in eval mode."""
        s = split or self.val
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        bs = max(2 * self.cfg.batch_size, 64)
        with torch.inference_mode(), self._autocast():
            for start in range(0, s.n, bs):
                idx = torch.arange(start, min(start + bs, s.n), device=self._index_device(s))
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

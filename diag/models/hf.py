"""Hugging Face text encoders: :class:`HFTextBackbone` and its loader."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diag.data.dataset import DataSet
from diag.errors import BackboneError, ConfigError
from diag.models.base import (
    Backbone,
    BlockLayout,
    DecodeOptions,
    Failed,
    LoadOptions,
    ProbePoint,
    TextBatch,
    masked_mean,
    seeded,
)
from diag.models.weights import offline_hint

__all__ = [
    "ENCODE_CHUNK",
    "HFTextBackbone",
    "Tokens",
    "load_hf",
    "text_layers",
]


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


#: Texts per tokenizer call in :meth:`HFTextBackbone.encode`.
ENCODE_CHUNK = 4096


@dataclass(frozen=True)
class Tokens:
    """Token ids of many texts, unpadded, stored flat: text ``i`` is ``fields[k][starts[i]:starts[i + 1]]``.

    Attributes
    ----------
    fields : dict of str to ndarray of int32
        ``input_ids`` and the tokenizer's other per-token fields (``token_type_ids``, ...), concatenated.
    starts : ndarray of int64, (n + 1,)
        Where each text begins.
    lengths : ndarray of int64, (n,)
        Tokens per text.
    pad : dict of str to int
        The value that pads each field (the tokenizer's pad token and pad token type; 0 otherwise).
    left : bool
        Pad on the left (the tokenizer's ``padding_side``).
    """

    fields: dict[str, np.ndarray]
    starts: np.ndarray
    lengths: np.ndarray
    pad: dict[str, int]
    left: bool = False

    def batch(self, idx: np.ndarray) -> TextBatch:
        """Texts ``idx`` padded to the longest of them, as the tokenizer pads (``padding=True``)."""
        n = len(idx)
        width = int(self.lengths[idx].max()) if n else 0
        mask = np.zeros((n, width), np.int64)
        out = {k: np.full((n, width), self.pad[k], np.int64) for k in self.fields}
        for r, i in enumerate(idx):
            a, b = int(self.starts[i]), int(self.starts[i + 1])
            cols = slice(width - (b - a), width) if self.left else slice(0, b - a)
            mask[r, cols] = 1
            for k, flat in self.fields.items():
                out[k][r, cols] = flat[a:b]
        ids = torch.from_numpy(out.pop("input_ids"))
        return TextBatch(ids, torch.from_numpy(mask), {k: torch.from_numpy(v) for k, v in out.items()})


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

    def batches(
        self, data: DataSet, batch_size: int, workers: int, *, pin: bool
    ) -> Iterator[tuple[torch.Tensor, Any, Failed]]:
        """Length-bucketed batches: texts sorted by token count, so padding is minimal (the caller puts
        rows back in order). Every text is tokenised once, up front, here (:meth:`encode`); each batch
        is padded from the ids, exactly as :meth:`tokenize` pads. ``workers`` and ``pin`` are not used."""
        assert data.texts is not None
        tokens = self.encode(data.texts)
        order = np.argsort(-tokens.lengths, kind="stable")
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            yield torch.from_numpy(idx.copy()), tokens.batch(idx), []

    def encode(self, texts: Sequence[str]) -> Tokens:
        """Every text tokenised once, truncated at :attr:`max_length`, not padded, by the tokenizer in
        calls of :data:`ENCODE_CHUNK` texts (a fast tokenizer encodes each call on every core)."""
        pad = {"input_ids": self.tokenizer.pad_token_id, "token_type_ids": self.tokenizer.pad_token_type_id}
        if pad["input_ids"] is None:
            raise BackboneError(
                f"backbone {self.name!r}: its tokenizer has no padding token, so texts cannot be batched. "
                "Set tokenizer.pad_token (e.g. to its eos_token) in the model folder."
            )
        fields: dict[str, list[np.ndarray]] = {}
        lengths: list[int] = []
        for s in range(0, len(texts), ENCODE_CHUNK):
            enc = self.tokenizer(
                list(texts[s : s + ENCODE_CHUNK]), truncation=True, max_length=self.max_length
            )
            lengths += [len(x) for x in enc["input_ids"]]
            for key, rows in enc.items():
                if key != "attention_mask":  # all ones before padding: rebuilt from the lengths
                    n = sum(len(r) for r in rows)
                    fields.setdefault(key, []).append(
                        np.fromiter(itertools.chain.from_iterable(rows), np.int32, n)
                    )
        lens = np.asarray(lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)])
        return Tokens(
            {k: np.concatenate(v) if v else np.zeros(0, np.int32) for k, v in fields.items()},
            starts,
            lens,
            {k: int(pad.get(k) or 0) for k in fields},
            left=getattr(self.tokenizer, "padding_side", "right") == "left",
        )

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

    def _decode(self, data: DataSet, options: DecodeOptions) -> list[list[int]]:
        """Token ids of every text, truncated at ``max_length`` (default: the backbone's), not padded."""
        assert data.texts is not None
        ml = options.max_length or self.max_length
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


def load_hf(name: str, ref: str, options: LoadOptions) -> HFTextBackbone:
    """The Hugging Face encoder ``ref`` (``hf:ID_OR_FOLDER``): a hub id or a local model folder."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    pretrained, seed, max_length = options.pretrained, options.seed, options.max_length

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
            with seeded(seed):
                model = AutoModel.from_config(config)
    except OSError as exc:
        raise BackboneError(
            f"backbone {name!r}: cannot load {source!r} ({str(exc).splitlines()[0][:200]}). "
            "A hub id needs a network the first time. " + offline_hint(random_init=False)
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

"""The family-specific behaviour every Backbone offers (batches, blocks, head, pooling, decoding)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from diag.data import open_image_folder, texts_dataset
from diag.errors import ConfigError, DataError
from diag.models import BlockLayout, masked_mean, text_layers
from tests.conftest import write_digit_folder

TEXTS = ("hi", "a much longer sentence with quite a few more tokens in it", "a text of a middling length")


def test_masked_mean_matches_the_formula_and_ignores_padding() -> None:
    h = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = masked_mean(h, mask)
    assert out.dtype == torch.float32 and out.shape == (2, 4)
    torch.testing.assert_close(out[0], h[0, :2].mean(0).float())
    torch.testing.assert_close(out[1], h[1, 0].float())
    assert torch.equal(masked_mean(h, torch.zeros(2, 3)), torch.zeros(2, 4))  # no token: 0, not NaN


def test_image_batches_cover_every_index_and_report_unreadable_files(
    tiny_image_backbone, tmp_path: Path
) -> None:
    root = write_digit_folder(tmp_path / "d", per_class=2)
    (root / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = open_image_folder(root)
    seen, failed = [], []
    for idx, batch, bad in tiny_image_backbone.batches(ds, 3, 0, pin=False):
        assert batch is None or batch.shape == (len(idx), 3, 32, 32)
        seen += idx.tolist()
        failed += bad
    assert sorted(seen + [i for i, _ in failed]) == list(range(len(ds)))
    assert [ds.ids[i] for i, _ in failed] == ["1/broken.png"]
    assert failed[0][1].startswith(("UnidentifiedImageError", "OSError", "SyntaxError"))


def test_text_batches_are_length_bucketed_and_never_fail(minilm) -> None:
    ds = texts_dataset(TEXTS)
    out = list(minilm.batches(ds, 2, 0, pin=False))
    assert [idx.tolist() for idx, _, _ in out] == [[1, 2], [0]]  # longest first
    assert all(bad == [] for _, _, bad in out)
    torch.testing.assert_close(out[1][1].input_ids, minilm.tokenize([TEXTS[0]]).input_ids)


@pytest.mark.parametrize("side", ["right", "left"])
def test_text_batches_tokenise_once_and_pad_as_the_tokenizer_does(minilm, monkeypatch, side: str) -> None:
    from diag.data import open_data

    ds = open_data("samples:speeches").subset(range(150))
    assert ds.texts is not None
    calls: list[int] = []

    class Counting:  # the tokenizer, counting the texts it is asked to encode
        def __init__(self, tok) -> None:
            self.tok = tok

        def __call__(self, texts, **kw):
            calls.append(len(texts))
            return self.tok(texts, **kw)

        def __getattr__(self, name: str):
            return getattr(self.tok, name)

    monkeypatch.setattr(minilm.tokenizer, "padding_side", side)
    monkeypatch.setattr(minilm, "tokenizer", Counting(minilm.tokenizer))
    monkeypatch.setattr("diag.models.hf.ENCODE_CHUNK", 64)
    out = list(minilm.batches(ds, 16, 0, pin=False))
    assert calls == [64, 64, 22]  # every text once, in chunks
    order = np.concatenate([idx.numpy() for idx, _, _ in out])
    assert sorted(order.tolist()) == list(range(len(ds)))
    for idx, batch, _ in out:
        ref = minilm.tokenizer.tok(
            [ds.texts[i] for i in idx.tolist()], padding=True, truncation=True,
            max_length=minilm.max_length, return_tensors="pt",
        )  # fmt: skip
        assert torch.equal(batch.input_ids, ref["input_ids"])
        assert torch.equal(batch.attention_mask, ref["attention_mask"])
        assert batch.extra.keys() == {"token_type_ids"}
        assert torch.equal(batch.extra["token_type_ids"], ref["token_type_ids"])
    lengths = [int(b.attention_mask.sum(1).max()) for _, b, _ in out]
    assert lengths == sorted(lengths, reverse=True)  # longest first
    pad_col = 0 if side == "left" else -1
    assert (out[-1][1].input_ids[:, pad_col] == minilm.tokenizer.pad_token_id).any()


def test_a_tokenizer_without_a_pad_token_is_a_clear_error(minilm, monkeypatch) -> None:
    from diag.errors import BackboneError

    tok = minilm.tokenizer

    class NoPad:
        pad_token_id = None

        def __getattr__(self, name: str):
            return getattr(tok, name)

        def __call__(self, texts, **kw):
            return tok(texts, **kw)

    monkeypatch.setattr(minilm, "tokenizer", NoPad())
    with pytest.raises(BackboneError, match="no padding token.*pad_token"):
        list(minilm.batches(texts_dataset(TEXTS), 2, 0, pin=False))


def test_timm_block_layout_is_the_probed_stages_minus_the_classifier(lite0) -> None:
    layout = lite0.block_layout(lite0.model)
    assert isinstance(layout, BlockLayout)
    assert layout.modules == [(f"blocks.{i}", f"blocks.{i}") for i in range(7)]
    assert layout.exclude == ["classifier"]
    assert (layout.before, layout.after) == ("stem", "pooled")
    assert lite0.block_layout(copy.deepcopy(lite0.model)) == layout
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.before = "x"  # type: ignore[misc]


def test_timm_without_a_classifier_excludes_nothing(tiny_image_backbone) -> None:
    body = copy.deepcopy(tiny_image_backbone.model)
    assert tiny_image_backbone.block_layout(body).exclude == ["classifier"]
    tiny_image_backbone.strip_source_head(body)
    assert not any(True for _ in body.get_classifier().parameters())
    assert tiny_image_backbone.block_layout(body).exclude == []
    assert tiny_image_backbone.model.get_classifier().weight.shape[0] > 0  # the original is untouched


def test_hf_block_layout_is_embeddings_then_every_layer(minilm) -> None:
    layout = minilm.block_layout(minilm.model)
    assert layout == BlockLayout(
        [("embeddings", "embeddings"), *((f"encoder.layer.{i}", f"layer.{i}") for i in range(6))],
        ["pooler"],
        before="embeddings",
        after="pooled",
    )
    assert text_layers(minilm.model) == ("encoder.layer", 6)
    with pytest.raises(ConfigError, match="cannot find its transformer layers"):
        text_layers(torch.nn.Linear(2, 2))


def test_hf_strip_source_head_drops_the_pooler(minilm) -> None:
    body = copy.deepcopy(minilm.model)
    assert body.pooler is not None
    minilm.strip_source_head(body)
    assert body.pooler is None and minilm.model.pooler is not None


def test_pooled_features_equal_the_pooled_probe(lite0, minilm) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(lite0.pooled_features(lite0.model, x), lite0.capture(x)["pooled"])
        batch = minilm.tokenize(list(TEXTS))
        pooled = minilm.pooled_features(minilm.model, (batch.input_ids, batch.attention_mask))
        probe = minilm.capture(batch)[f"layer.{5}"]  # the un-normalised masked mean of the last layer
    torch.testing.assert_close(pooled, probe)


def test_normalization_and_pad_id(lite0, minilm) -> None:
    assert lite0.input_normalization == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert lite0.pad_token_id == 0
    assert minilm.input_normalization is None
    assert minilm.pad_token_id == minilm.tokenizer.pad_token_id == 0


def test_decode_all_images_is_the_eval_transform_in_uint8(lite0, digit_folder: Path) -> None:
    ds = open_image_folder(digit_folder)
    x = lite0.decode_all(ds, image_size=48, crop_pct=None, max_length=None, num_workers=0)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.shape == (len(ds), 3, 48, 48)
    mean, std = lite0.input_normalization
    norm = (x.float() / 255.0 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(lite0.normalize(x), norm, rtol=0, atol=0)
    import timm.data

    p = lite0.preprocessing
    tf = timm.data.create_transform(
        input_size=(3, 48, 48), interpolation=p["interpolation"], mean=mean, std=std,
        crop_pct=p["crop_pct"], crop_mode=p["crop_mode"], is_training=False,
    )  # fmt: skip
    ref = torch.stack([tf(ds.load_image(i)) for i in range(len(ds))])
    # PIL's resize outputs uint8: the same bytes as timm's float transform, scaled by the same operations
    torch.testing.assert_close(norm, ref, atol=0, rtol=0)


def test_decode_all_names_the_first_unreadable_image(tiny_image_backbone, tmp_path: Path) -> None:
    root = write_digit_folder(tmp_path / "d", per_class=1)
    (root / "0" / "zz.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"1 of 4 images cannot be read \(first: 0/zz.png"):
        tiny_image_backbone.decode_all(
            open_image_folder(root), image_size=None, crop_pct=None, max_length=None, num_workers=0
        )


def test_decode_all_texts_truncates_without_padding(minilm) -> None:
    ds = texts_dataset(TEXTS)
    ids = minilm.decode_all(ds, image_size=None, crop_pct=None, max_length=5, num_workers=0)
    assert [len(x) for x in ids] == [3, 5, 5]  # [CLS] hi [SEP] is not padded
    full = minilm.decode_all(ds, image_size=None, crop_pct=None, max_length=None, num_workers=0)
    assert full[0] == minilm.tokenize([TEXTS[0]]).input_ids[0].tolist()
    assert np.argmax([len(x) for x in full]) == 1

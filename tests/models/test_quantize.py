"""int8 quantization: dynamic MiniLM, static EfficientNet-Lite0 (real weights) and a tiny timm net."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diag.data import open_data, texts_dataset
from diag.errors import ConfigError
from diag.models import load
from diag.models.quantize import model_bytes, quantize_backbone
from diag.stats.similarity import linear_cka

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batches(bb, data, size=32):
    return [b for _, b, _ in bb.batches(data, size, 0, pin=False) if b is not None]


def captured(bb, batch):
    with torch.inference_mode():
        return {k: v.numpy() for k, v in bb.capture(batch).items()}


def test_dynamic_minilm_quantizes_every_linear_and_names_what_stays_float(minilm) -> None:
    texts = texts_dataset(
        ["the vote passed by a wide margin", "a quiet evening by the river", "taxes and jobs and trade",
         "we will win this election", "the film was long but moving", "rain is expected tomorrow"] * 2,
        name="texts",
    )  # fmt: skip
    q, rep = quantize_backbone(minilm)
    assert rep.method == "dynamic"
    # per layer: query, key, value, attention out, intermediate, output; and the (unused) pooler
    assert len(rep.quantized) == 6 * 6 + 1
    assert set(rep.left_in_float) >= {"Embedding", "LayerNorm"}
    assert "Embedding" in rep.message and "Linear layers only" in rep.message
    assert rep.int8_bytes == model_bytes(q.model)
    # int8 weights save 3 of every 4 bytes of each quantized Linear weight, and nothing else
    mods = dict(minilm.model.named_modules())
    saved = 3 * sum(mods[n].weight.numel() for n in rep.quantized)
    assert rep.fp32_bytes - rep.int8_bytes == pytest.approx(saved, rel=0.02)
    assert minilm.model.encoder.layer[0].attention.self.query.weight.dtype == torch.float32  # untouched
    assert q.weights_fingerprint().startswith("int8-") and q.describe()["weights"].endswith("(int8 dynamic)")
    (b,) = batches(minilm, texts, 32)
    a, z = captured(minilm, b), captured(q, b)
    assert set(a) == set(z)
    assert linear_cka(a["pooled"], z["pooled"]) > 0.98


def test_static_tiny_conv_net_keeps_its_probe_points() -> None:
    bb = load("timm:test_efficientnet", pretrained=False, image_size=32, seed=0)
    data = open_data("samples:uci-digits").subset(list(range(48)))
    cal = batches(bb, data, 16)
    q, rep = quantize_backbone(bb, cal)
    assert rep.method == "static" and rep.n_calibration == 48 and rep.input_size == [32, 32]
    assert rep.quantized and all(p.startswith(("blocks.", "conv_stem", "conv_head")) for p in rep.quantized)
    a, z = captured(bb, cal[0]), captured(q, cal[0])
    assert [p.name for p in q.probes] == [p.name for p in bb.probes]
    for name in ("stem", "blocks.0", "pooled"):
        assert z[name].shape == a[name].shape
        assert not np.array_equal(z[name], a[name])  # int8 really ran
    assert rep.int8_bytes < rep.fp32_bytes


def test_bad_requests_are_refused(minilm) -> None:
    with pytest.raises(ConfigError, match="method must be one of"):
        quantize_backbone(minilm, method="int4")
    bb = load("timm:test_efficientnet", pretrained=False, image_size=32, seed=0)
    with pytest.raises(ConfigError, match="calibration batches"):
        quantize_backbone(bb, [], method="static")


@pytest.mark.slow
def test_static_lite0_calibrated_on_real_digits_stays_close_in_every_layer() -> None:
    bb = load("efficientnet_lite0", image_size=32)
    data = open_data("samples:uci-digits")
    cal = batches(bb, data.subset(list(range(0, 300, 2))), 50)
    q, rep = quantize_backbone(bb, cal)
    assert rep.method == "static"
    assert "5 SAME-padded convolution(s) fixed to the input size [32, 32]" in rep.notes
    assert rep.left_in_float == {"Linear": ["classifier"]}  # the ImageNet head: not in a block
    assert "classifier" in rep.message
    test = batches(bb, data.subset(list(range(1, 300, 2))), 150)[0]
    a, z = captured(bb, test), captured(q, test)
    for p in bb.probes:
        assert linear_cka(a[p.name], z[p.name]) > 0.9, p.name

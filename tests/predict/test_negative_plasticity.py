"""Lost plasticity in the negative-transfer rule: the weight scale and the final-layer judgement."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from diag.predict.negative import SCALE_MAX, SCALE_QUANTILE, negative_transfer, weight_scale
from tests.predict.test_predict import BLOCKS, curve


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),  # fan_in 27
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3, groups=8),  # depthwise: fan_in 9
        nn.Conv2d(8, 16, 1),  # fan_in 8
        nn.Flatten(),
        nn.Linear(16, 4),  # fan_in 16
    )


def _by_hand(model: nn.Module) -> float:
    """RMS(w) / sqrt(2 / fan_in) per conv/linear layer, fan_in from the layer's own attributes, median."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            fan_in = m.in_features
        else:
            continue
        w = m.weight.detach().numpy().astype(np.float64)
        out.append(np.sqrt(np.mean(w**2)) / np.sqrt(2.0 / fan_in))
    return float(np.median(out))


def test_weight_scale_is_the_median_rms_in_he_units_and_scales_exactly() -> None:
    model = _tiny()
    s = weight_scale(model)
    assert s == pytest.approx(_by_hand(model), rel=1e-12)
    # Constant weights c = 0.25: RMS c, so each layer reads c·sqrt(fan_in / 2); the median of 4 layers (fan_in
    # 27, 9, 8, 16) is the mean of the middle two, c·(sqrt(4.5) + sqrt(8)) / 2.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.fill_(0.25)  # exact in float32
    assert weight_scale(model) == pytest.approx(0.25 * (math.sqrt(4.5) + math.sqrt(8.0)) / 2, rel=1e-12)
    # Multiplying every conv and linear weight by c multiplies the signal by c: exactly for a power of two,
    # to float32 rounding for 10.
    model = _tiny()
    for c, tol in ((16.0, 1e-12), (10.0, 1e-6)):
        big = copy.deepcopy(model)
        with torch.no_grad():
            for m in big.modules():
                if isinstance(m, nn.Conv2d | nn.Linear):
                    m.weight.mul_(c)
        assert weight_scale(big) == pytest.approx(c * weight_scale(model), rel=tol)
    # He initialisation (fan-in, normal) reads 1 on a wide layer: the unit of the signal.
    wide = nn.Linear(4096, 512)
    nn.init.kaiming_normal_(wide.weight, nonlinearity="relu")
    assert weight_scale(wide) == pytest.approx(1.0, abs=0.01)
    assert weight_scale(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU())) is None


def test_weight_scale_quantile_reads_the_largest_layers() -> None:
    # Ten layers whose weights are c times He scale exactly (constant c·sqrt(2 / 50)), c = 1 ... 10: the
    # median is 5.5, the 0.9 quantile (numpy's linear interpolation: position 8.1 of 0 ... 9) 9.1, the
    # largest 10.
    model = nn.Sequential(*[nn.Linear(50, 20) for _ in range(10)])
    with torch.no_grad():
        for c, m in enumerate(model, start=1):
            m.weight.fill_(c * math.sqrt(2.0 / 50))
    assert weight_scale(model) == pytest.approx(5.5, rel=1e-6)
    assert weight_scale(model, SCALE_QUANTILE) == pytest.approx(9.1, rel=1e-6)
    assert weight_scale(model, 1.0) == pytest.approx(10.0, rel=1e-6)
    assert weight_scale(model, 0.0) == pytest.approx(1.0, rel=1e-6)


def _scale_sentence(nt) -> str:
    return next(e for e in nt.evidence if e.startswith("Weight scale"))


def _nt(pre: dict, twin: dict, scale: float | None) -> float:
    return negative_transfer(pre, twin, n_target=300, n_classes=10, scale=scale).probability


def test_large_weights_move_the_judgement_to_the_final_layer() -> None:
    # Shuffled weights: the stem probes best (0.72, 0.10 below the twin's best, well within the 0.30 head
    # start), the pooled features 0.57 against the twin's 0.75.
    shuffled = curve([0.72, 0.64, 0.65, 0.63, 0.69, 0.67, 0.61, 0.60, 0.57])
    twin = curve([0.55, 0.6, 0.7, 0.78, 0.82, 0.8, 0.78, 0.77, 0.75])
    plastic = negative_transfer(shuffled, twin, n_target=300, n_classes=10, scale=0.8, twin_scale=1.0)
    assert plastic.risk == "low" and not plastic.signals["plasticity_lost"]
    # Closed form of the plastic rule, unchanged by a normal scale: sigmoid(20 (-a - 0.30)), a = -0.10.
    assert plastic.probability == pytest.approx(1 / (1 + np.exp(-20 * (0.10 - 0.30))), abs=1e-4)
    assert plastic.probability == _nt(shuffled, twin, None)
    assert "normal" in _scale_sentence(plastic) and "twin's 1.00" in _scale_sentence(plastic)
    lost = negative_transfer(shuffled, twin, n_target=300, n_classes=10, scale=80.0, twin_scale=1.0)
    sig = lost.signals
    assert sig["plasticity_lost"] and sig["weight_scale"] == 80.0 and sig["final_layer"] == "pooled"
    assert sig["final_advantage"] == pytest.approx(0.57 - 0.75)
    # Closed form: sigmoid(-20 a_final), no head start.
    assert lost.probability == pytest.approx(1 / (1 + np.exp(20 * (0.57 - 0.75))), abs=1e-4)
    assert lost.risk == "high" and lost.drivers[0] == "weight scale"
    assert "lost plasticity" in _scale_sentence(lost) and "0.57 at pooled" in _scale_sentence(lost)
    # The shift and the gradient reach say how hard adapting is; under lost plasticity they do not count.
    shift = {"is_shift": True, "effect": {"name": "c2st_auc", "layer": "pooled", "value": 0.95}}
    dead = dict.fromkeys(BLOCKS, 0.0)
    both = negative_transfer(shuffled, twin, n_target=300, n_classes=10, shift=shift, rgn=dead, scale=80.0)
    assert both.probability == lost.probability and both.drivers == ["weight scale"]
    # The threshold: just below it nothing changes; just above it the final layer decides.
    assert _nt(shuffled, twin, SCALE_MAX * 0.999) == plastic.probability
    assert _nt(shuffled, twin, SCALE_MAX * 1.001) == lost.probability
    # Large weights over good final features (ImageNet x 100: 0.85 vs 0.75) stay low risk, and equal
    # ones (random init x 100) are a coin toss, not a high risk.
    good = curve([0.74, 0.77, 0.82, 0.88, 0.96, 0.94, 0.93, 0.92, 0.85])
    assert negative_transfer(good, twin, n_target=300, n_classes=10, scale=80.0).risk == "low"
    same = negative_transfer(twin, twin, n_target=300, n_classes=10, scale=100.0)
    assert same.probability == pytest.approx(0.5) and same.risk == "medium"
    # Without the final layer's probes the plastic rule stands.
    partial = {k: v for k, v in twin.items() if k != "pooled"}
    assert not negative_transfer(shuffled, partial, n_target=300, n_classes=10, scale=80.0).signals[
        "plasticity_lost"
    ]


def test_plasticity_lost_in_part_of_the_network() -> None:
    """A normal median but the largest tenth of the layers above the threshold (training at too high a
    learning rate): the final layer decides, as when every layer is large."""
    shuffled = curve([0.72, 0.64, 0.65, 0.63, 0.69, 0.67, 0.61, 0.60, 0.57])
    twin = curve([0.55, 0.6, 0.7, 0.78, 0.82, 0.8, 0.78, 0.77, 0.75])
    plastic = negative_transfer(shuffled, twin, n_target=300, n_classes=10, scale=1.25)
    part = negative_transfer(shuffled, twin, n_target=300, n_classes=10, scale=1.25, scale_top=4.1)
    whole = negative_transfer(shuffled, twin, n_target=300, n_classes=10, scale=80.0)
    assert not plastic.signals["plasticity_lost"] and plastic.risk == "low"
    assert part.signals["plasticity_lost"] and part.signals["weight_scale_top"] == 4.1
    # Closed form, the same as with every layer large: sigmoid(-20 a_final), a_final = 0.57 - 0.75.
    assert part.probability == whole.probability
    assert part.probability == pytest.approx(1 / (1 + np.exp(20 * (0.57 - 0.75))), abs=1e-4)
    assert part.risk == "high" and part.drivers[0] == "weight scale"
    words = _scale_sentence(part)
    assert "largest tenth of the layers is at 4.10" in words and "0.57 at pooled" in words
    # The threshold is the same: a top tenth just below it changes nothing.
    below = negative_transfer(
        shuffled, twin, n_target=300, n_classes=10, scale=1.25, scale_top=SCALE_MAX * 0.999
    )
    assert below.probability == plastic.probability and not below.signals["plasticity_lost"]


def test_real_checkpoints(lite0, minilm) -> None:
    from diag.models import load

    s = weight_scale(lite0.model)
    assert s is not None and 0.75 < s < 0.85  # ImageNet EfficientNet-Lite0: 0.796
    big = copy.deepcopy(lite0.model)
    with torch.no_grad():
        for m in big.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.mul_(100.0)
    assert weight_scale(big) == pytest.approx(100.0 * s, rel=1e-6) and weight_scale(big) > 20 * SCALE_MAX
    # MiniLM's trained weights sit at He scale (0.99) though they are 3.1 times its Hugging Face
    # random init (std 0.02): why the signal is in He units, not a ratio to the twin.
    m = weight_scale(minilm.model)
    twin = weight_scale(load("minilm", pretrained=False).model)
    assert m is not None and twin is not None
    assert 0.9 < m < 1.1 < SCALE_MAX < m / twin
    # The largest tenth of the layers of healthy checkpoints stays below the threshold (Lite0 1.76, MiniLM
    # 1.27; their random inits 2.45 / 0.55).
    for model in (lite0.model, minilm.model, load("minilm", pretrained=False).model):
        top = weight_scale(model, SCALE_QUANTILE)
        assert top is not None and top < 0.8 * SCALE_MAX

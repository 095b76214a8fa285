"""Relative gradient norms per block (Auto-RGN evidence)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from diag.errors import ConfigError, DataError
from diag.train import FinetuneConfig, freeze_units
from diag.train.rgn import relative_gradient_norms
from tests.conftest import write_digit_folder


def test_rgn_names_every_block_and_leaves_the_backbone_alone(tiny_image_backbone, tmp_path) -> None:
    data = write_digit_folder(tmp_path / "d", per_class=6)
    before = tiny_image_backbone.weights_fingerprint()
    cfg = FinetuneConfig(image_size=32, batch_size=4)
    r = relative_gradient_norms(data, tiny_image_backbone, cfg, n_batches=2)
    assert r.blocks == [u.name for u in freeze_units(tiny_image_backbone)]
    assert r.n_items == 8  # two batches of four training items
    assert all(math.isfinite(v) and v > 0 for v in r.rgn.values())
    assert max(r.normalized.values()) == 1.0 and r.normalized[r.strongest] == 1.0
    assert tiny_image_backbone.weights_fingerprint() == before
    again = relative_gradient_norms(data, tiny_image_backbone, cfg, n_batches=2)
    assert again.rgn == r.rgn  # deterministic for a seed


def test_rgn_is_the_ratio_of_gradient_to_weight_norm(tiny_image_backbone, tmp_path) -> None:
    """Doubling every weight of a block whose output is renormalised by BatchNorm halves its gradient:
    RGN falls by four (gradient / 2, weights x 2) -- a check of the formula, not of the code path."""
    data = write_digit_folder(tmp_path / "d", per_class=6)
    cfg = FinetuneConfig(image_size=32, batch_size=4)
    base = relative_gradient_norms(data, tiny_image_backbone, cfg, n_batches=2)
    scaled = copy.deepcopy(tiny_image_backbone)
    conv = scaled.model.blocks[1][0].conv_exp  # followed by a BatchNorm in eval mode: not scale-free
    with torch.no_grad():
        conv.weight.mul_(2.0)
    bn = scaled.model.blocks[1][0].bn1
    with torch.no_grad():  # undo the scale in the running statistics, so the block's output is unchanged
        bn.running_mean.mul_(2.0)
        bn.running_var.mul_(4.0)
        bn.eps = bn.eps * 4.0
    r = relative_gradient_norms(data, scaled, cfg, n_batches=2)
    for b in base.blocks:
        if b != "blocks.1":
            assert r.rgn[b] == pytest.approx(base.rgn[b], rel=1e-3), b
    assert r.rgn["blocks.1"] < base.rgn["blocks.1"]


@pytest.mark.slow
def test_inverted_digits_pull_harder_on_the_early_blocks(lite0, tmp_path) -> None:
    """An input-level shift (inverted grey levels) moves the relative gradient towards the input
    (Lee et al. 2023): mean normalised RGN of stem..blocks.1 is higher on inverted UCI digits."""
    import numpy as np
    from PIL import Image

    from diag.data.samples import open_sample

    src = open_sample("uci-digits")
    inv = tmp_path / "inv"
    for path, y in zip(src.paths, src.labels, strict=True):
        (inv / src.classes[y]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(Image.open(path).convert("L"))).save(
            inv / src.classes[y] / Path(path).name
        )
    cfg = FinetuneConfig(image_size=32, batch_size=32)
    early = ("stem", "blocks.0", "blocks.1")
    plain = relative_gradient_norms("samples:uci-digits", lite0, cfg)
    inverted = relative_gradient_norms(inv, lite0, cfg)
    assert (
        np.mean([inverted.normalized[b] for b in early])
        > np.mean([plain.normalized[b] for b in early]) + 0.05
    )


def test_rgn_needs_labels_and_a_valid_batch_count(tiny_image_backbone, tmp_path) -> None:
    data = write_digit_folder(tmp_path / "d", per_class=6)
    with pytest.raises(ConfigError, match="n_batches"):
        relative_gradient_norms(data, tiny_image_backbone, n_batches=0)
    one = write_digit_folder(tmp_path / "one", per_class=6, classes=("3",))
    with pytest.raises(DataError, match="same label"):
        relative_gradient_norms(one, tiny_image_backbone, FinetuneConfig(image_size=32))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_training_inputs_equal_the_backbones_own_normalisation(tiny_image_backbone, tmp_path, device) -> None:
    """The trainer normalises uint8 batches itself; its inputs must be the extraction's, bit for bit
    (TimmBackbone.normalize: tensor divisors, so CUDA does not turn a division into a reciprocal product)."""
    from diag.data import open_data
    from diag.train.blocks import units_of_model
    from diag.train.data import prepare_data
    from diag.train.model import build_model
    from diag.train.trainer import Trainer

    bb = tiny_image_backbone
    cfg = FinetuneConfig(image_size=32, batch_size=8, augment="none")
    prep = prepare_data(bb, open_data(write_digit_folder(tmp_path / "d", per_class=6)), None, cfg)
    model = build_model(copy.deepcopy(bb), len(prep.classes))
    dev = torch.device(device)
    tr = Trainer(
        model, units_of_model(model.body, bb), 0, prep.train, prep.val, cfg, dev, "fp32",
        bb.input_normalization, bb.pad_token_id,
    )  # fmt: skip
    idx = torch.arange(tr.train.n)
    x = tr.batch_inputs(tr.train, idx, None)
    assert isinstance(tr.train.x, torch.Tensor) and tr.train.x.dtype == torch.uint8
    ref = bb.normalize(tr.train.x.to(dev))
    assert x.dtype == torch.float32 and torch.equal(x.contiguous(), ref.contiguous())

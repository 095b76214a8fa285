"""Grey images are resized as grey and expanded to RGB after timm's crop: the same bytes as converting
them to RGB first (the path before), on real digits and on synthetic grey images of odd sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diag.data import open_data
from diag.data.dataset import DataSet


def _rgb_first(bb, image_size: int | None = None, crop_pct: float | None = None, input_size=None):
    """The path before: RGB conversion in ``load_image``, then timm's uint8 eval transform as is."""
    import timm.data

    p = bb.preprocessing
    size = tuple(input_size or p["input_size"])
    if image_size is not None:
        size = (3, image_size, image_size)
    return timm.data.create_transform(
        input_size=size, interpolation=p["interpolation"], crop_pct=crop_pct or p["crop_pct"],
        crop_mode=p["crop_mode"], is_training=False, use_prefetcher=True,
    )  # fmt: skip


def _odd_grey_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(13, 37), (301, 7), (1, 1), (255, 257), (28, 28), (224, 224), (500, 97)]):
        d = root / f"c{k % 2}"
        d.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
        arr[: h // 2] = np.clip(arr[: h // 2], 0, 40)  # an edge, where bicubic overshoots and clips
        Image.fromarray(arr, mode="L").save(d / f"{k:02d}.png")
    return root


def _check_same(bb, data: DataSet, tf_new, tf_old, expect_grey: bool = True) -> torch.Tensor:
    new, old = [], []
    for i in range(len(data)):
        im = data.load_image(i, keep_grey=True)
        assert (im.mode == "L") == expect_grey, data.ids[i]
        new.append(tf_new(im))
        old.append(tf_old(data.load_image(i)))
        assert data.load_image(i).mode == "RGB"
    a, b = torch.stack(new), torch.stack(old)
    assert a.dtype == torch.uint8 and a.shape[1] == 3
    assert torch.equal(a, b)
    return a


def test_real_digits_resized_grey_equal_rgb_first(lite0) -> None:
    mnist = open_data("samples:mnist")
    data = mnist.subset(np.linspace(0, len(mnist) - 1, 40).astype(int))
    assert lite0.resizes_grey
    a = _check_same(lite0, data, lite0.image_transform(), _rgb_first(lite0))
    assert a.shape == (40, 3, 224, 224) and 0 < a.float().mean() < 255
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 0], a[:, 2])
    # another size and crop (decode_all's options), and the float transform used by ``transform()``
    _check_same(lite0, data, lite0.image_transform(97, 1.0), _rgb_first(lite0, 97, 1.0))
    x = torch.stack([lite0.transform()(data.load_image(i, keep_grey=True)) for i in range(4)])
    y = torch.stack([lite0.transform()(data.load_image(i)) for i in range(4)])
    assert torch.equal(x, y)


def test_odd_sized_grey_pngs_and_a_non_square_input(lite0, tmp_path: Path, monkeypatch) -> None:
    data = open_data(_odd_grey_folder(tmp_path / "grey"))
    _check_same(lite0, data, lite0.image_transform(), _rgb_first(lite0))
    _check_same(lite0, data, lite0.image_transform(61, 0.95), _rgb_first(lite0, 61, 0.95))
    monkeypatch.setitem(lite0.preprocessing, "input_size", (3, 160, 224))  # H != W
    a = _check_same(lite0, data, lite0.image_transform(), _rgb_first(lite0, input_size=(3, 160, 224)))
    assert a.shape[2:] == (160, 224)


def test_extraction_batches_and_decode_all_are_unchanged(lite0, tmp_path: Path) -> None:
    mnist = open_data("samples:mnist")
    data = mnist.subset(np.linspace(0, len(mnist) - 1, 12).astype(int))
    old_tf = _rgb_first(lite0)
    want = torch.stack([old_tf(data.load_image(i)) for i in range(len(data))])
    got = torch.cat([b for _, b, _ in lite0.batches(data, 5, 0, pin=False)])
    assert torch.equal(got, want)
    dec = lite0.decode_all(data, image_size=None, crop_pct=None, max_length=None, num_workers=1)
    assert isinstance(dec, torch.Tensor) and torch.equal(dec, want)


def _other_modes_folder(root: Path) -> Path:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (23, 31), dtype=np.uint8)
    d = root / "a"
    d.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (23, 31, 3), dtype=np.uint8), mode="RGB").save(d / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (23, 31, 4), dtype=np.uint8), mode="RGBA").save(d / "rgba.png")
    Image.fromarray(grey, mode="L").convert("P").save(d / "p.png")
    Image.fromarray(grey, mode="L").convert("LA").save(d / "la.png")
    Image.fromarray(grey, mode="L").save(d / "trns.png", transparency=int(grey[0, 0]))  # grey + tRNS
    Image.fromarray(grey.astype(np.uint16) * 200).save(d / "i16.png")  # 16-bit grey
    Image.fromarray(grey.astype(np.float32) / 3.0, mode="F").save(d / "f.tiff")
    Image.fromarray(grey, mode="L").convert("CMYK").save(d / "cmyk.jpg", quality=95)
    return root


def test_other_modes_are_converted_to_rgb_as_before(lite0, tmp_path: Path) -> None:
    data = open_data(_other_modes_folder(tmp_path / "modes"))
    assert len(data) == 8
    for i in range(len(data)):
        kept, rgb = data.load_image(i, keep_grey=True), data.load_image(i)
        assert kept.mode == "RGB" and np.array_equal(np.asarray(kept), np.asarray(rgb)), data.ids[i]
    _check_same(lite0, data, lite0.image_transform(), _rgb_first(lite0), expect_grey=False)


def test_border_crop_keeps_rgb_first(lite0, monkeypatch) -> None:
    """timm's ``border`` crop pads with the mean colour, which a grey image cannot hold: no grey path."""
    monkeypatch.setitem(lite0.preprocessing, "crop_mode", "border")
    assert not lite0.resizes_grey
    data = open_data("samples:mnist").subset(range(3))
    items = [x for _, x, _ in (lite0.batches(data, 3, 0, pin=False))]
    want = torch.stack([_rgb_first(lite0)(data.load_image(i)) for i in range(3)])
    assert torch.equal(items[0], want)


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_deep_grey_arrays_are_not_kept_grey(mode: str) -> None:
    arr = np.arange(12 * 9, dtype=np.float64).reshape(12, 9) * 500.0
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    ds = DataSet(name="deep", modality="image", ids=("a",), arrays=arr.astype(dtype)[None])
    assert ds.arrays is not None and Image.fromarray(ds.arrays[0]).mode == mode
    kept, rgb = ds.load_image(0, keep_grey=True), ds.load_image(0)
    assert kept.mode == "RGB" and np.array_equal(np.asarray(kept), np.asarray(rgb))

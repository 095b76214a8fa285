"""Peak memory of a streamed reference build: 2k items against 20k items.

A reference build holds one chunk of embeddings plus the summaries (moments, RFF sums, reservoir), so its
memory should not grow with the number of items. Each size runs in a fresh process (peak RSS from
``getrusage``) on a folder of PNG files on disk (so the data itself is not in memory): digits from the
bundled MNIST sample, each written with a different one-pixel shift and brightness so files differ.

    .venv/bin/python benchmarks/bench_reference_memory.py [--sizes 2000 20000] [--image-size 32]

Writes ``benchmarks/results/reference_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results" / "reference_memory.json"


def write_folder(root: Path, n: int) -> Path:
    """``n`` PNGs in 10 class folders, made from the MNIST sample's digits."""
    from diag.data import open_data

    src = open_data("samples:mnist")
    assert src.labels is not None
    digits = [np.asarray(src.load_image(i).convert("L")) for i in range(len(src))]
    rng = np.random.default_rng(0)
    for k in range(n):
        i = k % len(digits)
        img = np.roll(digits[i], shift=(int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
        img = np.clip(img.astype(np.float32) * rng.uniform(0.7, 1.0), 0, 255).astype(np.uint8)
        folder = root / src.classes[int(src.labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{k:06d}.png")
    return root


def child(folder: str, image_size: int, out: str) -> None:
    """Build the reference in this process and print its peak RSS and time as JSON."""
    import torch

    from diag.pipeline import build_reference

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    ref = build_reference(folder, "efficientnet_lite0", image_size=image_size, out=out)
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": ref.n, "seconds": round(seconds, 2), "peak_rss_mib": round(peak_kib / 1024, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "IMAGE_SIZE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            folder = write_folder(Path(tmp) / f"data{n}", n)
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(folder),
                str(args.image_size),
                str(Path(tmp) / f"ref{n}"),
            ]
            out = (
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            rows.append(json.loads(out))
            print(rows[-1], flush=True)
    base = rows[0]["peak_rss_mib"]
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "image_size": args.image_size,
        "backbone": "efficientnet_lite0",
        "rows": rows,
        "ratio_to_smallest": [round(r["peak_rss_mib"] / base, 3) for r in rows],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print("| items | peak RSS (MiB) | build time (s) | peak / smallest |\n|---|---|---|---|")
    for r, ratio in zip(rows, result["ratio_to_smallest"], strict=True):
        print(f"| {r['n']:,} | {r['peak_rss_mib']} | {r['seconds']} | {ratio} |")


if __name__ == "__main__":
    main()

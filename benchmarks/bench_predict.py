"""Check diag's predictions against fine-tuning: freeze depth, negative transfer, transferability scores.

Every scenario pairs a ``diag diagnose`` run with a fine-tuning sweep of the same target and backbone at
the same input size (the truth table: mean held-out accuracy per freeze depth over seeds, and from
scratch). ``benchmarks/make_scenarios.py`` builds the extra data (held-out validation sets of 500
images, inverted digits, the shuffled-label MNIST that damages a backbone); ``benchmarks/run_sweeps.sh``
trains the damaged backbones and runs the sweeps (resumable). The ``sweep.json`` of each is committed
under ``benchmarks/results/sweeps/``.

Compared, per scenario:

- **freeze depth**: accuracy at the recommended depth as a fraction of the best depth's (goal ≥ 0.98 on
  average), next to the fixed defaults "tune everything" (K = 0) and "linear probe" (K = n) and to
  alternative rules evaluated on the same evidence. A recommended depth not in the sweep is fine-tuned
  (``--run-missing``) with the sweep's budget and seeds: every figure is measured, not interpolated;
- **negative transfer**: the predicted risk against the measured gap (best pretrained depth's mean
  accuracy minus from-scratch mean); right when ``risk == "high"`` exactly when the gap is negative; the
  AUROC of the predicted probability over all scenarios;
- **transferability scores**: Spearman rank correlation with fine-tuned accuracy across backbones on the
  same target (scores at the pooled embedding vs each backbone's best fine-tuned accuracy, beside the
  parameter-count baseline) and across freeze depths within a scenario (score at the last frozen block).

Usage::

    .venv/bin/python benchmarks/make_scenarios.py
    bash benchmarks/run_sweeps.sh                                # hours on 2 CPU cores
    .venv/bin/python benchmarks/bench_predict.py [--run-missing]
    .venv/bin/python benchmarks/bench_predict.py --summary-only [--backfill-nt]   # from predict.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SC = "runs/scenarios"


def _digits(
    name: str,
    backbone: str,
    target: str = "samples:uci-digits",
    val: str = f"{SC}/uci-val",
    *,
    epochs: int = 6,
    size: int = 32,
    **extra: object,
) -> dict:
    args = ["--preset", "small", "--image-size", str(size), "--epochs", str(epochs), "--seeds", "0,1"]
    return {
        "name": name, "source": "samples:mnist", "target": target, "val": val, "backbone": backbone,
        "options": {"image_size": size}, "sweep": f"v2/{name}", "sweep_args": args, **extra,
    }  # fmt: skip


def _tex(name: str, backbone: str, target: str = f"{SC}/tex", size: int = 32, photos: str = "tex") -> dict:
    """A photo table: scikit-image images' crops by source image (make_scenarios.py), source = the same
    images zoomed out (``photos``-src: ``tex``, ``tex64`` the same crops at 64 px, ``sci``)."""
    return {
        **_digits(name, backbone, target, f"{target}-val", size=size, held_out=True),
        "source": f"{SC}/{photos}-src",
    }


def _rescaled(name: str, weights: str = "") -> dict:
    """A re-scaled (or otherwise built) Lite0 on UCI (make_scenarios.py): negative transfer only (two
    depths swept), the from-scratch runs are mnist-uci's (same architecture, seeds, budget, validation)."""
    backbone = f"efficientnet_lite0@{SC}/{weights or name + '-lite0.safetensors'}"
    return _digits(f"{name}-uci", backbone, held_out=True, nt_only=True, scratch_from="mnist-uci")


def _tex_damaged(name: str) -> dict:
    """A re-scaled Lite0 on the texture target: negative transfer only, scratch from tex-lite0's runs."""
    backbone = f"efficientnet_lite0@{SC}/{name}-lite0.safetensors"
    return {**_tex(f"{name}-tex", backbone), "nt_only": True, "scratch_from": "tex-lite0"}


def _text(name: str, source: str, max_length: int) -> dict:
    """A MiniLM table on a ``.csv`` text target with its own validation table (make_scenarios.py)."""
    args = ["--preset", "small", "--epochs", "6", "--max-length", str(max_length), "--seeds", "0,1"]
    return {
        "name": name, "source": source, "target": f"{SC}/{name}.csv", "val": f"{SC}/{name}-val.csv",
        "backbone": "minilm", "options": {"max_length": max_length}, "sweep": f"v2/{name}",
        "sweep_args": args, "held_out": True, "built_after": TEXT,
    }  # fmt: skip


LITE0 = "efficientnet_lite0"
LITES = ("lite0", "lite1", "lite2")  # the three ImageNet backbones of the photo tables
SHUFFLED = f"efficientnet_lite0@{SC}/shuffled-lite0.safetensors"
LADDER = ("noise1", "noise3", "noise5", "blur3", "contrast3", "jpeg3")
INV = f"{SC}/uci-inverted"
MEMORIZER = f"efficientnet_lite0@{SC}/memorizer-lite0/last.pt"
NOISE_MEMORIZER = f"efficientnet_lite0@{SC}/noise-memorizer-lite0/last.pt"
NOISE_30 = "noise-memorizer-uci-30ep"
STEP7 = "26505f5"  # the commit that fixed the freeze rule's "no feature advantage" step
TEXT = "8e11b21"  # the text tables were built on this commit (the freeze rule as of 1b7cccb)
SCENARIOS = [
    _digits("mnist-uci", "efficientnet_lite0"),
    _digits("mnist-opencv", "efficientnet_lite0", "samples:opencv-digits", f"{SC}/opencv-val"),
    _digits("mnist-uci-inverted", "efficientnet_lite0", f"{SC}/uci-inverted", f"{SC}/uci-inverted-val"),
    _digits("lite1-uci", "efficientnet_lite1"),
    _digits("lite2-uci", "efficientnet_lite2"),
    _digits("damaged-light-uci", f"efficientnet_lite0@{SC}/damaged-light-lite0/last.pt"),
    _digits("damaged-uci", f"efficientnet_lite0@{SC}/damaged-lite0/last.pt"),
    _digits("memorizer-uci", MEMORIZER),
    _digits("noise-memorizer-uci", NOISE_MEMORIZER),
    _digits("dead60-uci", f"efficientnet_lite0@{SC}/dead60-lite0.safetensors"),
    _digits("dead-uci", f"efficientnet_lite0@{SC}/dead-lite0.safetensors"),
    # A generous budget (30 epochs, pretrained and scratch alike): negative transfer only (two depths).
    _digits("mnist-uci-30ep", "efficientnet_lite0", epochs=30, nt_only=True, scratch_from=NOISE_30),
    _digits("memorizer-uci-30ep", MEMORIZER, epochs=30, nt_only=True, scratch_from=NOISE_30),
    _digits(NOISE_30, NOISE_MEMORIZER, epochs=30, nt_only=True),
    # ... and on a larger target (every UCI digit outside uci-val, ~130 per class): scratch catches up?
    _digits("mnist-uci-large-30ep", LITE0, f"{SC}/uci-large", epochs=30, nt_only=True, held_out=True),
    # Held out: built and swept after the rules were fixed (commit 208fe5d), reported apart.
    _digits("mnist-opencv-noisy", LITE0, f"{SC}/opencv-noisy", f"{SC}/opencv-noisy-val", held_out=True),
    _digits("mnist-uci-parity", LITE0, f"{SC}/uci-parity", f"{SC}/uci-parity-val", held_out=True),
    # Held out at first, then the tables the small-target step of the rule was set on (fitted, late).
    _digits("mnist-uci-10pc", LITE0, f"{SC}/uci-10pc", late=True),
    _digits("mnist-opencv-10pc", LITE0, f"{SC}/opencv-10pc", f"{SC}/opencv-val", late=True),
    # Held out from the small-target step.
    _digits("mnist-uci-inverted-10pc", LITE0, f"{INV}-10pc", f"{INV}-val", held_out=True),
    _digits("lite1-uci-10pc", "efficientnet_lite1", f"{SC}/uci-10pc", held_out=True),
    _digits("dead40-uci", f"efficientnet_lite0@{SC}/dead40-lite0.safetensors", held_out=True),
    # Issue 15's families (leave-one-family-out, predict_lofo.py): natural-photo textures with three
    # backbones, corruption ladders on them, and the weight-shuffled Lite0 (Transfusion control).
    # Built after the shipped rule was fixed: held out from it.
    *[_tex(f"tex-{b}", f"efficientnet_{b}") for b in LITES],
    *[_tex(f"tex-{c}", LITE0, f"{SC}/tex-{c}") for c in LADDER],
    *[_tex(f"tex-{c}{k}", LITE0, f"{SC}/tex-{c}{k}") for c in ("blur", "contrast", "jpeg") for k in (1, 5)],
    # The small-target step (set on digits at 10 per class) on another kind of target, and between the
    # sizes it was set on: the texture target at 10 and 20 crops per photo (validation tex-val).
    *[{**_tex(f"tex-{k}", LITE0, f"{SC}/tex-{k}"), "val": f"{SC}/tex-val"} for k in ("10pc", "20pc")],
    _digits("shuffled-uci", SHUFFLED, held_out=True),
    # The noise ladder on a second target (OpenCV digits; sd 20, 46, 97 grey levels).
    *[_digits(f"opencv-noise{k}", LITE0, f"{SC}/opencv-noise{k}", f"{SC}/opencv-noise{k}-val", held_out=True)
      for k in (1, 3, 5)],
    {**_tex("shuffled-tex", SHUFFLED), "scratch_from": "tex-lite0"},
    # Re-scaled checkpoints (make_scenarios.py; negative transfer only: tune-all and the linear probe,
    # scratch from mnist-uci's runs): conv weights x 0.001 / 0.01, BatchNorm scales 0 (collapse) and
    # x 100 / x 10 (lost plasticity).
    *[_rescaled(n) for n in ("tiny001", "tiny01", "big-shuffled", "big", "gamma0")],
    *[_rescaled(n) for n in ("big-random", "big10-shuffled")],
    # x 10 on the last third of the convs only, over shuffled and over ImageNet weights (after the widened
    # lost-plasticity test)
    *[_rescaled(n) for n in ("big10-deep-shuffled", "big10-deep")],
    # Too high a learning rate (make_scenarios.py, run_sweeps.sh): one epoch of plain SGD at learning rate 1
    # on random labels from ImageNet / random init; AdamW at 0.05 without weight decay from ImageNet on
    # random labels (10 epochs) and from random init on real MNIST labels (30 epochs).
    *[_rescaled(n) for n in ("sgd-hot", "sgd-hot-random")],
    _rescaled("hot-pretrained", "hot-pretrained-lite0/last.pt"),
    _rescaled("hot-mnist", "hot-mnist-lite0/last.pt"),
    # Built after the lost-plasticity test was widened to the largest tenth of the layers (out of sample for
    # it): SGD at 0.5 for 5 epochs from random init and at 0.05 for 3 from ImageNet (random labels); AdamW
    # without weight decay from ImageNet on real MNIST labels at 0.02 (10 epochs) and at the usual 0.002 (30).
    *[_rescaled(n) for n in ("sgd-half-random", "sgd-mild")],
    _rescaled("hot-adam-mnist", "hot-adam-mnist-lite0/last.pt"),
    _rescaled("adam-nowd-mnist", "adam-nowd-mnist-lite0/last.pt"),
    _rescaled("gratings", "gratings-lite0/last.pt"),  # random init, trained on synthetic gratings
    # The same damage on the texture target (scratch from tex-lite0's runs).
    *[_tex_damaged(n) for n in ("tiny001", "big-shuffled", "big10-shuffled", "big10-deep-shuffled")],
    # A second input size (the rules were set at 32 px; built and swept after the probe-ceiling step was
    # fixed): the texture crops resized to 64 px from the photos (more of their detail) through the three
    # backbones, and the digits upsampled to 64 px.
    *[_tex(f"tex64-{b}", f"efficientnet_{b}", f"{SC}/tex64", 64, "tex64") for b in LITES],
    _digits("uci64-lite0", LITE0, size=64, held_out=True),
    _digits("uci64-lite2", "efficientnet_lite2", size=64, held_out=True),
    _digits("opencv64-lite0", LITE0, "samples:opencv-digits", f"{SC}/opencv-val", size=64, held_out=True),
    # A second natural-image target of another kind (scientific, document and graphic images; built after
    # the probe-ceiling step was fixed), the three backbones at 32 px.
    *[_tex(f"sci-{b}", f"efficientnet_{b}", f"{SC}/sci", photos="sci") for b in LITES],
    # ... and the corruption ladders on it (Lite0): input-level shift on a third target (severity 3 first,
    # then 1 and 5).
    *[_tex(f"sci-{c}{k}", LITE0, f"{SC}/sci-{c}{k}", photos="sci")
      for k in (3, 1, 5) for c in ("noise", "blur", "contrast", "jpeg")],
    # A memoriser trained at too high a learning rate without weight decay (random labels, AdamW lr 0.05, 30
    # epochs; 25 times the memoriser's learning rate); built after the negative-transfer rule was fixed.
    _digits("hot-memorizer-uci", f"efficientnet_lite0@{SC}/hot-memorizer-lite0/last.pt", held_out=True),
    # Lite1 and Lite2 on the heaviest noise of the texture and science ladders: built after step 7 of the
    # freeze rule ("no feature advantage", commit 26505f5) was fixed, out of sample for it; screened only by
    # diagnosing them (which step decides), before any sweep.
    *[
        {**_tex(f"{t}-{b}", f"efficientnet_{b}", f"{SC}/{t}", photos=t.split("-")[0]), "built_after": STEP7}
        for t, b in (("tex-noise5", "lite1"), ("tex-noise5", "lite2"), ("sci-noise3", "lite1"),
                     ("sci-noise5", "lite1"), ("sci-noise5", "lite2"), ("tex-noise3", "lite2"))
    ],
    # A new family, synthetic patterns (make_scenarios.py; built after step 7 too, screened the same way):
    # band-pass noise by pass band (Lite0, Lite2) and gratings by orientation (Lite0); source: the photos.
    *[
        {**_tex(f"synth-{k}-{b}", f"efficientnet_{b}", f"{SC}/synth-{k}"), "built_after": STEP7}
        for k, b in (("spectra", "lite0"), ("spectra", "lite2"), ("orient", "lite0"))
    ],
    {
        "name": "speeches-debates", "source": "samples:speeches", "target": "samples:debates", "val": None,
        "backbone": "minilm", "options": {"max_length": 128}, "sweep": "v2/speeches-debates",
        "sweep_args": ["--preset", "small", "--epochs", "6", "--seeds", "0,1"],
    },
    # Three more text targets for MiniLM (make_scenarios.py ``_text_targets``; built after the freeze rule's
    # last change, at TEXT, and screened by diagnosing them before their sweeps were read).
    *[_text(name, source, max_length) for name, source, max_length in (
        ("debates-role", "samples:speeches", 64),
        ("rt-sentiment", "samples:speeches", 64),
        ("speeches-party", "samples:debates", 128),
    )],
]  # fmt: skip
#: Scenarios on the same target (UCI digits, same validation set): the across-backbone comparison.
SAME_TARGET = [
    s["name"]
    for s in SCENARIOS
    if s["target"] == "samples:uci-digits" and not s.get("nt_only") and not s.get("held_out")
]
LAYER_SCORES = ("logme", "knn_accuracy", "linear_probe_accuracy")


def by_depth(sweep: dict) -> tuple[dict[int, float], float | None]:
    acc = {
        int(d["freeze"]): float(d["mean"])
        for d in sweep["depths"]
        if not d["from_scratch"] and d["mean"] is not None
    }
    scratch = sweep.get("scratch_mean")
    return acc, (None if scratch is None else float(scratch))


def run_depth(sc: dict, sweep_dir: Path, depths: list[int]) -> None:
    cmd = [
        str(ROOT / ".venv/bin/diag"), "sweep", "-t", sc["target"], "-b", sc["backbone"], "-o", str(sweep_dir),
        "--depths", ",".join(str(d) for d in depths), "--no-keep-checkpoint", "--no-save-best", "-q",
        *(["--val", sc["val"]] if sc["val"] else []), *sc["sweep_args"],
    ]  # fmt: skip
    print("running", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


# -- alternative freeze rules, on the evidence the report keeps ---------------------------------------


def _shallowest(ev: dict) -> str:
    return ev.get("shallowest_near_peak", ev["peak_layer"])


def rule_shallowest_near_peak(ev: dict, blocks: list[str]) -> int:
    """Freeze through the shallowest probe within the fold spread of the best."""
    layer = _shallowest(ev)
    return min(len(blocks), blocks.index(layer) + 1) if layer in blocks else len(blocks)


def rule_previous(ev: dict, blocks: list[str]) -> int:
    """The rule diag shipped before these tables: shallowest near peak, one block more below 50 per class,
    at least two blocks tuned (calibrated on the 60-image hold-outs of the first three tables)."""
    k = rule_shallowest_near_peak(ev, blocks) + (1 if ev["examples_per_class"] < 50 else 0)
    return min(k, len(blocks) - 2)


def rule_last_near_peak(ev: dict, blocks: list[str]) -> int:
    """Freeze through the deepest probe still within the tolerance of the best."""
    lp, tol = ev["linear_probe"], ev["tolerance"]
    top = max(lp.values())
    near = [b for b in blocks if b in lp and lp[b] >= top - tol]
    return blocks.index(near[-1]) + 1 if near else len(blocks)


def rule_rgn_argmax(ev: dict, blocks: list[str]) -> int | None:
    """Tune from the block with the largest relative gradient norm on (Auto-RGN's strongest block)."""
    rgn = ev.get("rgn")
    if not rgn:
        return None
    return blocks.index(max(rgn, key=lambda b: rgn[b]))


def rule_as_fixed(ev: dict, blocks: list[str]) -> int:
    """diag's rule as it stood at commit 208fe5d, before the small-target step: diag's own rule on the
    same evidence, with targets of 10 to ``SMALL_TARGET`` examples per class treated as larger ones."""
    from diag.predict.freeze import SMALL_TARGET, recommend_freeze

    curve = {k: {"scores": {"linear_probe_accuracy": v}, "linear_probe_std": ev["tolerance"]}
             for k, v in ev["linear_probe"].items()}  # fmt: skip
    per_class = ev["examples_per_class"]
    if 10 <= per_class < SMALL_TARGET:
        per_class = SMALL_TARGET
    return recommend_freeze(
        curve, blocks, n_target=math.ceil(per_class), n_classes=1, rgn=ev.get("rgn")
    ).depth


ALT_RULES = {
    "as fixed at 208fe5d (no small-target step)": rule_as_fixed,
    "previous (shallowest near peak, +1 below 50/class)": rule_previous,
    "shallowest near peak": rule_shallowest_near_peak,
    "last near peak": rule_last_near_peak,
    "RGN argmax": rule_rgn_argmax,
}


def auroc(scores: list[float], positive: list[bool]) -> float | None:
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    if not pos or not neg:
        return None
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


#: The truth tables next to the figures: each sweep's ``sweep.json``, copied here after it is evaluated.
COMMITTED_SWEEPS = ROOT / "benchmarks" / "results" / "sweeps"


def evaluate(sc: dict, sweep_root: Path, run_missing: bool, reports: Path, rule_only: bool = False) -> dict:
    import diag

    sweep_dir = sweep_root / sc["sweep"]
    path = sweep_dir / "sweep.json"
    if not path.is_file():  # a fresh clone: the committed truth table (the runs stay in runs/)
        path = COMMITTED_SWEEPS / f"{sc['name']}.json"
    if not path.is_file():
        return {"name": sc["name"], "status": f"no sweep at {sweep_dir / 'sweep.json'} or {path}"}
    if json.loads(path.read_text()).get("status") != "completed":
        return {"name": sc["name"], "status": f"sweep at {path} not finished: rerun benchmarks/run_sweeps.sh"}
    t0 = time.perf_counter()
    rep = diag.diagnose(
        sc["source"],
        sc["target"],
        sc["backbone"],
        n_permutations=500,
        out=reports / sc["name"],
        **sc["options"],
    )
    diag_s = time.perf_counter() - t0
    fr, nt = rep.sections["freeze"], rep.sections["negative_transfer"]
    k_rec, n = int(fr["depth"]), int(fr["n_blocks"])
    sweep = json.loads(path.read_text())
    blocks = sweep["blocks"]
    acc, scratch = by_depth(sweep)
    if scratch is None and sc.get("scratch_from"):  # the same from-scratch runs, made by another sweep
        scratch = borrowed_scratch(sc, sweep_root)
    alt = {name: rule(fr["evidence"], blocks) for name, rule in ALT_RULES.items()}
    if run_missing and not sc.get("nt_only"):
        wanted = [k_rec] if rule_only else [k_rec, *alt.values()]
        missing = sorted({k for k in wanted if k is not None} - set(acc))
        if missing:
            run_depth(sc, sweep_dir, sorted({*acc, *missing}))
            sweep = json.loads(path.read_text())
            acc, scratch = by_depth(sweep)
    best_k = max(acc, key=lambda k: acc[k])
    best = acc[best_k]

    def ratio(k: int | None) -> float | None:
        return None if k is None or k not in acc else acc[k] / best

    out: dict = {
        "name": sc["name"],
        "nt_only": bool(sc.get("nt_only")),
        "held_out": bool(sc.get("held_out")),
        "late": bool(sc.get("late")),
        **({"built_after": sc["built_after"]} if sc.get("built_after") else {}),
        "epochs": int(sc["sweep_args"][sc["sweep_args"].index("--epochs") + 1]),
        "backbone": sc["backbone"],
        "target": sc["target"],
        "status": sweep.get("status"),
        "n_blocks": n,
        "blocks": blocks,
        "accuracy_by_depth": {str(k): acc[k] for k in sorted(acc)},
        "std_by_depth": {
            str(int(d["freeze"])): d.get("std") for d in sweep["depths"] if not d["from_scratch"]
        },
        "val": (sweep.get("val") or {}).get("n") if isinstance(sweep.get("val"), dict) else None,
        "scratch": scratch,
        "best_depth": best_k,
        "best_accuracy": best,
        "recommended_depth": k_rec,
        "recommended_accuracy": acc.get(k_rec),
        "ratio_recommended": ratio(k_rec),
        "ratio_tune_all": ratio(0),
        "ratio_linear_probe": ratio(n),
        "alternative_rules": {name: {"depth": k, "ratio": ratio(k)} for name, k in alt.items()},
        "lr_scheme": fr["lr_scheme"],
        "rationale": fr["rationale"],
        "freeze_evidence": fr["evidence"],
        "diagnose_s": round(diag_s, 1),
        "diagnosed_at": diagnosed_at(),
    }
    if scratch is not None:
        out["risk"], out["probability"] = nt["risk"], nt["probability"]
        out.update(measured_truth(best, acc.get(0), scratch, nt["risk"]))
        out["nt_signals"] = nt["signals"]
        out["nt_drivers"] = nt["drivers"]
    layers = rep.sections["transferability"]["layers"]
    out["pooled_scores"] = rep.sections["transferability"]["scores"]
    best_layer = rep.sections["transferability"]["best_layer"]
    out["best_layer_scores"] = {"layer": best_layer, **layers[best_layer]["scores"]}
    corr = {}
    for s in LAYER_SCORES:
        xs, ys = [], []
        for k in sorted(acc):
            if 1 <= k <= len(blocks) and blocks[k - 1] in layers and s in layers[blocks[k - 1]]["scores"]:
                xs.append(layers[blocks[k - 1]]["scores"][s])
                ys.append(acc[k])
        varied = len(set(xs)) > 1 and len(set(ys)) > 1  # a constant side has no rank correlation
        corr[s] = (
            {"spearman": float(stats.spearmanr(xs, ys).statistic), "n": len(xs)}
            if len(xs) >= 3 and varied
            else None
        )
    out["score_vs_accuracy_by_depth"] = corr
    if sc["target"] == "samples:uci-digits":
        out["all_scores_pooled"] = _all_scores(sc)
    out["num_params"] = rep.backbone.get("num_params")
    return out


def borrowed_scratch(sc: dict, sweep_root: Path) -> float | None:
    """The from-scratch accuracy of ``sc["scratch_from"]``'s sweep (the same from-scratch runs: same data,
    architecture, seeds and budget), from its run folder or else its committed copy."""
    other = next(x for x in SCENARIOS if x["name"] == sc["scratch_from"])
    where = sweep_root / other["sweep"] / "sweep.json"
    if not where.is_file():  # the committed copy (main writes it)
        where = COMMITTED_SWEEPS / f"{other['name']}.json"
    scratch = json.loads(where.read_text()).get("scratch_mean")
    return None if scratch is None else float(scratch)


def refresh_borrowed_scratch(
    rows: list[dict], scratch_of: Callable[[dict], float | None], scenarios: list[dict] = SCENARIOS
) -> list[dict]:
    """Rows whose from-scratch accuracy is another table's (``scratch_from``) take its current value
    (``scratch_of(scenario)``), and their measured gap and negative-transfer truth with it: that table may
    have gained seeds since the row was diagnosed (mnist-uci's four seeds moved it from 0.536 to 0.529)."""
    by_name = {sc["name"]: sc for sc in scenarios}
    out = []
    for r in rows:
        sc = by_name.get(r["name"])
        scratch = (
            scratch_of(sc)
            if sc and sc.get("scratch_from") and "alternative_rules" in r and r.get("scratch") is not None
            else None
        )
        if scratch is None or scratch == r["scratch"]:
            out.append(r)
            continue
        truth = measured_truth(r["best_accuracy"], r["accuracy_by_depth"].get("0"), scratch, r["risk"])
        out.append({**r, "scratch": scratch, **truth})
    return out


def measured_truth(best: float, tune_all: float | None, scratch: float, risk: str) -> dict[str, Any]:
    """What the sweep says of negative transfer: the best depth's and tune-all's gaps over training from
    scratch, whether scratch won (the truth), and whether the verdict ``risk`` got it right."""
    gap = best - scratch
    return {
        "measured_gap": gap,
        "measured_gap_tune_all": None if tune_all is None else tune_all - scratch,
        "negative_transfer_measured": gap < 0,
        "negative_transfer_correct": (risk == "high") == (gap < 0),
    }


def diagnosed_at() -> dict[str, object]:
    """The commit the row's evidence was produced at, and whether ``diag/``'s code had uncommitted edits
    then (its Python files: the shipped calibration JSON, rewritten by every summary, changes no evidence)."""

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "diag_modified": bool(git("status", "--porcelain", "--", ":(glob)diag/**/*.py")),
    }


def _all_scores(sc: dict) -> dict[str, float]:
    """Every transferability score at the pooled embedding (LEEP/NCE from the backbone's own head)."""
    from diag.models import load
    from diag.pipeline import embed
    from diag.stats.transfer import transferability

    emb = embed(sc["target"], load(sc["backbone"], **sc["options"]))
    res = transferability(emb["pooled"], emb.labels, logits=emb.logits)
    return dict(res.scores)


def across_backbones(rows: list[dict]) -> dict:
    """Spearman of each pooled score (and of parameter count) with the best fine-tuned accuracy."""
    done = [r for r in rows if r["name"] in SAME_TARGET and "all_scores_pooled" in r]
    if len(done) < 3:
        return {"n": len(done)}
    y = [r["best_accuracy"] for r in done]
    names = sorted(set.intersection(*(set(r["all_scores_pooled"]) for r in done)))
    out: dict = {"n": len(done), "backbones": [r["backbone"] for r in done], "best_accuracy": y}
    for s in names:
        x = [r["all_scores_pooled"][s] for r in done]
        out[s] = float(stats.spearmanr(x, y).statistic)
    out["num_params"] = float(stats.spearmanr([r["num_params"] for r in done], y).statistic)
    for s in LAYER_SCORES:  # at each backbone's best layer (by linear probe) instead of the pooled one
        if all("best_layer_scores" in r for r in done):
            x = [r["best_layer_scores"][s] for r in done]
            out[f"{s}@best_layer"] = float(stats.spearmanr(x, y).statistic)
    return out


def _mean(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return float(np.mean(v)) if v else None


def summarize(rows: list[dict]) -> dict:
    """Figures over the scenarios the rules were chosen on, with the held-out ones apart and pooled."""
    fitted = [r for r in rows if not r.get("held_out")]
    held = [r for r in rows if r.get("held_out")]
    summary = _figures(fitted)
    summary["across_backbones"] = across_backbones(fitted)
    if held:
        summary["held_out"] = _figures(held)
        summary["all"] = _figures(rows)
    return summary


def _figures(rows: list[dict]) -> dict:
    # The freeze depth is judged where transfer helps: under negative transfer the answer is scratch.
    done = [
        r
        for r in rows
        if r.get("ratio_recommended") is not None and not r["nt_only"] and not r["negative_transfer_measured"]
    ]
    nt = [r for r in rows if "measured_gap" in r]
    return {
        "n_scenarios": len(done),
        "mean_ratio_recommended": _mean([r["ratio_recommended"] for r in done]),
        "min_ratio_recommended": min((r["ratio_recommended"] for r in done), default=None),
        "mean_ratio_tune_all": _mean([r["ratio_tune_all"] for r in done]),
        "mean_ratio_linear_probe": _mean([r["ratio_linear_probe"] for r in done]),
        "alternative_rules": {
            name: {
                "mean_ratio": _mean([r["alternative_rules"][name]["ratio"] for r in done]),
                "n": sum(r["alternative_rules"][name]["ratio"] is not None for r in done),
            }
            for name in ALT_RULES
        },
        "negative_transfer_correct": {r["name"]: r["negative_transfer_correct"] for r in nt},
        "negative_transfer_auroc": auroc(
            [r["probability"] for r in nt], [r["negative_transfer_measured"] for r in nt]
        ),
    }


def f(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def print_tables(rows: list[dict], summary: dict) -> None:
    head = ["scenario", "best K (acc)", "recommended K (acc)", "ratio", "tune all", "linear probe"]
    head += ["scratch", "gap", "risk (p)"]
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "best_depth" not in r:
            print(f"| {r['name']} | {r['status']} |")
            continue
        print(
            f"| {r['name']}{' (held out)' if r.get('held_out') else ''}{' (late)' * r.get('late', False)} | "
            f"{r['best_depth']} "
            f"({f(r['best_accuracy'])}) | {r['recommended_depth']} "
            f"({f(r['recommended_accuracy'])}) | {f(r['ratio_recommended'])} | {f(r['ratio_tune_all'])} | "
            f"{f(r['ratio_linear_probe'])} | {f(r.get('scratch'))} | {f(r.get('measured_gap'))} | "
            f"{r.get('risk')} ({r.get('probability')}) |"
        )
    print()
    print("| rule | " + " | ".join(r["name"] for r in rows if "best_depth" in r) + " | mean |")
    print("|---|" + "---|" * (1 + sum("best_depth" in r for r in rows)))
    for name in ["diag", *ALT_RULES]:
        cells = []
        for r in rows:
            if "best_depth" not in r:
                continue
            k, q = (
                (r["recommended_depth"], r["ratio_recommended"])
                if name == "diag"
                else (r["alternative_rules"][name]["depth"], r["alternative_rules"][name]["ratio"])
            )
            cells.append(f"K{k} {f(q)}")
        m = (
            summary["mean_ratio_recommended"]
            if name == "diag"
            else summary["alternative_rules"][name]["mean_ratio"]
        )
        print(f"| {name} | " + " | ".join(cells) + f" | {f(m)} |")
    print()
    print(json.dumps(summary, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweeps", type=Path, default=ROOT / "runs" / "sweeps")
    ap.add_argument("--reports", type=Path, default=ROOT / "runs" / "bench_predict")
    ap.add_argument("--run-missing", action="store_true", help="fine-tune recommended depths not yet swept")
    ap.add_argument("--rule-only", action="store_true", help="with --run-missing: diag's depth only")
    ap.add_argument("--only", action="append", help="evaluate only this scenario (repeat for several)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict.json")
    ap.add_argument(
        "--summary-only",
        action="store_true",
        help="recompute the summary and leave-one-family-out figures from --out's rows (no model is run)",
    )
    ap.add_argument(
        "--backfill-nt",
        action="store_true",
        help="first bring each stored negative-transfer verdict up to diag's current rule: weight scale "
        "from the checkpoint, the twin's final-layer probe (benchmarks/backfill_nt.py; seconds a table)",
    )
    args = ap.parse_args()
    chosen = [sc for sc in SCENARIOS if not args.only or sc["name"] in args.only]
    if args.summary_only:
        chosen, args.only = [], ["none"]
    rows = [evaluate(sc, args.sweeps, args.run_missing, args.reports, args.rule_only) for sc in chosen]
    for sc in chosen:  # the truth tables next to the figures (sweep.json only; checkpoints stay in runs/)
        src = args.sweeps / sc["sweep"] / "sweep.json"
        if src.is_file():
            dst = COMMITTED_SWEEPS / f"{sc['name']}.json"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    if args.only and args.out.is_file():  # merge with the scenarios evaluated before
        before = json.loads(args.out.read_text())["scenarios"]
        old = {r["name"]: r for r in before if "alternative_rules" in r}
        old.update({r["name"]: r for r in rows if "alternative_rules" in r or r["name"] not in old})
        rows = [old[sc["name"]] for sc in SCENARIOS if sc["name"] in old]

    def scratch_of(sc: dict) -> float | None:  # only where the table's own sweep has no from-scratch runs
        own = COMMITTED_SWEEPS / f"{sc['name']}.json"
        has_own = own.is_file() and json.loads(own.read_text()).get("scratch_mean") is not None
        return None if has_own else borrowed_scratch(sc, args.sweeps)

    rows = refresh_borrowed_scratch(rows, scratch_of)
    if args.backfill_nt:
        import backfill_nt

        rows = backfill_nt.backfill(rows, SCENARIOS, args.reports)
    summary = summarize(rows)
    commits = {(r.get("diagnosed_at") or {}).get("commit") for r in rows if "alternative_rules" in r}
    summary["diagnosed_at"] = sorted(c or "unrecorded" for c in commits)  # one commit: a consistent base
    import predict_lofo

    summary["leave_one_family_out"] = predict_lofo.evaluate(rows)
    predict_lofo.write_calibration(rows, summary["leave_one_family_out"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"scenarios": rows, "summary": summary}, indent=1) + "\n")
    print_tables(rows, {k: v for k, v in summary.items() if k != "leave_one_family_out"})
    predict_lofo.print_tables(summary["leave_one_family_out"])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

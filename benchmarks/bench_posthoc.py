"""After fine-tuning: forgetting and CKA per freeze depth, and int8 deployment figures.

(a) compare: the runs of a freeze-depth sweep of EfficientNet-Lite0 on the UCI digits (32 px), each
    against the pretrained backbone on 300 held-out UCI digits (per-block linear CKA, relative weight
    change, pretrained-vs-fine-tuned shift), and forgetting on the source sample the diagnosis uses
    (``samples:mnist``, 300 MNIST digits): linear-probe and k-NN accuracy of the pretrained vs the
    fine-tuned pooled features, and the ImageNet head's top-1 agreement. Question: does more freezing
    mean less forgetting, measured?
(b) deploy-check, static int8 EfficientNet-Lite0 (x86 FBGEMM kernels, calibrated on 256 held-out UCI
    digits) of a sweep run, on held-out UCI digits; and dynamic int8 MiniLM (Linear layers) of a MiniLM
    run fine-tuned on ``samples:speeches``, on ``samples:debates`` (same two parties). Accuracy drop with a
    paired bootstrap CI, size ratio, CPU latency ratio (batch 1 and 32, medians of interleaved rounds).
    Anchors: Google reports EfficientNet-Lite0 int8 at -0.7 points ImageNet top-1 (75.1 -> 74.4); PyTorch's
    dynamic-quantization tutorial keeps BERT's MRPC F1 within about 0.5 point.

The runs come from (about 10 minutes on 2 CPU cores)::

    diag sweep -t samples:uci-digits -b efficientnet_lite0 --preset small --image-size 32 --epochs 4 \\
        --depths 0,3,5,7,9 --seeds 0 --no-scratch --save-best -o runs/posthoc/lite0-uci
    diag finetune -t samples:speeches -b minilm --preset small --freeze all --epochs 5 --lr 0.01 \\
        -o runs/posthoc/minilm-speeches

Usage::

    python benchmarks/bench_posthoc.py                 # both parts -> benchmarks/results/posthoc.json
    python benchmarks/bench_posthoc.py --part deploy   # only (b)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from diag.data import open_data
from diag.fileio import atomic_write_bytes
from diag.pipeline.posthoc import compare, deploy_check, open_runs
from diag.provenance import versions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "samples"))

import make_samples as S  # noqa: E402

ANCHORS = {
    "efficientnet_lite0_int8_top1_drop_points": 0.7,
    "bert_dynamic_int8_mrpc_f1_drop_points": 0.5,
}


def held_out_uci(out: Path) -> Path:
    """1000 UCI digits (100 per class) disjoint from ``samples:uci-digits`` (positions 0..29 per class)."""
    if not out.is_dir():
        uci, y = S.uci_source()
        S.write_digits(out, uci, y, S.choose(y, 100, 0, start=30))
    return out


def part_compare(
    sweep: Path, heldout: Path, max_items: int, permutations: int, depths: list[int] | None
) -> dict[str, Any]:
    t0 = time.perf_counter()
    runs = [r for r in open_runs([sweep]) if depths is None or int(r.name.split("-")[1]) in depths]
    rep = compare(runs, data=heldout, reference="samples:mnist", max_items=max_items,
                  n_permutations=permutations, shift=permutations > 0)  # fmt: skip
    out = []
    for r in sorted(rep.runs, key=lambda r: r.freeze):
        f = r.forgetting
        assert f is not None
        out.append(
            {
                "freeze": r.freeze,
                "target_val_accuracy": r.target_accuracy,
                "frozen_check_ok": r.frozen_check_ok,
                "mean_tuned_cka": r.mean_tuned_cka,
                "cka": {b.name: round(b.cka, 4) for b in r.blocks if b.cka is not None},
                "weight_change": {b.name: round(b.weight_change, 5) for b in r.blocks},
                "c2st_auc": {b.name: b.c2st_auc for b in r.blocks},
                "linear_probe": [f.linear_pretrained, f.linear_finetuned],
                "knn": [f.knn_pretrained, f.knn_finetuned],
                "forgetting_linear": f.forgetting_linear,
                "forgetting_knn": f.forgetting_knn,
                "source_top1_agreement": f.source_top1_agreement,
                "pooled_cka_on_source": f.pooled_cka,
            }
        )
    return {"sweep": str(sweep), "data": str(heldout), "reference": "samples:mnist", "max_items": max_items,
            "n_permutations": permutations, "runs": out,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def part_deploy(run: Path, data: Any, rounds: int, permutations: int, max_items: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    rep = deploy_check(run, data, max_items=max_items, latency_rounds=rounds, n_permutations=permutations)
    d = rep.to_dict()
    d["layers"] = {x.name: {"relative_error": round(x.relative_error, 4), "cka": round(x.cka, 4)}
                   for x in rep.layers}  # fmt: skip
    d["quantization"] = {k: v for k, v in d["quantization"].items() if k != "quantized"}
    d["seconds"] = round(time.perf_counter() - t0, 1)
    return d


def markdown(results: dict[str, Any]) -> str:
    """The tables of benchmarks/README.md from a results file."""
    lines = []
    c = results.get("compare")
    if c:
        lines += [
            "| K frozen | target val acc | mean CKA, tuned blocks | CKA at pooled "
            "| linear probe on MNIST pre → ft | k-NN pre → ft | ImageNet top-1 unchanged "
            "| frozen-block check |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in c["runs"]:
            cka = "–" if r["mean_tuned_cka"] is None else f"{r['mean_tuned_cka']:.3f}"
            lp, kn = r["linear_probe"], r["knn"]
            lines.append(
                f"| {r['freeze']} | {r['target_val_accuracy']:.3f} | {cka} | "
                f"{r['cka'].get('pooled', 1.0):.3f} | "
                f"{lp[0]:.3f} → {lp[1]:.3f} ({-r['forgetting_linear']:+.3f}) | {kn[0]:.3f} → {kn[1]:.3f} "
                f"({-r['forgetting_knn']:+.3f}) | {r['source_top1_agreement']:.1%} | "
                f"{'passed' if r['frozen_check_ok'] else 'FAILED'} |"
            )
        lines.append("")
    rows = [(k, results[k]) for k in ("deploy_lite0_static", "deploy_minilm_dynamic") if k in results]
    if rows:
        lines += [
            "| model | method | test items | fp32 acc | int8 acc | drop (points) [95% CI] | agree "
            "| size ratio | latency ratio b1 | latency ratio b32 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, d in rows:
            lo, hi = d["accuracy_drop_ci"]
            lines.append(
                f"| {d['backbone']} | {d['quantization']['method']} | {d['n_items']} | "
                f"{d['accuracy_fp32']:.3f} | {d['accuracy_int8']:.3f} | "
                f"{100 * d['accuracy_drop']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                f"{d['agreement']:.1%} | {d['size_ratio']:.3f} | {d['latency']['batch_1']['ratio']:.2f} | "
                f"{d['latency']['batch_32']['ratio']:.2f} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "compare", "deploy", "lite0", "minilm"), default="all")
    ap.add_argument("--depths", help="comma-separated freeze depths of the sweep to compare (default all)")
    ap.add_argument("--sweep", type=Path, default=ROOT / "runs/posthoc/lite0-uci")
    ap.add_argument("--lite0-run", default="freeze-0-seed-0", help="the sweep run to quantize")
    ap.add_argument("--minilm-run", type=Path, default=ROOT / "runs/posthoc/minilm-speeches")
    ap.add_argument("--max-items", type=int, default=300)
    ap.add_argument("--permutations", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--deploy-items", type=int, default=744, help="test items of each deploy check")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/posthoc.json")
    ap.add_argument("--markdown", action="store_true", help="print the README tables of --out and stop")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return 0
    heldout = held_out_uci(ROOT / "runs/posthoc/uci-heldout")
    results: dict[str, Any] = {}
    results.update(
        machine={
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": os.getloadavg(),
            "note": "a shared machine (2 cores, several jobs at once): latencies are noisy; ratios come "
                    "from interleaved rounds",
        },
        versions=versions(), anchors=ANCHORS,
    )  # fmt: skip

    def save() -> None:  # merged with what another part wrote meanwhile (parts may run at once)
        now = json.loads(args.out.read_text()) if args.out.exists() else {}
        atomic_write_bytes(args.out, (json.dumps({**now, **results}, indent=1) + "\n").encode())

    if args.part in ("all", "compare"):
        depths = [int(k) for k in args.depths.split(",")] if args.depths else None
        results["compare"] = part_compare(args.sweep, heldout, args.max_items, args.permutations, depths)
        save()
        for r in results["compare"]["runs"]:
            print(
                f"K={r['freeze']}: target val acc {r['target_val_accuracy']:.3f}, forgetting linear "
                f"{r['forgetting_linear']:+.3f} k-NN {r['forgetting_knn']:+.3f}, ImageNet top-1 agreement "
                f"{r['source_top1_agreement']:.3f}, mean tuned CKA {r['mean_tuned_cka']}"
            )
    if args.part in ("all", "deploy", "lite0"):
        lite = args.sweep / "runs" / args.lite0_run
        results["deploy_lite0_static"] = part_deploy(lite, heldout, args.rounds, args.permutations,
                                                     args.deploy_items)  # fmt: skip
        save()
    if args.part in ("all", "deploy", "minilm"):
        debates = open_data("samples:debates")
        results["deploy_minilm_dynamic"] = part_deploy(args.minilm_run, debates, args.rounds,
                                                       args.permutations, args.deploy_items)  # fmt: skip
        save()
    for key in ("deploy_lite0_static", "deploy_minilm_dynamic"):
        if key not in results:
            continue
        d = results[key]
        lo, hi = d["accuracy_drop_ci"]
        print(
            f"{key}: acc {d['accuracy_fp32']:.3f} -> {d['accuracy_int8']:.3f} "
            f"(drop {100 * d['accuracy_drop']:+.1f} pt, CI {100 * lo:+.1f}..{100 * hi:+.1f}), "
            f"size x{d['size_ratio']:.2f}, latency b1 "
            f"x{d['latency']['batch_1']['ratio']:.2f} b32 x{d['latency']['batch_32']['ratio']:.2f}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``diag compare`` and ``diag deploy-check`` (registered into :mod:`diag.cli.main`): after fine-tuning,
what changed inside the model, what it forgot, and whether it survives int8 deployment
(:mod:`diag.pipeline.posthoc`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from diag.errors import ConfigError
from diag.pipeline.posthoc import compare, deploy_check

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``compare`` and ``deploy-check`` subcommands."""
    p = sub.add_parser(
        "compare",
        help="per block, a fine-tuned run against its pretrained backbone: CKA, weight change, shift, "
        "forgetting",
        description=(
            "For each run (a diag finetune --out folder, or a diag sweep folder for all its runs): "
            "per block, linear CKA between the pretrained and the fine-tuned features on the same "
            "target items, the relative weight change, and the shift between the two feature sets "
            "(C2ST AUC, MMD); frozen blocks are checked to be bit-identical with CKA 1. With "
            "--reference (labelled source or held-out data): forgetting, the linear-probe and k-NN "
            "accuracy of pretrained vs fine-tuned features and the source head's top-1 agreement. "
            "Writes RUN/compare.json, .md and .html (and the sweep's)."
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or a sweep folder")
    p.add_argument("--data", help="target items to compare features on (default: the run's target)")
    p.add_argument("--reference", help="labelled data of the source task or a held-out set, for forgetting")
    p.add_argument("--max-items", type=int, default=500, help="at most this many items of each (default 500)")
    p.add_argument("--permutations", type=int, default=200, help="MMD permutations per layer (default 200)")
    p.add_argument("--no-shift", action="store_true", help="skip the per-layer shift tests (faster)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_cmd_compare)

    p = sub.add_parser(
        "deploy-check",
        help="int8 post-training quantization of a fine-tuned run on the CPU: accuracy, size, latency, drift",
        description=(
            "Quantize the fine-tuned model to int8 on the CPU (dynamic for transformer encoders, static "
            "calibrated on --calibration items of DATA for conv nets; torch.ao.quantization) and report the "
            "accuracy fp32 vs int8 on the rest of DATA with a paired bootstrap CI of the drop, the size and "
            "latency ratios (batch 1 and 32, medians of interleaved runs) and the per-layer fp32-vs-int8 "
            "drift. Writes RUN/deploy.json, .md and .html."
        ),
    )
    p.add_argument("run", metavar="RUN", help="a diag finetune --out folder (with best.pt or last.pt)")
    p.add_argument("--data", required=True, help="labelled target data (classes of the run)")
    p.add_argument("--method", choices=("auto", "dynamic", "static"), default="auto",
                   help="auto: static for conv nets, dynamic for transformers")  # fmt: skip
    p.add_argument(
        "--calibration", type=int, default=256, help="items that calibrate static int8 (default 256)"
    )
    p.add_argument("--max-items", type=int, default=1000, help="at most this many test items (default 1000)")
    p.add_argument("--permutations", type=int, default=200, help="MMD permutations per layer (default 200)")
    p.add_argument("--rounds", type=int, default=20, help="interleaved latency rounds (default 20)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_cmd_deploy)


def _positive(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        v = getattr(args, n)
        if v < 1:
            raise ConfigError(f"--{n.replace('_', '-')} must be a positive integer; got {v}.")


def _cmd_compare(args: argparse.Namespace) -> int:
    _positive(args, "max_items", "permutations")
    rep = compare(
        args.runs, data=args.data, reference=args.reference, max_items=args.max_items,
        n_permutations=args.permutations, shift=not args.no_shift, device=args.device,
    )  # fmt: skip
    print(json.dumps(rep.to_dict(), indent=1) if args.json else rep.to_markdown())
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    _positive(args, "calibration", "max_items", "permutations", "rounds")
    rep = deploy_check(
        args.run, args.data, method=args.method, n_calibration=args.calibration, max_items=args.max_items,
        n_permutations=args.permutations, latency_rounds=args.rounds,
    )  # fmt: skip
    print(json.dumps(rep.to_dict(), indent=1) if args.json else rep.to_markdown())
    return 0

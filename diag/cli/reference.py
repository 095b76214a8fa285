"""``diag reference build|merge|show`` and ``diag check`` (registered into :mod:`diag.cli.main`).

A reference is a per-layer summary of a data set (:mod:`diag.reference`); ``diag check`` compares new data
with one and, with ``--fail-on-shift``, exits 1 when it finds a shift - for cron jobs and CI.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from diag.cli.diagnose import print_report
from diag.cli.flags import add_config_flags, config_from_args
from diag.config import ensure_writable
from diag.engine.extract import ExtractConfig
from diag.errors import ConfigError
from diag.pipeline import build_reference, check
from diag.progress import ProgressCallback, TqdmProgress
from diag.reference import DEFAULT_CHUNK, ReferenceSettings, load_reference

__all__ = ["register"]

#: ``diag check --fail-on-shift`` exits with this status when the new data has shifted (errors exit 2).
SHIFT_EXIT = 1


def register(sub: Any) -> None:
    """Add ``reference`` (build, merge, show) and ``check`` to the parser's subparsers."""
    ref = sub.add_parser(
        "reference",
        help="build, merge or show a reference: a per-layer summary that stands in for a data set",
        description=(
            "A reference keeps, at every probe point of a backbone, mergeable statistics of a data set "
            "(float64 moments, a random-Fourier-feature mean embedding, per-class sums) and a seeded "
            "reservoir of items, so that new data can be checked against it without the data itself."
        ),
    )
    refsub = ref.add_subparsers(dest="reference_command", metavar="ACTION", required=True)

    p = refsub.add_parser("build", help="summarise DATA under a backbone into a reference folder (streaming)")
    p.add_argument("data", metavar="DATA", help="the data to summarise (see `diag embed -h`)")
    p.add_argument("--backbone", "-b", required=True, help="a bundled name, timm:MODEL or hf:ID_OR_FOLDER")
    p.add_argument("--out", "-o", required=True, type=Path, metavar="REF", help="reference folder to write")
    p.add_argument(
        "--image-size", type=int, metavar="PX", help="image models' input size (default: the model's)"
    )
    p.add_argument("--random-init", action="store_true", help="the random-init twin of the backbone")
    p.add_argument("--max-length", type=int, metavar="TOKENS", help="text models' maximum token count")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK,
        metavar="N",
        help=f"items per chunk (default {DEFAULT_CHUNK})",
    )
    p.add_argument(
        "--bandwidths-from",
        type=Path,
        metavar="REF",
        help="take the RFF kernel widths of another reference (for shards to be merged with it)",
    )
    _settings_flags(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_config_flags(p, ExtractConfig, "extraction")
    p.set_defaults(handler=_cmd_build)

    p = refsub.add_parser("merge", help="merge references of shards of one data set into one")
    p.add_argument("parts", nargs="+", type=Path, metavar="REF", help="reference folders (same backbone)")
    p.add_argument("--out", "-o", required=True, type=Path, metavar="REF", help="merged reference folder")
    p.set_defaults(handler=_cmd_merge)

    p = refsub.add_parser("show", help="print what a reference summarises")
    p.add_argument("reference", type=Path, metavar="REF")
    p.set_defaults(handler=_cmd_show)

    p = sub.add_parser(
        "check",
        help="check new data against a saved reference (exit 1 on shift with --fail-on-shift)",
        description=(
            "Embed NEWDATA with the reference's backbone and run the per-layer shift profile against the "
            "reference: permutation and classifier tests against its reservoir, OOD scores, onset and "
            "verdict, plus the RFF-MMD test and Fréchet distance against the summaries of every reference "
            "item. Writes a report folder with -o, and appends one line to --history."
        ),
    )
    p.add_argument("data", metavar="NEWDATA", help="the new data (see `diag embed -h`)")
    p.add_argument("--reference", "-r", required=True, type=Path, metavar="REF", help="reference folder")
    p.add_argument("--out", "-o", type=Path, metavar="DIR", help="report folder")
    p.add_argument("--history", type=Path, metavar="FILE", help="append one JSON line per check to FILE")
    p.add_argument("--fail-on-shift", action="store_true", help=f"exit {SHIFT_EXIT} when a shift is found")
    p.add_argument("--permutations", type=int, dest="n_permutations", metavar="B", help="MMD permutations")
    p.add_argument("--alpha", type=float, help="test level (default 0.05)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print report.json instead of the table")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no table")
    add_config_flags(p, ExtractConfig, "extraction")
    p.set_defaults(handler=_cmd_check)


def _settings_flags(p: argparse.ArgumentParser) -> None:
    d = ReferenceSettings()
    p.add_argument("--reservoir", type=int, default=d.reservoir, metavar="N",
                   help=f"items kept whole for sample-based tests (default {d.reservoir})")  # fmt: skip
    p.add_argument("--rff-features", type=int, default=d.n_features, metavar="D",
                   help=f"random Fourier features per layer (default {d.n_features})")  # fmt: skip
    p.add_argument(
        "--seed", type=int, default=d.seed, help=f"seed of the features and reservoir (default {d.seed})"
    )


def _progress(args: argparse.Namespace) -> ProgressCallback:
    return ProgressCallback() if args.quiet or getattr(args, "json", False) else TqdmProgress()


def _cmd_build(args: argparse.Namespace) -> int:
    ensure_writable(args.out, name="--out")
    settings = ReferenceSettings(n_features=args.rff_features, reservoir=args.reservoir, seed=args.seed)
    widths = load_reference(args.bandwidths_from).bandwidths if args.bandwidths_from else None
    ref = build_reference(
        args.data, args.backbone, config_from_args(ExtractConfig, args), out=args.out, settings=settings,
        bandwidths=widths, chunk_size=args.chunk_size, image_size=args.image_size, max_length=args.max_length,
        pretrained=not args.random_init, progress=_progress(args),
    )  # fmt: skip
    if not args.quiet:
        print(
            f"wrote {args.out}: {ref.n} items of {ref.name}, {len(ref.layers)} layers, "
            f"{len(ref.reservoir.ids)} kept whole"
        )
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    if len(args.parts) < 2:
        raise ConfigError("reference merge needs at least two reference folders.")
    ensure_writable(args.out, name="--out")
    merged = load_reference(args.parts[0])
    for part in args.parts[1:]:
        merged = merged.merge(load_reference(part))
    merged.save(args.out)
    print(f"wrote {args.out}: {merged.n} items from {len(args.parts)} references")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    ref = load_reference(args.reference)
    bb = ref.backbone
    size = bb.get("preprocessing", {}).get("input_size") or bb.get("preprocessing", {}).get("max_length")
    print(f"{ref.folder}: {ref.name}")
    print(f"  backbone {bb.get('name')} (weights {str(bb.get('weights_sha256'))[:12]}, input {size})")
    print(
        f"  {ref.n} items, {len(ref.reservoir.ids)} in the reservoir, "
        f"classes: {', '.join(ref.classes) or '-'}"
    )
    print(f"  {'layer':<12}{'dim':>6}{'bandwidth':>11}")
    for name, s in ref.layers.items():
        print(f"  {name:<12}{s.probe.dim:>6}{s.embedding.bandwidth:>11.3g}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    if args.out is not None:
        ensure_writable(args.out, name="--out")
    if args.history is not None:
        ensure_writable(args.history, name="--history", kind="file")
    report = check(
        args.data, args.reference, config_from_args(ExtractConfig, args), out=args.out, history=args.history,
        n_permutations=args.n_permutations, alpha=args.alpha, seed=args.seed, progress=_progress(args),
        strict=True,
    )  # fmt: skip
    if args.json:
        print(json.dumps(json.loads(report.to_json()), indent=1))
    elif not args.quiet:
        print_report(report, out=args.out)
    return SHIFT_EXIT if args.fail_on_shift and report.shift["is_shift"] else 0

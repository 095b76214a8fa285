"""``diag diagnose`` (the per-layer report) and ``diag rank`` (registered into :mod:`diag.cli.main`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diag.cli.flags import add_config_flags, config_from_args
from diag.config import DiagnoseConfig, RankConfig, ensure_writable
from diag.engine.extract import ExtractConfig
from diag.errors import ConfigError
from diag.pipeline import diagnose, diagnose_source_free, rank_backbones
from diag.predict.rank import write_ranking
from diag.progress import MultiProgress, ProgressCallback, StageLogProgress, TqdmProgress
from diag.report.render import report_text

if TYPE_CHECKING:
    from diag.report.schema import Report

__all__ = ["diagnose_config", "print_report", "rank_config", "register"]

# Flag names that differ from their config field's (kept from before the flags came from the configs).
_DIAGNOSE_FLAGS = {"n_permutations": "permutations", "use_cache": "cache"}
_RANK_FLAGS = {"n_bootstrap": "bootstrap", "include_random_init": "random-init", "use_cache": "cache"}
_METAVARS = {
    "n_permutations": "B", "n_bootstrap": "B", "image_size": "PX", "max_length": "TOKENS", "cache_dir": "DIR",
}  # fmt: skip


def register(sub: Any) -> None:
    """Add the ``diagnose`` subcommand to the parser's subparsers; its handler is ``args.handler``."""
    p = sub.add_parser(
        "diagnose",
        help="how far is the target from the source, layer by layer (writes DIR/report.json)",
        description=(
            "Embed SOURCE and TARGET with one backbone (cached), run the shift statistics at every probe "
            "point (MMD² permutation test, classifier two-sample test with AUC and CI, Fréchet, CORAL, "
            "per-sample OOD scores) and write DIR/report.json with the embeddings and scores beside it. "
            "Prints a table and the verdict."
        ),
    )
    p.add_argument(
        "--source",
        "-s",
        metavar="DATA",
        help="source data (see `diag embed -h`), or ref:FOLDER for a saved reference (`diag reference -h`)",
    )
    p.add_argument(
        "--source-free",
        action="store_true",
        help="no source: compare TARGET with the backbone's own BatchNorm statistics (its pretraining data)",
    )
    p.add_argument(
        "--target",
        "-t",
        metavar="DATA",
        help="target data; omit it with --split to compare two random halves of the source (null check)",
    )
    p.add_argument("--split", action="store_true", help="compare two disjoint halves of SOURCE (no target)")
    p.add_argument("--backbone", "-b", required=True, help="a bundled name, timm:MODEL or hf:ID_OR_FOLDER")
    p.add_argument("--out", "-o", required=True, type=Path, metavar="DIR", help="report folder")
    p.add_argument("--random-init", action="store_true", help="use the random-init twin of the backbone")
    p.add_argument("--json", action="store_true", help="print report.json instead of the table")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no table")
    p.add_argument(
        "--progress-log",
        type=Path,
        metavar="FILE",
        help="JSON lines of each stage's progress (counts, ETA, status); default DIR/progress.jsonl",
    )
    add_config_flags(
        p,
        DiagnoseConfig,
        "diagnosis",
        skip=("extract", "pretrained"),
        names=_DIAGNOSE_FLAGS,
        metavars=_METAVARS,
    )
    add_config_flags(p, ExtractConfig, "extraction")
    p.set_defaults(handler=_cmd_diagnose)

    p = sub.add_parser(
        "rank",
        help="rank backbones by transferability to a labelled target (writes DIR/rank.json)",
        description=(
            "Embed the labelled TARGET with each backbone and its random-init twin, score them (LogME, LEEP, "
            "NCE, H-score, GBC, TransRate, SFDA, k-NN and linear-probe accuracy) and rank them, with the "
            "bootstrap stability of the top pick and the parameter-count baseline beside it."
        ),
    )
    p.add_argument("--target", "-t", required=True, metavar="DATA", help="labelled target data")
    p.add_argument(
        "--backbones",
        "-b",
        required=True,
        help="comma-separated names, e.g. efficientnet_lite0,efficientnet_lite1",
    )
    p.add_argument("--out", "-o", type=Path, metavar="DIR", help="folder for rank.json")
    p.add_argument("--json", action="store_true", help="print rank.json instead of the table")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no table")
    add_config_flags(p, RankConfig, "ranking", skip=("extract",), names=_RANK_FLAGS, metavars=_METAVARS)
    add_config_flags(p, ExtractConfig, "extraction")
    p.set_defaults(handler=_cmd_rank)


def diagnose_config(args: argparse.Namespace) -> DiagnoseConfig:
    """The :class:`~diag.config.DiagnoseConfig` of a ``diag diagnose`` command line."""
    fixed = {"extract": config_from_args(ExtractConfig, args), "pretrained": not args.random_init}
    return config_from_args(DiagnoseConfig, args, fixed)


def rank_config(args: argparse.Namespace) -> RankConfig:
    """The :class:`~diag.config.RankConfig` of a ``diag rank`` command line."""
    return config_from_args(RankConfig, args, {"extract": config_from_args(ExtractConfig, args)})


def _cmd_rank(args: argparse.Namespace) -> int:
    config = rank_config(args)
    if args.out:
        ensure_writable(args.out, name="--out")
    progress = ProgressCallback() if args.quiet or args.json else TqdmProgress()
    ranking = rank_backbones(args.target, args.backbones.split(","), config, progress=progress)
    path = write_ranking(ranking, args.out) if args.out else None
    if args.json:
        print(json.dumps(ranking.to_dict(), indent=1, default=str))
        return 0
    if args.quiet:
        return 0
    print(
        f"{'rank':<5}{'backbone':<34}{'params':>9}{config.by:>24}{'top share':>11}  best layer (linear probe)"
    )
    for r in ranking.rows:
        share = "" if r["top_frequency"] is None else f"{r['top_frequency']:.2f}"
        lp = r["best_layer_linear_probe"]
        print(
            f"{r['rank']:<5}{r['backbone']:<34}{r['num_params'] / 1e6:>8.1f}M{r['score']:>24.4f}{share:>11}  "
            f"{r['best_layer']} ({lp:.3f})"
        )
    if ranking.n_bootstrap:
        print(
            f"top pick {ranking.top} stays on top in {ranking.stability:.0%} of {ranking.n_bootstrap} "
            "bootstrap resamples of the target."
        )
    print(f"static baseline (parameter count): {' > '.join(ranking.rank_by_params)}")
    if path:
        print(f"wrote {path}")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    if args.source_free:
        return _cmd_source_free(args)
    if args.source is None:
        raise ConfigError("--source is required (a data set or ref:FOLDER), or pass --source-free.")
    if args.target is None and not args.split:
        raise ConfigError("--target is required (or pass --split to compare two halves of --source).")
    if args.target is not None and args.split:
        raise ConfigError("--split compares two halves of --source: drop --target, or drop --split.")
    config = diagnose_config(args)
    ensure_writable(args.out, name="--out")
    bar = ProgressCallback() if args.quiet or args.json else TqdmProgress()
    progress = MultiProgress(bar, StageLogProgress(args.progress_log or args.out / "progress.jsonl"))
    report = diagnose(
        args.source, args.target, args.backbone, config, out=args.out, progress=progress, strict=True
    )
    if args.json:
        print(json.dumps(json.loads(report.to_json()), indent=1))
    elif not args.quiet:
        print_report(report, out=args.out)
    return 0


def _cmd_source_free(args: argparse.Namespace) -> int:
    if args.source is not None or args.split:
        raise ConfigError(
            "--source-free compares TARGET with the backbone itself: drop --source and --split."
        )
    if args.target is None:
        raise ConfigError("--source-free needs --target DATA.")
    config = diagnose_config(args)
    ensure_writable(args.out, name="--out")
    report = diagnose_source_free(
        args.target, args.backbone, config.extract, out=args.out, alpha=config.alpha, seed=config.seed,
        image_size=config.image_size, pretrained=not args.random_init, data_options=config.data_options,
        progress=ProgressCallback() if args.quiet or args.json else TqdmProgress(),
    )  # fmt: skip
    if args.json:
        print(json.dumps(json.loads(report.to_json()), indent=1))
    elif not args.quiet:
        print_report(report, out=args.out)
    return 0


def print_report(report: Report, *, out: Path | None = None) -> None:
    """The human summary (:func:`diag.report.render.report_text`): one row per layer, then the verdict."""
    for line in report_text(report, out=out):
        print(line)

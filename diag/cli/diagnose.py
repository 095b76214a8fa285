"""``diag diagnose`` (the per-layer report) and ``diag rank`` (registered into :mod:`diag.cli.main`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["print_report", "register"]


def register(sub: Any) -> None:
    """Add the ``diagnose`` subcommand to the parser's subparsers; its handler is ``args.handler``."""
    from diag.cli.main import _add_dataclass_flags
    from diag.engine.extract import ExtractConfig

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
    p.add_argument("--source", "-s", required=True, metavar="DATA", help="source data (see `diag embed -h`)")
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
    p.add_argument("--image-size", type=int, metavar="PX", help="input resolution for image backbones")
    p.add_argument("--max-length", type=int, metavar="TOKENS", help="maximum tokens per text")
    p.add_argument(
        "--permutations",
        type=int,
        default=2000,
        metavar="B",
        help="MMD permutations per layer (default: 2000)",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="test level (default: 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of permutations, folds and splits (default: 0)")
    p.add_argument("--text-column", default="text", help="text column of a table (default: text)")
    p.add_argument("--label-column", default="label", help="label column of a table (default: label)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    p.add_argument("--cache-dir", type=Path, metavar="DIR", help="embedding cache folder")
    p.add_argument(
        "--no-transfer",
        action="store_true",
        help="skip transferability, negative transfer and freeze depth (the shift report only)",
    )
    p.add_argument(
        "--no-rgn",
        action="store_true",
        help="skip the relative gradient norms per block (a few backward passes over the target; "
        "evidence for the freeze depth)",
    )
    p.add_argument("--json", action="store_true", help="print report.json instead of the table")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no table")
    _add_dataclass_flags(p, ExtractConfig, "extraction")
    p.set_defaults(handler=_cmd_diagnose)

    p = sub.add_parser(
        "rank",
        help="rank backbones by transferability to a labelled target (writes DIR/rank.json)",
        description=(
            "Embed the labelled TARGET with each backbone and its random-init twin, score them (LogME, LEEP, "
            "NCE, H-score, GBC, TransRate, k-NN and linear-probe accuracy) and rank them, with the bootstrap "
            "stability of the top pick and the parameter-count baseline beside it."
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
    p.add_argument(
        "--by",
        default="logme",
        choices=("logme", "h_score_shrinkage", "linear_probe_accuracy", "knn_accuracy"),
        help="the score to rank by (default: logme)",
    )
    p.add_argument(
        "--bootstrap", type=int, default=200, metavar="B", help="bootstrap resamples (default: 200)"
    )
    p.add_argument("--no-random-init", action="store_true", help="leave out the random-init twins")
    p.add_argument("--image-size", type=int, metavar="PX", help="input resolution for image backbones")
    p.add_argument("--max-length", type=int, metavar="TOKENS", help="maximum tokens per text")
    p.add_argument("--seed", type=int, default=0, help="seed of folds, twins and resamples (default: 0)")
    p.add_argument("--json", action="store_true", help="print rank.json instead of the table")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no table")
    _add_dataclass_flags(p, ExtractConfig, "extraction")
    p.set_defaults(handler=_cmd_rank)


def _cmd_rank(args: argparse.Namespace) -> int:
    from diag.cli.main import _config_from_args
    from diag.engine.extract import ExtractConfig
    from diag.predict.rank import rank_backbones, write_ranking
    from diag.progress import ProgressCallback, TqdmProgress

    ranking = rank_backbones(
        args.target,
        args.backbones.split(","),
        include_random_init=not args.no_random_init,
        by=args.by,
        n_bootstrap=args.bootstrap,
        image_size=args.image_size,
        max_length=args.max_length,
        seed=args.seed,
        config=_config_from_args(ExtractConfig, args),
        progress=ProgressCallback() if args.quiet or args.json else TqdmProgress(),
    )
    path = write_ranking(ranking, args.out) if args.out else None
    if args.json:
        print(json.dumps(ranking.to_dict(), indent=1, default=str))
        return 0
    if args.quiet:
        return 0
    print(
        f"{'rank':<5}{'backbone':<34}{'params':>9}{args.by:>24}{'top share':>11}  best layer (linear probe)"
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
    from diag.cli.main import _config_from_args
    from diag.engine.extract import ExtractConfig
    from diag.errors import ConfigError
    from diag.pipeline import diagnose
    from diag.progress import ProgressCallback, TqdmProgress

    if args.target is None and not args.split:
        raise ConfigError("--target is required (or pass --split to compare two halves of --source).")
    if args.target is not None and args.split:
        raise ConfigError("--split compares two halves of --source: drop --target, or drop --split.")
    config = _config_from_args(ExtractConfig, args)
    progress = ProgressCallback() if args.quiet or args.json else TqdmProgress()
    report = diagnose(
        args.source,
        args.target,
        args.backbone,
        config,
        out=args.out,
        pretrained=not args.random_init,
        image_size=args.image_size,
        max_length=args.max_length,
        n_permutations=args.permutations,
        alpha=args.alpha,
        seed=args.seed,
        use_cache=not args.no_cache,
        cache_dir=args.cache_dir,
        data_options={"text_column": args.text_column, "label_column": args.label_column},
        transfer=not args.no_transfer,
        rgn=not args.no_rgn,
        progress=progress,
    )
    if args.json:
        print(json.dumps(json.loads(report.to_json()), indent=1))
    elif not args.quiet:
        print_report(report, out=args.out)
    return 0


def print_report(report: Any, *, out: Path | None = None) -> None:
    """The human summary: one row per layer, then the verdict sentence."""
    s, t = report.source, report.target
    bb = report.backbone
    kind = "pretrained" if bb.get("pretrained", True) else "random-init"
    print(
        f"{s.get('name', 'source')} ({report.n_source}) vs {t.get('name', 'target')} ({report.n_target}) "
        f"| {bb.get('name')} ({kind})"
    )
    head = f"{'layer':<12}{'dim':>6}{'MMD²':>9}{'p':>9}{'p(Holm)':>9}  {'C2ST AUC [95% CI]':<20}"
    head += f"{'Fréchet(rel)':>13}{'CORAL':>10}{'OOD med':>9}"
    print(head)
    onset = report.shift.get("onset_layer")
    for lay in report.layers:
        x = lay["shift"]
        lo, hi = x["c2st_auc_ci"]
        mark = "  <- onset" if lay["name"] == onset else ""
        print(
            f"{lay['name']:<12}{lay['dim']:>6}{x['mmd2']:>9.4f}{x['p_value']:>9.4f}{x['p_adjusted']:>9.4f}  "
            f"{x['c2st_auc']:.3f} [{lo:.2f}, {hi:.2f}]{'':<3}"
            f"{x['frechet_relative']:>11.3f}{x['coral']:>10.2e}"
            + (f"{x['ood_median']:>9.2f}" if x.get("ood_median") is not None else f"{'n/a':>9}")
            + mark
        )
    if report.label_shift:
        ls = report.label_shift
        print(f"label shift: total variation {ls['total_variation']:.3f}, chi-square p = {ls['p_value']:.3g}")
    print(report.shift["summary"])
    _print_predictions(report.sections)
    timings = report.meta.get("timings", {})
    cached = [w for w in ("source", "target") if timings.get(f"{w}_from_cache")]
    note = f"; embeddings from cache: {', '.join(cached)}" if cached else ""
    if out is not None:
        print(f"wrote {Path(out) / 'report.json'} in {timings.get('total_s', 0):.1f} s{note}")


def _print_predictions(sections: dict[str, Any]) -> None:
    tr = sections.get("transferability")
    if not tr:
        return
    if "skipped" in tr:
        print(f"transfer predictions skipped: {tr['skipped']}")
        return
    sc, rs = tr["scores"], tr["random_init_scores"]
    keys = [k for k in ("logme", "leep", "nce", "knn_accuracy", "linear_probe_accuracy") if k in sc]
    print(f"transferability at {tr['layer']} (pretrained vs random-init): ", end="")
    print(", ".join(f"{k} {sc[k]:.3f} vs {rs.get(k, float('nan')):.3f}" for k in keys))
    nt = sections.get("negative_transfer")
    if nt:
        print(f"negative transfer: risk {nt['risk']} (p = {nt['probability']:.2f}); {nt['evidence'][0]}")
    fr = sections.get("freeze")
    if fr:
        tune = ", ".join(fr["tune"]) or "head only"
        why = fr["rationale"][1] if len(fr["rationale"]) > 1 else ""
        print(f"freeze: K = {fr['depth']} of {fr['n_blocks']} blocks (tune {tune}; {fr['lr_scheme']}). {why}")

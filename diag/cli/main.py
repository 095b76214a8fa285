"""The ``diag`` command line.

Every error diag raises on purpose (:class:`diag.errors.DiagError`) is printed as one clear line and
exits with status 2; no traceback unless ``DIAG_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diag.errors import DiagError

__all__ = ["build_parser", "main"]

log = logging.getLogger("diag")


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: Any, title: str) -> None:
    """One flag per config field, with the field's help text: the dataclass is the single source."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "")
        typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if "bool" in typ:
            group.add_argument(
                flag, dest=f.name, default=f.default, action=argparse.BooleanOptionalAction, help=helptext
            )
        elif "int" in typ:
            group.add_argument(flag, dest=f.name, default=f.default, type=int, metavar="N", help=helptext)
        else:
            group.add_argument(flag, dest=f.name, default=f.default, metavar="X", help=helptext)


def _config_from_args(cls: Any, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def build_parser() -> argparse.ArgumentParser:
    from diag import __version__
    from diag.engine.extract import ExtractConfig

    parser = argparse.ArgumentParser(
        prog="diag",
        description=(
            "Domain-adaptation diagnostics: how far your target data is from the source, layer by layer "
            "inside a pretrained backbone."
        ),
        epilog="Set HF_HUB_OFFLINE=1 to never touch the network. DIAG_CACHE_DIR sets the embedding cache.",
    )
    parser.add_argument("--version", action="version", version=f"diag {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "embed",
        help="embed a data set at every probe point of a backbone",
        description=(
            "Embed DATA at every probe point of a backbone (one forward pass) and write DIR/manifest.json "
            "and DIR/embeddings.safetensors. A second run on the same inputs reads the cache."
        ),
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help="an image folder (one subfolder per class, or flat = unlabelled), a .csv/.jsonl/.parquet file "
        "with a text column, an .npz of arrays, or samples:NAME (see `diag samples`)",
    )
    p.add_argument("--backbone", "-b", required=True, help="a bundled name, timm:MODEL or hf:ID_OR_FOLDER")
    p.add_argument("--out", "-o", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument(
        "--random-init", action="store_true", help="use the random-init twin of the backbone (no transfer)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random init (default: 0)")
    p.add_argument("--image-size", type=int, metavar="PX", help="input resolution for image backbones")
    p.add_argument("--max-length", type=int, metavar="TOKENS", help="maximum tokens per text")
    p.add_argument("--text-column", default="text", help="text column of a table (default: text)")
    p.add_argument("--label-column", default="label", help="label column of a table (default: label)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    p.add_argument("--cache-dir", type=Path, metavar="DIR", help="embedding cache folder")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary table")
    _add_dataclass_flags(p, ExtractConfig, "extraction")

    p = sub.add_parser(
        "backbones",
        help="list the bundled and example backbones and their probe points",
        description="List the backbones diag knows by name, and the probe points of each.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser(
        "samples", help="list the bundled sample data sets", description="List samples:NAME data."
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    # Commands that live in their own modules register themselves (and their handler) here.
    from diag.cli import dashboard as cli_dashboard
    from diag.cli import diagnose as cli_diagnose
    from diag.cli import train as cli_train

    cli_diagnose.register(sub)
    cli_train.register(sub)
    cli_dashboard.register(sub)
    return parser


# ------------------------------------------------------------------------------------------------------


def _cmd_embed(args: argparse.Namespace) -> int:
    from diag.data import open_data
    from diag.engine.extract import ExtractConfig
    from diag.models import load
    from diag.pipeline import embed
    from diag.progress import ProgressCallback, TqdmProgress

    config = _config_from_args(ExtractConfig, args)
    t0 = time.perf_counter()
    data = open_data(args.data, text_column=args.text_column, label_column=args.label_column)
    backbone = load(
        args.backbone,
        pretrained=not args.random_init,
        seed=args.seed,
        image_size=args.image_size,
        max_length=args.max_length,
    )
    progress = ProgressCallback() if args.quiet else TqdmProgress(unit=data.modality)
    emb = embed(
        data, backbone, config, use_cache=not args.no_cache, cache_dir=args.cache_dir, progress=progress
    )
    total = time.perf_counter() - t0
    emb = emb.with_manifest(timings={**emb.manifest.get("timings", {}), "total_s": round(total, 3)})
    emb.save(args.out)
    if not args.quiet:
        _print_embed_summary(emb, args.out)
    return 0


def _print_embed_summary(emb: Any, out: Path) -> None:
    m = emb.manifest
    data = m["data"]
    src = "cache hit (no forward pass)" if emb.from_cache else f"{m['timings']['items_per_s']:.1f} items/s"
    print(f"{data['name']}: {len(emb)} items", end="")
    if emb.classes:
        print(f", {len(emb.classes)} classes", end="")
    if emb.skipped:
        print(f", {len(emb.skipped)} unreadable skipped", end="")
    print(f" | {m['backbone']['name']} ({'pretrained' if m['backbone']['pretrained'] else 'random-init'})")
    print(f"{'probe':<14}{'dim':>6}  pooling")
    for p in emb.probes:
        print(f"{p.name:<14}{p.dim:>6}  {p.pooling}")
    if emb.logits is not None:
        print(f"{'logits':<14}{emb.logits.shape[1]:>6}  source head")
    print(f"{src}; device {m['device']['type']}, {m['precision']}; key {emb.cache_key[:12]}")
    print(f"wrote {out / 'manifest.json'}")


def _cmd_backbones(args: argparse.Namespace) -> int:
    from diag.errors import DiagError
    from diag.models import BUNDLED, EXAMPLES, load

    rows: list[dict[str, Any]] = []
    for name, b in BUNDLED.items():
        row: dict[str, Any] = {
            "name": name,
            "bundled": True,
            "description": b.description,
            "licence": b.licence,
        }
        try:
            bb = load(name, pretrained=False)  # structure only: fast, and no weights file needed
            row["modality"] = bb.modality
            row["probes"] = [{"name": p.name, "dim": p.dim} for p in bb.probes]
            row["source_head"] = 1000 if b.kind == "efficientnet_lite" else None
        except DiagError as exc:
            row["error"] = str(exc)
        rows.append(row)
    for name in EXAMPLES:
        rows.append({"name": name, "bundled": False, "description": "needs a network once (hub weights)"})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("Bundled (offline):")
    for r in rows:
        if not r["bundled"]:
            continue
        print(f"  {r['name']:<20} {r['description']}")
        if "error" in r:
            print(f"    unavailable: {r['error']}")
            continue
        probes = ", ".join(f"{p['name']}({p['dim']})" for p in r["probes"])
        print(f"    probes: {probes}" + (f"; logits({r['source_head']})" if r.get("source_head") else ""))
    print("Examples (any timm:MODEL or hf:ID_OR_FOLDER works; hub weights need a network once):")
    for r in rows:
        if not r["bundled"]:
            print(f"  {r['name']}")
    print("Add --random-init to `diag embed` for the random-init twin of any of them.")
    return 0


def _cmd_samples(args: argparse.Namespace) -> int:
    from diag.data.samples import list_samples

    infos = list_samples()
    if args.json:
        print(json.dumps([dataclasses.asdict(s) for s in infos], indent=1))
        return 0
    for s in infos:
        print(f"samples:{s.name:<16} {s.modality:<6} {s.description}")
    return 0


_COMMANDS = {"embed": _cmd_embed, "backbones": _cmd_backbones, "samples": _cmd_samples}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        _quiet_third_party()
    try:
        handler = getattr(args, "handler", None) or _COMMANDS[args.command]
        return int(handler(args))
    except DiagError as exc:
        if os.environ.get("DIAG_DEBUG"):
            raise
        print(f"diag {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diag {args.command}: interrupted", file=sys.stderr)
        return 130


def _quiet_third_party() -> None:
    """transformers prints weight-loading bars and notices by default; the CLI shows its own progress."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())

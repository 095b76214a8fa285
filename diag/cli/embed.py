"""``diag embed``: embed a data set at every probe point of a backbone (registered by diag.cli.main)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from diag.cli.flags import add_config_flags, config_from_args
from diag.config import ensure_writable
from diag.data import open_data
from diag.engine.extract import ExtractConfig
from diag.models import load
from diag.pipeline import embed
from diag.progress import ProgressCallback, TqdmProgress

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``embed`` subcommand; its handler is ``args.handler``."""
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
    add_config_flags(p, ExtractConfig, "extraction")
    p.set_defaults(handler=_cmd_embed)


def _cmd_embed(args: argparse.Namespace) -> int:
    ensure_writable(args.out, name="--out")  # before the forward pass, not after it
    config = config_from_args(ExtractConfig, args)
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

"""``diag backbones`` and ``diag samples``: what diag knows by name (registered by :mod:`diag.cli.main`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from diag.data.samples import list_samples
from diag.errors import DiagError
from diag.models import BUNDLED, EXAMPLES, load

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``backbones`` and ``samples`` subcommands; each sets ``handler`` via ``set_defaults``."""
    p = sub.add_parser(
        "backbones",
        help="list the bundled and example backbones and their probe points",
        description="List the backbones diag knows by name, and the probe points of each.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_cmd_backbones)

    p = sub.add_parser(
        "samples", help="list the bundled sample data sets", description="List samples:NAME data."
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_cmd_samples)


def _cmd_backbones(args: argparse.Namespace) -> int:

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

    infos = list_samples()
    if args.json:
        print(json.dumps([dataclasses.asdict(s) for s in infos], indent=1))
        return 0
    for s in infos:
        print(f"samples:{s.name:<16} {s.modality:<6} {s.description}")
    return 0

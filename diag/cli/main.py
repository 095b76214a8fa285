"""The ``diag`` command line: builds the parser from the command modules and dispatches.

Each command group lives in its own module, which adds its subcommands and their handlers
(``register``): :mod:`~diag.cli.embed`, :mod:`~diag.cli.catalog` (``backbones``, ``samples``),
:mod:`~diag.cli.diagnose` (``diagnose``, ``rank``), :mod:`~diag.cli.reference` (``reference``, ``check``),
:mod:`~diag.cli.train` (``finetune``, ``sweep``),
:mod:`~diag.cli.posthoc` (``compare``, ``deploy-check``),
:mod:`~diag.cli.dashboard`. Config flags come from the config dataclasses (:mod:`~diag.cli.flags`).

Every error diag raises on purpose (:class:`diag.errors.DiagError`) is printed as one clear line and
exits with status 2; no traceback unless ``DIAG_DEBUG=1``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from diag import __version__
from diag.cli import catalog, dashboard, diagnose, embed, posthoc, reference, train
from diag.cli.flags import DiagParser, with_flag_names
from diag.errors import DiagError

__all__ = ["build_parser", "main"]

log = logging.getLogger("diag")

#: The command modules, in the order ``diag -h`` lists their commands.
_GROUPS = (embed, catalog, diagnose, reference, train, posthoc, dashboard)


def build_parser() -> DiagParser:
    """The ``diag`` parser with every command group's subcommands."""
    parser = DiagParser(
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

    for group in _GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        _quiet_third_party()
    try:
        return int(args.handler(args))
    except DiagError as exc:
        if os.environ.get("DIAG_DEBUG"):
            raise
        # Errors name Python parameters (image_size); on the command line the user typed --image-size.
        message = with_flag_names(str(exc), parser.flag_names(args))
        print(f"diag {args.command}: error: {message}", file=sys.stderr)
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

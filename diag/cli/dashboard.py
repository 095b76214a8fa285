"""``diag dashboard``: serve the Streamlit dashboard (registered into :mod:`diag.cli.main`).

The app lives in the repository's ``dashboard/`` folder (beside the ``diag`` package in a source
checkout or an editable install). The command runs ``python -m streamlit run dashboard/app.py``
headless on 127.0.0.1 and hands it the report folder to open through the ``DIAG_REPORT`` environment
variable (and the folder for new runs through ``DIAG_RUNS_DIR``).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import diag
from diag.errors import DiagError, param_error, require
from diag.report.schema import load_report

__all__ = ["dashboard_app", "register", "streamlit_command"]

log = logging.getLogger(__name__)

#: Environment variables the dashboard reads at start.
REPORT_ENV = "DIAG_REPORT"
RUNS_ENV = "DIAG_RUNS_DIR"
APP_ENV = "DIAG_DASHBOARD_APP"


def register(sub: Any) -> None:
    """Add the ``dashboard`` subcommand; it sets ``handler`` via ``set_defaults``."""
    p = sub.add_parser(
        "dashboard",
        help="explore a report in the browser (Streamlit): shift charts, embeddings, transfer, fine-tuning",
        description=(
            "Serve the diag dashboard on http://HOST:PORT. Open a report folder written by `diag diagnose` "
            "(DIR), or start empty and run a diagnosis from the Run page. The server runs until Ctrl-C."
        ),
    )
    p.add_argument("report", nargs="?", type=Path, metavar="DIR", help="a report folder to open (optional)")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default: 8501)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it to the network)",
    )
    p.add_argument(
        "--runs", type=Path, metavar="DIR", help="where the Run page writes new reports (default: ./runs)"
    )
    p.add_argument(
        "--print-command",
        action="store_true",
        help="print the streamlit command line and exit, serving nothing",
    )
    p.set_defaults(handler=_cmd_dashboard)


def dashboard_app() -> Path:
    """The dashboard's entry script, ``dashboard/app.py`` beside the ``diag`` package.

    ``$DIAG_DASHBOARD_APP`` overrides the location.

    Raises
    ------
    DiagError
        When the app is not there (a wheel install ships the library only).
    """
    override = os.environ.get(APP_ENV)
    app = Path(override) if override else Path(diag.__file__).resolve().parent.parent / "dashboard" / "app.py"
    if not app.is_file():
        raise DiagError(
            f"{app}: the dashboard app is not there. It ships in diag's source repository "
            "(dashboard/app.py): "
            "install diag from a clone with `pip install -e '.[dashboard]'`, or point "
            f"{APP_ENV} at dashboard/app.py."
        )
    return app


def streamlit_command(
    app: str | Path, *, port: int = 8501, host: str = "127.0.0.1", python: str | None = None
) -> list[str]:
    """``python -m streamlit run APP`` headless, without usage statistics or file watching."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise param_error("port", "must be an integer in 1..65535", port)
    return [
        python or sys.executable, "-m", "streamlit", "run", str(app),
        "--server.port", str(port),
        "--server.address", host,
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
    ]  # fmt: skip


def _cmd_dashboard(args: argparse.Namespace) -> int:
    require("streamlit", feature="The dashboard", extra="dashboard")
    app = dashboard_app()
    env = dict(os.environ)
    if args.report is not None:
        report = load_report(args.report)  # a clear error now rather than in the browser
        assert report.folder is not None
        env[REPORT_ENV] = str(report.folder.resolve())
    if args.runs is not None:
        env[RUNS_ENV] = str(args.runs.resolve())
    cmd = streamlit_command(app, port=args.port, host=args.host)
    if args.print_command:
        extra = [f"{k}={env[k]}" for k in (REPORT_ENV, RUNS_ENV) if k in env and k not in os.environ]
        print(" ".join([*extra, *cmd]))
        return 0
    where = f" with {env[REPORT_ENV]}" if REPORT_ENV in env else ""
    print(f"diag dashboard: serving http://{args.host}:{args.port}{where} (Ctrl-C stops)", file=sys.stderr)
    return _run(cmd, env)


def _run(cmd: Sequence[str], env: dict[str, str]) -> int:
    proc = subprocess.Popen(list(cmd), env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # The terminal's Ctrl-C reached streamlit too; give it a moment to shut down cleanly.
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
        raise

"""``diag dashboard``: serve the Streamlit dashboard (registered into :mod:`diag.cli.main`).

The app lives in the repository's ``dashboard/`` folder (beside the ``diag`` package in a source
checkout or an editable install). The command runs ``python -m streamlit run dashboard/app.py``
headless on 127.0.0.1 and hands it the report folder to open through the ``DIAG_REPORT`` environment
variable (and the folder for new runs through ``DIAG_RUNS_DIR``).

The server is exec'd in place of this process (on POSIX): SIGTERM from ``docker stop``, systemd or a
supervisor reaches Streamlit itself, which shuts down and frees the port, instead of ending a parent and
leaving the server behind as an orphan. Streamlit's ``server.allowedHosts`` checks the Host header of
every browser connection (against DNS rebinding: a hostile page whose name resolves to this machine): only
the loopback names, the ``--host`` address and the ``--allowed-host`` names are accepted.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import diag
from diag.errors import DiagError, param_error, require
from diag.report.schema import load_report

__all__ = ["allowed_hosts", "dashboard_app", "is_loopback", "register", "streamlit_command"]

log = logging.getLogger(__name__)

#: Environment variables the dashboard reads at start.
REPORT_ENV = "DIAG_REPORT"
RUNS_ENV = "DIAG_RUNS_DIR"
APP_ENV = "DIAG_DASHBOARD_APP"

#: Host names (as in a Host header, without the port) that always reach this machine's loopback.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


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
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the browser may use to reach the dashboard (repeatable; '*' accepts any). The "
        "Host header of every connection is checked against the loopback names, --host and these, against "
        "DNS rebinding",
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


def is_loopback(host: str) -> bool:
    """Whether the bind address ``host`` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host header names the server accepts: loopback names, ``host`` itself and ``extra``.

    Bound to a non-loopback address, the machine's own names are added (its host name and fully qualified
    name), since that is how other machines usually reach it; a wildcard bind address (``0.0.0.0``,
    ``::``) is not a name and is left out.
    """
    names = list(LOOPBACK_NAMES)
    bind = host.strip().strip("[]").lower()
    wildcard = bind in ("", "0.0.0.0", "::")
    if not wildcard:
        names.append(bind)
    if not is_loopback(host):
        for own in (socket.gethostname(), socket.getfqdn()):
            if own:
                names.append(own.lower())
    names += [str(e).strip().lower() for e in extra if str(e).strip()]
    return list(dict.fromkeys(names))


def streamlit_command(
    app: str | Path,
    *,
    port: int = 8501,
    host: str = "127.0.0.1",
    hosts: Sequence[str] | None = None,
    python: str | None = None,
) -> list[str]:
    """``python -m streamlit run APP`` headless, without usage statistics or file watching.

    ``hosts`` are the Host header names accepted (default: :func:`allowed_hosts` of ``host``).
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise param_error("--port", "must be an integer in 1..65535", port)
    cmd = [
        python or sys.executable, "-m", "streamlit", "run", str(app),
        "--server.port", str(port),
        "--server.address", host,
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
    ]  # fmt: skip
    for name in allowed_hosts(host) if hosts is None else hosts:
        cmd += ["--server.allowedHosts", name]
    return cmd


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
    hosts = allowed_hosts(args.host, args.allowed_host)
    cmd = streamlit_command(app, port=args.port, host=args.host, hosts=hosts)
    if not is_loopback(args.host):
        # The dashboard reads and writes files and starts jobs as this user, with no login.
        log.warning(
            "--host %s is not a loopback address: anyone who can reach port %d can use the dashboard "
            "(no login; it reads files and starts jobs as you). Host names accepted: %s (add more with "
            "--allowed-host). Prefer --host 127.0.0.1 and an SSH tunnel.",
            args.host, args.port, ", ".join(hosts),
        )  # fmt: skip
    if args.print_command:
        extra = [f"{k}={env[k]}" for k in (REPORT_ENV, RUNS_ENV) if k in env and k not in os.environ]
        print(" ".join([*extra, *cmd]))
        return 0
    where = f" with {env[REPORT_ENV]}" if REPORT_ENV in env else ""
    print(f"diag dashboard: serving http://{args.host}:{args.port}{where} (Ctrl-C stops)", file=sys.stderr)
    return _run(cmd, env)


_FORWARDED = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGBREAK")
    if hasattr(signal, name)
)


def _run(cmd: Sequence[str], env: dict[str, str]) -> int:
    """Become the server (POSIX ``execve``), so termination signals reach it and no orphan is left."""
    sys.stdout.flush()
    sys.stderr.flush()
    if hasattr(os, "execve") and os.name == "posix":
        os.execve(cmd[0], list(cmd), env)  # does not return
    # Elsewhere (Windows): a child, with every termination signal forwarded to it and waited for.
    proc = subprocess.Popen(list(cmd), env=env)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                continue  # forwarded; wait for the server to end
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)

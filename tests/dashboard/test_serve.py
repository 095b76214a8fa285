"""``diag dashboard`` as a server: the Host names it accepts (DNS rebinding), the warning for a
non-loopback bind address, and a clean end under SIGTERM (no orphaned Streamlit server)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from diag.cli.dashboard import allowed_hosts, is_loopback
from diag.cli.main import main


def _accepted(command: str) -> list[str]:
    words = command.split()
    return [words[i + 1] for i, w in enumerate(words) if w == "--server.allowedHosts"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.7", False), ("example.org", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_allowed_hosts_are_loopback_names_the_bind_address_and_the_extra_names() -> None:
    assert allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "::1"]
    wide = allowed_hosts("0.0.0.0", ["Dash.Example.org"])
    assert wide[:3] == ["localhost", "127.0.0.1", "::1"] and "0.0.0.0" not in wide
    assert socket.gethostname().lower() in wide and wide[-1] == "dash.example.org"
    assert "10.0.0.5" in allowed_hosts("10.0.0.5")


def test_loopback_serves_quietly_with_the_host_check(capsys, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert main(["dashboard", "--port", "8611", "--print-command"]) == 0
    assert _accepted(capsys.readouterr().out) == ["localhost", "127.0.0.1", "::1"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_non_loopback_host_is_warned_about(capsys, caplog) -> None:
    argv = ["dashboard", "--host", "0.0.0.0", "--allowed-host", "dash.example.org", "--print-command"]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert "dash.example.org" in _accepted(capsys.readouterr().out)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "--host 0.0.0.0 is not a loopback address" in warning and "--allowed-host" in warning


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def _websocket_status(port: int, host: str) -> bytes:
    """The status line Streamlit answers a WebSocket handshake with, for a browser that says ``host``."""
    request = (
        f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: http://{host}:{port}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        return s.recv(256).split(b"\r\n")[0]


def test_the_server_rejects_foreign_host_names_and_ends_on_sigterm() -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "diag.cli", "dashboard", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: the cleanup below reaches a leftover server too
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the dashboard did not come up"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                time.sleep(0.2)
        assert b" 101 " in _websocket_status(port, "localhost")
        assert b" 403 " in _websocket_status(port, "rebound.example")  # DNS rebinding: refused
        os.kill(proc.pid, signal.SIGTERM)  # what docker stop and systemd send, to the main pid only
        proc.wait(timeout=15)
        deadline = time.monotonic() + 10
        while _listening(port):
            assert time.monotonic() < deadline, f"port {port} still held after SIGTERM: an orphaned server"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_without_exec_termination_signals_are_forwarded_and_waited_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The fallback where exec is unavailable (Windows): SIGTERM to diag reaches the server, and diag
    returns only once the server has ended."""
    import threading

    from diag.cli import dashboard

    ready = tmp_path / "ready"
    child = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )

    def terminate_when_ready() -> None:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread, inside _run

    monkeypatch.delattr(os, "execve")
    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=terminate_when_ready, daemon=True).start()
    assert dashboard._run([sys.executable, "-c", child], dict(os.environ)) == 3
    assert signal.getsignal(signal.SIGTERM) == before

"""The ``diag`` command line, one module per command group."""

from diag.cli.main import main

__all__ = ["main"]

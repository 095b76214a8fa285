"""Progress reporting through callbacks: tqdm in the CLI, ``st.progress`` in the dashboard, nothing in tests.

The core never prints; long loops call these hooks, which do nothing unless overridden.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

__all__ = ["ProgressCallback", "TqdmProgress"]


class ProgressCallback:
    """No-op base class: override the hooks you need."""

    def on_start(self, total: int, desc: str) -> None:
        """A loop over ``total`` items starts."""

    def on_advance(self, n: int) -> None:
        """``n`` more items are done."""

    def on_end(self) -> None:
        """The loop ended (normally or not)."""


class TqdmProgress(ProgressCallback):
    """A tqdm bar per loop, on stderr."""

    def __init__(self, **tqdm_kwargs: Any) -> None:
        self._kw = {"unit": "item", "dynamic_ncols": True, "leave": False, **tqdm_kwargs}
        self._bar: Any = None

    def on_start(self, total: int, desc: str) -> None:
        self.on_end()
        self._bar = tqdm(total=total, desc=desc, **self._kw)

    def on_advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def on_end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

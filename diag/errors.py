"""The one exception hierarchy of diag.

Every error a user can cause (a bad path, a missing column, a backbone that is not available offline)
is raised as a subclass of :class:`DiagError` with a message that names the file or parameter, says
what is wrong and what to do. The CLI prints the message without a traceback.
"""

from __future__ import annotations

import importlib

__all__ = [
    "BackboneError",
    "CacheError",
    "ConfigError",
    "DataError",
    "DiagError",
    "MissingDependencyError",
    "param_error",
    "require",
]


class DiagError(Exception):
    """Base class of every error diag raises on purpose."""


class ConfigError(DiagError, ValueError):
    """A parameter has an invalid value."""


class DataError(DiagError, ValueError):
    """A data set cannot be read or is not usable (missing folder, no images, missing column, ...)."""


class BackboneError(DiagError):
    """A backbone cannot be loaded (unknown name, weights not available offline, ...)."""


class CacheError(DiagError):
    """The embedding cache is unreadable or inconsistent."""


class MissingDependencyError(DiagError, ImportError):
    """An optional package is needed for this feature and is not installed."""


def param_error(name: str, rule: str, value: object) -> ConfigError:
    """Build the house-style message: the parameter, the rule it breaks and the value received."""
    return ConfigError(f"{name} {rule}; got {value!r}.")


def require(module: str, *, feature: str, extra: str) -> None:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra that provides it."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs the package {module!r}, which is not installed. "
            f"Install it with: pip install 'diag[{extra}]'"
        ) from exc

"""The configuration of a diagnosis and of a ranking: one set of defaults, with help text and validation.

Each option is a dataclass field with its default and its help text in ``metadata["help"]``, so the CLI
flags and the dashboard widgets read the same defaults and words. A config is checked when it is built
(:class:`~diag.errors.ConfigError` naming the field, the rule and the value), so a bad value fails before
any data is opened or embedded; :func:`dataclasses.replace` builds a changed copy and checks it again.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from diag.engine.extract import ExtractConfig
from diag.errors import ConfigError, param_error
from diag.predict.rank import RANK_SCORES

__all__ = ["DiagnoseConfig", "RankConfig", "ensure_writable", "help_text", "with_overrides"]

_C = TypeVar("_C", "DiagnoseConfig", "RankConfig")

#: The help of the ``extract`` field both configs share.
_EXTRACT_HELP = {"help": "how to run the forward passes: device, precision, batch size, workers"}


def _check_int(name: str, value: object, *, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        rule = f"must be an integer >= {minimum}" + (", or None" if optional else "")
        raise param_error(name, rule, value)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise param_error(name, "must be True or False", value)


@dataclass(frozen=True)
class DiagnoseConfig:
    """Everything :func:`diag.pipeline.diagnose` can be told, with its default.

    Raises
    ------
    ConfigError
        On construction, for a value outside its field's rule.
    """

    extract: ExtractConfig = field(default_factory=ExtractConfig, metadata=_EXTRACT_HELP)
    pretrained: bool = field(
        default=True, metadata={"help": "use the pretrained weights (False: the random-init twin)"}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "input resolution of an image backbone (default: the backbone's own)"}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "token length of a text backbone (default: the backbone's own)"}
    )
    n_permutations: int = field(default=2000, metadata={"help": "MMD permutations per layer"})
    alpha: float = field(default=0.05, metadata={"help": "test level of the shift verdict"})
    streaming_above: int = field(
        default=20_000,
        metadata={
            "help": "above this many items on a side, each layer's statistics come from summaries and "
            "bounded samples (diag.predict.streaming)"
        },
    )
    seed: int = field(
        default=0, metadata={"help": "seed of permutations, folds, splits and the random-init twin"}
    )
    use_cache: bool = field(default=True, metadata={"help": "read and write the embedding cache"})
    cache_dir: str | Path | None = field(
        default=None, metadata={"help": "embedding cache folder (default: $DIAG_CACHE_DIR or ~/.cache/diag)"}
    )
    text_column: str = field(default="text", metadata={"help": "text column of a table"})
    label_column: str = field(default="label", metadata={"help": "label column of a table"})
    image_column: str | None = field(
        default=None,
        metadata={
            "help": "image column of a table or Hugging Face dataset (paths or bytes; default: 'image')"
        },
    )
    hf_split: str | None = field(
        default=None, metadata={"help": "split of a Hugging Face dataset with several (e.g. train)"}
    )
    strict: bool = field(
        default=False,
        metadata={"help": "refuse a data set with unreadable or empty items (default: skip and list them)"},
    )
    transfer: bool = field(
        default=True,
        metadata={
            "help": "with a labelled target: per-layer transferability, negative transfer and freeze depth"
        },
    )
    rgn: bool = field(
        default=True, metadata={"help": "with transfer: relative gradient norms per block (Auto-RGN)"}
    )
    attribution: bool = field(
        default=True,
        metadata={"help": "per-sample drift scores and ranked target clusters at the map layers"},
    )
    maps: bool = field(
        default=True,
        metadata={"help": "with an output folder: 2-D UMAP maps at the onset, freeze and deepest layers"},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.extract, ExtractConfig):
            raise param_error("extract", "must be an ExtractConfig", self.extract)
        _check_int("image_size", self.image_size, minimum=1, optional=True)
        _check_int("max_length", self.max_length, minimum=1, optional=True)
        _check_int("n_permutations", self.n_permutations, minimum=1)
        _check_int("streaming_above", self.streaming_above, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
            raise param_error("alpha", "must be in (0, 1)", self.alpha)
        for name in ("pretrained", "use_cache", "transfer", "rgn", "strict", "attribution", "maps"):
            _check_bool(name, getattr(self, name))
        for name in ("text_column", "label_column", "image_column", "hf_split"):
            value = getattr(self, name)
            optional = name in ("image_column", "hf_split")
            if (value is not None or not optional) and (not isinstance(value, str) or not value):
                raise param_error(name, "must be a non-empty column name", value)

    @property
    def data_options(self) -> dict[str, str]:
        """The keyword arguments of :func:`diag.data.open_data` (columns, split, bad rows)."""
        opts = {
            "text_column": self.text_column,
            "label_column": self.label_column,
            "on_bad_rows": "error" if self.strict else "skip",
        }
        if self.image_column is not None:
            opts["image_column"] = self.image_column
        if self.hf_split is not None:
            opts["hf_split"] = self.hf_split
        return opts


@dataclass(frozen=True)
class RankConfig:
    """Everything :func:`diag.pipeline.rank_backbones` can be told, with its default.

    Raises
    ------
    ConfigError
        On construction, for a value outside its field's rule.
    """

    extract: ExtractConfig = field(default_factory=ExtractConfig, metadata=_EXTRACT_HELP)
    include_random_init: bool = field(
        default=True, metadata={"help": "rank each backbone's random-init twin too"}
    )
    by: str = field(
        default="logme",
        metadata={
            "help": "score to rank by: logme, h_score_shrinkage, sfda, linear_probe_accuracy, knn_accuracy"
        },
    )
    n_bootstrap: int = field(default=200, metadata={"help": "resamples for the rank stability"})
    image_size: int | None = field(
        default=None, metadata={"help": "input resolution of image backbones (default: each backbone's own)"}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "token length of text backbones (default: each backbone's own)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of folds, resamples and the random-init twins"})
    use_cache: bool = field(default=True, metadata={"help": "read and write the embedding cache"})

    def __post_init__(self) -> None:
        if not isinstance(self.extract, ExtractConfig):
            raise param_error("extract", "must be an ExtractConfig", self.extract)
        if self.by not in RANK_SCORES:
            raise param_error("by", f"must be one of {', '.join(RANK_SCORES)}", self.by)
        _check_int("n_bootstrap", self.n_bootstrap, minimum=0)
        _check_int("image_size", self.image_size, minimum=1, optional=True)
        _check_int("max_length", self.max_length, minimum=1, optional=True)
        _check_int("seed", self.seed, minimum=0)
        for name in ("include_random_init", "use_cache"):
            _check_bool(name, getattr(self, name))


def help_text(config: type[Any]) -> dict[str, str]:
    """``{field: help}`` of a config dataclass, for CLI flags and dashboard widgets."""
    return {f.name: str(f.metadata.get("help", "")) for f in fields(config)}


def with_overrides(config: _C, overrides: dict[str, Any]) -> _C:
    """``config`` with the keyword arguments that were given (not None) replacing its fields."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(config, **changes) if changes else config


def ensure_writable(path: str | Path, *, name: str, kind: str = "folder") -> Path:
    """Check, before any computation, that ``path`` can be written as a ``kind`` (folder or file).

    Nothing is created: the nearest existing folder on the way to ``path`` must be a folder in which a
    file can be made (probed with a temporary file, so a read-only file system, missing permissions
    and a path under a file are all found), and ``path`` itself, if it exists, must be a ``kind``.

    Parameters
    ----------
    path : str or Path
    name : str
        The parameter as the user gave it (``"--out"`` on the command line, ``"out"`` in Python).
    kind : {"folder", "file"}

    Returns
    -------
    Path
        ``path`` as a Path.

    Raises
    ------
    ConfigError
        Naming ``name``, the path, what is wrong and what to do.
    """
    target = Path(path)
    fix = f"choose another {kind} for {name}"
    if target.exists():
        if kind == "folder" and not target.is_dir():
            raise ConfigError(f"{name} {target} is an existing file, not a folder; {fix}.")
        if kind == "file" and target.is_dir():
            raise ConfigError(f"{name} {target} is a folder, not a file; {fix}.")
    probe = target if kind == "folder" else target.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{name} {target}: {probe} is a file, so no folder can be made under it; {fix}.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".diag-write-check.", dir=probe)
    except OSError as exc:
        raise ConfigError(f"{name} {target}: cannot write in {probe} ({exc.strerror}); {fix}.") from None
    os.close(fd)
    os.unlink(tmp)
    if kind == "file" and target.exists() and not os.access(target, os.W_OK):
        raise ConfigError(f"{name} {target}: the file is not writable; {fix}.")
    return target

"""The result file of a fine-tuning run (``OUT/result.json``) and the JSON-file base class it shares with
the sweep's ``sweep.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

from diag.errors import DataError
from diag.fileio import atomic_write_bytes
from diag.models import Backbone

__all__ = ["SCHEMA", "FinetuneResult", "ResultFile", "describe_backbone"]

SCHEMA = "diag.finetune/1"


def describe_backbone(bb: Backbone) -> dict[str, Any]:
    """The ``backbone`` entry of a result: name, modality, weights, seed and size."""
    return {
        "name": bb.name,
        "modality": bb.modality,
        "pretrained": bb.pretrained,
        "weights": bb.weights,
        "seed": bb.seed,
        "num_params": bb.num_params,
    }


class ResultFile:
    """A frozen-dataclass result kept as one JSON file in its run folder (``FILE``), tagged ``SCHEMA_ID``.

    ``KIND`` words the errors: (schema label, what it is, what to rerun).
    """

    FILE: ClassVar[str]
    SCHEMA_ID: ClassVar[str]
    KIND: ClassVar[tuple[str, str, str]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(cast(Any, self))

    @classmethod
    def from_dict(cls: type[_R], d: dict[str, Any]) -> _R:
        label, what, rerun = cls.KIND
        if d.get("schema") != cls.SCHEMA_ID:
            raise DataError(f"{label} schema {d.get('schema')!r} is not {cls.SCHEMA_ID!r}; rerun {rerun}.")
        known = {f.name for f in fields(cast(Any, cls))}
        try:
            return cast(_R, cast(Any, cls)(**{k: v for k, v in d.items() if k in known}))
        except TypeError as exc:  # a field missing: written by another version, or edited by hand
            raise DataError(f"not a complete {what} ({exc}); rerun {rerun}.") from None

    def save(self, out: str | Path) -> Path:
        path = Path(out) / self.FILE
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls: type[_R], out: str | Path) -> _R:
        """Read ``OUT/FILE`` (``out`` may also be the file itself)."""
        path = Path(out)
        path = path / cls.FILE if path.is_dir() else path
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, DataError) as exc:
            raise DataError(f"{path}: not a readable {cls.KIND[1]} ({exc}).") from None


_R = TypeVar("_R", bound=ResultFile)


@dataclass(frozen=True)
class FinetuneResult(ResultFile):
    """What a fine-tuning run produced; ``OUT/result.json``. JSON-native fields.

    Attributes
    ----------
    status : str
        ``running``, ``completed``, ``stopped``, ``interrupted`` or ``failed``.
    best_val_accuracy, best_epoch
        The best validation accuracy and its epoch (1-based); None before the first epoch ends.
    final_val_accuracy, final_train_accuracy, final_train_loss
        After the last completed epoch.
    freeze, n_blocks, blocks, frozen_blocks
        K, the number of blocks, their names in order, and the names of the K frozen ones.
    history : list of dict
        One entry per completed epoch (the epoch lines of ``metrics.jsonl``).
    """

    status: str
    backbone: dict[str, Any]
    target: dict[str, Any]
    val: dict[str, Any]
    classes: list[str]
    n_train: int
    n_val: int
    freeze: int
    n_blocks: int
    blocks: list[str]
    frozen_blocks: list[str]
    trainable_params: int
    total_params: int
    best_val_accuracy: float | None
    best_epoch: int | None
    final_val_accuracy: float | None
    final_train_accuracy: float | None
    final_train_loss: float | None
    epochs_completed: int
    steps: int
    stopped_early: bool
    wall_time_s: float
    train_items_per_s: float | None
    feature_cache: bool
    device: dict[str, Any]
    precision: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    versions: dict[str, str]
    out: str
    error: str | None = None
    decode_s: float | None = None
    schema: str = SCHEMA

    # kept by ResultFile as OUT/result.json
    FILE: ClassVar[str] = "result.json"
    SCHEMA_ID: ClassVar[str] = SCHEMA
    KIND: ClassVar[tuple[str, str, str]] = ("result", "fine-tuning result", "the fine-tuning")

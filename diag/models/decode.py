"""Image decoding for every image family: one ``Dataset`` that reads, transforms and reports failures.

Items are uint8 ``(3, H, W)`` tensors (resized and cropped, not normalised): a quarter of the bytes of
float32 through the worker processes, shared memory and pinned host memory, and no per-pixel float work
on the CPU; the backbone normalises them on the device (:meth:`diag.models.TimmBackbone.normalize`).
Used twice: batch by batch for extraction (:meth:`diag.models.TimmBackbone.batches`) and all at once for
fine-tuning (:meth:`diag.models.TimmBackbone.decode_all`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from diag.data.dataset import DataSet
from diag.errors import DataError
from diag.models.base import Failed

__all__ = [
    "ImageItems",
    "collate_images",
    "decode_images",
]


class ImageItems(Dataset[tuple[int, torch.Tensor | None, str | None]]):
    """Decodes and transforms one image per index; an unreadable file yields its error, not an exception.

    Parameters
    ----------
    data : DataSet
        An image set.
    transform : callable
        PIL image -> uint8 CHW tensor (:meth:`diag.models.TimmBackbone.image_transform`).
    keep_grey : bool
        Hand 8-bit grey images to ``transform`` as grey (``DataSet.load_image``'s ``keep_grey``); for
        a transform that makes three channels of them itself.
    """

    def __init__(
        self, data: DataSet, transform: Callable[[Any], torch.Tensor], *, keep_grey: bool = False
    ) -> None:
        self.data = data
        self.transform = transform
        self.keep_grey = keep_grey

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, self.transform(self.data.load_image(i, keep_grey=self.keep_grey)), None
        except Exception as exc:  # a corrupt or truncated file must not stop the pass
            return i, None, f"{type(exc).__name__}: {exc}"


def collate_images(
    items: list[tuple[int, torch.Tensor | None, str | None]],
) -> tuple[torch.Tensor, torch.Tensor | None, Failed]:
    ok = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, err) for i, x, err in items if x is None and err is not None]
    idx = torch.tensor([i for i, _ in ok], dtype=torch.long)
    # default_collate stacks straight into shared memory inside a worker process (no extra copy when
    # the batch is handed to the main process).
    batch = default_collate([x for _, x in ok]) if ok else None
    return idx, batch, failed


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def decode_images(
    data: DataSet, transform: Callable[[Any], torch.Tensor], num_workers: int, *, keep_grey: bool = False
) -> torch.Tensor:
    """Every image of ``data`` as uint8 ``(N, 3, H, W)``; DataError naming the first unreadable one.
    ``keep_grey`` as for :class:`ImageItems`."""
    items = ImageItems(data, transform, keep_grey=keep_grey)
    if num_workers > 0:
        loader = DataLoader(items, batch_size=64, num_workers=num_workers, collate_fn=_as_list, shuffle=False)
        results = [r for batch in loader for r in batch]
    else:
        results = [items[i] for i in range(len(items))]
    bad = [(i, err) for i, x, err in results if x is None]
    if bad:
        i, err = bad[0]
        raise DataError(
            f"{data.name}: {len(bad)} of {len(data)} images cannot be read (first: {data.ids[i]}: {err}). "
            "Fix or remove them before fine-tuning."
        )
    return torch.stack([x for _, x, _ in results if x is not None])

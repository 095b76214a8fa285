"""The :class:`DataSet`: items a backbone can embed (image files, image arrays or texts) with optional labels.

Readers for each format build it (:mod:`~diag.data.folders`, :mod:`~diag.data.tables`,
:mod:`~diag.data.arrays`, :mod:`~diag.data.text`, :mod:`~diag.data.samples`); :func:`diag.data.open_data`
picks the reader from what the user types. Nothing here touches a model.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["DataSet", "EncodedImages", "Modality"]

Modality = Literal["image", "text"]


class EncodedImages(Protocol):
    """Images kept encoded (PNG/JPEG bytes) and read one at a time: table cells, rows of a Hugging Face
    dataset. Nothing is decoded or held in memory until an item is asked for."""

    def __len__(self) -> int: ...

    def content(self, i: int) -> bytes:
        """The encoded bytes of item ``i``; ``OSError``/``ValueError`` when there are none."""
        ...

    def take(self, indices: Sequence[int]) -> EncodedImages:
        """The items at ``indices``, in that order."""
        ...


@dataclass(frozen=True, eq=False)
class DataSet:
    """Items to embed, with optional labels.

    Exactly one of ``paths`` (image files), ``arrays`` (images as an ``(n, H, W[, C])`` uint8 array),
    ``encoded`` (encoded images read on demand) or ``texts`` holds the items.

    Attributes
    ----------
    name : str
        What the user passed (a path or ``samples:NAME``); used in messages and manifests.
    modality : {"image", "text"}
    ids : tuple of str, shape (n,)
        A stable identifier per item (relative file path, or row number).
    labels : ndarray of int64, shape (n,), or None
        Index into ``classes`` per item; None for an unlabelled set.
    classes : tuple of str
        Class names, sorted; empty for an unlabelled set.
    skipped : tuple of (id, reason)
        Rows left out when the set was opened (an empty text, a missing image cell), listed as
        unreadable images are listed after extraction.
    """

    name: str
    modality: Modality
    ids: tuple[str, ...]
    labels: np.ndarray | None = None
    classes: tuple[str, ...] = ()
    paths: tuple[Path, ...] | None = None
    arrays: np.ndarray | None = None
    texts: tuple[str, ...] | None = None
    root: Path | None = None
    encoded: EncodedImages | None = None
    skipped: tuple[tuple[str, str], ...] = ()
    _fingerprint: list[str] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def load_image(self, i: int, *, keep_grey: bool = False) -> Image.Image:
        """Decode item ``i`` as an RGB image. Raises ``OSError``/``ValueError`` on an unreadable file.

        ``keep_grey``: an 8-bit grey image (mode ``L``, no transparency) is returned as it is, for a
        transform that resizes it as grey and expands it to three channels afterwards
        (:meth:`diag.models.TimmBackbone.image_transform`): PIL resamples each channel alike, so the bytes
        are those of the RGB image, in half the time. Every other mode (``LA``, ``P``, 16-bit or float
        grey, CMYK...) is converted to RGB as without it.
        """
        if self.paths is not None:
            with Image.open(self.paths[i]) as im:
                im.load()
                return _to_rgb(im, keep_grey)
        if self.arrays is not None:
            return _to_rgb(Image.fromarray(self.arrays[i]), keep_grey)
        if self.encoded is not None:
            try:
                im = Image.open(io.BytesIO(self.encoded.content(i)))
            except UnidentifiedImageError:  # its message would name a BytesIO object
                raise ValueError("the bytes are not an image format Pillow reads") from None
            with im:
                im.load()
                return _to_rgb(im, keep_grey)
        raise TypeError(f"{self.name} holds texts, not images")

    def fingerprint(self) -> str:
        """A SHA-256 of the items' content and labels (file bytes, not names or dates)."""
        if not self._fingerprint:
            h = hashlib.sha256()
            h.update(f"{self.modality}\n{len(self)}\n".encode())
            if self.paths is not None:
                for rel, path in zip(self.ids, self.paths, strict=True):
                    h.update(rel.encode() + b"\0")
                    h.update(_content_or_error(path.read_bytes))
            elif self.arrays is not None:
                h.update(str(self.arrays.shape).encode() + str(self.arrays.dtype).encode())
                h.update(np.ascontiguousarray(self.arrays).tobytes())
            elif self.encoded is not None:
                for i, rel in enumerate(self.ids):
                    h.update(rel.encode() + b"\0")
                    h.update(_content_or_error(functools.partial(self.encoded.content, i)))
            else:
                assert self.texts is not None
                for t in self.texts:
                    h.update(t.encode() + b"\0")
            if self.labels is not None:
                h.update(json.dumps(list(self.classes)).encode())
                h.update(self.labels.astype(np.int64).tobytes())
            self._fingerprint.append(h.hexdigest())
        return self._fingerprint[0]

    def describe(self, *, exclude: Collection[str] = ()) -> dict[str, object]:
        """A JSON-native summary for manifests and reports.

        ``exclude`` names the ids of items that could not be read (skipped by the extraction): they
        are not counted in ``class_counts``. ``n`` stays the number of items in the set.
        """
        counts = None
        if self.labels is not None:
            drop = set(exclude)
            keep = [i for i, id_ in enumerate(self.ids) if id_ not in drop] if drop else slice(None)
            counts = {
                c: int(n)
                for c, n in zip(
                    self.classes, np.bincount(self.labels[keep], minlength=len(self.classes)), strict=True
                )
            }
        return {
            "name": self.name,
            "modality": self.modality,
            "n": len(self),
            "classes": list(self.classes),
            "class_counts": counts,
            "fingerprint": self.fingerprint(),
            "skipped": [{"id": id_, "reason": why} for id_, why in self.skipped],
        }

    def subset(self, indices: Sequence[int] | np.ndarray, *, name: str | None = None) -> DataSet:
        """The items at ``indices``, in that order (for splits)."""
        idx = np.asarray(indices, dtype=np.int64)
        return DataSet(
            name=name or f"{self.name}[{len(idx)}]",
            modality=self.modality,
            ids=tuple(self.ids[i] for i in idx),
            labels=None if self.labels is None else self.labels[idx],
            classes=self.classes,
            paths=None if self.paths is None else tuple(self.paths[i] for i in idx),
            arrays=None if self.arrays is None else self.arrays[idx],
            texts=None if self.texts is None else tuple(self.texts[i] for i in idx),
            root=self.root,
            encoded=None if self.encoded is None else self.encoded.take(idx.tolist()),
        )


def _content_or_error(read: Callable[[], bytes]) -> bytes:
    """An item's bytes, or a marker with the error for one that cannot be read (skipped later, but its
    absence must still change the fingerprint)."""
    try:
        return read()
    except (OSError, ValueError) as exc:
        return f"\0unreadable\0{type(exc).__name__}\0".encode()


def _to_rgb(im: Image.Image, keep_grey: bool = False) -> Image.Image:
    if im.mode == "RGB" or (keep_grey and im.mode == "L" and "transparency" not in im.info):
        return im
    if im.mode in ("RGBA", "LA", "P") or "transparency" in im.info:
        # Composite on white, as a person sees a transparent image.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() or 1.0
        return Image.fromarray((arr / hi * 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")

"""Image folders: one subfolder per class (labelled), or images directly inside (unlabelled)."""

from __future__ import annotations

from pathlib import Path

from diag.data.dataset import DataSet
from diag.data.labels import encode_labels
from diag.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "open_image_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def open_image_folder(root: Path, *, name: str | None = None) -> DataSet:
    """An image folder: one subfolder per class (labelled), or images directly inside (unlabelled)."""
    name = name or str(root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p for p in root.iterdir() if _is_image(p))
    if subdirs and loose:
        raise DataError(
            f"{root}: mixes {len(loose)} images at the top level (e.g. {loose[0].name}) with class "
            f"subfolders ({', '.join(d.name for d in subdirs[:3])}). Move every image into a class "
            "subfolder for a labelled set, or use a flat folder for an unlabelled one."
        )
    paths: list[Path] = []
    raw_labels: list[str] = []
    if subdirs:
        for d in subdirs:
            files = sorted(p for p in d.rglob("*") if _is_image(p))
            paths += files
            raw_labels += [d.name] * len(files)
    else:
        paths = loose
    if not paths:
        raise DataError(
            f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} directly inside and in "
            "class subfolders). Point diag at a folder of images, or at one subfolder per class."
        )
    ids = tuple(p.relative_to(root).as_posix() for p in paths)
    if subdirs:
        empty = [d.name for d in subdirs if d.name not in set(raw_labels)]
        if empty:
            raise DataError(
                f"{root}: class subfolder(s) {', '.join(empty[:5])} hold no images. "
                "Remove them or add images: a class with no examples cannot be learnt or tested."
            )
        labels, classes = encode_labels(raw_labels, where=str(root))
        return DataSet(name, "image", ids, labels, classes, paths=tuple(paths), root=root)
    return DataSet(name, "image", ids, paths=tuple(paths), root=root)

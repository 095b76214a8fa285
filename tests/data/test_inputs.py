"""Inputs users already have: Hugging Face ``datasets`` folders, tables of image paths or image bytes;
and the data defects of issue 18 (non-string texts, list labels, float labels, skipped rows)."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diag.data import open_data
from diag.errors import ConfigError, DataError, MissingDependencyError
from tests.conftest import write_digit_folder

datasets = pytest.importorskip("datasets")

TINY = ["-b", "timm:test_efficientnet", "--random-init", "--image-size", "32"]


def png_bytes(value: int, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def hf_image_folder(root: Path, *, values: tuple[int, ...] = (0, 60, 120, 180, 240, 30)) -> Path:
    """A DatasetDict (train, test) of solid images with a ClassLabel; test row 2 has no image and
    row 3 holds bytes that are not an image."""
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    train = {"image": [{"bytes": png_bytes(v), "path": None} for v in values], "label": [0, 1] * 3}
    test = {
        "image": [
            {"bytes": png_bytes(10), "path": None},
            {"bytes": png_bytes(200), "path": None},
            None,
            {"bytes": b"not an image", "path": None},
        ],
        "label": [0, 1, 0, 1],
    }
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(train, features=feats),
            "test": datasets.Dataset.from_dict(test, features=feats),
        }
    )
    dd.save_to_disk(str(root))
    return root


def test_hf_folder_of_images_opens_by_split_skips_and_fingerprints_by_content(tmp_path: Path) -> None:
    root = hf_image_folder(tmp_path / "hf")
    with pytest.raises(DataError, match=r"hf: holds the splits train, test\. Pick one with --hf-split NAME"):
        open_data(root)
    with pytest.raises(DataError, match=r"no split 'val' \(splits: train, test\).*--hf-split"):
        open_data(root, hf_split="val")
    train = open_data(root, hf_split="train")
    assert train.modality == "image" and len(train) == 6 and train.classes == ("cat", "dog")
    assert np.asarray(train.load_image(1)).tolist()[0][0] == [60, 60, 60]
    # The empty row is skipped and listed; the corrupt bytes are skipped when decoded.
    test = open_data(root, hf_split="test")
    assert test.ids == ("0", "1", "3") and test.skipped == (("2", "no image"),)
    assert test.describe()["skipped"] == [{"id": "2", "reason": "no image"}]
    with pytest.raises(ValueError, match="not an image format"):
        test.load_image(2)
    with pytest.raises(DataError, match=r"1 of 4 rows cannot be used \(rows 2; first: row 2: no image\)"):
        open_data(root, hf_split="test", on_bad_rows="error")
    # Content-keyed: a copy elsewhere has the same fingerprint, one changed pixel value another.
    shutil.copytree(root, tmp_path / "copy")
    assert open_data(tmp_path / "copy", hf_split="train").fingerprint() == train.fingerprint()
    changed = open_data(
        hf_image_folder(tmp_path / "hf2", values=(0, 60, 120, 180, 240, 31)), hf_split="train"
    )
    assert changed.fingerprint() != train.fingerprint()
    # A subset reads the right rows.
    assert np.asarray(train.subset([4]).load_image(0))[0, 0, 0] == 240


def test_hf_folder_of_texts_single_split(tmp_path: Path) -> None:
    feats = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    ds = datasets.Dataset.from_dict(
        {"text": ["good", "", "bad", "fine"], "label": [1, 0, 0, -1]}, features=feats
    )
    ds.save_to_disk(str(tmp_path / "t"))
    with pytest.raises(DataError, match=r"t column 'label'.*labels are missing"):
        open_data(tmp_path / "t")  # -1 is datasets' "no label"
    datasets.Dataset.from_dict(
        {"text": ["good", "", "bad"], "label": [1, 0, 0]}, features=feats
    ).save_to_disk(str(tmp_path / "u"))
    data = open_data(tmp_path / "u", hf_split="train")  # a single split: --split is not needed
    assert data.modality == "text" and data.texts == ("good", "bad") and data.classes == ("neg", "pos")
    assert (
        data.labels is not None and data.labels.tolist() == [1, 0] and data.skipped == (("1", "empty text"),)
    )


def test_hf_without_the_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = hf_image_folder(tmp_path / "hf")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'diag\[hf\]'"):
        open_data(root, hf_split="train")
    with pytest.raises(MissingDependencyError, match=r"hf-dataset:owner/x.*diag\[hf\]"):
        open_data("hf-dataset:owner/x")


def test_hf_hub_id_offline_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(
        DataError, match=r"hf-dataset:no-such-owner/no-such-set: cannot be loaded.*save_to_disk"
    ):
        open_data("hf-dataset:no-such-owner/no-such-set", hf_split="train")
    with pytest.raises(DataError, match="no dataset id"):
        open_data("hf-dataset:")


def test_csv_of_image_paths_relative_to_the_table(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    for i, v in enumerate((0, 100, 200)):
        (tmp_path / "img" / f"{i}.png").write_bytes(png_bytes(v))
    (tmp_path / "img" / "bad.png").write_bytes(b"garbage")
    rows = "image,label\nimg/0.png,a\nimg/1.png,b\nimg/missing.png,a\nimg/2.png,a\nimg/bad.png,b\n"
    (tmp_path / "t.csv").write_text(rows)
    data = open_data(tmp_path / "t.csv")  # no text column, an image column: images
    assert data.modality == "image" and data.ids == ("0", "1", "3", "4")
    assert data.skipped == (("2", "no such image file: img/missing.png"),)
    assert np.asarray(data.load_image(2))[0, 0, 0] == 200
    with pytest.raises(ValueError, match="not an image format"):
        data.load_image(3)
    with pytest.raises(DataError, match=r"t.csv: 1 of 5 rows cannot be used.*missing.png.*--strict"):
        open_data(tmp_path / "t.csv", on_bad_rows="error")
    # Same content in another folder, same fingerprint; the unreadable file does not crash it.
    shutil.copytree(tmp_path / "img", tmp_path / "b" / "img")
    shutil.copy(tmp_path / "t.csv", tmp_path / "b" / "t.csv")
    assert open_data(tmp_path / "b" / "t.csv").fingerprint() == data.fingerprint()
    (tmp_path / "b" / "img" / "1.png").write_bytes(png_bytes(101))
    assert open_data(tmp_path / "b" / "t.csv").fingerprint() != data.fingerprint()
    # --image-column names another column; a column of numbers is refused with the flag named.
    (tmp_path / "n.csv").write_text("pic,text\nimg/0.png,x\n")
    assert open_data(tmp_path / "n.csv", image_column="pic").modality == "image"
    with pytest.raises(DataError, match=r"no column 'photo'.*--image-column"):
        open_data(tmp_path / "n.csv", image_column="photo")
    pd.DataFrame({"image": [1, 2]}).to_parquet(tmp_path / "num.parquet")
    with pytest.raises(DataError, match=r"column 'image': 2 of 2 cells are neither.*--image-column"):
        open_data(tmp_path / "num.parquet")


def test_parquet_of_image_bytes(tmp_path: Path) -> None:
    cells = [png_bytes(v) for v in (5, 50, 150, 250)] + [b"broken"]
    pd.DataFrame({"image": cells, "label": [0, 1, 0, 1, 0]}).to_parquet(tmp_path / "b.parquet")
    data = open_data(tmp_path / "b.parquet")
    assert data.modality == "image" and len(data) == 5 and data.classes == ("0", "1")
    assert np.asarray(data.load_image(3))[0, 0, 0] == 250
    # HF-style records {"bytes", "path"} in a Parquet file work too.
    records = [{"bytes": png_bytes(v), "path": None} for v in (5, 50)]
    pd.DataFrame({"img": records}).to_parquet(tmp_path / "r.parquet")
    assert np.asarray(open_data(tmp_path / "r.parquet", image_column="img").load_image(1))[0, 0, 0] == 50
    pd.DataFrame({"image": cells[::-1], "label": [0, 1, 0, 1, 0]}).to_parquet(tmp_path / "c.parquet")
    assert open_data(tmp_path / "c.parquet").fingerprint() != data.fingerprint()


def test_text_cells_that_are_not_strings_are_refused_with_the_column_named(tmp_path: Path) -> None:
    (tmp_path / "n.jsonl").write_text('{"text": "ok"}\n{"text": 3.5}\n{"text": ["a", "b"]}\n')
    with pytest.raises(
        DataError, match=r"column 'text': 2 of 3 cells are not text \(rows 1, 2; e.g. float 3.5\)"
    ):
        open_data(tmp_path / "n.jsonl")


def test_empty_texts_are_skipped_and_listed_or_refused_when_strict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "d.csv").write_text('text,label\nhi,a\n"",b\n  ,a\nthere,b\n')
    with caplog.at_level(logging.WARNING, logger="diag.data.columns"):
        data = open_data(tmp_path / "d.csv")
    assert data.texts == ("hi", "there") and data.ids == ("0", "3")
    assert data.skipped == (("1", "empty text"), ("2", "empty text")) and "skipped 2 of 4 rows" in caplog.text
    assert data.describe()["class_counts"] == {"a": 1, "b": 1}
    with pytest.raises(
        DataError, match=r"2 of 4 rows cannot be used \(rows 1, 2; first: row 1: empty text\)"
    ):
        open_data(tmp_path / "d.csv", on_bad_rows="error")
    with pytest.raises(ConfigError, match=r"on_bad_rows must be 'skip' or 'error'; got 'drop'"):
        open_data(tmp_path / "d.csv", on_bad_rows="drop")
    (tmp_path / "e.csv").write_text('text\n""\n')
    with pytest.raises(DataError, match="1 of 1 rows cannot be used"):
        open_data(tmp_path / "e.csv")  # nothing left is never skipped into an empty set


def test_list_valued_labels_are_refused(tmp_path: Path) -> None:
    lines = [{"text": "a", "label": ["x", "y"]}, {"text": "b", "label": ["x"]}]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    with pytest.raises(DataError, match=r"column 'label': 2 of 2 labels are lists, not single classes"):
        open_data(tmp_path / "l.jsonl")
    pd.DataFrame({"text": ["a", "b"], "label": [[1, 0], [0, 1]]}).to_parquet(tmp_path / "l.parquet")
    with pytest.raises(DataError, match=r"labels are ndarrays, not single classes.*one-hot"):
        open_data(tmp_path / "l.parquet")


def test_float_labels_that_become_one_class_per_item_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "f.npz", images=rng.integers(0, 255, (30, 8, 8), dtype=np.uint8), labels=rng.random(30)
    )
    with caplog.at_level(logging.WARNING, logger="diag.data.labels"):
        data = open_data(tmp_path / "f.npz")
    assert len(data.classes) == 30 and "numeric labels make 30 classes for 30 items" in caplog.text
    caplog.clear()
    np.savez(tmp_path / "i.npz", images=np.zeros((30, 8, 8), np.uint8), labels=np.arange(30) % 3)
    with caplog.at_level(logging.WARNING, logger="diag.data.labels"):
        open_data(tmp_path / "i.npz")
    assert caplog.text == ""


def test_class_counts_leave_out_items_that_could_not_be_read(digit_folder: Path) -> None:
    data = open_data(digit_folder)
    assert data.describe()["class_counts"] == {"0": 4, "1": 4, "2": 4}
    assert data.describe(exclude={"1/000.png", "1/001.png"})["class_counts"] == {"0": 4, "1": 2, "2": 4}


def test_new_inputs_embed_with_a_tiny_backbone(tmp_path: Path, tiny_image_backbone) -> None:
    from diag.engine.extract import ExtractConfig, extract

    cfg = ExtractConfig(device="cpu", batch_size=4, num_workers=0)
    hf = open_data(hf_image_folder(tmp_path / "hf"), hf_split="test")
    emb = extract(tiny_image_backbone, hf, cfg)
    assert list(emb.ids) == ["0", "1"] and [s["id"] for s in emb.skipped] == ["3"]
    cells = [png_bytes(v) for v in (5, 50, 150)]
    pd.DataFrame({"image": cells}).to_parquet(tmp_path / "b.parquet")
    emb = extract(tiny_image_backbone, open_data(tmp_path / "b.parquet"), cfg)
    assert len(emb.ids) == 3 and all(np.isfinite(f).all() for f in emb.features.values())


@pytest.fixture
def digit_tables(tmp_path: Path) -> tuple[Path, Path]:
    """The digit folder saved twice: as an HF datasets folder and as a CSV of relative image paths."""
    folder = write_digit_folder(tmp_path / "digits", per_class=6)
    files = sorted(folder.rglob("*.png"))
    rows = [{"image": f.relative_to(tmp_path).as_posix(), "label": f.parent.name} for f in files]
    pd.DataFrame(rows).to_csv(tmp_path / "digits.csv", index=False)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    hf = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": f.read_bytes(), "path": None} for f in files],
            "label": [r["label"] for r in rows],
        },
        features=feats,
    )
    hf.save_to_disk(str(tmp_path / "hf"))
    return tmp_path / "hf", tmp_path / "digits.csv"


def test_diagnose_runs_on_an_hf_folder_and_a_csv_of_image_paths(
    digit_tables: tuple[Path, Path], tmp_path: Path
) -> None:
    from diag.cli.main import main

    hf, csv = digit_tables
    out = tmp_path / "out"
    flags = ["--permutations", "150", "--no-transfer"]
    assert main(["diagnose", "-s", str(hf), "-t", str(csv), *TINY, *flags, "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["layers"] and len(report["layers"]) >= 1

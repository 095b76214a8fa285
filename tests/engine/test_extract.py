"""The extraction engine, the embeddings store and the content-keyed cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diag.data import open_data, texts_dataset
from diag.engine import cache
from diag.engine.embeddings import Embeddings, check_finite
from diag.engine.extract import ExtractConfig, extract
from diag.errors import CacheError, ConfigError, DataError
from diag.pipeline import embed
from tests.conftest import write_digit_folder


def test_rows_follow_the_data_order_whatever_the_batch_size(tiny_image_backbone, digit_folder: Path) -> None:
    ds = open_data(digit_folder)
    a = extract(tiny_image_backbone, ds, ExtractConfig(batch_size=5))
    b = extract(tiny_image_backbone, ds, ExtractConfig(batch_size=64))
    assert a.ids == ds.ids and a.labels.tolist() == ds.labels.tolist()
    for p in tiny_image_backbone.probes:
        assert a[p.name].shape == (len(ds), p.dim) and a[p.name].dtype == np.float32
        np.testing.assert_allclose(a[p.name], b[p.name], rtol=1e-5, atol=1e-6)


def test_features_equal_a_direct_forward(lite0, digit_folder: Path) -> None:
    ds = open_data(digit_folder)
    emb = extract(lite0, ds, ExtractConfig(batch_size=4))
    x = torch.stack([lite0.transform()(ds.load_image(i)) for i in (0, 7)])
    with torch.inference_mode():
        logits = lite0.model(x)
    np.testing.assert_allclose(emb.logits[[0, 7]], logits.numpy(), rtol=1e-4, atol=1e-4)
    assert emb.logits.shape == (12, 1000)


def test_uint8_workers_give_the_features_of_the_float_transform(lite0, digit_folder: Path) -> None:
    """The workers hand over uint8 batches (resized and cropped by PIL) and ``capture`` normalises them;
    the path before ran timm's float eval transform (ToTensor + Normalize) in each worker. PIL's resize
    outputs uint8 in both, so they feed the same bytes, and the normalisation is the same float32
    operations in the same order (x / 255, - mean, / std): the network inputs are bitwise equal, asserted
    exactly. The features then come from the same kernels on the same batches; they are bitwise equal
    here too, and 1e-6 only leaves room for a BLAS whose sums depend on buffer alignment (float32
    rounding is ~6e-8 per operation)."""
    import timm.data

    ds = open_data(digit_folder)
    emb = extract(lite0, ds, ExtractConfig(batch_size=4, num_workers=1))  # a worker, shared memory
    assert emb.manifest["num_workers"] == 1
    p = lite0.preprocessing
    float_tf = timm.data.create_transform(
        input_size=tuple(p["input_size"]), interpolation=p["interpolation"], mean=p["mean"], std=p["std"],
        crop_pct=p["crop_pct"], crop_mode=p["crop_mode"], is_training=False,
    )  # fmt: skip
    x = torch.stack([float_tf(ds.load_image(i)) for i in range(len(ds))])
    u = torch.stack([lite0.image_transform()(ds.load_image(i)) for i in range(len(ds))])
    assert u.dtype == torch.uint8 and torch.equal(lite0.normalize(u), x)
    with torch.inference_mode():
        ref = [lite0.capture(x[s : s + 4]) for s in range(0, len(ds), 4)]
    for name in [*lite0.probe_names, "logits"]:
        got = emb.logits if name == "logits" else emb[name]
        want = torch.cat([r[name] for r in ref]).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)


def test_text_rows_come_back_in_order_despite_length_bucketing(minilm) -> None:
    texts = ["short", "a much much longer sentence about the economy and jobs", "mid length text", "x"]
    ds = texts_dataset(texts, ["a", "b", "a", "b"])
    emb = extract(minilm, ds, ExtractConfig(batch_size=2))
    with torch.inference_mode():
        ref = torch.cat([minilm.capture(minilm.tokenize([t]))["pooled"] for t in texts]).numpy()
    np.testing.assert_allclose(emb["pooled"], ref, rtol=1e-4, atol=1e-5)
    assert emb.logits is None and emb.ids == ("0", "1", "2", "3")


def test_unreadable_images_are_skipped_and_counted(tiny_image_backbone, tmp_path: Path) -> None:
    root = write_digit_folder(tmp_path / "d", per_class=2)
    (root / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = open_data(root)
    emb = extract(tiny_image_backbone, ds)
    assert len(ds) == 7 and len(emb) == 6
    assert [s["id"] for s in emb.skipped] == ["1/broken.png"]
    assert emb.manifest["data"]["n_skipped"] == 1 and "1/broken.png" not in emb.ids
    assert emb.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # The unreadable file is not counted in its class (it was, as one of three class-1 items).
    assert emb.manifest["data"]["class_counts"] == {"0": 2, "1": 2, "2": 2}


def test_a_set_with_no_readable_image_is_an_error(tiny_image_backbone, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 1 items could be read"):
        extract(tiny_image_backbone, open_data(tmp_path))


def test_modality_mismatch_names_a_fitting_backbone(tiny_image_backbone) -> None:
    with pytest.raises(DataError, match="holds texts but backbone .* takes images.*minilm"):
        extract(tiny_image_backbone, texts_dataset(["a"]))


def test_second_run_reads_the_cache_and_runs_no_forward(lite0, digit_folder: Path) -> None:
    calls = []
    handle = lite0.model.conv_stem.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = embed(digit_folder, lite0, ExtractConfig(batch_size=6))
        n_first = len(calls)
        second = embed(digit_folder, lite0, ExtractConfig(batch_size=3))
    finally:
        handle.remove()
    assert n_first > 0 and len(calls) == n_first  # no forward pass the second time
    assert not first.from_cache and second.from_cache
    assert first.cache_key == second.cache_key
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    np.testing.assert_array_equal(first.logits, second.logits)


def test_cache_key_changes_with_what_changes_the_numbers(tiny_image_backbone, digit_folder: Path) -> None:
    from diag.models import load

    ds = open_data(digit_folder)
    key = cache.cache_key(tiny_image_backbone, ds, precision="fp32")
    assert key == cache.cache_key(tiny_image_backbone, open_data(digit_folder), precision="fp32")
    assert key != cache.cache_key(tiny_image_backbone, ds, precision="bf16")
    assert key != cache.cache_key(tiny_image_backbone, ds.subset(range(5)), precision="fp32")
    other_size = load("timm:test_efficientnet", pretrained=False, image_size=48)
    assert key != cache.cache_key(other_size, ds, precision="fp32")
    other_seed = load("timm:test_efficientnet", pretrained=False, image_size=32, seed=7)
    assert key != cache.cache_key(other_seed, ds, precision="fp32")


def test_a_corrupt_cache_entry_is_rebuilt(tiny_image_backbone, digit_folder: Path) -> None:
    first = embed(digit_folder, tiny_image_backbone)
    entry = cache._entry(cache.cache_dir(), first.cache_key)
    (entry / "embeddings.safetensors").write_bytes(b"torn write")
    again = embed(digit_folder, tiny_image_backbone)
    assert not again.from_cache
    np.testing.assert_array_equal(first["pooled"], again["pooled"])
    assert embed(digit_folder, tiny_image_backbone).from_cache


def test_embeddings_round_trip_and_detect_tampering(
    tiny_image_backbone, digit_folder: Path, tmp_path
) -> None:
    emb = embed(digit_folder, tiny_image_backbone)
    out = emb.save(tmp_path / "out")
    back = Embeddings.load(out)
    assert back.ids == emb.ids and back.classes == emb.classes and back.probes == emb.probes
    for name in emb:
        np.testing.assert_array_equal(back[name], emb[name])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["n"] == 12
    assert [p["name"] for p in manifest["probes"]] == tiny_image_backbone.probe_names
    blob = bytearray((out / "embeddings.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (out / "embeddings.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CacheError, match="checksum"):
        Embeddings.load(out)
    with pytest.raises(CacheError, match="not an embeddings folder"):
        Embeddings.load(tmp_path)


def test_nan_features_are_a_clear_error() -> None:
    feats = {"blocks.1": np.array([[0.0, 1.0], [np.nan, 2.0], [np.inf, 0.0]], np.float32)}
    with pytest.raises(
        DataError, match=r"probe 'blocks.1' has NaN/inf features in 2 rows \(first: \[1, 2\]\)"
    ):
        check_finite(feats, where="t")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"precision": "fp8"}, "precision must be one of"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"num_workers": -1}, "num_workers must be an integer >= 0"),
        ({"device": "tpu:0"}, "device must be"),
    ],
)
def test_bad_extract_config(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExtractConfig(**kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        ExtractConfig(device="cuda")


@pytest.mark.gpu
def test_gpu_bf16_matches_cpu_fp32(lite0, digit_folder: Path) -> None:
    ds = open_data(digit_folder)
    cpu = extract(lite0, ds, ExtractConfig(device="cpu"))
    gpu = extract(lite0, ds, ExtractConfig(device="cuda"))
    lite0.model.to("cpu").to(memory_format=torch.contiguous_format)
    assert gpu.manifest["precision"] == "bf16" and gpu.manifest["channels_last"]
    for name in cpu:
        a, b = cpu[name], gpu[name]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        assert cos.min() > 0.98, name


def test_the_thread_count_is_the_callers_again_after_a_pass(
    tiny_image_backbone, digit_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass uses the configured threads, and leaves the process's own setting as it found it (later
    CPU work, such as diagnose's gradient norms, must not depend on whether an embedding was cached)."""
    seen: list[int] = []
    capture = tiny_image_backbone.capture

    def spy(batch: torch.Tensor) -> dict:
        seen.append(torch.get_num_threads())
        return capture(batch)

    monkeypatch.setattr(tiny_image_backbone, "capture", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        extract(tiny_image_backbone, open_data(digit_folder), ExtractConfig(device="cpu", num_threads=2))
        assert seen and set(seen) == {2}
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)

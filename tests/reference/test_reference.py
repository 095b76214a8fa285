"""diag.reference: saved references (merge, disk format, refusal of foreign ones) and the source-free
BatchNorm profile."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diag.data import DataSet, open_data
from diag.engine.embeddings import Embeddings
from diag.errors import CacheError, ConfigError, DataError
from diag.models import ProbePoint, load
from diag.reference import (
    Reference,
    ReferenceSettings,
    batchnorm_layers,
    batchnorm_profile,
    load_reference,
    summarise,
)
from diag.stats.summaries import rff_mmd_test

BACKBONE = {"name": "toy", "modality": "image", "pretrained": True, "weights_sha256": "abc",
            "preprocessing": {"input_size": [3, 32, 32]}, "probes": []}  # fmt: skip


def toy_embeddings(n: int, *, seed: int, shift: float = 0.0, start: int = 0) -> Embeddings:
    rng = np.random.default_rng(seed)
    probes = (ProbePoint("a", 0, 3, "block", "gap"), ProbePoint("b", 1, 5, "pooled", "model"))
    labels = rng.integers(0, 3, size=n)
    return Embeddings(
        features={
            "a": (rng.normal(size=(n, 3)) + shift).astype(np.float32),
            "b": (rng.normal(size=(n, 5)) * 2 + labels[:, None]).astype(np.float32),
        },
        logits=None,
        labels=labels,
        classes=("x", "y", "z"),
        ids=tuple(f"item{start + i}" for i in range(n)),
        probes=probes,
        manifest={"backbone": BACKBONE, "data": {"name": f"toy{seed}"}},
    )


def concat(a: Embeddings, b: Embeddings) -> Embeddings:
    return Embeddings(
        features={k: np.concatenate([a[k], b[k]]) for k in a.features},
        logits=None,
        labels=np.concatenate([a.labels, b.labels]),  # type: ignore[list-item]
        classes=a.classes,
        ids=a.ids + b.ids,
        probes=a.probes,
        manifest=a.manifest,
    )


SETTINGS = ReferenceSettings(n_features=64, reservoir=50, seed=3)


def test_merged_references_equal_one_built_from_the_concatenated_data() -> None:
    a, b = toy_embeddings(120, seed=1), toy_embeddings(90, seed=2, start=120)
    first = Reference.from_embeddings(a, SETTINGS)
    whole = Reference.start(a, BACKBONE, SETTINGS, bandwidths=first.bandwidths).update(concat(a, b))
    second = Reference.start(b, BACKBONE, SETTINGS, bandwidths=first.bandwidths).update(b)
    merged = first.merge(second)
    assert merged.n == whole.n == 210
    for name, w in whole.layers.items():
        m = merged.layers[name]
        np.testing.assert_allclose(m.moments.mean, w.moments.mean, rtol=1e-9)
        np.testing.assert_allclose(m.moments.covariance, w.moments.covariance, rtol=1e-9)
        np.testing.assert_array_equal(m.embedding.fixed_sum, w.embedding.fixed_sum)  # exact
        np.testing.assert_array_equal(m.class_count, w.class_count)
        np.testing.assert_allclose(m.class_sum, w.class_sum, rtol=1e-9)
    # The moments are those of the data.
    both = concat(a, b)
    np.testing.assert_allclose(
        whole.layers["b"].moments.covariance, np.cov(both["b"].astype(float).T), rtol=1e-6
    )
    np.testing.assert_array_equal(whole.layers["b"].class_count, np.bincount(both.labels, minlength=3))
    # The merged reservoir holds real rows of the union, with their labels and ids.
    sample = merged.sample()
    assert len(sample) == 50 and len(set(sample.ids)) == 50
    lookup = {i: k for k, i in enumerate(both.ids)}
    rows = [lookup[i] for i in sample.ids]
    np.testing.assert_array_equal(sample["b"], both["b"][rows])
    np.testing.assert_array_equal(sample.labels, both.labels[rows])


def test_shards_with_other_bandwidths_do_not_merge() -> None:
    a, b = toy_embeddings(60, seed=1), toy_embeddings(60, seed=2, shift=5.0)
    with pytest.raises(DataError, match="same bandwidth"):
        Reference.from_embeddings(a, SETTINGS).merge(Reference.from_embeddings(b, SETTINGS))


def test_a_reference_round_trips_through_disk(tmp_path) -> None:
    ref = Reference.from_embeddings(toy_embeddings(80, seed=4), SETTINGS)
    ref.save(tmp_path / "ref")
    back = load_reference(f"ref:{tmp_path / 'ref'}")
    assert back.n == 80 and back.classes == ref.classes and back.bandwidths == ref.bandwidths
    for name, s in ref.layers.items():
        np.testing.assert_array_equal(back.layers[name].moments.outer, s.moments.outer)
        np.testing.assert_array_equal(back.layers[name].embedding.mean, s.embedding.mean)
    np.testing.assert_array_equal(back.sample()["a"], ref.sample()["a"])
    assert back.sample().ids == ref.sample().ids
    # No pickle: the tensor file is safetensors (an 8-byte header length, then JSON).
    head = (tmp_path / "ref" / "summaries.safetensors").read_bytes()[8:9]
    assert head == b"{"


def test_a_tampered_reference_is_refused(tmp_path) -> None:
    Reference.from_embeddings(toy_embeddings(40, seed=5), SETTINGS).save(tmp_path / "ref")
    blob = bytearray((tmp_path / "ref" / "summaries.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    (tmp_path / "ref" / "summaries.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CacheError, match="does not match the hash"):
        load_reference(tmp_path / "ref")
    with pytest.raises(CacheError, match="not a reference folder"):
        load_reference(tmp_path / "nothing")


def test_a_reference_of_another_backbone_says_what_differs(tmp_path) -> None:
    ref = Reference.from_embeddings(toy_embeddings(40, seed=6), SETTINGS)
    other = {**BACKBONE, "preprocessing": {"input_size": [3, 64, 64]}, "weights_sha256": "def"}
    with pytest.raises(DataError, match=r"weights_sha256: abc here, def in .*preprocessing"):
        ref.require_same_backbone(other)


def test_streaming_build_equals_a_single_pass(tiny_image_backbone, digit_folder) -> None:
    data = open_data(digit_folder)
    settings = ReferenceSettings(n_features=32, reservoir=5, seed=0)
    chunked = summarise(tiny_image_backbone, data, settings=settings, chunk_size=4)
    single = summarise(
        tiny_image_backbone, data, settings=settings, chunk_size=len(data), bandwidths=chunked.bandwidths
    )
    assert chunked.n == single.n == len(data) == 12
    for name, s in single.layers.items():
        c = chunked.layers[name]
        np.testing.assert_allclose(c.moments.mean, s.moments.mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(c.embedding.fixed_sum, s.embedding.fixed_sum)
    assert chunked.sources[0]["fingerprint"] == data.fingerprint()


def test_the_rff_test_against_a_reference_is_calibrated_on_real_embeddings(lite0) -> None:
    """Same-distribution splits (200 reference, 100 new) of the MNIST sample's features, Lite0 at 32 px."""
    from diag.engine.extract import extract

    data = open_data("samples:mnist")
    small = load("efficientnet_lite0", image_size=32)
    feats = extract(small, data)["blocks.4"]
    rng = np.random.default_rng(0)
    trials, rejected = 400, 0
    for t in range(trials):
        order = rng.permutation(len(feats))
        ref = Reference.start(
            Embeddings({"blocks.4": feats[:10]}, None, None, (), tuple("0123456789"), small.probes[5:6]),
            {}, ReferenceSettings(n_features=64, reservoir=2, seed=t),
        )  # fmt: skip
        emb = ref.layers["blocks.4"].embedding.update(feats[order[:200]])
        rejected += rff_mmd_test(emb, feats[order[200:]], n_draws=1000, random_state=t).p_value <= 0.05
    # Binomial(400, 0.05): sd 0.011; the band [0.03, 0.07] is 1.8 sd wide each way.
    assert 0.03 <= rejected / trials <= 0.07
    uci = extract(small, open_data("samples:uci-digits"))["blocks.4"]
    ref_emb = ref.layers["blocks.4"].embedding
    assert rff_mmd_test(ref_emb, uci[:100], n_draws=1000).p_value < 0.01


# ------------------------------------------------------------------------------------------------------
# Source-free: BatchNorm statistics


def _tiny_bn_backbone():
    bb = load("timm:test_efficientnet", pretrained=False, image_size=32)
    gen = torch.Generator().manual_seed(0)
    for _, _, m in batchnorm_layers(bb):  # non-trivial running statistics
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return bb


def test_batchnorm_profile_of_the_stem_equals_a_hand_computation(digit_folder) -> None:
    bb = _tiny_bn_backbone()
    data = open_data(digit_folder)
    model: torch.nn.Module = bb.model
    profile = batchnorm_profile(bb, data, n_buckets=2, n_splits=10)
    stem = next(b for b in profile.blocks if b.name == "stem")
    # By hand: the stem convolution of the normalised images, per-channel moments over (N, H, W), the
    # 1-D Gaussian W2 closed form in units of the running variance, averaged over channels.
    images = torch.stack([bb.transform()(data.load_image(i)) for i in range(len(data))])
    conv = model.conv_stem
    with torch.no_grad():
        x = F.conv2d(images, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    x = x.double()
    mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    bn = model.bn1
    rm, rv = bn.running_mean.double(), bn.running_var.double()
    w2 = ((mean - rm) ** 2 + (var.sqrt() - rv.sqrt()) ** 2) / (rv + bn.eps)
    assert stem.layer_scores["bn1"] == pytest.approx(float(w2.mean()), rel=1e-6)
    assert profile.blocks[0].name == "stem" and profile.n_items == len(data)
    assert all(0 < b.p_value <= 1 for b in profile.blocks)


def test_running_statistics_equal_to_the_data_give_a_zero_stem_score(digit_folder) -> None:
    bb = _tiny_bn_backbone()
    data = open_data(digit_folder)
    model: torch.nn.Module = bb.model
    images = torch.stack([bb.transform()(data.load_image(i)) for i in range(len(data))])
    with torch.no_grad():
        x = model.conv_stem(images).double()
    model.bn1.running_mean.copy_(x.mean(dim=(0, 2, 3)).float())
    model.bn1.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False).float())
    model.bn1.eps = 0.0
    stem = batchnorm_profile(bb, data, n_buckets=2, n_splits=10).blocks[0]
    assert stem.layer_scores["bn1"] == pytest.approx(0.0, abs=1e-9)


def test_a_layernorm_model_needs_a_data_reference(minilm) -> None:
    with pytest.raises(ConfigError, match="no BatchNorm layers.*diag reference build"):
        batchnorm_layers(minilm)


def test_too_small_a_target_is_refused(tiny_image_backbone, digit_folder) -> None:
    with pytest.raises(DataError, match="needs at least 32"):
        batchnorm_profile(tiny_image_backbone, open_data(digit_folder))


def test_reference_manifest_names_its_backbone_and_data(tmp_path, tiny_image_backbone, digit_folder) -> None:
    data: DataSet = open_data(digit_folder)
    ref = summarise(tiny_image_backbone, data, settings=ReferenceSettings(n_features=8, reservoir=4))
    ref.save(tmp_path / "r")
    manifest = json.loads((tmp_path / "r" / "reference.json").read_text())
    assert manifest["backbone"]["weights_sha256"] == tiny_image_backbone.weights_fingerprint()
    assert manifest["backbone"]["preprocessing"]["input_size"] == [3, 32, 32]
    assert manifest["n"] == 12 and manifest["sources"][0]["fingerprint"] == data.fingerprint()
    assert [x["name"] for x in manifest["layers"]] == [p.name for p in tiny_image_backbone.probes]


def test_a_layer_of_mostly_identical_rows_gets_the_width_of_its_distinct_distances() -> None:
    """Dead units make most rows equal: the median pairwise distance is 0, so the kernel width comes from
    the distinct distances (the median heuristic of diag.stats.shift), not a default of 1."""
    rng = np.random.default_rng(7)
    x = np.zeros((40, 3), np.float32)
    x[:6] = rng.normal(size=(6, 3)) * 5.0
    emb = Embeddings({"a": x}, None, None, (), (), (ProbePoint("a", 0, 3, "block", "gap"),))
    width = Reference.start(emb, BACKBONE, SETTINGS).bandwidths["a"]
    d = np.sqrt(((x[:, None, :].astype(float) - x[None, :, :]) ** 2).sum(-1))[np.triu_indices(40, k=1)]
    assert np.median(d) == 0 and width == pytest.approx(np.median(d[d > 0]), rel=1e-6) and width != 1.0

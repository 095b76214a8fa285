"""The Ray engine (diag/engine/distributed.py, diag/reference/shards.py) against the single-process path.

One local Ray instance (2 CPUs, no dashboard) serves the whole module; every comparison is on real data
(the bundled UCI digits) through the pretrained EfficientNet-Lite0 at 32 px, a few dozen items.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from diag.cli.main import main
from diag.config import DiagnoseConfig
from diag.data import DataSet, open_data
from diag.engine.distributed import connect, require_ray
from diag.engine.extract import ExtractConfig, extract
from diag.errors import ConfigError, MissingDependencyError
from diag.models import Backbone, load
from diag.pipeline import build_reference, diagnose, embed
from diag.reference import Reference, summarise
from diag.reference.shards import shard_summary

N = 48


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return load("efficientnet_lite0", image_size=32)


@pytest.fixture(scope="module")
def digits() -> DataSet:
    data = open_data("samples:uci-digits")
    rows = np.random.default_rng(0).choice(len(data), N, replace=False)
    return data.subset(np.sort(rows), name="uci-digits[48]")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def test_ray_embeddings_equal_the_single_process_ones_under_the_same_cache_key(
    ray_cluster: Any, backbone: Backbone, digits: DataSet, tmp_path: Path
):
    # Shards of 16 (three, over two actors, back in data order). Each CPU actor runs one torch thread (its
    # share of the 2 CPUs); so does the local pass here: another thread count changes the order of float32
    # sums inside the convolutions (1.4e-6 of the largest value measured at 2 threads against 1).
    local = extract(backbone, digits, ExtractConfig(num_threads=1))
    parquet = tmp_path / "parquet"
    config = ExtractConfig(engine="ray", ray_concurrency=2, ray_batch_size=16, ray_parquet=str(parquet))
    remote = embed(digits, backbone, config, cache_dir=tmp_path / "cache")
    assert remote.ids == local.ids
    assert np.array_equal(remote.labels, local.labels)
    assert list(remote.features) == list(local.features)
    for name in local.features:
        assert remote[name].shape == local[name].shape
        assert _rel(remote[name], local[name]) <= 1e-6, name
    assert remote.logits is not None and local.logits is not None
    assert _rel(remote.logits, local.logits) <= 1e-6
    engine = remote.manifest["engine"]
    assert engine["name"] == "ray" and engine["actors"] == 2 and engine["shard_size"] == 16
    assert engine["num_gpus"] == 0 and engine["cluster"]["cpus"] == 2
    assert remote.manifest["data"] == local.manifest["data"]
    # The cache key does not depend on the engine: the local path reads what the Ray path stored.
    again = embed(digits, backbone, ExtractConfig(), cache_dir=tmp_path / "cache")
    assert not remote.from_cache and again.from_cache and again.cache_key == remote.cache_key
    # Each shard's embeddings as Parquet: every row once, the same numbers.
    table = pq.read_table(parquet).to_pandas().sort_values("index")
    assert table["index"].tolist() == list(range(N)) and set(table["error"]) == {""}
    assert _rel(np.stack(table["feature:pooled"].to_numpy()), local["pooled"]) <= 1e-6


@pytest.mark.slow
def test_a_ray_diagnosis_reports_the_same_statistics(ray_cluster: Any, backbone: Backbone, digits: DataSet):
    mnist = open_data("samples:mnist")
    source = mnist.subset(np.arange(0, len(mnist), len(mnist) // N)[:N], name="mnist[48]")
    reports = []
    for engine in ({"num_threads": 1}, {"engine": "ray", "ray_concurrency": 2}):
        extract_cfg = ExtractConfig(**engine)
        config = DiagnoseConfig(extract=extract_cfg, n_permutations=200, use_cache=False, transfer=False)
        reports.append(diagnose(source, digits, backbone, config))
    local, remote = (r.to_dict() for r in reports)
    assert remote["shift"]["is_shift"] == local["shift"]["is_shift"]
    for a, b in zip(remote["layers"], local["layers"], strict=True):
        for key in ("mmd2", "frechet", "coral", "c2st_auc", "p_value"):
            if isinstance(b["shift"].get(key), float):
                assert a["shift"][key] == pytest.approx(b["shift"][key], rel=1e-6, abs=1e-9), (b["name"], key)


def test_merged_shard_summaries_equal_one_pass(backbone: Backbone, digits: DataSet):
    """No Ray: the reduce each actor runs, on three shards, merged, against one pass over every row."""
    emb = extract(backbone, digits)
    one = Reference.from_embeddings(emb)
    merged = None
    for start in range(0, N, 16):
        part = emb.subset(np.arange(start, start + 16))
        piece = shard_summary(backbone, digits, part, start, settings=one.settings, bandwidths=one.bandwidths)
        merged = piece if merged is None else merged.merge(piece)
    assert merged is not None and merged.n == one.n == N
    for name, s in one.layers.items():
        m = merged.layers[name]
        assert m.moments.count == s.moments.count
        assert _rel(m.moments.total, s.moments.total) <= 1e-9
        assert _rel(m.moments.outer, s.moments.outer) <= 1e-9
        assert _rel(m.embedding.fixed_sum, s.embedding.fixed_sum) <= 1e-9
        assert np.array_equal(m.class_count, s.class_count)
        assert _rel(m.class_sum, s.class_sum) <= 1e-9
    assert len(merged.reservoir.ids) == min(N, one.settings.reservoir)


@pytest.mark.slow
def test_a_ray_reference_equals_the_single_process_one(ray_cluster: Any, backbone: Backbone, digits: DataSet):
    local = summarise(backbone, digits, ExtractConfig(num_threads=1), chunk_size=16)
    remote = build_reference(digits, backbone, ExtractConfig(engine="ray", ray_concurrency=2), chunk_size=16)
    assert remote.n == local.n == N
    for name, width in local.bandwidths.items():  # both from the first chunk
        assert remote.bandwidths[name] == pytest.approx(width, rel=1e-6)
    for name, s in local.layers.items():
        r = remote.layers[name]
        assert r.moments.count == s.moments.count
        assert _rel(r.moments.total, s.moments.total) <= 1e-6
        assert _rel(r.moments.outer, s.moments.outer) <= 1e-6
        assert _rel(r.embedding.fixed_sum, s.embedding.fixed_sum) <= 1e-6
        assert np.array_equal(r.class_count, s.class_count)
    assert sorted(remote.reservoir.ids) == sorted(local.reservoir.ids)  # reservoir (2000) holds all 48
    assert remote.sources == local.sources


def test_without_ray_the_message_names_the_extra(monkeypatch: pytest.MonkeyPatch, backbone, digits):
    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(MissingDependencyError, match=r"--engine ray .* pip install 'diag\[ray\]'"):
        require_ray()
    with pytest.raises(MissingDependencyError, match="diag\\[ray\\]"):
        embed(digits, backbone, ExtractConfig(engine="ray"), use_cache=False)


@pytest.mark.parametrize(
    ("address", "says"),
    [("127.0.0.1:1", "nothing answers there"), ("no-port", "must be HOST:PORT"), ("host:x", "HOST:PORT")],
)
def test_a_bad_ray_address_is_refused_at_once(address: str, says: str):
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match=says) as info:
        connect(address)
    assert address in str(info.value) and "ray start --head" in str(info.value)


def test_the_cli_refuses_a_bad_ray_address_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("ray")
    argv = ["embed", "samples:uci-digits", "-b", "timm:test_efficientnet", "--random-init"]
    argv += ["--image-size", "32", "-o", str(tmp_path / "e"), "-q"]
    argv += ["--engine", "ray", "--ray-address", "127.0.0.1:1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--ray-address 127.0.0.1:1" in err and "ray start --head" in err


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"engine": "spark"}, "engine must be one of local, ray"),
        ({"ray_address": "h:1"}, "only apply with engine ray"),
        ({"engine": "ray", "ray_concurrency": 0}, "ray_concurrency must be a positive integer"),
    ],
)
def test_engine_options_are_checked(options: dict[str, Any], says: str):
    with pytest.raises(ConfigError, match=says):
        ExtractConfig(**options)

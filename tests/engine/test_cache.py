"""The content-keyed embedding cache: a cache problem never stops a diagnosis.

Each broken entry is made in the test. Entries here are small synthetic :class:`Embeddings` (no forward
pass) stored under a private ``root``; the end-to-end cases go through ``diag.pipeline.embed`` with the
tiny backbone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diag.engine import cache
from diag.engine.embeddings import MANIFEST_CHECKSUM, Embeddings
from diag.errors import CacheError
from diag.models import ProbePoint
from diag.pipeline import embed

KEY = "ab" + "0" * 62
N = 30


def make_embeddings(key: str = KEY, n: int = N) -> Embeddings:
    rng = np.random.default_rng(0)
    probes = (ProbePoint("stem", 0, 4, "stem", "gap"), ProbePoint("pooled", 1, 3, "pooled", "gap"))
    return Embeddings(
        features={p.name: rng.normal(size=(n, p.dim)).astype(np.float32) for p in probes},
        logits=rng.normal(size=(n, 5)).astype(np.float32),
        labels=np.arange(n, dtype=np.int64) % 3,
        classes=("a", "b", "c"),
        ids=tuple(f"{i:03d}.png" for i in range(n)),
        probes=probes,
        manifest={"cache_key": key, "backbone": {"name": "synthetic"}},
    )


def entry_of(root: Path, key: str = KEY) -> Path:
    return root / "embeddings" / key[:2] / key


def edit_manifest(entry: Path, change: Callable[[dict[str, Any]], Any], *, resign: bool = False) -> None:
    """Rewrite ``entry``'s manifest as ``change(manifest)``; ``resign`` recomputes its checksum (a careful
    forger, or a manifest written by a buggy diag), so only the agreement checks can catch it."""
    path = entry / "manifest.json"
    manifest = json.loads(path.read_text())
    new = change(manifest)
    if resign and isinstance(new, dict):
        body = {k: v for k, v in new.items() if k != MANIFEST_CHECKSUM}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        new[MANIFEST_CHECKSUM] = hashlib.sha256(canonical).hexdigest()
    path.write_text(json.dumps(new))


def _without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda m: {k: v for k, v in m.items() if k != key}


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda m: {**m, key: value}


BROKEN_MANIFESTS = {
    "without arrays": (_without("arrays"), False),
    "without arrays, re-signed": (_without("arrays"), True),
    "a JSON list": (lambda m: [m], False),
    "a JSON string": (lambda m: "manifest", False),
    "ids cut to 10": (lambda m: {**m, "ids": m["ids"][:10]}, False),
    "ids cut to 10 and n, re-signed": (lambda m: {**m, "ids": m["ids"][:10], "n": 10}, True),
    "ids not a list, re-signed": (_set("ids", "000.png"), True),
    "classes renamed": (_set("classes", ["x", "y", "z"]), False),
    "without probes, re-signed": (_without("probes"), True),
    "a probe of another dim, re-signed": (
        lambda m: {**m, "probes": [{**m["probes"][0], "dim": 99}, m["probes"][1]]},
        True,
    ),
    "probes not dicts, re-signed": (_set("probes", [1, 2]), True),
    "schema_version a string": (_set("schema_version", "one"), True),
    "arrays a list, re-signed": (_set("arrays", ["embeddings.safetensors"]), True),
    "has_logits wrong, re-signed": (_set("has_logits", False), True),
}


@pytest.mark.parametrize("case", list(BROKEN_MANIFESTS))
def test_a_broken_manifest_is_a_miss_that_is_dropped_then_rebuilt(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    change, resign = BROKEN_MANIFESTS[case]
    emb = make_embeddings()
    entry = cache.store(emb, root=tmp_path)
    assert entry == entry_of(tmp_path)
    edit_manifest(entry, change, resign=resign)
    with pytest.raises(CacheError, match=r"manifest\.json: "):
        Embeddings.load(entry)
    with caplog.at_level(logging.WARNING, logger="diag.engine.cache"):
        assert cache.lookup(KEY, root=tmp_path) is None
    assert "dropped a cache entry that does not load (it is rebuilt, nothing to do)" in caplog.text
    assert "manifest.json" in caplog.text and "Delete the folder" not in caplog.text
    assert not entry.exists()
    cache.store(emb, root=tmp_path)
    back = cache.lookup(KEY, root=tmp_path)
    assert back is not None and back.from_cache and back.ids == emb.ids
    np.testing.assert_array_equal(back["stem"], emb["stem"])


@pytest.mark.parametrize(
    "text",
    [b"", b"{", b"null", b"\xff\xfe not utf-8", b"[" * 100_000],
    ids=["empty", "torn", "null", "not utf-8", "nested too deep"],
)
def test_an_unreadable_manifest_is_a_miss_that_is_dropped(text: bytes, tmp_path: Path) -> None:
    entry = cache.store(make_embeddings(), root=tmp_path)
    assert entry is not None
    (entry / "manifest.json").write_bytes(text)
    with pytest.raises(CacheError, match=r"manifest\.json: .*Delete the folder and embed again\.$"):
        Embeddings.load(entry)
    assert cache.lookup(KEY, root=tmp_path) is None and not entry.exists()


def test_a_manifest_cut_to_fewer_ids_is_never_served_beside_more_rows(tmp_path: Path) -> None:
    entry = cache.store(make_embeddings(), root=tmp_path)
    assert entry is not None
    edit_manifest(entry, lambda m: {**m, "ids": m["ids"][:10], "n": 10}, resign=True)
    with pytest.raises(CacheError, match="features/stem has shape \\(30, 4\\) but ids name 10 rows"):
        Embeddings.load(entry)
    entry = cache.store(make_embeddings("cd" + "0" * 62), root=tmp_path)
    assert entry is not None
    edit_manifest(entry, lambda m: {**m, "ids": m["ids"][:10], "n": 10})  # its checksum is now stale
    with pytest.raises(CacheError, match="does not match its checksum: the manifest was edited"):
        Embeddings.load(entry)


def test_an_entry_written_before_the_manifest_checksum_still_loads(tmp_path: Path) -> None:
    emb = make_embeddings()
    entry = cache.store(emb, root=tmp_path)
    assert entry is not None
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and len(manifest[MANIFEST_CHECKSUM]) == 64
    edit_manifest(entry, _without(MANIFEST_CHECKSUM))  # exactly what diag wrote before the field existed
    back = cache.lookup(KEY, root=tmp_path)
    assert back is not None and back.ids == emb.ids and back.classes == emb.classes
    # Saving what was loaded signs it afresh (the loaded checksum is not carried over stale).
    again = Embeddings.load(back.with_manifest(note="re-saved").save(tmp_path / "out"))
    assert again.manifest["note"] == "re-saved"


def test_an_entry_path_that_is_a_file_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    entry_of(tmp_path).parent.mkdir(parents=True)
    entry_of(tmp_path).write_text("not a folder")
    assert cache.lookup(KEY, root=tmp_path) is None
    with caplog.at_level(logging.WARNING, logger="diag.engine.cache"):
        assert cache.store(make_embeddings(), root=tmp_path) == entry_of(tmp_path)
    assert "a file where a cache folder belongs" in caplog.text
    assert cache.lookup(KEY, root=tmp_path) is not None


def test_an_entry_folder_without_a_manifest_is_replaced(tmp_path: Path) -> None:
    (entry_of(tmp_path) / "leftover").mkdir(parents=True)
    assert cache.lookup(KEY, root=tmp_path) is None
    assert cache.store(make_embeddings(), root=tmp_path) == entry_of(tmp_path)
    assert cache.lookup(KEY, root=tmp_path) is not None


def test_entries_get_the_usual_permissions_not_0700(tmp_path: Path) -> None:
    """A shared cache: other users can read an entry (they cannot write it, and need not)."""
    entry = cache.store(make_embeddings(), root=tmp_path)
    assert entry is not None
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o777 & ~umask


def test_a_cache_dir_that_is_a_file_is_bypassed(
    tiny_image_backbone, digit_folder: Path, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("DIAG_CACHE_DIR", str(not_a_folder))
    with caplog.at_level(logging.WARNING, logger="diag.engine.cache"):
        first = embed(digit_folder, tiny_image_backbone)
        second = embed(digit_folder, tiny_image_backbone)
    assert not first.from_cache and not second.from_cache and len(first) == 12
    np.testing.assert_array_equal(first["pooled"], second["pooled"])
    assert f"cannot write to DIAG_CACHE_DIR={not_a_folder} (it is a file, not a folder)" in caplog.text
    assert "the embeddings are not cached" in caplog.text
    assert not_a_folder.read_text() == "x"  # the user's file is left alone
    assert cache.store(make_embeddings(), root=not_a_folder) is None


def test_a_cache_this_user_cannot_write_is_bypassed(tmp_path: Path, monkeypatch, caplog) -> None:
    def denied(*args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied", str(tmp_path / "embeddings" / "ab"))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with caplog.at_level(logging.WARNING, logger="diag.engine.cache"):
        assert cache.store(make_embeddings(), root=tmp_path) is None
    assert f"cannot write to --cache-dir {tmp_path}" in caplog.text and "Permission denied" in caplog.text


def test_an_entry_this_user_cannot_read_is_bypassed_not_dropped(tmp_path: Path, monkeypatch, caplog) -> None:
    entry = cache.store(make_embeddings(), root=tmp_path)
    assert entry is not None

    def denied(folder: Path, **kwargs: Any) -> Embeddings:
        raise PermissionError(13, "Permission denied", str(Path(folder) / "manifest.json"))

    monkeypatch.setattr(Embeddings, "load", denied)
    with caplog.at_level(logging.WARNING, logger="diag.engine.cache"):
        assert cache.lookup(KEY, root=tmp_path) is None
    assert "cannot read the cache entry" in caplog.text and "Permission denied" in caplog.text
    assert entry.is_dir()  # another user's valid entry is not ours to delete


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads and writes any folder")
def test_another_users_cache_is_bypassed_for_real(tmp_path: Path) -> None:
    entry = cache.store(make_embeddings(), root=tmp_path)
    assert entry is not None
    os.chmod(entry, 0o700 & ~stat.S_IRWXU)  # as an entry of another user looked before: unreadable
    os.chmod(entry.parent, stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert cache.lookup(KEY, root=tmp_path) is None
        assert cache.store(make_embeddings("ab" + "1" * 62), root=tmp_path) is None
    finally:
        os.chmod(entry.parent, 0o755)
        os.chmod(entry, 0o755)


def test_temporary_folders_of_a_killed_store_are_swept(tmp_path: Path) -> None:
    shard = tmp_path / "embeddings" / "cd"
    stale, fresh = shard / ".cd0000000000.killed", shard / ".cd0000000000.writing"
    for tmp in (stale, fresh):
        tmp.mkdir(parents=True)
        (tmp / "embeddings.safetensors").write_bytes(b"half")
    old = time.time() - cache.STALE_TEMP_S - 60
    os.utime(stale / "embeddings.safetensors", (old, old))
    os.utime(stale, (old, old))
    assert cache.store(make_embeddings(), root=tmp_path) is not None  # a store in another shard sweeps
    assert not stale.exists() and fresh.is_dir()  # a store in progress elsewhere is left alone
    assert sorted(p.name for p in (tmp_path / "embeddings" / "ab").iterdir()) == [KEY]


def test_a_broken_entry_never_stops_embed(tiny_image_backbone, digit_folder: Path) -> None:
    first = embed(digit_folder, tiny_image_backbone)
    entry = entry_of(cache.cache_dir(), first.cache_key)
    (entry / "manifest.json").write_text("[]")
    again = embed(digit_folder, tiny_image_backbone)
    assert not again.from_cache
    np.testing.assert_array_equal(first["pooled"], again["pooled"])
    assert embed(digit_folder, tiny_image_backbone).from_cache


def _store_after(barrier: Any, root: str, queue: Any) -> None:
    barrier.wait()
    try:
        queue.put(str(cache.store(make_embeddings(), root=root)))
    except BaseException as exc:  # reported to the parent, which fails the test
        queue.put(repr(exc))


@pytest.mark.slow
def test_two_processes_storing_the_same_key_at_once_both_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_store_after, args=(barrier, str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == [str(entry_of(tmp_path))] * 2
    assert [p.exitcode for p in procs] == [0, 0]
    back = cache.lookup(KEY, root=tmp_path)
    assert back is not None and back.ids == make_embeddings().ids
    assert sorted(p.name for p in entry_of(tmp_path).parent.iterdir()) == [KEY]  # no temporary left


def test_two_threads_storing_the_same_key_at_once_both_succeed(tmp_path: Path) -> None:
    """The race of two processes (decided by ``rename`` in the kernel), cheap enough for every run."""
    import threading

    for round_ in range(5):
        root = tmp_path / str(round_)
        barrier, results = threading.Barrier(4), []

        def one(root: Path = root, barrier: threading.Barrier = barrier, results: list = results) -> None:
            barrier.wait()
            results.append(cache.store(make_embeddings(), root=root))

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [entry_of(root)] * 4
        assert cache.lookup(KEY, root=root) is not None

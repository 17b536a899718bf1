"""The content-addressed store: objects, manifests, refs, verify, gc and prune."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.store import ENV, TAG, ingest_tree, manifest, put_files

from warmer.errors import BundleError, StoreError, UsageError
from warmer.store import FileEntry, Manifest, Store, cas
from warmer.store.cas import WHOLE_FILE_LIMIT, ObjectStore, digest_bytes, digest_file

EMPTY_BLAKE3 = "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def object_files(store: Store) -> list[Path]:
    return [path for path, digest in store.objects.iter_entries() if digest is not None]


def temp_files(store: Store) -> list[Path]:
    return [path for path, digest in store.objects.iter_entries() if digest is None]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store") as opened:
        yield opened


# -- objects ---------------------------------------------------------------------------------


def test_digests_carry_the_algorithm_and_match_blake3(tmp_path: Path) -> None:
    assert digest_bytes(b"") == EMPTY_BLAKE3
    (tmp_path / "empty").write_bytes(b"")
    assert digest_file(tmp_path / "empty") == (EMPTY_BLAKE3, 0)


def test_objects_are_sharded_read_only_and_stored_once(tmp_path: Path) -> None:
    objects = ObjectStore(tmp_path / "objects")
    source = tmp_path / "kernel.cubin"
    source.write_bytes(b"\x7fELF" + bytes(range(256)) * 10)
    digest, size = objects.put_file(source)
    assert (digest, size) == digest_file(source)
    objects.publish()
    hexdigest = digest.removeprefix("blake3:")
    assert objects.path(digest) == tmp_path / "objects" / hexdigest[:2] / hexdigest[2:]
    assert stat.S_IMODE(objects.path(digest).stat().st_mode) == 0o444
    assert objects.put_bytes(source.read_bytes()) == digest
    assert objects.put_stream(io.BytesIO(source.read_bytes()))[0] == digest
    assert len(list(objects.iter_entries())) == 1
    with objects.open(digest) as handle:
        assert handle.read() == source.read_bytes()


def test_big_files_stream_through_a_temp_file_and_dedupe(tmp_path: Path) -> None:
    objects = ObjectStore(tmp_path / "objects")
    big = tmp_path / "big.so"
    big.write_bytes(os.urandom(WHOLE_FILE_LIMIT + 12345))
    first = objects.put_file(big)
    assert first == digest_file(big)
    assert objects.put_file(big) == first
    objects.publish()
    assert [digest for _, digest in objects.iter_entries()] == [first[0]]
    assert objects.check(first[0])


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync-each"])
def test_puts_are_staged_until_published_in_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: bool
) -> None:
    """Until publish, an object is a temp file: readable and deduplicated, but under no
    object name, so a crash before the batch is durable leaves only garbage. Where there is
    no syncfs, publish fsyncs each file and directory instead."""
    if not syncfs:
        monkeypatch.setattr(cas, "_syncfs", None)
    objects = ObjectStore(tmp_path / "objects")
    small = objects.put_bytes(b"small")
    streamed, _ = objects.put_stream(io.BytesIO(b"streamed" * 1000))
    assert objects.put_bytes(b"small") == small and objects.has(small)
    assert [digest for _, digest in objects.iter_entries()] == [None, None]
    with objects.open(streamed) as handle:
        assert handle.read() == b"streamed" * 1000
    objects.publish()
    assert sorted(digest for _, digest in objects.iter_entries()) == sorted([small, streamed])
    assert objects.check(small) and objects.check(streamed)
    objects.put_bytes(b"given up")
    objects.discard()
    assert len(list(objects.iter_entries())) == 2


def test_a_short_stream_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    objects = ObjectStore(tmp_path / "objects")
    with pytest.raises(StoreError, match="ended after 3 of 10 bytes"):
        objects.put_stream(io.BytesIO(b"abc"), size=10)
    assert list(objects.iter_entries()) == []
    digest, size = objects.put_stream(io.BytesIO(b"abcdef-and-more"), size=6)
    assert (digest, size) == (digest_bytes(b"abcdef"), 6)


def test_a_missing_object_is_a_store_error(tmp_path: Path) -> None:
    objects = ObjectStore(tmp_path / "objects")
    with pytest.raises(StoreError, match="missing"):
        objects.open(EMPTY_BLAKE3)
    assert not objects.check(EMPTY_BLAKE3)
    with pytest.raises(StoreError, match="not a blake3 digest"):
        objects.path("sha256:" + "0" * 64)


# -- manifests -------------------------------------------------------------------------------

DIGEST = "blake3:" + "ab" * 32


def entry_dict(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "path": "/root/.triton/cache/KEY/k.cubin",
        "kind": "triton",
        "digest": DIGEST,
        "size": 12,
        "mode": 0o644,
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"path": "root/.triton/k"}, "path"),
        ({"path": "/root/../etc/passwd"}, "path"),
        ({"path": "/root//k"}, "path"),
        ({"path": "/root/./k"}, "path"),
        ({"path": "/"}, "path"),
        ({"path": 7}, "path"),
        ({"kind": "ccache"}, "kind"),
        ({"digest": "blake3:ABC"}, "digest"),
        ({"digest": "sha256:" + "ab" * 32}, "digest"),
        ({"size": -1}, "size"),
        ({"size": "12"}, "size"),
        ({"size": True}, "size"),
        ({"mode": 0o17777}, "mode"),
        ({"mode": -1}, "mode"),
    ],
)
def test_file_entries_are_validated_and_errors_name_the_field(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(BundleError, match=f"^{field}: "):
        FileEntry.from_dict(entry_dict(**changes))


def test_file_entry_strips_setuid_setgid_and_sticky_bits() -> None:
    assert FileEntry.from_dict(entry_dict(mode=0o7755)).mode == 0o755
    with pytest.raises(BundleError, match="missing size, unknown owner"):
        FileEntry.from_dict({**{k: v for k, v in entry_dict().items() if k != "size"}, "owner": 0})


def test_manifest_is_canonical_sorted_and_round_trips() -> None:
    files = [
        FileEntry("/b/k.json", "triton", DIGEST, 3, 0o644),
        FileEntry("/a/k.cubin", "other", "blake3:" + "cd" * 32, 5, 0o600),
    ]
    made = Manifest("tiny-cpu", ENV, TAG, "blake3:0123", tuple(files), job={"name": "tiny-cpu"})
    assert [entry.path for entry in made.files] == ["/a/k.cubin", "/b/k.json"]
    data = made.to_bytes()
    document = json.loads(data)
    assert document["format"] == 1
    assert document["content_id"] == made.content_id and len(made.content_id) == 12
    assert data == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert made.digest == digest_bytes(data)
    again = Manifest.from_bytes(data)
    assert again == made and again.digest == made.digest
    assert made.ref == f"tiny-cpu@{TAG}" and made.total_size == 8


def test_content_id_depends_on_files_only() -> None:
    files = (FileEntry("/a/k", "triton", DIGEST, 3, 0o644),)
    made = Manifest("one", ENV, TAG, "blake3:0123", files)
    verified = made.with_verify({"hit_rate": 1.0, "hits": 3, "misses": 0})
    renamed = Manifest("two", {}, "other-tag", "blake3:4567", files)
    assert made.content_id == verified.content_id == renamed.content_id
    assert made.digest != verified.digest
    changed = Manifest(
        "one", ENV, TAG, "blake3:0123", (FileEntry("/a/k", "triton", DIGEST, 3, 0o600),)
    )
    assert changed.content_id != made.content_id


def test_duplicate_paths_and_bad_names_are_refused() -> None:
    entry = FileEntry("/a/k", "triton", DIGEST, 3, 0o644)
    with pytest.raises(BundleError, match="listed twice"):
        Manifest("one", ENV, TAG, "blake3:0123", (entry, entry))
    with pytest.raises(BundleError, match=r"^name: "):
        Manifest("a@b", ENV, TAG, "blake3:0123", (entry,))
    with pytest.raises(BundleError, match=r"^env_tag: "):
        Manifest("one", ENV, "x/../y", "blake3:0123", (entry,))


def good_document() -> dict[str, object]:
    files = (FileEntry("/a/k", "triton", DIGEST, 3, 0o644),)
    document: dict[str, object] = json.loads(Manifest("one", ENV, TAG, "b:1", files).to_bytes())
    return document


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 2}, "^format: 2 is not supported"),
        ({"format": True}, "^format: "),
        ({"content_id": "000000000000"}, "^content_id: "),
        ({"files": {"/a/k": DIGEST}}, "^files: must be a list"),
        ({"files": [entry_dict(path="../k")]}, r"^files\[0\]: path: "),
        ({"env": ["torch"]}, "^env: "),
        ({"extra": 1}, "unknown field"),
        ({"name": None}, "^name: "),
    ],
)
def test_from_bytes_refuses_anything_wrong(change: dict[str, object], message: str) -> None:
    document = {**good_document(), **change}
    with pytest.raises(BundleError, match=message):
        Manifest.from_bytes(json.dumps(document).encode())


def test_from_bytes_refuses_non_json_and_missing_fields() -> None:
    with pytest.raises(BundleError, match="not UTF-8 JSON"):
        Manifest.from_bytes(b"\xff\xfe")
    with pytest.raises(BundleError, match="must be a JSON object"):
        Manifest.from_bytes(b"[]")
    document = good_document()
    del document["env_tag"]
    with pytest.raises(BundleError, match="lacks env_tag"):
        Manifest.from_bytes(json.dumps(document).encode())


# -- store: commit and lookup -----------------------------------------------------------------


def test_store_layout_has_cachedir_tag_and_index(store: Store) -> None:
    assert store.list() == [] and store.gc().objects_removed == 0 and store.verify().ok
    assert not store.root.parent.exists(), "reading a missing store created it"
    store.put_bytes(b"x")
    assert (
        (store.root / "CACHEDIR.TAG")
        .read_bytes()
        .startswith(b"Signature: 8a477f597d28d172789f06886806bc55")
    )
    assert store.root.name == "store-v1"
    assert (store.root / "lock").is_file() and (store.root / "index.sqlite").is_file()
    with sqlite3.connect(store.root / "index.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_real_triton_caches_dedupe_across_snapshots(store: Store, triton_cache: Path) -> None:
    entries = ingest_tree(store, triton_cache, "/root/.triton/cache", "triton")
    assert len(entries) > 10
    first = store.commit(manifest("first", entries))
    extra = put_files(store, {"/root/.cache/vllm/config.json": b'{"a": 1}'}, kind="vllm")
    second = store.commit(manifest("second", [*entries, *extra]))
    distinct = {entry.digest for entry in entries} | {extra[0].digest}
    # Files stored once, plus one manifest per snapshot.
    assert len(object_files(store)) == len(distinct) + 2
    assert store.stored_size() == sum(
        {e.digest: e.size for e in [*entries, *extra]}.values()
    ) + sum(store.objects.path(info.snapshot).stat().st_size for info in (first, second))
    assert first.files == len(entries) and first.size == sum(entry.size for entry in entries)
    _, loaded = store.resolve("first")
    assert loaded.files == tuple(sorted(entries, key=lambda e: e.path))
    for entry in loaded.files:
        with store.open_object(entry.digest) as handle:
            cached = triton_cache / entry.path.removeprefix("/root/.triton/cache/")
            assert handle.read() == cached.read_bytes()


def test_commit_refuses_a_manifest_whose_objects_are_missing(store: Store) -> None:
    entry = FileEntry("/a/k", "triton", digest_bytes(b"never stored"), 12, 0o644)
    with pytest.raises(StoreError, match="1 object"):
        store.commit(manifest("one", [entry]))
    assert store.list() == []


def test_commit_to_an_existing_ref_replaces_it_and_keeps_the_pin(store: Store) -> None:
    old = store.commit(manifest("job", put_files(store, {"/a/k": b"one"})))
    store.pin("job")
    new = store.commit(manifest("job", put_files(store, {"/a/k": b"two"})))
    assert new.ref == old.ref and new.snapshot != old.snapshot
    assert [info.snapshot for info in store.list()] == [new.snapshot]
    assert store.list()[0].pinned
    with store.open_object(store.resolve("job")[1].files[0].digest) as handle:
        assert handle.read() == b"two"


def test_a_replaced_snapshot_stays_as_history_until_pruned(store: Store) -> None:
    """A verified snapshot replaced by a plain rerun is kept, listed, resolvable by id and
    live for gc; a prune (the user asking) drops it, oldest use first."""
    verified = manifest("job", put_files(store, {"/a/k": b"one"})).with_verify({"hit_rate": 1.0})
    old = store.commit(verified)
    new = store.commit(manifest("job", put_files(store, {"/a/k": b"two"})))
    again = store.commit(manifest("job", put_files(store, {"/a/k": b"two"})))
    assert again.snapshot == new.snapshot  # the same snapshot again is no new history
    [earlier] = store.history("job@" + TAG)
    assert (earlier.snapshot, earlier.created, earlier.pinned) == (old.snapshot, old.created, False)
    assert earlier.replaced is not None and earlier.replaced >= old.created
    assert store.gc().objects_removed == 0 and store.verify().garbage == 0
    info, found = store.resolve(old.short_id)
    assert info.replaced is not None and found.verify == {"hit_rate": 1.0}
    assert store.resolve("job")[0].snapshot == new.snapshot  # the name is the current one
    # Committing the old snapshot again makes it current and the other one history.
    store.commit(verified)
    assert [i.snapshot for i in store.history()] == [new.snapshot]
    plan = store.plan_prune(max_size=0, older_than=None)
    assert {(i.snapshot, i.replaced is None) for i in plan.items} == {
        (new.snapshot, False),
        (old.snapshot, True),
    }
    assert plan.execute().freed == plan.expected_freed
    assert store.list() == store.history() == [] and object_files(store) == []


def test_rm_plans_refs_with_their_history_and_refuses_pins(store: Store) -> None:
    one = store.commit(manifest("one", put_files(store, {"/a": b"shared", "/b": b"1"})))
    store.commit(manifest("one", put_files(store, {"/a": b"shared", "/b": b"1b"})))
    two = store.commit(manifest("two", put_files(store, {"/a": b"shared", "/b": b"2"})))
    with pytest.raises(UsageError, match="nothing to remove"):
        store.plan_remove([], force=False)
    store.pin("two")
    with pytest.raises(UsageError, match=r"pinned.*--force"):
        store.plan_remove(["one", "two"], force=False)
    plan = store.plan_remove(["one"], force=False)
    assert {i.snapshot for i in plan.items} == {one.snapshot, store.resolve("one")[0].snapshot}
    assert store.list() != [] and len(store.history()) == 1  # planning changes nothing
    result = plan.execute()
    assert len(result.removed) == 2 and result.kept == ()
    assert [i.ref for i in store.list()] == [two.ref] and store.history() == []
    assert store.gc().bytes_freed == plan.expected_freed  # "shared" stays: two holds it
    store.plan_remove(["two"], force=True).execute()
    assert store.list() == []


def test_rm_of_an_earlier_snapshot_by_id_keeps_the_ref(store: Store) -> None:
    old = store.commit(manifest("job", put_files(store, {"/a": b"1"})))
    new = store.commit(manifest("job", put_files(store, {"/a": b"2"})))
    store.plan_remove([old.short_id], force=False).execute()
    assert store.list() == [store.resolve(new.ref, touch=False)[0]] and store.history() == []


def test_a_pin_or_a_use_after_planning_keeps_the_ref(store: Store) -> None:
    refs = aged_store(store)
    plan = store.plan_prune(max_size=0, older_than=None)
    store.pin("old")
    store.resolve("mid")  # used meanwhile
    result = plan.execute()
    assert [i.ref for i in result.removed] == [refs["new"]]
    assert {i.ref for i in result.kept} == {refs["old"], refs["mid"]}
    assert sorted(i.name for i in store.list()) == ["mid", "old"]
    assert store.verify().ok


def test_verify_snapshot_rehashes_one_snapshot(store: Store) -> None:
    good = store.commit(manifest("good", put_files(store, {"/a": b"good" * 100})))
    bad = store.commit(manifest("bad", put_files(store, {"/a": b"bad" * 100})))
    digest = store.resolve("bad", touch=False)[1].files[0].digest
    flip_byte(store.objects.path(digest))
    assert store.verify_snapshot(good.ref).ok
    report = store.verify_snapshot(bad.short_id)
    assert report.objects_checked == 2 and len(report.problems) == 1
    assert digest in report.problems[0]


def flip_byte(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))


def test_resolve_accepts_refs_names_and_id_prefixes(store: Store) -> None:
    cpu = store.commit(manifest("llama", put_files(store, {"/a/k": b"cpu"})))
    gpu = store.commit(manifest("llama", put_files(store, {"/a/k": b"gpu"}), tag="cuda12-cc90"))
    solo = store.commit(manifest("solo", put_files(store, {"/a/k": b"cpu"})))
    assert store.resolve(f"llama@{TAG}")[0].snapshot == cpu.snapshot
    assert store.resolve("llama@cuda12-cc90")[0].snapshot == gpu.snapshot
    assert store.resolve("solo")[0].ref == solo.ref
    assert store.resolve(solo.snapshot)[0].ref == solo.ref
    assert store.resolve(solo.short_id[:6])[0].ref == solo.ref
    assert store.resolve(gpu.content_id)[0].ref == gpu.ref
    with pytest.raises(UsageError, match=f"matches 2 snapshots(.|\n)*llama@{TAG}"):
        store.resolve("llama")
    # Same files, so the same content id: ambiguous on purpose.
    assert solo.content_id == cpu.content_id
    with pytest.raises(UsageError, match="matches 2 snapshots"):
        store.resolve(solo.content_id)
    with pytest.raises(UsageError, match="no snapshot matches 'nothing'"):
        store.resolve("nothing")
    with pytest.raises(UsageError, match="at least 6 hex"):
        store.resolve(solo.short_id[:5])


def test_resolve_records_the_access_and_show_does_not(store: Store) -> None:
    created = store.commit(manifest("job", put_files(store, {"/a/k": b"x"})))
    time.sleep(0.01)
    assert store.resolve("job", touch=False)[0].last_access == created.last_access
    assert store.list()[0].last_access == created.last_access
    touched, _ = store.resolve("job")
    assert touched.last_access > created.last_access
    assert store.list()[0].last_access == touched.last_access
    assert store.list()[0].created == created.created


def test_ref_lookups_use_the_indexes(store: Store) -> None:
    store.put_bytes(b"")  # creates the store and its index
    with sqlite3.connect(store.root / "index.sqlite") as db:
        plans = {
            "ref": "SELECT * FROM refs WHERE ref = 'a@b'",
            "name": "SELECT * FROM refs WHERE name = 'a'",
            "prefix": "SELECT * FROM refs WHERE "
            "(snapshot >= 'blake3:ab' AND snapshot < 'blake3:abg') "
            "OR (content_id >= 'ab' AND content_id < 'abg')",
        }
        for query in plans.values():
            plan = " ".join(str(row[-1]) for row in db.execute(f"EXPLAIN QUERY PLAN {query}"))
            assert "SCAN" not in plan, plan


def test_remove_ref_keeps_content_until_gc(store: Store) -> None:
    store.commit(manifest("job", put_files(store, {"/a/k": b"x" * 100})))
    before = len(object_files(store))
    store.remove_ref("job")
    assert store.list() == [] and len(object_files(store)) == before
    result = store.gc()
    assert result.objects_removed == before and object_files(store) == []


# -- verify and gc ---------------------------------------------------------------------------


def test_verify_finds_a_flipped_byte(store: Store, triton_cache: Path) -> None:
    entries = ingest_tree(store, triton_cache, "/root/.triton/cache", "triton")
    store.commit(manifest("job", entries))
    report = store.verify()
    assert report.ok and report.garbage == 0
    assert report.objects_checked == len({entry.digest for entry in entries}) + 1
    victim = store.objects.path(entries[0].digest)
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    victim.chmod(0o444)
    report = store.verify()
    assert not report.ok
    assert report.problems == [f"corrupt object {entries[0].digest} ({victim})"]


def test_verify_reports_missing_objects_and_manifests(store: Store) -> None:
    files = put_files(store, {"/a/one": b"1", "/a/two": b"2"})
    info = store.commit(manifest("job", files))
    store.objects.path(files[1].digest).unlink()
    assert store.verify().problems == [f"job@{TAG}: /a/two: object {files[1].digest} is missing"]
    store.objects.path(info.snapshot).unlink()
    assert store.verify().problems == [f"job@{TAG}: manifest {info.snapshot} is missing"]


def test_garbage_is_not_damage_and_gc_removes_only_garbage(store: Store) -> None:
    kept = put_files(store, {"/a/kept": b"kept" * 10})
    store.commit(manifest("job", kept))
    orphan = store.put_bytes(b"orphan" * 10)
    shard = store.objects.path(orphan).parent
    (shard / ".tmp-leftover").write_bytes(b"half written")
    report = store.verify()
    assert report.ok and report.garbage == 2

    dry = store.gc(dry_run=True)
    assert (dry.objects_removed, dry.temp_files_removed, dry.bytes_freed) == (1, 1, 60 + 12)
    assert store.has(orphan) and len(temp_files(store)) == 1

    done = store.gc()
    assert (done.objects_removed, done.temp_files_removed, done.bytes_freed) == (1, 1, 72)
    assert not store.has(orphan) and temp_files(store) == []
    assert store.has(kept[0].digest)
    assert store.verify().garbage == 0 and store.verify().ok


def test_gc_waits_for_no_one_in_its_own_process(tmp_path: Path) -> None:
    """A Store that already holds the shared lock upgrades it for gc, then keeps it."""
    with Store(tmp_path, lock_timeout=1) as store:
        store.commit(manifest("job", put_files(store, {"/a/k": b"x"})))
        assert store.gc().objects_removed == 0
        assert store.resolve("job")[0].ref == f"job@{TAG}"


# -- prune -----------------------------------------------------------------------------------


def aged_store(store: Store) -> dict[str, str]:
    """Three refs of 1000 bytes each, one shared object, last used 30, 20 and 10 days ago."""
    shared = b"s" * 500
    refs = {}
    for days, name in ((30, "old"), (20, "mid"), (10, "new")):
        files = put_files(store, {"/shared": shared, f"/{name}": name.encode() * 100})
        refs[name] = store.commit(manifest(name, files)).ref
        when = time.time() - days * 86400
        with sqlite3.connect(store.root / "index.sqlite") as db:
            db.execute("UPDATE refs SET last_access = ? WHERE ref = ?", (when, refs[name]))
    return refs


def test_prune_older_than_drops_idle_refs_but_never_pinned(store: Store) -> None:
    refs = aged_store(store)
    store.pin("old")
    plan = store.plan_prune(max_size=None, older_than=15 * 86400)
    assert [info.ref for info in plan.items] == [refs["mid"]]
    freed = plan.execute().freed
    assert freed == plan.expected_freed > 300
    assert sorted(info.name for info in store.list()) == ["new", "old"]
    assert store.verify().ok and store.verify().garbage == 0


def test_prune_max_size_drops_least_recently_used_until_it_fits(store: Store) -> None:
    refs = aged_store(store)
    total = store.stored_size()
    plan = store.plan_prune(max_size=total - 1, older_than=None)
    assert [info.ref for info in plan.items] == [refs["old"]]
    # The shared object stays: only the old ref's own file and its manifest are freed.
    old_manifest = store.objects.path(plan.items[0].snapshot).stat().st_size
    assert plan.expected_freed == 300 + old_manifest
    plan = store.plan_prune(max_size=0, older_than=None)
    assert [info.ref for info in plan.items] == [refs["old"], refs["mid"], refs["new"]]
    assert plan.expected_freed == total
    assert store.list() != []  # planning changes nothing
    assert plan.execute().freed == total
    assert store.list() == [] and object_files(store) == []


def test_prune_skips_a_ref_replaced_after_planning(store: Store) -> None:
    aged_store(store)
    plan = store.plan_prune(max_size=0, older_than=None)
    replaced = store.commit(manifest("new", put_files(store, {"/fresh": b"fresh"})))
    plan.execute()
    assert store.list() == [replaced]
    assert store.verify().ok


def test_prune_needs_a_limit(store: Store) -> None:
    with pytest.raises(UsageError, match="max_size or older_than"):
        store.plan_prune(max_size=None, older_than=None)


def test_an_index_of_schema_1_gains_history_and_an_older_warmer_is_kept_out(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    with Store(root) as store:
        first = store.commit(manifest("job", put_files(store, {"/a": b"1"})))
    with sqlite3.connect(root / "store-v1" / "index.sqlite") as db:
        db.execute("DROP TABLE history")
        db.execute("PRAGMA user_version = 1")
    with Store(root) as store:
        store.commit(manifest("job", put_files(store, {"/a": b"2"})))
        assert [info.snapshot for info in store.history()] == [first.snapshot]
    with sqlite3.connect(root / "store-v1" / "index.sqlite") as db:
        # warmer of schema 1 refuses a newer index instead of sweeping the history
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_a_put_with_repair_replaces_a_damaged_object(store: Store) -> None:
    """Import and commit check what a put would skip as already stored: a damaged object
    (a file's or a manifest's) is replaced by the good bytes, not kept."""
    data = b"good bytes " * 1000
    snapshot = manifest("job", put_files(store, {"/a": data}))
    info = store.commit(snapshot)
    for digest in (snapshot.files[0].digest, info.snapshot):
        flip_byte(store.objects.path(digest))
    assert store.put_stream(io.BytesIO(data))[0] == snapshot.files[0].digest
    assert not store.verify().ok  # a plain put trusts what is stored
    assert store.put_stream(io.BytesIO(data), repair=True)[0] == snapshot.files[0].digest
    store.commit(snapshot)  # the manifest again: checked, replaced
    assert store.verify().ok and store.resolve("job")[1] == snapshot
    assert stat.S_IMODE(store.objects.path(info.snapshot).stat().st_mode) == 0o444

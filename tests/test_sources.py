"""Sources: one set of rules for what a user names (bundle file, registry reference, store ref)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.bundles import FILES, make_manifest
from helpers.interpreter import python

from warmer.errors import NotFound, NothingToRestore
from warmer.sources import in_store, is_bundle, is_registry
from warmer.store import Store


def test_a_bundle_is_a_file_or_a_bundle_name_and_a_reference_has_a_registry(
    tmp_path: Path,
) -> None:
    plain = tmp_path / "no-suffix"
    plain.write_bytes(b"")
    assert is_bundle(plain) and is_bundle(str(plain))
    assert is_bundle("missing.tar.zst") and is_bundle("missing.tar.gz")
    assert not is_bundle("tiny@torch2.13.0-cpu") and not is_bundle("1a2b3c")
    assert is_registry("localhost:5000/team/x:t") and is_registry("ghcr.io/org/repo")
    assert not is_registry("tiny@torch2.13.0-cpu") and not is_registry("team/x")


def test_a_ref_missing_with_no_cold_tier_is_not_found_and_nothing_to_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "warmer.yaml").write_text("{}\n")
    monkeypatch.setenv("WARMER_CONFIG", str(tmp_path / "warmer.yaml"))
    monkeypatch.delenv("WARMER_REGISTRY", raising=False)
    with Store(tmp_path / "store") as store, pytest.raises(NotFound):
        in_store(store, "absent@tag")
    # what restore asks: an init container tells "nothing yet" (exit 5) from a bad name (2)
    with Store(tmp_path / "store") as store, pytest.raises(NothingToRestore) as nothing:
        in_store(store, "absent@tag", restoring=True)
    assert nothing.value.exit_code == 5 and "no snapshot matches 'absent@tag'" in str(nothing.value)


def test_warmer_restore_takes_a_store_ref(tmp_path: Path) -> None:
    manifest = make_manifest()
    with Store(tmp_path / "store") as store:
        for data in FILES.values():
            store.put_bytes(data)
        info = store.commit(manifest)
        assert in_store(store, info.ref)[0].snapshot == info.snapshot
    # twice in one interpreter: importing the module that does the work (warmer.restoring)
    # must not shadow the package's function
    root = str(tmp_path / "root")
    code = (
        "import warmer; import warmer.saving; "
        f"print(warmer.restore({info.ref!r}, root={root!r}).written, "
        f"warmer.restore({info.ref!r}, root={root!r}).skipped_identical, "
        "callable(warmer.save))"
    )
    written = python(code, {"WARMER_STORE": str(tmp_path / "store")})
    assert written.split() == [str(len(FILES)), str(len(FILES)), "True"]
    for path, data in FILES.items():
        assert (tmp_path / "root" / path.lstrip("/")).read_bytes() == data

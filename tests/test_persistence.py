"""Persistence backends: commit, ranged reads, retention, damage detection, format refusal."""

from __future__ import annotations

import logging
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from malstrom.snapshot import (
    InMemoryPersistence,
    LocalDiskPersistence,
    NoPersistence,
    Persistence,
    SnapshotCorruptError,
    SnapshotFormatError,
)
from malstrom.snapshot._backend import FORMAT_VERSION, BlobInfo, Manifest

Factory = Callable[..., Persistence]


@pytest.fixture(params=["memory", "disk"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """Build a backend of the parametrized kind (same storage for every call with disk)."""
    if request.param == "memory":
        return lambda retain=3: InMemoryPersistence(retain=retain)
    return lambda retain=3: LocalDiskPersistence(tmp_path / "snap", retain=retain)


def write_version(p: Persistence, version: int, commit: bool = True, **blobs: bytes) -> Manifest:
    """Write ``blobs`` (default: two blobs derived from the version) and maybe commit."""
    blobs = blobs or {"w0": f"state-0-of-{version}".encode(), "w1": bytes(range(version % 256))}
    infos = {name: p.write_blob(version, name, data) for name, data in blobs.items()}
    m = Manifest(version=version, blobs=infos, meta={"workers": len(blobs), "v": version})
    if commit:
        p.commit(m)
    return m


def replace_blob(p: Persistence, version: int, name: str, data: bytes) -> None:
    """Damage a stored blob behind the backend's back."""
    if isinstance(p, LocalDiskPersistence):
        path = p.path / f"v{version:020d}" / f"{name}.blob"
        assert path.is_file()
        path.write_bytes(data)
    else:
        assert isinstance(p, InMemoryPersistence)
        assert name in p._blobs[version]
        p._blobs[version][name] = data


def stored_blob(p: Persistence, version: int, name: str) -> bytes:
    """The stored bytes of a committed blob."""
    return p.read_blob(version, name)


# -- round trip ---------------------------------------------------------------------------------


def test_write_commit_read_round_trip(make: Factory) -> None:
    p = make()
    assert p.stores
    assert p.committed_versions() == []
    assert p.last_committed() is None
    assert p.latest_restorable() is None

    data = bytes(range(256)) * 4
    info = p.write_blob(1, "worker-0", data)
    assert info == BlobInfo(len(data), zlib.crc32(data))
    p.write_blob(1, "coord.meta", b"")
    p.commit(Manifest(1, {"worker-0": info, "coord.meta": BlobInfo(0, zlib.crc32(b""))}, {"k": 1}))

    assert p.committed_versions() == [1]
    assert p.last_committed() == 1
    m = p.manifest(1)
    assert m.version == 1 and m.format == FORMAT_VERSION
    assert m.blobs["worker-0"] == info
    assert m.meta == {"k": 1}
    restored = p.latest_restorable()
    assert restored is not None and restored.version == 1

    assert p.read_blob(1, "worker-0") == data
    assert p.read_blob(1, "coord.meta") == b""
    assert p.read_blob(1, "worker-0", offset=10) == data[10:]
    assert p.read_blob(1, "worker-0", offset=10, length=5) == data[10:15]
    assert p.read_blob(1, "worker-0", 0, 0) == b""
    assert p.read_blob(1, "worker-0", offset=1020, length=100) == data[1020:]
    assert p.read_blob(1, "worker-0", offset=5000) == b""
    with pytest.raises(ValueError):
        p.read_blob(1, "worker-0", offset=-1)
    with pytest.raises(ValueError):
        p.read_blob(1, "worker-0", length=-2)


def test_several_versions_ascending(make: Factory) -> None:
    p = make(retain=0)  # keep all
    for v in (3, 1, 12, 2):
        write_version(p, v)
    assert p.committed_versions() == [1, 2, 3, 12]
    assert p.last_committed() == 12
    for v in (1, 2, 3, 12):
        assert p.read_blob(v, "w0") == f"state-0-of-{v}".encode()


def test_overwriting_a_blob_before_commit_keeps_the_last(make: Factory) -> None:
    p = make()
    p.write_blob(1, "a", b"first")
    info = p.write_blob(1, "a", b"second")
    p.commit(Manifest(1, {"a": info}))
    assert p.read_blob(1, "a") == b"second"
    assert p.latest_restorable() is not None


# -- partial versions ---------------------------------------------------------------------------


def test_uncommitted_version_is_never_committed(make: Factory) -> None:
    p = make()
    write_version(p, 1)
    write_version(p, 2, commit=False)
    assert p.committed_versions() == [1]
    assert p.last_committed() == 1
    m = p.latest_restorable()
    assert m is not None and m.version == 1
    with pytest.raises((KeyError, FileNotFoundError)):
        p.read_blob(2, "w0")  # partial versions are never read


def test_crash_while_writing_leaves_previous_commit(make: Factory) -> None:
    p = make()
    for v in range(1, 5):
        write_version(p, v)
    # "crash": version 5's blobs are written, its manifest never is
    write_version(p, 5, commit=False)
    assert p.last_committed() == 4
    # after a restart (fresh instance for disk; same instance for memory) nothing changes
    q = make() if isinstance(p, LocalDiskPersistence) else p
    assert q.last_committed() == 4
    m = q.latest_restorable()
    assert m is not None and m.version == 4
    assert q.read_blob(4, "w0") == b"state-0-of-4"


# -- retention ----------------------------------------------------------------------------------


def test_retention_keeps_newest_committed(make: Factory) -> None:
    p = make(retain=2)
    for v in range(1, 6):
        write_version(p, v)
        assert p.committed_versions() == list(range(max(1, v - 1), v + 1))
    assert p.committed_versions() == [4, 5]
    assert p._all_versions() == [4, 5]
    with pytest.raises((KeyError, FileNotFoundError)):
        p.read_blob(3, "w0")


def test_retention_zero_keeps_all(make: Factory) -> None:
    p = make(retain=0)
    for v in range(1, 6):
        write_version(p, v)
    assert p.committed_versions() == [1, 2, 3, 4, 5]


def test_prune_drops_old_partial_keeps_newer_partial(make: Factory) -> None:
    p = make(retain=2)
    write_version(p, 1)
    write_version(p, 2, commit=False)  # abandoned: older than the next commit
    write_version(p, 3)
    write_version(p, 5, commit=False)  # may still be being written: newer than any commit
    write_version(p, 4)
    assert p.committed_versions() == [3, 4]
    assert p._all_versions() == [3, 4, 5]  # 1 retired, 2 abandoned, 5 kept
    write_version(p, 5)  # the in-flight version completes
    assert p.committed_versions() == [4, 5]
    assert p._all_versions() == [4, 5]


def test_invalid_retain_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        InMemoryPersistence(retain=-1)
    with pytest.raises(ValueError):
        LocalDiskPersistence(tmp_path, retain=-1)


# -- damage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: bytes([b[0] ^ 0xFF]) + b[1:], id="flipped"),
        pytest.param(lambda b: b + b"x", id="extended"),
    ],
)
def test_damaged_blob_is_skipped_with_warning(
    make: Factory, damage: Callable[[bytes], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    p = make()
    write_version(p, 1)
    write_version(p, 2)
    replace_blob(p, 2, "w0", damage(stored_blob(p, 2, "w0")))
    with pytest.raises(SnapshotCorruptError):
        p.verify(2)
    with caplog.at_level(logging.WARNING, logger="malstrom.snapshot"):
        m = p.latest_restorable()
    assert m is not None and m.version == 1
    assert any(
        r.levelno == logging.WARNING and "version 2" in r.getMessage() and "w0" in r.getMessage()
        for r in caplog.records
    )
    assert p.last_committed() == 2  # damaged versions are still listed as committed


def test_missing_blob_is_skipped(make: Factory, caplog: pytest.LogCaptureFixture) -> None:
    p = make()
    write_version(p, 1)
    info = p.write_blob(2, "w0", b"abc")
    p.commit(Manifest(2, {"w0": info, "w1": BlobInfo(3, zlib.crc32(b"xyz"))}))  # w1 never written
    with caplog.at_level(logging.WARNING, logger="malstrom.snapshot"):
        m = p.latest_restorable()
    assert m is not None and m.version == 1
    assert "w1" in caplog.text


def test_all_versions_damaged_gives_none(make: Factory, caplog: pytest.LogCaptureFixture) -> None:
    p = make()
    write_version(p, 1)
    replace_blob(p, 1, "w0", b"")
    with caplog.at_level(logging.WARNING, logger="malstrom.snapshot"):
        assert p.latest_restorable() is None
    assert "skipping damaged snapshot" in caplog.text


@pytest.mark.parametrize(
    "garbage", [b"\x00\xff\xfegarbage", b"", b"{not json", b"[1, 2]", b'{"format": 1}']
)
def test_corrupt_manifest_is_skipped(
    make: Factory, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    p = make()
    write_version(p, 1)
    write_version(p, 2)
    p._store_manifest(2, garbage)
    assert p.committed_versions() == [1, 2]
    with pytest.raises(SnapshotCorruptError):
        p.manifest(2)
    with caplog.at_level(logging.WARNING, logger="malstrom.snapshot"):
        m = p.latest_restorable()
    assert m is not None and m.version == 1
    assert "skipping damaged snapshot" in caplog.text


def test_corrupt_manifest_on_disk_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = LocalDiskPersistence(tmp_path)
    write_version(p, 1)
    write_version(p, 2)
    (tmp_path / f"v{2:020d}" / "MANIFEST").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    with caplog.at_level(logging.WARNING, logger="malstrom.snapshot"):
        m = LocalDiskPersistence(tmp_path).latest_restorable()
    assert m is not None and m.version == 1
    assert "unreadable snapshot manifest" in caplog.text


def test_foreign_format_is_refused_not_skipped(make: Factory) -> None:
    p = make()
    write_version(p, 1)
    write_version(p, 2)
    m = write_version(p, 3, commit=False)
    m.format = FORMAT_VERSION + 1
    p.commit(m)
    assert p.last_committed() == 3
    with pytest.raises(SnapshotFormatError, match="format 2"):
        p.latest_restorable()
    with pytest.raises(SnapshotFormatError):
        p.manifest(3)


def test_foreign_format_in_older_version_is_refused(make: Factory) -> None:
    """Even behind a damaged newer version, a foreign format stops the search loudly."""
    p = make()
    m = write_version(p, 1, commit=False)
    m.format = 0
    p.commit(m)
    write_version(p, 2)
    replace_blob(p, 2, "w0", b"")
    with pytest.raises(SnapshotFormatError):
        p.latest_restorable()


# -- LocalDisk specifics ------------------------------------------------------------------------


def test_disk_restart_sees_committed_versions(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path / "s", retain=5)
    for v in (1, 2, 3):
        write_version(p, v)
    write_version(p, 4, commit=False)
    q = LocalDiskPersistence(tmp_path / "s", retain=5)
    assert q.committed_versions() == [1, 2, 3]
    m = q.latest_restorable()
    assert m is not None and m.version == 3 and m.meta == {"workers": 2, "v": 3}
    assert q.read_blob(3, "w1", 1, 1) == bytes([1])
    write_version(q, 4)  # the restarted job rewrites and commits version 4
    assert p.committed_versions() == [1, 2, 3, 4]


def test_disk_creates_directory_with_parents(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "c"
    p = LocalDiskPersistence(str(root))
    assert root.is_dir()
    assert p.committed_versions() == []
    write_version(p, 7)
    assert (root / f"v{7:020d}" / "MANIFEST").is_file()
    assert (root / f"v{7:020d}" / "w0.blob").read_bytes() == b"state-0-of-7"
    assert sorted(f.name for f in (root / f"v{7:020d}").iterdir()) == [
        "MANIFEST",
        "w0.blob",
        "w1.blob",
    ]  # no temp files left behind


@pytest.mark.parametrize("name", ["", "a/b", "../x", "a b", "é", "x\x00", "a\\b", "w:0"])
def test_disk_refuses_bad_blob_names(tmp_path: Path, name: str) -> None:
    p = LocalDiskPersistence(tmp_path)
    with pytest.raises(ValueError, match="blob name"):
        p.write_blob(1, name, b"data")
    assert p._all_versions() == []


def test_disk_accepts_allowed_blob_names(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path)
    names = ["worker-0", "op.state_3", "MANIFEST", ".hidden", "A-Z_a-z.0-9"]
    infos = {n: p.write_blob(1, n, n.encode()) for n in names}
    p.commit(Manifest(1, infos))
    assert p.verify(1).blobs == infos
    assert all(p.read_blob(1, n) == n.encode() for n in names)


def test_disk_refuses_bad_versions(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path)
    with pytest.raises(ValueError):
        p.write_blob(-1, "a", b"")
    with pytest.raises(ValueError):
        p.write_blob(10**20, "a", b"")


def test_disk_ignores_stray_entries(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path)
    write_version(p, 1)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "v12").mkdir()  # not 20 digits
    (tmp_path / "vabc").mkdir()
    (tmp_path / f"v{9:020d}").write_text("a file, not a directory")
    (tmp_path / "lost+found").mkdir()
    assert p.committed_versions() == [1]
    assert p._all_versions() == [1]
    write_version(p, 2)
    write_version(p, 3)
    write_version(p, 4)
    assert p.committed_versions() == [2, 3, 4]
    assert (tmp_path / "notes.txt").exists() and (tmp_path / "v12").is_dir()


def test_disk_concurrent_writers_of_one_version(tmp_path: Path) -> None:
    """Several writers (threads here; processes share only the directory) fill one version."""
    from concurrent.futures import ThreadPoolExecutor

    def worker(i: int) -> tuple[str, BlobInfo]:
        p = LocalDiskPersistence(tmp_path)  # own instance, like a worker process
        name = f"worker-{i}"
        return name, p.write_blob(1, name, bytes([i]) * (1000 + i))

    with ThreadPoolExecutor(8) as pool:
        infos = dict(pool.map(worker, range(32)))
    p = LocalDiskPersistence(tmp_path)
    assert p.committed_versions() == []
    p.commit(Manifest(1, infos))
    m = p.latest_restorable()
    assert m is not None and len(m.blobs) == 32
    assert p.read_blob(1, "worker-7") == bytes([7]) * 1007


def test_disk_delete_tolerates_missing(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path)
    p._delete_version(42)  # never existed
    write_version(p, 1, commit=False)
    (tmp_path / f"v{1:020d}" / "w0.blob").unlink()
    p._delete_version(1)
    assert p._all_versions() == []


def test_disk_is_picklable(tmp_path: Path) -> None:
    p = LocalDiskPersistence(tmp_path, retain=4)
    write_version(p, 1)
    q = pickle.loads(pickle.dumps(p))
    assert q.retain == 4 and q.committed_versions() == [1]


# -- InMemory specifics -------------------------------------------------------------------------


def test_memory_instance_is_shared_across_runs() -> None:
    p = InMemoryPersistence()
    write_version(p, 1)
    # a "second run" reuses the instance and resumes from the committed version
    m = p.latest_restorable()
    assert m is not None and m.version == 1
    assert p.read_blob(1, "w0") == b"state-0-of-1"


def test_memory_copies_mutable_input() -> None:
    p = InMemoryPersistence()
    buf = bytearray(b"abc")
    info = p.write_blob(1, "a", buf)  # type: ignore[arg-type]
    buf[0] = ord("z")
    p.commit(Manifest(1, {"a": info}))
    assert p.read_blob(1, "a") == b"abc"
    assert p.verify(1).version == 1


# -- NoPersistence ------------------------------------------------------------------------------


def test_no_persistence_keeps_nothing() -> None:
    p = NoPersistence()
    assert not p.stores
    info = p.write_blob(1, "w0", b"hello")
    assert info == BlobInfo(5, zlib.crc32(b"hello"))
    p.commit(Manifest(1, {"w0": info}))
    assert p.committed_versions() == []
    assert p.last_committed() is None
    assert p.latest_restorable() is None
    with pytest.raises(KeyError):
        p.read_blob(1, "w0")
    with pytest.raises(SnapshotCorruptError):
        p.manifest(1)
    p.prune()
    p._delete_version(1)
    assert p._all_versions() == []


def test_public_exports() -> None:
    import malstrom.snapshot as snapshot

    assert set(snapshot.__all__) == {
        "Persistence",
        "NoPersistence",
        "InMemoryPersistence",
        "LocalDiskPersistence",
        "SnapshotFormatError",
        "SnapshotCorruptError",
        "SnapshotsDamagedError",
        "StorageError",
        "ObjectStorePersistence",
        "SlateDbPersistence",
        "StoreUnavailableError",
    }
    assert snapshot.__doc__
    for name in snapshot.__all__:
        assert getattr(snapshot, name).__doc__

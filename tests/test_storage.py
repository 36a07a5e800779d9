"""Storage through fsspec against a real local folder and a real S3 endpoint (moto in server mode)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import pytest

from spaceport.storage import (
    InputUrlError,
    Storage,
    StorageError,
    check_input_url,
    open_storage,
    restore_workspace,
    stage_input,
    sync_stage_outputs,
)
from spaceport.workspace import SpaceportError

TREE = {
    "a.txt": b"alpha",
    "sub/b.bin": bytes(range(256)) * 40,
    "sub/deeper/c.json": b'{"c": 3}',
    "sub/deeper/d with space.txt": b"spaces survive",
}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_storage(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if kind == "file":
        return open_storage((tmp_path / "store").as_uri())
    s3 = request.getfixturevalue("s3_server")
    return open_storage(f"s3://{s3.make_bucket()}/jobs", endpoint_url=s3.endpoint_url)


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return make_storage(request.param, request, tmp_path)


def test_directory_round_trip(storage: Storage, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "source", TREE)
    written = storage.put_dir(source, "job1/outputs")

    assert written == sorted(f"job1/outputs/{rel}" for rel in TREE)
    assert storage.list("job1") == written
    assert storage.list("job1/outputs/a.txt") == ["job1/outputs/a.txt"]
    assert storage.list("job") == []  # a prefix of a name is not a folder
    assert storage.exists("job1/outputs/sub/deeper/c.json")
    assert not storage.exists("job1/missing.txt")
    with storage.open("job1/outputs/sub/b.bin") as f:
        assert f.read() == TREE["sub/b.bin"]

    back = tmp_path / "back"
    storage.get_dir("job1/outputs", back)
    assert read_tree(back) == TREE

    storage.delete("job1/outputs/sub")
    assert storage.list("job1") == ["job1/outputs/a.txt"]


def test_url_names_the_protocol_and_root(storage: Storage) -> None:
    url = storage.url("job1/x.txt")
    if storage.is_local:
        assert url.startswith("file:///") and url.endswith("/store/job1/x.txt")
    else:
        assert url.startswith("s3://test-") and url.endswith("/jobs/job1/x.txt")


def test_open_for_writing_creates_parents_and_single_files_round_trip(storage: Storage, tmp_path: Path) -> None:
    with storage.open("deep/er/note.txt", "wb") as f:
        f.write(b"written through open")
    assert storage.list("deep") == ["deep/er/note.txt"]
    storage.get_file("deep/er/note.txt", tmp_path / "note.txt")
    assert (tmp_path / "note.txt").read_bytes() == b"written through open"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    storage.put_file(big, "big/big.bin")
    storage.get_file("big/big.bin", tmp_path / "big_back.bin")
    assert (tmp_path / "big_back.bin").read_bytes() == big.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize("bad", ["../escape.txt", "a/../../escape.txt", "/etc/passwd"])
def test_paths_may_not_leave_the_root(storage: Storage, tmp_path: Path, bad: str) -> None:
    (tmp_path / "f.txt").write_bytes(b"x")
    with pytest.raises(StorageError):
        storage.put_file(tmp_path / "f.txt", bad)
    with pytest.raises(StorageError):
        storage.get_file(bad, tmp_path / "out.txt")


def test_delete_refuses_the_root(storage: Storage) -> None:
    with pytest.raises(StorageError, match="root"):
        storage.delete("")


def test_open_storage_refuses_other_schemes() -> None:
    with pytest.raises(StorageError, match="file:///absolute/path or s3://bucket/prefix"):
        open_storage("ftp://host/x")
    with pytest.raises(StorageError, match="bucket"):
        open_storage("s3://Bad_Bucket/x")


# -- stage_input ------------------------------------------------------------------------------------------------


def test_stage_input_from_one_s3_object(s3_server, tmp_path: Path) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put_object(bucket, "photos/one.jpg", b"jpeg bytes")
    files = stage_input(f"s3://{bucket}/photos/one.jpg", tmp_path / "in", import_roots=[],
                        endpoint_url=s3_server.endpoint_url)
    assert files == [tmp_path / "in" / "one.jpg"]
    assert files[0].read_bytes() == b"jpeg bytes"


@pytest.mark.parametrize("suffix", ["photos", "photos/"])
def test_stage_input_from_an_s3_prefix(s3_server, tmp_path: Path, suffix: str) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put_object(bucket, "photos/a.jpg", b"a")
    s3_server.put_object(bucket, "photos/set2/b.jpg", b"b")
    s3_server.put_object(bucket, "photos-other/c.jpg", b"not part of the prefix")
    files = stage_input(f"s3://{bucket}/{suffix}", tmp_path / "in", import_roots=[],
                        endpoint_url=s3_server.endpoint_url)
    assert files == [tmp_path / "in" / "a.jpg", tmp_path / "in" / "set2" / "b.jpg"]
    assert read_tree(tmp_path / "in") == {"a.jpg": b"a", "set2/b.jpg": b"b"}


def test_stage_input_from_an_empty_s3_prefix_names_the_url(s3_server, tmp_path: Path) -> None:
    bucket = s3_server.make_bucket()
    with pytest.raises(InputUrlError, match=f"s3://{bucket}/nothing-here"):
        stage_input(f"s3://{bucket}/nothing-here", tmp_path / "in", import_roots=[],
                    endpoint_url=s3_server.endpoint_url)


def test_stage_input_from_a_file_url_under_an_import_root(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "imports", {"scene/a.jpg": b"a", "scene/more/b.jpg": b"b", "single.ply": b"ply"})
    other_root = tmp_path / "other"
    other_root.mkdir()
    files = stage_input((root / "scene").as_uri(), tmp_path / "in", import_roots=[other_root, root])
    assert files == [tmp_path / "in" / "a.jpg", tmp_path / "in" / "more" / "b.jpg"]
    assert stage_input((root / "single.ply").as_uri(), tmp_path / "in2", import_roots=[root]) == [
        tmp_path / "in2" / "single.ply"]
    assert check_input_url(f"file://{root}/scene/../single.ply", [root]) == (root / "single.ply").resolve().as_uri()


def refused(url: str, roots: list[Path], dest: Path) -> str:
    with pytest.raises(InputUrlError) as info:
        stage_input(url, dest, import_roots=roots)
    assert isinstance(info.value, SpaceportError)
    assert not dest.exists() or not any(dest.iterdir()), "nothing may be copied from a refused input"
    return str(info.value)


def test_stage_input_refuses_everything_else(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "imports", {"ok/a.jpg": b"a"})
    secret = write_tree(tmp_path / "private", {"secret.txt": b"do not copy"})
    dest = tmp_path / "in"

    message = refused("http://example.invalid/photos.zip", [root], dest)
    assert message == (f"input_url must be s3://bucket/key-or-prefix or file:// under an import root ({root}); "
                       "got http://example.invalid/photos.zip")
    assert "file:// under an import root" in refused(secret.as_uri(), [root], dest)
    assert "file:// under an import root" in refused(f"file://{root}/../private/secret.txt", [root], dest)
    assert "file:// under an import root" in refused(f"file://{root}/ok/../../private", [root], dest)
    assert "file:// under an import root" in refused(f"file://somehost{root}/ok", [root], dest)
    assert "none configured" in refused((root / "ok").as_uri(), [], dest)
    assert "does not exist" in refused((root / "missing").as_uri(), [root], dest)
    assert "not a valid bucket name" in refused("s3://UPPER_case/x", [root], dest)

    (root / "link_to_private").symlink_to(secret)
    assert "file:// under an import root" in refused((root / "link_to_private").as_uri(), [root], dest)
    (root / "ok" / "leak.txt").symlink_to(secret / "secret.txt")
    assert "leak.txt is a symlink leading outside" in refused((root / "ok").as_uri(), [root], dest)
    (root / "ok" / "leak.txt").unlink()
    (root / "ok" / "leak_dir").symlink_to(secret)
    assert "leak_dir is a symlink leading outside" in refused((root / "ok").as_uri(), [root], dest)


def test_symlinks_inside_the_import_roots_are_followed_once(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "imports", {"scene/a.jpg": b"a", "shared/b.jpg": b"b"})
    (root / "scene" / "shared").symlink_to(root / "shared")
    (root / "scene" / "loop").symlink_to(root / "scene")
    files = stage_input((root / "scene").as_uri(), tmp_path / "in", import_roots=[root])
    assert [f.relative_to(tmp_path / "in").as_posix() for f in files] == ["a.jpg", "shared/b.jpg"]


# -- workspace sync ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordingStorage(Storage):
    """Real storage that also notes the order of writes and deletes, and can fail on a chosen upload."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_on: str | None = None

    def put_file(self, local_path, rel) -> None:  # type: ignore[override]
        if self.fail_on is not None and str(rel).endswith(self.fail_on):
            raise OSError(f"connection lost while uploading {rel}")
        self.calls.append(("put", str(rel)))
        super().put_file(local_path, rel)

    def get_file(self, rel, local_path) -> None:  # type: ignore[override]
        self.calls.append(("get", str(rel)))
        super().get_file(rel, local_path)

    def delete(self, rel) -> None:  # type: ignore[override]
        self.calls.append(("delete", str(rel)))
        super().delete(rel)


WORKSPACE = {
    "job.json": b'{"steps": "full"}',
    "images/frames.json": b"{}",
    "images/0001.jpg": b"jpeg",
    "images/.done": b'{"stage": "ingest"}',
    "sfm/sparse/0/cameras.bin": b"cams",
    "sfm/report.json": b"{}",
    "sfm/.done": b'{"stage": "sfm"}',
    "train/ckpt/step_000100.pt": os.urandom(200_000),
    "logs/sfm.log": b"log lines",
}


@pytest.fixture(params=["file", "s3"])
def recording_storage(request: pytest.FixtureRequest, tmp_path: Path) -> RecordingStorage:
    plain = make_storage(request.param, request, tmp_path)
    return RecordingStorage(fs=plain.fs, root=plain.root, protocol=plain.protocol)


def test_sync_uploads_done_markers_last_and_restore_rebuilds_the_workspace(
        recording_storage: RecordingStorage, tmp_path: Path) -> None:
    storage = recording_storage
    ws = write_tree(tmp_path / "ws", WORKSPACE)
    # writes in flight (an atomic file, a staged folder) and the workspace lock are never synced
    write_tree(ws, {"sfm/.report.json.partial-x1y2.tmp": b"half written",
                    "sfm/.undistorted.partial-k3j4/images/a.jpg": b"half a folder", ".lock": b"pid"})
    names = ["images", "sfm", "train", "logs", "job.json"]

    written = sync_stage_outputs(ws, storage, "jobs/42", names)

    puts = [rel for op, rel in storage.calls if op == "put"]
    assert puts == written
    assert sorted(puts) == sorted(f"jobs/42/{rel}" for rel in WORKSPACE)
    assert puts[-2:] == ["jobs/42/images/.done", "jobs/42/sfm/.done"]
    assert storage.list("jobs/42") == sorted(f"jobs/42/{rel}" for rel in WORKSPACE)

    restored = tmp_path / "elsewhere"
    storage.calls.clear()
    restore_workspace(storage, "jobs/42", restored)
    assert read_tree(restored) == WORKSPACE
    gets = [rel for op, rel in storage.calls if op == "get"]
    assert [PurePath(rel).name for rel in gets[-2:]] == [".done", ".done"]


def test_resync_removes_stale_files_and_old_marker_first(recording_storage: RecordingStorage, tmp_path: Path) -> None:
    storage = recording_storage
    ws = write_tree(tmp_path / "ws", WORKSPACE)
    sync_stage_outputs(ws, storage, "jobs/7", ["sfm", "train"])
    (ws / "sfm" / "report.json").unlink()
    (ws / "train" / "ckpt" / "step_000100.pt").unlink()
    write_tree(ws, {"train/ckpt/step_000200.pt": b"newer", "sfm/.done": b'{"stage": "sfm", "again": true}'})
    storage.calls.clear()

    sync_stage_outputs(ws, storage, "jobs/7", ["sfm", "train"])

    assert storage.calls[0] == ("delete", "jobs/7/sfm/.done")
    assert storage.calls[-1] == ("put", "jobs/7/sfm/.done")
    assert storage.list("jobs/7") == ["jobs/7/sfm/.done", "jobs/7/sfm/sparse/0/cameras.bin",
                                      "jobs/7/train/ckpt/step_000200.pt"]
    with storage.open("jobs/7/sfm/.done") as f:
        assert b"again" in f.read()


def test_an_interrupted_sync_never_leaves_the_stage_marked_done(
        recording_storage: RecordingStorage, tmp_path: Path) -> None:
    storage = recording_storage
    ws = write_tree(tmp_path / "ws", WORKSPACE)
    sync_stage_outputs(ws, storage, "jobs/9", ["sfm"])
    assert storage.exists("jobs/9/sfm/.done")
    (ws / "sfm" / "sparse" / "0" / "cameras.bin").write_bytes(b"re-run output")

    object.__setattr__(storage, "fail_on", "cameras.bin")
    with pytest.raises(OSError, match="connection lost"):
        sync_stage_outputs(ws, storage, "jobs/9", ["sfm"])

    assert not storage.exists("jobs/9/sfm/.done")
    restored = tmp_path / "restored"
    restore_workspace(storage, "jobs/9", restored)
    assert not (restored / "sfm" / ".done").exists()


def test_restore_refuses_keys_that_climb_out(s3_server, tmp_path: Path) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put_object(bucket, "jobs/1/sfm/../../../../evil.txt", b"zip-slip through a key")
    storage = open_storage(f"s3://{bucket}", endpoint_url=s3_server.endpoint_url)
    with pytest.raises(StorageError, match=r"\.\."):
        restore_workspace(storage, "jobs/1", tmp_path / "ws")
    assert not (tmp_path / "evil.txt").exists()


"""Ingest of a zip of real photos: nested folders, and hostile archives refused before anything is extracted."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from spaceport.ingest import IngestConfig, run_ingest
from spaceport.ingest.archive import entry_parts
from spaceport.progress import NullProgress
from spaceport.workspace import SpaceportError, Workspace
from tests.media import (
    make_lying_zip,
    make_zip,
    make_zip_bomb,
    monstree_photos,
    small_photo_copies,
    workspace_with_input,
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return small_photo_copies(monstree_photos()[8:13], tmp_path_factory.mktemp("monstree320"))


def zip_workspace(root: Path, build) -> Path:
    """A job folder whose input/ holds one zip made by build(path)."""
    workspace = workspace_with_input(root / "job")
    build(workspace / "input" / "photos.zip")
    return workspace


def refuse(workspace: Path, config: IngestConfig | None = None) -> str:
    with pytest.raises(SpaceportError) as raised:
        run_ingest(Workspace(workspace), config or IngestConfig(), NullProgress())
    assert not (workspace / "images").exists()
    assert not [path for path in workspace.iterdir() if path.name.startswith(".")]  # no staging, no unzip dir
    assert "input/photos.zip" in str(raised.value)
    return str(raised.value)


def test_a_zip_with_nested_folders_is_extracted_and_ingested(photos: list[Path], tmp_path: Path) -> None:
    entries = {
        "trip/day1/IMG_A.jpg": photos[0],
        "trip/day1/IMG_B.JPG": photos[1],
        "trip/day2/IMG_A.jpg": photos[2],  # same name in another folder
        "trip/day2/deeper/still/IMG_C.jpeg": photos[3],
        "trip/IMG_D.jpg": photos[4],
        "trip/readme.txt": b"notes",
        "__MACOSX/trip/._IMG_A.jpg": b"resource fork",
        "trip/.DS_Store": b"finder",
    }
    workspace = zip_workspace(tmp_path, lambda path: make_zip(path, entries))
    ws, progress = Workspace(workspace), NullProgress()
    result = run_ingest(ws, IngestConfig(), progress)
    manifest = json.loads((ws.images_dir / "frames.json").read_text())
    assert manifest["kind"] == "photos" and manifest["input"] == "input/photos.zip"
    assert {frame["source"]: frame["file"] for frame in manifest["frames"]} == {
        "input/photos.zip:trip/IMG_D.jpg": "IMG_D.jpg",
        "input/photos.zip:trip/day1/IMG_A.jpg": "IMG_A.jpg",
        "input/photos.zip:trip/day1/IMG_B.JPG": "IMG_B.jpg",
        "input/photos.zip:trip/day2/IMG_A.jpg": "IMG_A_2.jpg",
        "input/photos.zip:trip/day2/deeper/still/IMG_C.jpeg": "IMG_C.jpg",
    }
    assert [item["source"] for item in manifest["dropped"]] == ["input/photos.zip:trip/readme.txt"]
    assert any("readme.txt" in message for message in progress.messages)
    assert result.metrics["images"] == 5
    assert all(frame["exif"]["focal_length_mm"] for frame in manifest["frames"])
    assert not [path for path in workspace.iterdir() if path.name.startswith(".")]  # unzip folder removed


@pytest.mark.parametrize(
    "name", ["../evil.jpg", "photos/../../evil.jpg", "/tmp/evil.jpg", "C:/evil.jpg", "..\\evil.jpg"]
)
def test_a_zip_slip_entry_refuses_the_whole_archive(name: str, photos: list[Path], tmp_path: Path) -> None:
    entries = {"photos/a.jpg": photos[0], "photos/b.jpg": photos[1], "photos/c.jpg": photos[2], name: photos[3]}
    workspace = zip_workspace(tmp_path, lambda path: make_zip(path, entries))
    message = refuse(workspace)
    assert name in message and "outside" in message
    assert not list(tmp_path.rglob("evil.jpg")) and not Path("/tmp/evil.jpg").exists()
    assert not list(tmp_path.rglob("a.jpg"))  # refused before anything was extracted


def test_entry_names_are_split_safely() -> None:
    assert entry_parts("a/./b//c.jpg") == ("a", "b", "c.jpg")
    assert entry_parts("a\\b.jpg") == ("a", "b.jpg")
    for hostile in ("../x.jpg", "/x.jpg", "\\x.jpg", "d:x.jpg", "a/../../x.jpg", "", "./"):
        assert entry_parts(hostile) is None


def test_a_symlink_entry_refuses_the_whole_archive(photos: list[Path], tmp_path: Path) -> None:
    entries = {f"photos/{index}.jpg": photo for index, photo in enumerate(photos[:3])}
    workspace = zip_workspace(
        tmp_path, lambda path: make_zip(path, entries, symlinks={"photos/link.jpg": "/etc/passwd"})
    )
    message = refuse(workspace)
    assert "photos/link.jpg" in message and "symbolic link" in message
    assert not list(tmp_path.rglob("link.jpg"))


def test_a_zip_bomb_is_refused_from_its_declared_size(tmp_path: Path) -> None:
    workspace = zip_workspace(tmp_path, lambda path: make_zip_bomb(path, expanded_bytes=48 << 20, entries=3))
    assert (workspace / "input" / "photos.zip").stat().st_size < 1 << 20
    message = refuse(workspace, IngestConfig(max_zip_bytes=32 << 20))
    assert "expands to" in message and "max_zip_bytes" in message
    assert not list(tmp_path.rglob("zeros_*.jpg"))


def test_a_zip_whose_headers_lie_about_the_size_never_expands_past_them(
    photos: list[Path], tmp_path: Path
) -> None:
    real = bytes(8 << 20)  # inflates to 8 MiB while the headers claim 1 KiB
    workspace = zip_workspace(tmp_path, lambda path: make_lying_zip(path, "bomb.jpg", real, declared_size=1024))
    with zipfile.ZipFile(workspace / "input" / "photos.zip", "a") as archive:
        for index, photo in enumerate(photos[:3]):
            archive.write(photo, f"photo_{index}.jpg")
    ws = Workspace(workspace)
    run_ingest(ws, IngestConfig(max_zip_bytes=1 << 20), NullProgress())
    manifest = json.loads((ws.images_dir / "frames.json").read_text())
    assert len(manifest["frames"]) == 3
    (dropped,) = manifest["dropped"]
    assert dropped["source"] == "input/photos.zip:bomb.jpg" and "unreadable zip entry" in dropped["reason"]


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    entries = {f"photos/{index}.jpg": b"x" for index in range(30)}
    workspace = zip_workspace(tmp_path, lambda path: make_zip(path, entries))
    message = refuse(workspace, IngestConfig(max_zip_entries=20))
    assert "30 entries" in message and "max_zip_entries" in message


def test_a_file_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    workspace = zip_workspace(tmp_path, lambda path: path.write_bytes(b"PK not really a zip"))
    assert "not a readable zip" in refuse(workspace)


def test_a_zip_without_photos_is_refused(tmp_path: Path) -> None:
    workspace = zip_workspace(tmp_path, lambda path: make_zip(path, {"docs/readme.txt": b"x", "a.pdf": b"x"}))
    assert "holds no photo" in refuse(workspace)


def test_a_zip_with_two_photos_is_refused(photos: list[Path], tmp_path: Path) -> None:
    workspace = zip_workspace(tmp_path, lambda path: make_zip(path, {"a.jpg": photos[0], "b.jpg": photos[1]}))
    assert "only 2 usable photos" in refuse(workspace)

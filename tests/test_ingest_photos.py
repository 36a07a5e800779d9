"""Ingest of a folder of real photos: orientation, EXIF, downscale, dedupe, names, and every bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import ExifTags, Image

from spaceport.ingest import IngestConfig, run_ingest
from spaceport.ingest.naming import unique_names
from spaceport.progress import NullProgress
from spaceport.workspace import SpaceportError, Workspace
from tests.media import (
    blurred,
    jpeg_bytes,
    monstree_photos,
    small_photo_copies,
    truncated_copy,
    upright,
    with_orientation,
    workspace_with_input,
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """8 consecutive monstree photos at 320 px, stored as the camera stored them (EXIF orientation 6 or 1)."""
    return small_photo_copies(monstree_photos()[:8], tmp_path_factory.mktemp("monstree320"))


def ingest(root: Path, config: IngestConfig | None = None) -> tuple[Workspace, dict, NullProgress]:
    ws, progress = Workspace(root), NullProgress()
    result = run_ingest(ws, config or IngestConfig(), progress)
    assert result.outputs == {"images": "images", "frames": "images/frames.json"}
    manifest = json.loads((ws.images_dir / "frames.json").read_text())
    assert result.metrics["images"] == len(manifest["frames"])
    return ws, manifest, progress


def assert_nothing_published(root: Path) -> None:
    assert not (root / "images").exists()
    assert not [path for path in root.iterdir() if path.name.startswith(".")]  # no staging or unzip folder


def stored_orientation(path: Path) -> int:
    return Image.open(path).getexif().get(ExifTags.Base.Orientation, 1)


def test_photos_become_upright_jpegs_with_a_manifest(photos: list[Path], tmp_path: Path) -> None:
    ws, manifest, _ = ingest(workspace_with_input(tmp_path, photos[:5]))
    assert manifest["kind"] == "photos" and manifest["input"] == "input" and manifest["dropped"] == []
    assert [frame["file"] for frame in manifest["frames"]] == [photo.stem + ".jpg" for photo in photos[:5]]
    assert any(stored_orientation(photo) == 6 for photo in photos[:5])
    for frame, photo in zip(manifest["frames"], photos[:5], strict=True):
        output = ws.images_dir / frame["file"]
        assert frame["source"] == f"input/{photo.name}"
        assert Image.open(output).size == upright(photo).size == (frame["width"], frame["height"])
        assert stored_orientation(output) == 1
        assert frame["sharpness"] > 0
        assert frame["exif"]["make"] == "Apple" and frame["exif"]["model"] == "iPhone 7"
        assert frame["exif"]["datetime"].startswith("2017-07-18T")
    assert sorted(path.name for path in ws.images_dir.iterdir()) == sorted(
        [frame["file"] for frame in manifest["frames"]] + ["frames.json"]
    )


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_to_the_pixels(orientation: int, photos: list[Path], tmp_path: Path) -> None:
    expected = upright(photos[0]).resize((200, 300))  # portrait, so a missed quarter turn changes the size
    workspace = workspace_with_input(tmp_path, photos[1:3])
    with_orientation(expected, orientation, workspace / "input" / "turned.jpg")
    assert Image.open(workspace / "input" / "turned.jpg").size == ((300, 200) if orientation != 3 else (200, 300))

    ws, manifest, _ = ingest(workspace)
    output = Image.open(ws.images_dir / "turned.jpg").convert("RGB")
    assert output.size == (200, 300)
    difference = np.abs(np.asarray(output, dtype=float) - np.asarray(expected, dtype=float)).mean()
    upside_down = np.abs(np.asarray(output.rotate(180), dtype=float) - np.asarray(expected, dtype=float)).mean()
    assert difference < 4 < upside_down
    assert stored_orientation(ws.images_dir / "turned.jpg") == 1


def test_exif_focal_length_and_gps_are_kept_for_colmap(photos: list[Path], tmp_path: Path) -> None:
    rotated = next(photo for photo in photos if stored_orientation(photo) == 6)
    ws, manifest, _ = ingest(workspace_with_input(tmp_path, [rotated, *photos[:3]]))
    output = ws.images_dir / (rotated.stem + ".jpg")
    source_exif, output_exif = Image.open(rotated).getexif(), Image.open(output).getexif()
    source_ifd, output_ifd = source_exif.get_ifd(ExifTags.IFD.Exif), output_exif.get_ifd(ExifTags.IFD.Exif)
    assert output_exif[ExifTags.Base.Orientation] == 1
    assert float(output_ifd[ExifTags.Base.FocalLength]) == float(source_ifd[ExifTags.Base.FocalLength]) > 0
    assert output_ifd[ExifTags.Base.FocalLengthIn35mmFilm] == source_ifd[ExifTags.Base.FocalLengthIn35mmFilm]
    assert output_exif[ExifTags.Base.Make] == source_exif[ExifTags.Base.Make]
    source_gps, output_gps = source_exif.get_ifd(ExifTags.IFD.GPSInfo), output_exif.get_ifd(ExifTags.IFD.GPSInfo)
    assert output_gps[ExifTags.GPS.GPSLatitude] == source_gps[ExifTags.GPS.GPSLatitude]
    frame = next(frame for frame in manifest["frames"] if frame["file"] == output.name)
    latitude = sum(float(part) / 60**power for power, part in enumerate(source_gps[ExifTags.GPS.GPSLatitude]))
    assert frame["exif"]["gps"][0] == pytest.approx(latitude)
    assert frame["exif"]["focal_length_mm"] == pytest.approx(float(source_ifd[ExifTags.Base.FocalLength]))

    # COLMAP itself finds the same focal-length prior (in pixels per long side) in the written file.
    before, after = pycolmap.infer_camera_from_image(rotated), pycolmap.infer_camera_from_image(output)
    assert after.has_prior_focal_length
    assert (after.width, after.height) == (before.height, before.width)
    assert after.mean_focal_length() / max(after.width, after.height) == pytest.approx(
        before.mean_focal_length() / max(before.width, before.height), rel=1e-6
    )


def test_an_upright_jpeg_of_the_right_size_is_copied_byte_for_byte(photos: list[Path], tmp_path: Path) -> None:
    workspace = workspace_with_input(tmp_path, photos[:2])
    straight = with_orientation(upright(photos[2]), 1, workspace / "input" / "straight.jpg")
    ws, manifest, _ = ingest(workspace)
    assert (ws.images_dir / "straight.jpg").read_bytes() == straight.read_bytes()
    assert (ws.images_dir / photos[0].name.replace(".JPG", ".jpg")).read_bytes() != photos[0].read_bytes()


def test_max_size_downscales_the_long_side(photos: list[Path], tmp_path: Path) -> None:
    ws, manifest, _ = ingest(workspace_with_input(tmp_path, photos[:3]), IngestConfig(max_size=160))
    for frame, photo in zip(manifest["frames"], photos[:3], strict=True):
        width, height = upright(photo).size
        scale = 160 / max(width, height)
        assert (frame["width"], frame["height"]) == (round(width * scale), round(height * scale))
        assert Image.open(ws.images_dir / frame["file"]).size == (frame["width"], frame["height"])
        assert frame["exif"]["focal_length_35mm"] == 28


@pytest.mark.parametrize("dedupe", [True, False])
def test_exact_and_near_duplicates_are_dropped(dedupe: bool, photos: list[Path], tmp_path: Path) -> None:
    workspace = workspace_with_input(tmp_path, photos[:4])
    (workspace / "input" / "copy of first.jpg").write_bytes(photos[0].read_bytes())
    second = Image.open(photos[1])
    smaller = second.resize((second.width * 9 // 10, second.height * 9 // 10))
    (workspace / "input" / "zz_second_again.jpg").write_bytes(
        jpeg_bytes(smaller, quality=70, exif=second.info["exif"])
    )
    ws, manifest, progress = ingest(workspace, IngestConfig(dedupe=dedupe))
    if not dedupe:
        assert len(manifest["frames"]) == 6
        return
    assert len(manifest["frames"]) == 4
    reasons = {item["source"]: item["reason"] for item in manifest["dropped"]}
    assert reasons["input/copy of first.jpg"].startswith(f"identical to input/{photos[0].name}")
    twins = {f"input/{photos[1].name}", "input/zz_second_again.jpg"}  # the sharper of the two stays
    (dropped_twin,) = twins & set(reasons)
    (kept_twin,) = twins - {dropped_twin}
    assert reasons[dropped_twin].startswith(f"near-duplicate of {kept_twin}")
    kept = {frame["file"] for frame in manifest["frames"]}
    assert kept | {"frames.json"} == {path.name for path in ws.images_dir.iterdir()}
    assert any("near-duplicate" in message for message in progress.messages)


@pytest.mark.parametrize("drop_blurry_photos", [True, False])
def test_blurry_photos_are_dropped_only_when_asked(
    drop_blurry_photos: bool, photos: list[Path], tmp_path: Path
) -> None:
    workspace = workspace_with_input(tmp_path, photos[:4])
    (workspace / "input" / "shaky.jpg").write_bytes(jpeg_bytes(blurred(photos[4], radius=3)))
    ws, manifest, _ = ingest(workspace, IngestConfig(drop_blurry_photos=drop_blurry_photos))
    files = {frame["file"] for frame in manifest["frames"]}
    assert ("shaky.jpg" in files) is not drop_blurry_photos
    assert len(files) == (4 if drop_blurry_photos else 5)
    if drop_blurry_photos:
        (dropped,) = manifest["dropped"]
        assert dropped["source"] == "input/shaky.jpg" and dropped["reason"].startswith("blurry")


def test_names_are_kept_made_safe_and_unique(photos: list[Path], tmp_path: Path) -> None:
    data = [photo.read_bytes() for photo in photos[:4]]
    workspace = workspace_with_input(
        tmp_path,
        contents={"IMG.jpg": data[0], "img.jpeg": data[1], "my photo (1).JPG": data[2], "sub/IMG.jpg": data[3]},
    )
    ws, manifest, _ = ingest(workspace)
    names = {frame["source"]: frame["file"] for frame in manifest["frames"]}
    assert names == {
        "input/IMG.jpg": "IMG.jpg",
        "input/img.jpeg": "img_2.jpg",
        "input/my photo (1).JPG": "my_photo_1.jpg",
        "input/sub/IMG.jpg": "IMG_3.jpg",
    }
    assert unique_names(["a/b", "..", "ÉTÉ", "x" * 300]) == ["a_b.jpg", "image.jpg", "T.jpg", "x" * 100 + ".jpg"]


def test_a_corrupt_jpeg_is_skipped_with_a_warning(photos: list[Path], tmp_path: Path) -> None:
    workspace = workspace_with_input(tmp_path, photos[:4], contents={"garbage.jpg": b"\xff\xd8\xff" + bytes(500)})
    truncated_copy(photos[4], workspace / "input" / "cut.jpg")
    ws, manifest, progress = ingest(workspace)
    assert len(manifest["frames"]) == 4
    reasons = {item["source"]: item["reason"] for item in manifest["dropped"]}
    assert set(reasons) == {"input/cut.jpg", "input/garbage.jpg"}
    assert all("corrupt" in reason for reason in reasons.values())
    assert any("cut.jpg" in message and "warning" in message for message in progress.messages)
    assert not (ws.images_dir / "cut.jpg").exists()


def test_a_non_image_among_photos_is_ignored_with_a_warning(photos: list[Path], tmp_path: Path) -> None:
    workspace = workspace_with_input(
        tmp_path, photos[:3], contents={"notes.txt": b"hello", ".DS_Store": b"x", "clip.mp4": b"x"}
    )
    ws, manifest, progress = ingest(workspace)
    assert len(manifest["frames"]) == 3
    reasons = {item["source"]: item["reason"] for item in manifest["dropped"]}
    assert set(reasons) == {"input/notes.txt", "input/clip.mp4"}  # dotfiles are not user content
    assert "not an image" in reasons["input/notes.txt"]
    assert any("notes.txt" in message for message in progress.messages)


def test_a_rerun_replaces_a_stale_images_folder_and_leftovers(photos: list[Path], tmp_path: Path) -> None:
    workspace = workspace_with_input(tmp_path, photos[:3])
    (workspace / "images").mkdir()
    (workspace / "images" / "stale.jpg").write_bytes(b"old")
    (workspace / ".images.partial-killed").mkdir()
    ws, manifest, _ = ingest(workspace)
    assert not (ws.images_dir / "stale.jpg").exists()
    assert not (workspace / ".images.partial-killed").exists()
    assert len(manifest["frames"]) == 3


BAD_INPUTS = {
    # case: (files taken from the 8 photos, extra files, words the error must contain)
    "empty folder": (0, {}, ["input", "is empty"]),
    "only hidden files": (0, {".DS_Store": b"x", "__MACOSX/._a.jpg": b"x"}, ["is empty"]),
    "a single photo": (1, {}, ["only 1 usable photo in input", "at least 3"]),
    "two photos": (2, {}, ["only 2 usable photos", "at least 3"]),
    "two photos and a corrupt one": (2, {"broken.jpg": b"\xff\xd8" + bytes(100)}, ["broken.jpg", "corrupt"]),
    "a non-image file alone": (0, {"notes.txt": b"hello"}, ["no photo", "notes.txt"]),
    "a corrupt HEIC photo alone": (0, {"IMG_1.HEIC": b"x"}, ["IMG_1.HEIC", "corrupt"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error_leaving_nothing(case: str, photos: list[Path], tmp_path: Path) -> None:
    count, contents, words = BAD_INPUTS[case]
    workspace = workspace_with_input(tmp_path, photos[:count], contents=contents)
    with pytest.raises(SpaceportError) as raised:
        run_ingest(Workspace(workspace), IngestConfig(), NullProgress(logging.getLogger("test")))
    for word in words:
        assert word in str(raised.value)
    assert_nothing_published(workspace)


def test_missing_input_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpaceportError, match="does not exist"):
        run_ingest(Workspace(tmp_path), IngestConfig(), NullProgress())

"""Masks given beside real monstree photos: paired by name, turned and resized exactly as their photos, written where
COLMAP's mask_path expects them, recorded in frames.json; missing ones logged, wrong ones refused."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import ExifTags, Image

from spaceport.formats.frames import FramesManifest
from spaceport.ingest import IngestConfig, run_ingest
from spaceport.progress import NullProgress
from spaceport.workspace import SpaceportError, Workspace
from tests.media import make_zip, monstree_photos, small_photo_copies, upright, workspace_with_input


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """5 consecutive monstree photos at 320 px as the camera stored them (portrait ones with orientation 6)."""
    return small_photo_copies(monstree_photos()[10:15], tmp_path_factory.mktemp("monstree320"))


def keep_region(size: tuple[int, int]) -> Image.Image:
    """A mask keeping the top-left block of the photo (60% wide, 45% high): any wrong turn or flip moves it."""
    width, height = size
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[: round(0.45 * height), : round(0.6 * width)] = 255
    return Image.fromarray(pixels)


def png(image: Image.Image, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def orientation(photo: Path) -> int:
    return Image.open(photo).getexif().get(ExifTags.Base.Orientation, 1)


def masks_for(photos: list[Path], folder: str = "masks/") -> dict[str, bytes]:
    """A drawn mask per photo, as displayed, named after the photo's base name."""
    return {f"{folder}{photo.stem}.png": png(keep_region(upright(photo).size)) for photo in photos}


def ingest(root: Path, config: IngestConfig | None = None) -> tuple[Workspace, dict, NullProgress, dict]:
    ws, progress = Workspace(root), NullProgress()
    result = run_ingest(ws, config or IngestConfig(), progress)
    manifest = json.loads((ws.images_dir / "frames.json").read_text())
    return ws, manifest, progress, result.metrics


def assert_mask_fits(ws: Workspace, frame: dict) -> np.ndarray:
    """The written mask: 8-bit L, only 0 and 255, at its image's size, the keep region where it belongs."""
    assert frame["mask"] == frame["file"] + ".png"
    mask = Image.open(ws.masks_dir / frame["mask"])
    assert mask.mode == "L" and mask.size == (frame["width"], frame["height"])
    assert mask.size == Image.open(ws.images_dir / frame["file"]).size
    pixels = np.asarray(mask)
    assert set(np.unique(pixels)) <= {0, 255}
    expected = np.asarray(keep_region(mask.size))
    assert (pixels != expected).mean() < 0.02  # nearest-neighbour rounding along the region's two edges only
    return pixels


def test_masks_are_turned_resized_and_written_for_colmap(photos: list[Path], tmp_path: Path) -> None:
    turned = next(photo for photo in photos if orientation(photo) == 6)
    others = [photo for photo in photos if photo != turned]
    contents = masks_for(others[:2])
    half = keep_region(upright(others[2]).size).reduce(2)  # a smaller mask of the same aspect ratio, as a JPEG
    contents[f"masks/{others[2].stem}.jpg"] = png(half, "JPEG")
    stored = keep_region(upright(turned).size).transpose(Image.Transpose.ROTATE_90)  # drawn on the stored pixels
    contents[f"masks/{turned.name}.png"] = png(stored)  # COLMAP's naming: IMG_1.JPG.png
    workspace = workspace_with_input(tmp_path, [turned, *others], contents=contents)

    ws, manifest, _, metrics = ingest(workspace, IngestConfig(max_size=200))
    frames = {frame["source"]: frame for frame in manifest["frames"]}
    assert len(frames) == 5 and manifest["dropped"] == []  # masks are not photos
    masked = [f"input/{photo.name}" for photo in [turned, *others[:3]]]
    for source in masked:
        assert max(frames[source]["width"], frames[source]["height"]) == 200
        assert_mask_fits(ws, frames[source])
    assert frames[f"input/{others[3].name}"]["mask"] is None
    assert sorted(path.name for path in ws.masks_dir.iterdir()) == sorted(frames[s]["mask"] for s in masked)
    assert metrics["with_mask"] == 4

    # COLMAP finds the masks by its own convention (mask_path/<image name>.png) and keeps no feature outside them.
    database = tmp_path / "database.db"
    names = [frames[source]["file"] for source in masked[:2]]
    pycolmap.extract_features(database, ws.images_dir, image_names=names,
                              reader_options=pycolmap.ImageReaderOptions(mask_path=str(ws.masks_dir)),
                              device=pycolmap.Device.cpu)
    unmasked_database = tmp_path / "unmasked.db"
    pycolmap.extract_features(unmasked_database, ws.images_dir, image_names=names, device=pycolmap.Device.cpu)
    with pycolmap.Database.open(database) as db, pycolmap.Database.open(unmasked_database) as plain:
        for name in names:
            keypoints = db.read_keypoints(db.read_image_with_name(name).image_id)
            everywhere = plain.read_keypoints(plain.read_image_with_name(name).image_id)
            mask = np.asarray(Image.open(ws.masks_dir / f"{name}.png"))
            columns, rows = keypoints[:, 0].astype(int), keypoints[:, 1].astype(int)
            assert 0 < len(keypoints) < len(everywhere)
            assert (mask[rows, columns] == 255).all()


def test_photos_without_a_mask_keep_every_pixel_and_are_logged(photos: list[Path], tmp_path: Path) -> None:
    workspace = workspace_with_input(tmp_path, photos[:4], contents=masks_for(photos[:2]))
    ws, manifest, progress, metrics = ingest(workspace)
    with_mask = {frame["source"] for frame in manifest["frames"] if frame["mask"]}
    assert with_mask == {f"input/{photo.name}" for photo in photos[:2]}
    assert metrics["with_mask"] == 2
    (warning,) = [message for message in progress.messages if "have no mask" in message]
    assert "2 of 4 photos" in warning and photos[2].name in warning and photos[3].name in warning
    assert len(list(ws.masks_dir.iterdir())) == 2


def test_a_mask_of_another_shape_is_refused_naming_it(photos: list[Path], tmp_path: Path) -> None:
    contents = masks_for(photos[:3])
    width, height = upright(photos[1]).size
    contents[f"masks/{photos[1].stem}.png"] = png(keep_region((width, width)))  # square mask, portrait photo
    workspace = workspace_with_input(tmp_path, photos[:3], contents=contents)
    with pytest.raises(SpaceportError) as raised:
        run_ingest(Workspace(workspace), IngestConfig(), NullProgress())
    message = str(raised.value)
    assert f"input/masks/{photos[1].stem}.png is {width}x{width}" in message
    assert f"input/{photos[1].name} is {width}x{height}" in message and "aspect ratio" in message
    assert not (workspace / "images").exists() and not (workspace / "masks").exists()
    assert not [path for path in workspace.iterdir() if path.name.startswith(".")]


def test_two_masks_for_one_photo_are_refused(photos: list[Path], tmp_path: Path) -> None:
    contents = masks_for(photos[:3])
    contents[f"masks/{photos[0].name}.png"] = contents[f"masks/{photos[0].stem}.png"]
    workspace = workspace_with_input(tmp_path, photos[:3], contents=contents)
    with pytest.raises(SpaceportError, match="has 2 masks .*keep one mask per photo"):
        run_ingest(Workspace(workspace), IngestConfig(), NullProgress())


def test_masks_in_a_zip_beside_the_photos_folder(photos: list[Path], tmp_path: Path) -> None:
    entries: dict[str, bytes | Path] = {f"trip/photos/{photo.name}": photo for photo in photos[:3]}
    entries.update(masks_for(photos[:3], folder="trip/masks/"))
    workspace = workspace_with_input(tmp_path)
    make_zip(workspace / "input" / "photos.zip", entries)
    ws, manifest, _, metrics = ingest(workspace)
    assert metrics["with_mask"] == 3 and manifest["dropped"] == []
    for frame in manifest["frames"]:
        assert_mask_fits(ws, frame)


def test_a_dropped_duplicate_drops_its_mask_and_a_stray_mask_is_ignored(
    photos: list[Path], tmp_path: Path
) -> None:
    contents = masks_for(photos[:3], folder="shots/masks/")
    contents["shots/again.jpg"] = photos[0].read_bytes()  # identical to the first photo: dropped
    contents["shots/masks/again.png"] = contents[f"shots/masks/{photos[0].stem}.png"]
    contents["shots/masks/nobody.png"] = contents[f"shots/masks/{photos[1].stem}.png"]
    workspace = workspace_with_input(tmp_path, contents=contents)
    for photo in photos[:3]:
        (workspace / "input" / "shots" / photo.name).write_bytes(photo.read_bytes())
    ws, manifest, progress, _ = ingest(workspace)
    reasons = {item["source"]: item["reason"] for item in manifest["dropped"]}
    assert reasons["input/shots/again.jpg"].startswith("identical to")
    assert "mask of no photo" in reasons["input/shots/masks/nobody.png"]
    assert any("nobody.png" in message for message in progress.messages)
    assert sorted(path.name for path in ws.masks_dir.iterdir()) == sorted(
        frame["mask"] for frame in manifest["frames"]
    )
    assert "again.jpg.png" not in {path.name for path in ws.masks_dir.iterdir()}


def test_a_rerun_without_masks_removes_the_old_ones(photos: list[Path], tmp_path: Path) -> None:
    workspace = workspace_with_input(tmp_path, photos[:3], contents=masks_for(photos[:3]))
    ws, _, _, _ = ingest(workspace)
    assert len(list(ws.masks_dir.iterdir())) == 3
    for mask in (workspace / "input" / "masks").iterdir():
        mask.unlink()
    ws, manifest, _, metrics = ingest(workspace)
    assert not ws.masks_dir.exists() and metrics["with_mask"] == 0
    assert all(frame["mask"] is None for frame in manifest["frames"])


def test_a_manifest_written_before_masks_still_reads() -> None:
    old = {"kind": "photos", "input": "input", "dropped": [],
           "frames": [{"file": "a.jpg", "source": "input/a.jpg", "width": 4, "height": 3, "sharpness": 1.0}]}
    assert FramesManifest.model_validate(old).frames[0].mask is None


def test_an_all_black_mask_is_warned_about(photos: list[Path], tmp_path: Path) -> None:
    contents = {f"masks/{photos[0].stem}.png": png(Image.new("L", upright(photos[0]).size, 0))}
    workspace = workspace_with_input(tmp_path, photos[:3], contents=contents)
    _, _, progress, _ = ingest(workspace)
    assert any("all black" in message and photos[0].name in message for message in progress.messages)

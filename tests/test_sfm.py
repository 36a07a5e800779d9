"""SfM with real COLMAP (pycolmap): registration, report, camera grouping, bad input, sub-step resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from spaceport.formats import FramesManifest
from spaceport.ingest import IngestConfig, run_ingest
from spaceport.progress import NullProgress
from spaceport.sfm import SfmConfig, camera_groups, choose_matcher, run_sfm
from spaceport.sfm.features import mapping_groups, resolve_camera_mode
from spaceport.workspace import SpaceportError, Workspace
from tests.conftest import LIBERTY, downscale_copy, monstree_photos


def test_real_photos_register_with_subpixel_error(sfm_workspace: Path) -> None:
    report = json.loads((sfm_workspace / "sfm" / "report.json").read_text())
    assert report["registered"] == report["total"] == 10
    assert report["mean_reprojection_error_px"] < 1.0
    assert report["points3d"] > 500
    assert set(report["seconds"]) == {"extract", "match", "map", "undistort"}
    assert report["camera_mode"] == "exif" and report["cameras"] == 1 and report["feature_device"] == "cpu"
    assert report["warnings"] == [] and report["left_out"] == []
    assert [a["kept"] for a in report["attempts"]] == [True]  # 10/10 at once: no second attempt
    assert {p["name"] for p in report["photos"]} == {f"{p.stem}.jpg" for p in monstree_photos()[:10]}
    assert all(p["points"] >= 100 and p["error_px"] < 1.0 for p in report["photos"])
    assert 0.5 < report["focal"]["median_fraction"] < 2.0
    undistorted = pycolmap.Reconstruction(str(sfm_workspace / "sfm" / "undistorted" / "sparse"))
    assert {c.model.name for c in undistorted.cameras.values()} == {"PINHOLE"}
    assert len(list((sfm_workspace / "sfm" / "undistorted" / "images").glob("*.jpg"))) == 10


def test_resume_skips_finished_steps(sfm_workspace: Path, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(sfm_workspace, root)
    progress = NullProgress()
    result = run_sfm(Workspace(root), SfmConfig(max_image_size=480), progress)
    assert result.metrics["registered"] == 10
    assert sum("already done, skipped" in m for m in progress.messages) == 4


def ingested(ws: Workspace) -> None:
    """Run the real ingest stage on the photos put in ws.input_dir (it writes images/ and frames.json)."""
    run_ingest(ws, IngestConfig(min_images=1), NullProgress())


def test_photos_that_do_not_overlap_fail_and_are_listed(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    downscale_copy([monstree_photos()[0], sorted(LIBERTY.glob("*.jpg"))[0]], ws.input_dir, 480)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)).save(ws.input_dir / "noise.jpg")
    ingested(ws)
    with pytest.raises(SpaceportError) as error:
        run_sfm(ws, SfmConfig(max_image_size=480), NullProgress())
    message = str(error.value)
    assert "registered 0 of 3 photos" in message and "do not overlap" in message
    assert "noise.jpg" in message and "IMG_1025.jpg" in message
    assert "incremental mapper" in message and "global mapper" in message  # the other mapper was tried too
    assert "--mapper global" not in message  # so it is not advised
    assert not (ws.sfm_dir / "report.json").exists()


def test_a_fragment_from_a_neighbour_matcher_points_to_exhaustive_matching() -> None:
    from spaceport.formats.sfm import MappingAttempt
    from spaceport.sfm.colmap import attempts_tried, fragment_hint
    from spaceport.sfm.mapping import Outcome

    tried = [Outcome(attempt=MappingAttempt(mapper="global", camera_mode="per-image", registered=0, removed=0,
                                            seconds=1.0), model_sizes=[103, 10])]
    assert attempts_tried(tried) == "global mapper with per-image cameras: 103 mapped, 0 kept"
    split = MappingAttempt(mapper="incremental", camera_mode="per-image", mapped_with="exif", registered=5, removed=0,
                           seconds=1.0)  # mapped with the EXIF groups' cameras, then split per photo
    assert split.cameras() == "exif cameras, then a focal length per photo"
    for matcher in ("sequential", "spatial"):  # liberty with --matcher sequential: 44 of 135 photos
        assert "--matcher exhaustive" in fragment_hint(matcher, "photos", tried, "otherwise")
    video = fragment_hint("sequential", "video", tried, "otherwise")  # frames in order: not the matcher
    assert video == "otherwise"
    assert fragment_hint("exhaustive", "photos", [], "otherwise") == "Try --mapper global. otherwise"


def test_too_few_images_is_a_clear_error(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    downscale_copy(monstree_photos()[:2], ws.input_dir, 320)
    ingested(ws)
    with pytest.raises(SpaceportError, match="only 2 image"):
        run_sfm(ws, SfmConfig(), NullProgress())


def test_missing_images_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(SpaceportError, match="images: missing"):
        run_sfm(Workspace(tmp_path), SfmConfig(), NullProgress())


def _frames(specs: list[tuple[str, tuple]], kind: str = "photos") -> FramesManifest:
    return FramesManifest.model_validate({"kind": kind, "input": "input", "dropped": [], "frames": [
        {"file": name, "source": f"input/{name}", "width": w, "height": h, "sharpness": 1.0,
         "exif": {"make": make, "model": model, "focal_length_mm": focal}}
        for name, (make, model, focal, w, h) in specs]})


def test_camera_groups_follow_exif_and_split_per_photo_for_collections() -> None:
    phone = ("Apple", "iPhone 7", 3.99, 1200, 1600)
    landscape = ("Apple", "iPhone 7", 3.99, 1600, 1200)
    frames = _frames([(f"{i}.jpg", phone if i % 4 else landscape) for i in range(20)])
    groups = camera_groups(frames, "auto")
    assert sorted(len(g) for g in groups) == [5, 15]
    assert resolve_camera_mode(frames, "auto") == "exif"
    collection = _frames([(f"{i}.jpg", ("Make", f"model{i % 12}", 4.0 + i % 12, 800, 1200)) for i in range(40)])
    assert len(camera_groups(collection, "exif")) == 12
    assert camera_groups(collection, "single") == [[f.file for f in collection.frames]]
    # a collection: a focal length per photo in the end, mapped first with one shared camera per image size
    assert resolve_camera_mode(collection, "auto") == "per-image"
    assert len(camera_groups(collection, "auto")) == len(camera_groups(collection, "per-image")) == 40
    assert mapping_groups(collection, "per-image") == [[f.file for f in collection.frames]]
    assert len(mapping_groups(frames, "per-image")) == 2  # a capture: mapped per EXIF group, then split


def test_matcher_choice() -> None:
    photos = _frames([(f"{i}.jpg", ("A", "B", 4.0, 10, 10)) for i in range(30)])
    assert choose_matcher(photos, SfmConfig()) == "exhaustive"
    assert choose_matcher(photos.model_copy(update={"kind": "video"}), SfmConfig()) == "sequential"
    assert choose_matcher(photos, SfmConfig(matcher="sequential")) == "sequential"
    many = _frames([(f"{i}.jpg", ("A", "B", 4.0, 10, 10)) for i in range(400)])
    assert choose_matcher(many, SfmConfig()) == "sequential"
    for frame in many.frames:
        frame.exif.gps = (48.0, 2.0, 30.0)
    assert choose_matcher(many, SfmConfig()) == "spatial"


def test_vocabtree_without_file_is_refused(sfm_workspace: Path, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(sfm_workspace / "images", root / "images")
    with pytest.raises(SpaceportError, match="vocabulary tree file"):
        run_sfm(Workspace(root), SfmConfig(matcher="vocabtree", max_image_size=320), NullProgress())

"""Cameras that fit the photos: the camera check after mapping, a focal length per photo, cameras in COLMAP's
database, where features run. Real pycolmap on real photos (the sfm_workspace fixture and small copies)."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from spaceport.formats import read_frames, read_sfm_report
from spaceport.formats.sfm import LeftOutPhoto, MappingAttempt, SfmReport
from spaceport.ingest import IngestConfig, run_ingest
from spaceport.progress import NullProgress
from spaceport.report.html import _sfm_left_out
from spaceport.sfm import SfmConfig, run_sfm
from spaceport.sfm.features import assign_cameras, choose_feature_device
from spaceport.sfm.gate import remove_bad_cameras
from spaceport.sfm.intrinsics import split_per_photo
from spaceport.sfm.quality import camera_distances, scene_centre, sfm_warnings
from spaceport.workspace import SpaceportError, Workspace

ZOOMED = "IMG_1036.jpg"


def _model(sfm_workspace: Path) -> pycolmap.Reconstruction:
    return pycolmap.Reconstruction(str(Workspace(sfm_workspace).sparse_dir))


def _move_away(model: pycolmap.Reconstruction, image_id: int, distance: float) -> None:
    image = model.image(image_id)
    centre = image.projection_center()
    outward = centre - scene_centre(model)
    far = centre + distance * outward / np.linalg.norm(outward)
    frame = model.frame(image.frame_id)
    rotation = frame.rig_from_world.rotation
    frame.rig_from_world = pycolmap.Rigid3d(rotation, -rotation.matrix() @ far)


def _strip_observations(model: pycolmap.Reconstruction, image_id: int, keep: int) -> None:
    observed = [index for index, point in enumerate(model.image(image_id).points2D) if point.has_point3D()]
    for index in observed[keep:]:
        model.delete_observation(image_id, index)


def test_the_camera_check_removes_degenerate_cameras_and_names_each_reason(sfm_workspace: Path,
                                                                          tmp_path: Path) -> None:
    model = split_per_photo(_model(sfm_workspace))
    ids = sorted(model.reg_image_ids())
    names = {i: model.image(i).name for i in ids}
    negative, far, starved = ids[1], ids[4], ids[7]
    model.camera(negative).params = [-658.0, *model.camera(negative).params[1:]]
    _move_away(model, far, 1000.0)
    _strip_observations(model, starved, keep=20)
    assert max(camera_distances(model).values()) > 100  # the scene is ~7 units across

    removed = remove_bad_cameras(model, SfmConfig())

    by_name = {photo.name: photo for photo in removed}
    assert set(by_name) == {names[negative], names[far], names[starved]}
    assert by_name[names[negative]].test == "focal" and "-658 px" in by_name[names[negative]].reason
    assert by_name[names[far]].test == "far" and "farther from the scene centre" in by_name[names[far]].reason
    assert by_name[names[starved]].test == "few_points" and "sees only 20 3D points" in by_name[names[starved]].reason
    assert model.num_reg_images() == len(ids) - 3
    assert model.compute_mean_reprojection_error() < 1.0
    model.write_binary(str(tmp_path))  # what training would read: the removed photos are not in it
    assert {image.name for image in pycolmap.Reconstruction(str(tmp_path)).images.values()} == (
        set(names.values()) - set(by_name))

    report = SfmReport(registered=7, total=10, unregistered=list(by_name), points3d=1, mean_reprojection_error_px=0.4,
                       mean_track_length=3, cameras=7, camera_groups=1, matcher="exhaustive", mapper="incremental",
                       left_out=removed, attempts=[MappingAttempt(mapper="incremental", camera_mode="per-image",
                                                                  registered=7, removed=3, seconds=1, kept=True)])
    warnings = sfm_warnings(report, SfmConfig())
    assert any("only 7 of 10 photos" in w for w in warnings)
    assert any("the camera check removed 3 photo(s): 1 for implausible focal length, 1 for camera far outside the "
               "scene, 1 for too few 3D points seen" in w for w in warnings)
    rows = {row["photo"]: row for row in _sfm_left_out(report)}
    assert rows[names[far]]["stage"] == "sfm camera check" and rows[names[far]]["reason"] == by_name[names[far]].reason


def test_a_sound_model_passes_the_camera_check_untouched(sfm_workspace: Path) -> None:
    model = _model(sfm_workspace)
    assert remove_bad_cameras(model, SfmConfig()) == []
    assert model.num_reg_images() == 10


def test_old_reports_without_reasons_still_read_and_list_names(sfm_workspace: Path, tmp_path: Path) -> None:
    old = json.loads((sfm_workspace / "sfm" / "report.json").read_text())
    for field in ("left_out", "camera_mode", "focal", "photos", "warnings", "attempts", "feature_device", "masks"):
        old.pop(field)
    old.update(unregistered=["IMG_1040.jpg"], registered=9)
    (tmp_path / "report.json").write_text(json.dumps(old))
    report = read_sfm_report(tmp_path)
    assert report.left_out == [] and report.feature_device == "cpu"
    assert _sfm_left_out(report)[0]["reason"].startswith("COLMAP found no pose for it")


def test_splitting_per_photo_keeps_poses_points_and_error(sfm_workspace: Path) -> None:
    shared = _model(sfm_workspace)
    split = split_per_photo(shared, {"IMG_1025.jpg": 500.0})
    assert split.num_cameras() == split.num_reg_images() == 10 and shared.num_cameras() == 1
    assert split.num_points3D() == shared.num_points3D()
    assert split.find_image_with_name("IMG_1025.jpg").camera.mean_focal_length() == pytest.approx(500.0)
    for image_id in shared.reg_image_ids():
        assert np.allclose(split.image(image_id).projection_center(), shared.image(image_id).projection_center())


@pytest.fixture(scope="module")
def zoomed_workspace(monstree_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """monstree_small with one photo cropped to its centre 2/3 and scaled back: a 1.5× zoom no EXIF tells."""
    root = tmp_path_factory.mktemp("zoomed")
    shutil.copytree(monstree_small, root / "input")
    photo = root / "input" / ZOOMED
    image = Image.open(photo)
    width, height = image.size
    box = (width / 6, height / 6, width * 5 / 6, height * 5 / 6)
    image.crop(box).resize((width, height), Image.Resampling.LANCZOS).save(photo, quality=92)
    ws = Workspace(root)
    ws.mark_done(run_ingest(ws, IngestConfig(), NullProgress()))
    run_sfm(ws, SfmConfig(max_image_size=480), NullProgress())
    return root


def test_a_zoomed_photo_gets_its_own_focal_length(zoomed_workspace: Path) -> None:
    report = read_sfm_report(zoomed_workspace / "sfm")
    assert report.registered == 10 and report.camera_mode == "per-image" and report.cameras == 10
    focal = {photo.name: photo.focal_px for photo in report.photos}
    others = np.median([f for name, f in focal.items() if name != ZOOMED])
    assert focal[ZOOMED] / others == pytest.approx(1.5, abs=0.08)
    assert max(photo.error_px for photo in report.photos) < 0.6
    assert "split per photo" in report.attempts[0].note
    assert report.focal.max_px == pytest.approx(focal[ZOOMED], abs=0.1)


def test_an_explicit_shared_camera_warns_about_the_zoomed_photo(zoomed_workspace: Path, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(zoomed_workspace, root)
    steps = json.loads((root / "sfm" / "steps.json").read_text())
    (root / "sfm" / "steps.json").write_text(json.dumps({k: steps[k] for k in ("extract", "match")}))
    run_sfm(Workspace(root), SfmConfig(max_image_size=480, camera_mode="exif"), NullProgress())
    report = read_sfm_report(root / "sfm")
    assert report.camera_mode == "exif" and report.cameras == 1
    assert any(w.startswith("wide focal spread on a shared camera") and ZOOMED in w for w in report.warnings)


def test_cameras_are_regrouped_in_the_database(sfm_workspace: Path, tmp_path: Path) -> None:
    database = tmp_path / "database.db"
    shutil.copy(sfm_workspace / "sfm" / "database.db", database)
    frames = read_frames(sfm_workspace / "images")
    names = [f.file for f in frames.frames]
    assign_cameras(database, frames, [names[:4], names[4:]])
    db = pycolmap.Database.open(database)
    try:
        cameras = db.read_all_cameras()
        images = {image.name: image for image in db.read_all_images()}
        frames_by_id = {frame.frame_id: frame for frame in db.read_all_frames()}
        assert len(cameras) == 2 and len(db.read_all_rigs()) == 2
        assert len({images[n].camera_id for n in names[:4]}) == 1
        assert images[names[0]].camera_id != images[names[-1]].camera_id
        for image in images.values():
            assert frames_by_id[image.frame_id].rig_id == next(
                r.rig_id for r in db.read_all_rigs() if r.ref_sensor_id.id == image.camera_id)
            assert db.num_keypoints_for_image(image.image_id) > 100
    finally:
        db.close()


def test_feature_device_follows_the_pycolmap_build_and_the_gpu() -> None:
    assert choose_feature_device("auto", has_cuda=False) == "cpu"
    assert choose_feature_device("auto", has_cuda=True, gpu_present=lambda: True) == "cuda"
    assert choose_feature_device("auto", has_cuda=True, gpu_present=lambda: False) == "cpu"
    assert choose_feature_device("cpu", has_cuda=True, gpu_present=lambda: True) == "cpu"
    with pytest.raises(SpaceportError, match="pycolmap-cuda12"):
        choose_feature_device("cuda", has_cuda=False)



def test_the_report_page_shows_warnings_reasons_and_the_focal_spread(sfm_workspace: Path, tmp_path: Path) -> None:
    from spaceport.formats import JobFile, write_job, write_sfm_report
    from spaceport.report import ReportConfig, run_report

    root = tmp_path / "ws"
    shutil.copytree(sfm_workspace, root, ignore=shutil.ignore_patterns(".lock"))
    write_job(root, JobFile(steps="sfm"))
    ws = Workspace(root)
    sfm = read_sfm_report(ws.sfm_dir)
    far = LeftOutPhoto(name="IMG_1040.jpg", test="far", reason="camera 34 × farther from the scene centre than the "
                                                                "median camera (accepted up to 20 ×)")
    sfm = sfm.model_copy(update={"left_out": [far], "unregistered": [far.name], "registered": 9})
    write_sfm_report(ws.sfm_dir, sfm.model_copy(update={"warnings": sfm_warnings(sfm, SfmConfig())}))
    run_report(ws, ReportConfig(), NullProgress())
    page = (ws.report_dir / "index.html").read_text()
    section = re.search(r'<section id="sfm".*?</section>', page, flags=re.DOTALL).group(0)
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", section)).replace("\xa0", " ").split())
    assert "Warning: the camera check removed 1 photo(s): 1 for camera far outside the scene" in text
    assert f"IMG_1040.jpg sfm camera check {far.reason}" in text
    focal = sfm.focal
    assert f"Focal length {focal.min_px:,.0f}–{focal.max_px:,.0f} px, median {focal.median_px:,.0f}" in text


def test_the_run_summary_carries_one_sfm_warning_line(sfm_workspace: Path, tmp_path: Path) -> None:
    from spaceport.cli import _summary_lines
    from spaceport.formats import write_sfm_report

    root = tmp_path / "ws"
    shutil.copytree(sfm_workspace, root, ignore=shutil.ignore_patterns(".lock"))
    ws = Workspace(root)
    assert not any("warning" in line for line in _summary_lines(ws, []))
    sfm = read_sfm_report(ws.sfm_dir)
    write_sfm_report(ws.sfm_dir, sfm.model_copy(update={"warnings": ["only 7 of 10 photos are in the model (70%)",
                                                                     "second"]}))
    lines = [line for line in _summary_lines(ws, []) if "sfm warning" in line]
    assert lines == ["[yellow]sfm warning: only 7 of 10 photos are in the model (70%) (+1 more in sfm/report.json)"
                     "[/yellow]"]

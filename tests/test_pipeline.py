"""The `spaceport run` command end to end on real photos: SfM steps, resume, --force, bad input."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spaceport.cli import app
from tests.conftest import downscale_copy, monstree_photos

runner = CliRunner()
SMALL = ["--max-size", "480", "--set", "sfm.max_image_size=480"]


def spaceport(*args: str):
    return runner.invoke(app, ["run", *args], catch_exceptions=False)


def test_sfm_steps_resume_and_force(monstree_small: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "W"
    first = spaceport(str(monstree_small), "-o", str(workspace), "--steps", "sfm", *SMALL)
    assert first.exit_code == 0, first.output
    report = json.loads((workspace / "sfm" / "report.json").read_text())
    assert report["registered"] == report["total"] == 10
    assert report["mean_reprojection_error_px"] < 1.0
    assert (workspace / "images" / ".done").exists() and (workspace / "sfm" / ".done").exists()
    assert (workspace / "logs" / "sfm.log").read_text().count("done sfm") == 1
    job = json.loads((workspace / "job.json").read_text())
    assert job["status"] == "succeeded" and job["steps"] == "sfm"

    marker_before = (workspace / "sfm" / ".done").stat().st_mtime_ns
    resumed = spaceport(str(monstree_small), "-o", str(workspace), "--steps", "sfm", *SMALL)
    assert resumed.exit_code == 0 and "resumed" in resumed.output
    assert (workspace / "sfm" / ".done").stat().st_mtime_ns == marker_before

    forced = spaceport(str(monstree_small), "-o", str(workspace), "--steps", "sfm", "--force", "sfm", *SMALL)
    assert forced.exit_code == 0, forced.output
    assert (workspace / "sfm" / ".done").stat().st_mtime_ns != marker_before
    assert (workspace / "images" / ".done").exists()  # earlier stages are kept
    assert (workspace / "logs" / "sfm.log").read_text().count("done sfm") == 2


def test_video_goes_through_ingest_and_sfm(monstree_small: Path, tmp_path: Path) -> None:
    from tests.media import make_video_from_photos

    video = tmp_path / "walk.mp4"
    make_video_from_photos(sorted(monstree_small.glob("*.jpg")), video, fps=2, size=(480, 360))
    workspace = tmp_path / "W"
    result = spaceport(str(video), "-o", str(workspace), "--steps", "sfm", *SMALL)
    assert result.exit_code == 0, result.output
    frames = json.loads((workspace / "images" / "frames.json").read_text())
    assert frames["kind"] == "video"
    report = json.loads((workspace / "sfm" / "report.json").read_text())
    assert report["matcher"] == "sequential"
    assert report["registered"] >= 0.8 * report["total"] >= 6


def _zip_slip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("photos/a.jpg", b"x")
        archive.writestr("../../evil.jpg", b"x")
    return path


@pytest.mark.parametrize("case", ["missing", "empty", "one_photo", "two_photos", "not_an_image", "bad_video",
                                  "zip_slip"])
def test_bad_input_is_a_clear_error_and_nothing_looks_finished(case: str, tmp_path: Path) -> None:
    source = tmp_path / "in"
    if case == "missing":
        source = tmp_path / "does-not-exist"
    elif case == "empty":
        source.mkdir()
    elif case in ("one_photo", "two_photos"):
        downscale_copy(monstree_photos()[: 1 if case == "one_photo" else 2], source, 320)
    elif case == "not_an_image":
        source = tmp_path / "notes.txt"
        source.write_text("not a photo")
    elif case == "bad_video":
        source = tmp_path / "broken.mp4"
        source.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    elif case == "zip_slip":
        source = _zip_slip(tmp_path / "photos.zip")
    workspace = tmp_path / "W"
    result = spaceport(str(source), "-o", str(workspace), "--steps", "sfm")
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    named = {"missing": "does-not-exist", "empty": "in", "one_photo": "photo", "two_photos": "photo",
             "not_an_image": "notes.txt", "bad_video": "broken.mp4", "zip_slip": "evil.jpg"}[case]
    assert named in result.output
    assert not list(workspace.glob("*/.done"))
    assert not (tmp_path / "evil.jpg").exists() and not (workspace.parent / "evil.jpg").exists()


def test_option_errors(monstree_small: Path, tmp_path: Path) -> None:
    result = spaceport(str(monstree_small), "-o", str(tmp_path / "W"), "--steps", "sfm", "--force", "train")
    assert result.exit_code == 2 and "not a stage of --steps sfm" in result.output
    result = spaceport(str(monstree_small), "-o", str(tmp_path / "W"), "--set", "nonsense=1")
    assert result.exit_code == 2 and "STAGE.FIELD" in result.output
    result = spaceport(str(monstree_small), "-o", str(tmp_path / "W"), "--steps", "everything")
    assert result.exit_code == 2 and "--steps everything" in result.output

"""The `spaceport run` command end to end on real photos: SfM steps, resume, --force, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pycolmap
import pytest
from typer.testing import CliRunner

from spaceport.cli import app
from spaceport.splat.appearance import camera_label
from tests.conftest import downscale_copy, monstree_photos

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
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


# -- settings are checked before anything runs -------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "message"), [
    ("train.stpes=10", "unknown setting train.stpes (did you mean train.steps?)"),
    ("sfm.matchr=exhaustive", "unknown setting sfm.matchr (did you mean sfm.matcher?)"),
    ("compress.sh_bnds=1", "unknown setting compress.sh_bnds (did you mean compress.sh_bands?)"),
    ("train.steps=many", "invalid setting train.steps='many'"),
    ("sfm.mapper=magic", "invalid setting sfm.mapper='magic'"),
])
def test_a_bad_setting_exits_2_before_any_stage(setting: str, message: str, monstree_small: Path,
                                                tmp_path: Path) -> None:
    workspace = tmp_path / "W"
    result = spaceport(str(monstree_small), "-o", str(workspace), "--set", setting)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not workspace.exists()


def test_config_prints_the_resolved_preset() -> None:
    result = runner.invoke(app, ["config", "--preset", "preview", "--set", "train.steps=77",
                                 "--set", "compress.sort=morton"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert config["train"]["steps"] == 77 and config["compress"]["sort"] == "morton"
    assert config["train"]["max_image_width"] == 200  # the preview preset's value, untouched
    bad = runner.invoke(app, ["config", "--preset", "huge"])
    assert bad.exit_code == 2 and "unknown preset 'huge'" in bad.output


# -- one writer per workspace ----------------------------------------------------------------------------------------


def _spaceport_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spaceport", "run", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for_lock_holder(workspace: Path, pid: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lock = workspace / ".lock"
        if lock.exists() and f'"pid": {pid}' in lock.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{workspace}: process {pid} never took the lock")


def test_a_second_run_on_a_busy_workspace_exits_3_and_the_first_finishes(monstree_small: Path,
                                                                         tmp_path: Path) -> None:
    workspace = tmp_path / "W"
    first = _spaceport_process(str(monstree_small), "-o", str(workspace), "--steps", "sfm", *SMALL)
    _wait_for_lock_holder(workspace, first.pid)
    second = _spaceport_process(str(monstree_small), "-o", str(workspace), "--steps", "sfm", *SMALL)
    second_output, _ = second.communicate(timeout=120)
    assert second.returncode == 3, second_output
    assert f"workspace {workspace} is busy: spaceport run (pid {first.pid} on {socket.gethostname()}) since" \
        in " ".join(second_output.split())
    first_output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, first_output
    validated = runner.invoke(app, ["validate", str(workspace), "--min-score", "90"])
    assert validated.exit_code == 0, validated.output


def test_a_lock_left_by_a_dead_process_is_taken_over(monstree_small: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "W"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom spaceport.workspace import Workspace\n"
        f"with Workspace({str(workspace)!r}).lock('spaceport run'):\n"
        "    print('locked', flush=True)\n    time.sleep(600)\n")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    busy = spaceport(str(monstree_small), "-o", str(workspace), "--steps", "sfm", *SMALL)
    assert busy.exit_code == 3 and f"pid {holder.pid}" in busy.output
    holder.kill()
    holder.wait()
    result = spaceport(str(monstree_small), "-o", str(workspace), "--steps", "sfm", *SMALL)
    assert result.exit_code == 0, result.output
    log = (workspace / "logs" / "pipeline.log").read_text()
    assert f"taking over the lock of spaceport run (pid {holder.pid}" in log


# -- other step selections and options -------------------------------------------------------------------------------


def test_global_mapper_registers_the_photos(monstree_small: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "W"
    result = spaceport(str(monstree_small), "-o", str(workspace), "--steps", "sfm", "--mapper", "global", *SMALL)
    assert result.exit_code == 0, result.output
    report = json.loads((workspace / "sfm" / "report.json").read_text())
    assert report["mapper"] == "global"
    assert report["registered"] >= 9 and report["mean_reprojection_error_px"] < 1.5
    job = json.loads((workspace / "job.json").read_text())
    assert job["config"]["sfm"]["mapper"] == "global" and job["settings"]["sfm.mapper"] == "global"


def _colmap_model_folder(sfm_workspace: Path, dest: Path) -> Path:
    """What a user brings to --steps train: images/ and a COLMAP model in sparse/0 (not undistorted)."""
    shutil.copytree(sfm_workspace / "images", dest / "images", ignore=shutil.ignore_patterns("frames.json", ".*"))
    shutil.copytree(sfm_workspace / "sfm" / "sparse" / "0", dest / "sparse" / "0")
    return dest


TINY_TRAIN = ["--preset", "preview", "--set", "train.steps=40", "--set", "train.max_image_width=64",
              "--set", "train.log_every=10", "--set", "train.checkpoint_every=20", "--set", "compress.sort=morton"]


def test_steps_train_from_a_colmap_model(sfm_workspace: Path, tmp_path: Path) -> None:
    source = _colmap_model_folder(sfm_workspace, tmp_path / "model")
    workspace = tmp_path / "W"
    result = spaceport(str(source), "-o", str(workspace), "--steps", "train", *TINY_TRAIN)
    assert result.exit_code == 0, result.output
    sfm_report = json.loads((workspace / "sfm" / "report.json").read_text())
    assert sfm_report["source"] == "model" and sfm_report["registered"] == 10
    assert (workspace / "train" / "splat.ply").exists() and (workspace / "compress" / "scene.sog").exists()
    assert json.loads((workspace / "report" / "report.json").read_text())["steps"] == "train"
    assert not (workspace / "images").exists()  # no ingest: the model's own images were used


def test_steps_train_from_a_previous_workspace_keeps_its_cameras(sfm_workspace: Path, tmp_path: Path) -> None:
    # the EXIF cameras of the first run's manifest decide appearance, not the COLMAP model's camera count
    workspace = tmp_path / "W"
    result = spaceport(str(sfm_workspace), "-o", str(workspace), "--steps", "train", *TINY_TRAIN)
    assert result.exit_code == 0, result.output
    assert (workspace / "input" / "images" / "frames.json").read_bytes() == \
        (sfm_workspace / "images" / "frames.json").read_bytes()
    frames = json.loads((sfm_workspace / "images" / "frames.json").read_text())["frames"]
    exif_cameras = {camera_label(f["exif"]["make"], f["exif"]["model"]) for f in frames} - {None}
    model_cameras = pycolmap.Reconstruction(str(sfm_workspace / "sfm" / "undistorted" / "sparse")).num_cameras()
    assert len(exif_cameras) != model_cameras  # the test photos tell the two sources apart
    assert f" {len(exif_cameras)} camera(s)" in (workspace / "logs" / "train.log").read_text()


def _outputs(workspace: Path) -> dict[str, str]:
    names = ["train/splat.ply", "compress/scene.sog", "train/eval.json"]
    return {name: hashlib.sha256((workspace / name).read_bytes()).hexdigest() for name in names
            if (workspace / name).exists()}


def test_pipelines_in_one_process_match_fresh_processes(sfm_workspace: Path, tmp_path: Path) -> None:
    """No stage leaves state behind (RNG, patched libraries, log destinations): a train pipeline and a compress
    pipeline run one after the other in this process give byte-identical outputs to each in a fresh process."""
    from spaceport.formats.gaussians import random_gaussians, write_ply

    model = _colmap_model_folder(sfm_workspace, tmp_path / "model")
    ply = tmp_path / "random.ply"
    write_ply(ply, random_gaussians(3000, sh_degree=1, seed=3))
    runs = {"train": (str(model), "--steps", "train", *TINY_TRAIN),
            "compress": (str(ply), "--steps", "compress", "--set", "compress.sort_iterations=2")}
    for name, (source, *args) in runs.items():  # in this process, one after the other
        assert spaceport(source, "-o", str(tmp_path / f"here_{name}"), *args).exit_code == 0
    for name, (source, *args) in runs.items():  # each in a fresh process
        fresh = subprocess.run([sys.executable, "-m", "spaceport", "run", source, "-o", str(tmp_path / f"fresh_{name}"),
                                *args], cwd=REPO, capture_output=True, text=True)
        assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    for name in runs:
        here, fresh = _outputs(tmp_path / f"here_{name}"), _outputs(tmp_path / f"fresh_{name}")
        assert here and here == fresh, name


def test_compress_command(tmp_path: Path) -> None:
    from spaceport.formats.gaussians import random_gaussians, write_ply
    from spaceport.formats.sog import read_sog

    ply = tmp_path / "in.ply"
    write_ply(ply, random_gaussians(2000, sh_degree=2, seed=1))
    result = runner.invoke(app, ["compress", str(ply), "-o", str(tmp_path / "out.sog"), "--sh-bands", "1",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    decoded = read_sog(tmp_path / "out.sog")
    assert len(decoded) == 2000 and decoded.sh_degree == 1
    assert json.loads(result.stdout)["num_gaussians"] == 2000
    bad = runner.invoke(app, ["compress", str(ply), "-o", str(tmp_path / "x.sog"), "--sh-bands", "7"])
    assert bad.exit_code == 2 and "sh_bands" in bad.output
    missing = runner.invoke(app, ["compress", str(tmp_path / "none.ply"), "-o", str(tmp_path / "y.sog")])
    assert missing.exit_code == 2 and "none.ply: no such file" in missing.output

"""Issue 11, the viewer: `spaceport view` and `spaceport export --format html` shown in headless Chromium
(WebGL2 through SwiftShader), compared with our own CPU render of the same training camera."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from spaceport.cli import app
from spaceport.formats.gaussians import read_ply
from spaceport.splat.evaluate import ssim
from spaceport.splat.model import render_gaussians
from spaceport.viewer import ViewerCamera, camera_from_workspace
from spaceport.viewer.page import BACKGROUND
from tests.browser import run_viewer, viewer_screenshot, wait_for_viewer

runner = CliRunner()
MATCH_SSIM = 0.6  # the bar for "the same view"


@pytest.fixture(scope="module")
def workspace(preview_workspace: Path) -> Path:
    """The session's finished preview-preset workspace (tests/conftest.py); only read here."""
    return preview_workspace


@pytest.fixture(scope="module")
def camera(workspace: Path) -> ViewerCamera:
    found = camera_from_workspace(workspace)
    assert found is not None
    return found


# -- our own render of a COLMAP camera, as the viewer shows it (square pixels, centred principal point) ----


def colmap_image(workspace: Path, name: str) -> pycolmap.Image:
    reconstruction = pycolmap.Reconstruction(str(workspace / "sfm" / "undistorted" / "sparse"))
    return next(im for im in reconstruction.images.values() if im.name == name)


def render_view(workspace: Path, cam_from_world: np.ndarray, focal_y_photo: float, photo_height: int,
                height: int, width: int) -> np.ndarray:
    focal = focal_y_photo * height / photo_height
    K = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=torch.float32)
    viewmat = torch.eye(4)
    viewmat[:3] = torch.from_numpy(cam_from_world).float()
    colors, _, _ = render_gaussians(read_ply(workspace / "train" / "splat.ply"), viewmat[None], K[None], width,
                                    height, backgrounds=torch.tensor([BACKGROUND], dtype=torch.float32),
                                    backend="torch")
    return (colors[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def render_photo_camera(workspace: Path, name: str, shape: tuple[int, ...], roll_180: bool = False) -> np.ndarray:
    image = colmap_image(workspace, name)
    cam_from_world = image.cam_from_world().matrix()
    if roll_180:  # the same camera turned upside down about its optical axis
        cam_from_world = np.diag([-1.0, -1.0, 1.0]) @ cam_from_world
    return render_view(workspace, cam_from_world, image.camera.calibration_matrix()[1, 1], image.camera.height,
                       shape[0], shape[1])


def image_ssim(a: np.ndarray, b: np.ndarray) -> float:
    def batch(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(x, dtype=np.float32))[None] / 255.0

    assert a.shape == b.shape, (a.shape, b.shape)
    return float(ssim(batch(a), batch(b)))


def assert_shows_the_training_view(workspace: Path, camera: ViewerCamera, shot: np.ndarray) -> dict[str, float]:
    """The screenshot matches our render of the training camera, and not of wrong cameras."""
    other = sorted(im.name for im in pycolmap.Reconstruction(
        str(workspace / "sfm" / "undistorted" / "sparse")).images.values())[-1]
    scores = {
        "same camera": image_ssim(shot, render_photo_camera(workspace, camera.name, shot.shape)),
        "upside down": image_ssim(shot, render_photo_camera(workspace, camera.name, shot.shape, roll_180=True)),
        "mirrored": image_ssim(shot, render_photo_camera(workspace, camera.name, shot.shape)[:, ::-1]),
        f"other photo {other}": image_ssim(shot, render_photo_camera(workspace, other, shot.shape)),
    }
    print(f"SSIM of the viewer's screenshot against our render: {json.dumps(scores)}")
    assert scores["same camera"] >= MATCH_SSIM, scores
    for name, score in scores.items():
        if name != "same camera":
            assert score < MATCH_SSIM and score < scores["same camera"] - 0.2, (name, scores)
    return scores


# -- the camera conversion, exactly (no browser) --------------------------------------------------------


def playcanvas_project(camera: ViewerCamera, points: np.ndarray, height: int) -> np.ndarray:
    """Pixels of COLMAP-frame points as PlayCanvas shows them: the splat turned by scene_rotation, a look-at
    camera with +Y up looking down -Z, vertical fov, y of pixels downwards."""
    world = Rotation.from_quat(camera.scene_rotation).apply(points)
    position, target = np.array(camera.position), np.array(camera.target)
    forward = (target - position) / np.linalg.norm(target - position)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    view = (world - position) @ np.stack([right, up, -forward]).T
    focal = height / 2 / np.tan(np.radians(camera.fov) / 2)
    depth = -view[:, 2]
    return np.stack([camera.width / 2 + focal * view[:, 0] / depth, height / 2 - focal * view[:, 1] / depth], 1)


def test_viewer_camera_reproduces_the_colmap_projection(workspace: Path, camera: ViewerCamera) -> None:
    image = colmap_image(workspace, camera.name)
    reconstruction = pycolmap.Reconstruction(str(workspace / "sfm" / "undistorted" / "sparse"))
    points = np.array([p.xyz for p in reconstruction.points3D.values()])
    in_camera = points @ image.cam_from_world().matrix()[:, :3].T + image.cam_from_world().matrix()[:, 3]
    points, in_camera = points[in_camera[:, 2] > 0], in_camera[in_camera[:, 2] > 0]
    fy = image.camera.calibration_matrix()[1, 1]
    colmap_pixels = np.stack([camera.width / 2 + fy * in_camera[:, 0] / in_camera[:, 2],
                              camera.height / 2 + fy * in_camera[:, 1] / in_camera[:, 2]], 1)
    assert len(points) > 50
    np.testing.assert_allclose(playcanvas_project(camera, points, camera.height), colmap_pixels, atol=1e-3)
    assert camera.name not in {v["name"] for v in json.loads((workspace / "train" / "eval.json").read_text())["views"]}
    assert np.linalg.norm(camera.scene_rotation) == pytest.approx(1.0)


# -- the browser tests ----------------------------------------------------------------------------------


def open_at_photo_size(page, url: str, camera: ViewerCamera) -> dict:
    page.set_viewport_size({"width": camera.width, "height": camera.height})
    page.goto(url)
    return wait_for_viewer(page)


def test_view_shows_the_training_camera(workspace: Path, camera: ViewerCamera, page, tmp_path: Path) -> None:
    with run_viewer(workspace) as url:
        state = open_at_photo_size(page, url, camera)
        shot = viewer_screenshot(page, tmp_path / "view.png")
    assert shot.shape[:2] == (camera.height, camera.width)
    assert state["splatCount"] > 0
    assert_shows_the_training_view(workspace, camera, shot)


@pytest.mark.parametrize("source", [".", "train/splat.ply"], ids=["workspace-sog", "ply-file"])
def test_exported_html_opens_from_disk_and_shows_the_same(workspace: Path, camera: ViewerCamera, page,
                                                          tmp_path: Path, source: str) -> None:
    out = tmp_path / "share" / "scene.html"
    result = runner.invoke(app, ["export", str(workspace / source), "--format", "html", "-o", str(out)])
    assert result.exit_code == 0, result.output
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    open_at_photo_size(page, out.as_uri(), camera)
    shot = viewer_screenshot(page, tmp_path / "export.png")
    assert_shows_the_training_view(workspace, camera, shot)
    # self-contained: nothing but the file itself (and blobs/data made from it) was loaded
    assert [url for url in requested if not url.startswith(("file:", "blob:", "data:"))] == []
    splat = workspace / ("compress/scene.sog" if source == "." else source)
    assert out.stat().st_size > splat.stat().st_size


def pose_moved(page, pose: dict) -> None:
    page.wait_for_function(
        "([x, y, z]) => { const p = window.spaceportViewer.cameraPose().position;"
        " return Math.hypot(p[0] - x, p[1] - y, p[2] - z) > 1e-3; }", arg=pose["position"])


def test_splat_count_controls_and_reset(workspace: Path, camera: ViewerCamera, page) -> None:
    with zipfile.ZipFile(workspace / "compress" / "scene.sog") as sog:
        count = json.loads(sog.read("meta.json"))["count"]
    with run_viewer(workspace) as url:
        first = open_at_photo_size(page, url, camera)["pose"]
        assert page.get_by_test_id("splat-count").inner_text() == f"{count:,} splats"
        assert page.get_by_role("progressbar", include_hidden=True).get_attribute("aria-valuenow") == "100"
        canvas = page.get_by_role("img", name="3D view of W")
        assert canvas.get_attribute("tabindex") == "0"

        # orbit with the mouse: the camera moves, and still looks at the same point
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2 + 80, box["y"] + box["height"] / 2 + 20, steps=8)
        page.mouse.up()
        pose_moved(page, first)
        orbited = wait_for_viewer(page)["pose"]
        assert np.dot(orbited["forward"], first["forward"]) < 0.999
        distance = np.linalg.norm(np.subtract(camera.target, camera.position))
        looked_at = np.add(orbited["position"], distance * np.array(orbited["forward"]))
        np.testing.assert_allclose(looked_at, camera.target, atol=1e-3 * distance)

        # back with the keyboard: the labelled button, focused, Enter
        reset = page.get_by_role("button", name="Reset view")
        reset.focus()
        page.keyboard.press("Enter")
        page.wait_for_function(
            "([x, y, z]) => { const p = window.spaceportViewer.cameraPose().position;"
            " return Math.hypot(p[0] - x, p[1] - y, p[2] - z) < 1e-4; }", arg=first["position"])
        back = wait_for_viewer(page)["pose"]
        np.testing.assert_allclose(back["forward"], first["forward"], atol=1e-5)
        np.testing.assert_allclose(back["up"], first["up"], atol=1e-5)

        # fly forward with W (keys are read by the page), then R resets too
        page.get_by_role("img", name="3D view of W").focus()
        page.keyboard.down("w")
        pose_moved(page, first)
        page.keyboard.up("w")
        flown = wait_for_viewer(page)["pose"]
        step = np.subtract(flown["position"], first["position"])
        assert np.dot(step / np.linalg.norm(step), first["forward"]) > 0.9  # forward, along the view
        page.keyboard.press("r")
        page.wait_for_function(
            "([x, y, z]) => { const p = window.spaceportViewer.cameraPose().position;"
            " return Math.hypot(p[0] - x, p[1] - y, p[2] - z) < 1e-4; }", arg=first["position"])

        # the canvas follows the window, and redraws at the new size
        wider = camera.width + 120
        page.set_viewport_size({"width": wider, "height": camera.height})
        page.wait_for_function("(w) => document.querySelector('canvas.spv-canvas').width === w", arg=wider)
        wait_for_viewer(page)
        assert viewer_screenshot(page).shape[:2] == (camera.height, wider)


# -- command-line errors (no browser) ---------------------------------------------------------------------


def test_export_refuses_unknown_formats_and_non_splats(workspace: Path, tmp_path: Path) -> None:
    unknown = runner.invoke(app, ["export", str(workspace), "--format", "gif", "-o", str(tmp_path / "a.gif")])
    assert unknown.exit_code == 2 and "choose one of html" in unknown.output
    text = tmp_path / "notes.txt"
    text.write_text("not a splat")
    refused = runner.invoke(app, ["export", str(text), "--format", "html", "-o", str(tmp_path / "a.html")])
    assert refused.exit_code == 2 and "shows .sog and .ply" in refused.output
    empty = tmp_path / "empty_ws"
    empty.mkdir()
    missing = runner.invoke(app, ["export", str(empty), "--format", "html", "-o", str(tmp_path / "b.html")])
    assert missing.exit_code == 2 and "compress/scene.sog" in missing.output
    assert not (tmp_path / "a.html").exists() and not (tmp_path / "b.html").exists()


def test_view_refuses_a_missing_target(tmp_path: Path) -> None:
    result = runner.invoke(app, ["view", str(tmp_path / "nothing.sog"), "--no-browser"])
    assert result.exit_code == 2 and "no such file" in result.output


def test_page_keeps_script_breaking_text_inside_its_scripts() -> None:
    from spaceport.viewer import viewer_page

    page = viewer_page({"source": {"url": "scene.sog"}, "title": "a</script><b>x"}, title="a</script><b>x",
                       script_text="var s = '</SCRIPT>'; // <!-- x")
    assert page.lower().count("</script") == 3  # the config, the viewer, the mount: nothing else ends one
    assert "<b>" not in page and "&lt;/script&gt;&lt;b&gt;x" in page

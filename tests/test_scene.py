"""Scene loading from a real pycolmap SfM result and from a synthetic scene with known cameras."""

from __future__ import annotations

import shutil

import numpy as np
import pycolmap
import pytest
import torch
from PIL import Image

from spaceport.formats.gaussians import random_gaussians
from spaceport.splat.model import gaussians_from_points
from spaceport.splat.scene import (
    View,
    background_shell,
    camera_extent,
    fibonacci_sphere,
    load_scene,
    points_extent,
    scene_extent,
)
from spaceport.workspace import SpaceportError, Workspace
from tests.synthetic import write_synthetic_scene


def project(view, xyz: np.ndarray) -> np.ndarray:
    camera_points = view.viewmat[:3, :3].double() @ torch.from_numpy(xyz).double().T + view.viewmat[:3, 3:].double()
    pixels = view.K.double() @ camera_points
    return (pixels[:2] / pixels[2]).T.numpy()


def test_loads_real_sfm_result(sfm_workspace):
    ws = Workspace(sfm_workspace)
    model_dir, images_dir = ws.undistorted_dir / "sparse", ws.undistorted_dir / "images"
    reconstruction = pycolmap.Reconstruction(str(model_dir))
    scene = load_scene(model_dir, images_dir, max_width=200, holdout_every=4)

    registered = sorted(im.name for im in reconstruction.images.values() if im.has_pose)
    views = scene.train_views + scene.test_views
    assert sorted(v.name for v in views) == registered
    assert [v.name for v in scene.test_views] == registered[::4]
    assert len(scene.points) == reconstruction.num_points3D()
    assert scene.colors.min() >= 0 and scene.colors.max() <= 1
    assert scene.extent > 0

    for view in views:
        image = reconstruction.find_image_with_name(view.name)
        camera = image.camera
        assert view.width == 200
        assert view.height == round(camera.height * 200 / camera.width)
        assert view.image.dtype == torch.uint8 and view.image.shape == (view.height, view.width, 3)
        # our K and viewmat reproject every observed 3D point where pycolmap does (scaled to 200 px)
        observed = [p for p in image.points2D if p.has_point3D()]
        xyz = np.array([reconstruction.points3D[p.point3D_id].xyz for p in observed])
        expected = np.array([camera.img_from_cam(image.cam_from_world() * x) for x in xyz])
        expected *= [view.width / camera.width, view.height / camera.height]
        np.testing.assert_allclose(project(view, xyz), expected, atol=1e-3)
        # and the points land close to the features SIFT detected (sub-pixel SfM residuals, scaled)
        detected = np.array([p.xy for p in observed]) * [view.width / camera.width, view.height / camera.height]
        assert np.median(np.linalg.norm(project(view, xyz) - detected, axis=1)) < 1.0


def test_missing_model_files_are_named(sfm_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(sfm_workspace, root)
    ws = Workspace(root)
    with pytest.raises(SpaceportError, match="no such folder"):
        load_scene(ws.undistorted_dir / "sparse", tmp_path / "nowhere")
    (ws.undistorted_dir / "sparse" / "points3D.bin").unlink()
    with pytest.raises(SpaceportError, match="points3D.bin"):
        load_scene(ws.undistorted_dir / "sparse", ws.undistorted_dir / "images")


def test_initial_gaussians_take_colour_and_neighbour_scale():
    spacing = 0.5
    grid = np.stack(np.meshgrid(*[np.arange(6) * spacing] * 3, indexing="ij"), -1).reshape(-1, 3)
    colors = np.random.default_rng(0).uniform(size=grid.shape).astype(np.float32)
    gaussians = gaussians_from_points(grid, colors, sh_degree=2, opacity=0.2)
    interior = np.all((grid > 0) & (grid < 5 * spacing), axis=1)  # 6 neighbours at `spacing`
    np.testing.assert_allclose(np.exp(gaussians.scales[interior]), spacing, rtol=1e-5)
    np.testing.assert_allclose(gaussians.sh0 * 0.28209479177387814 + 0.5, colors, atol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-gaussians.opacities)), 0.2, rtol=1e-5)
    assert gaussians.shN.shape == (len(grid), 8, 3) and not gaussians.shN.any()


def test_synthetic_scene_round_trips_through_colmap(tmp_path):
    truth = random_gaussians(80, sh_degree=0, seed=1, extent=1.0)
    synthetic = write_synthetic_scene(tmp_path, truth, num_views=6, width=40, height=30, num_points=50)
    scene = load_scene(synthetic.model_dir, synthetic.images_dir, holdout_every=3)
    assert [v.name for v in scene.test_views] == ["view_000.png", "view_003.png"]
    assert len(scene.train_views) == 4 and len(scene.points) == 50
    for view in scene.train_views + scene.test_views:
        # every camera looks at the origin from 4 units away
        centre = -view.viewmat[:3, :3].T @ view.viewmat[:3, 3]
        assert torch.linalg.norm(centre[:2]).item() == pytest.approx(4.0, rel=1e-5)
        origin_in_camera = view.viewmat[:3, 3]
        assert origin_in_camera[:2].abs().max().item() < 1e-5 and origin_in_camera[2].item() > 0
        assert view.image.shape == (30, 40, 3) and view.image.float().std() > 1  # not blank


def test_downscaled_view_keeps_the_projection_and_the_colours(tmp_path):
    truth = random_gaussians(80, sh_degree=0, seed=2, extent=1.0)
    synthetic = write_synthetic_scene(tmp_path, truth, num_views=2, width=90, height=60, num_points=50)
    scene = load_scene(synthetic.model_dir, synthetic.images_dir, holdout_every=0)
    view = scene.train_views[0]
    for factor in (2, 4):
        small = view.downscaled(factor)
        assert (small.width, small.height) == (round(90 / factor), round(60 / factor))
        assert small.image.dtype == torch.uint8 and small.viewmat is view.viewmat
        # a point lands at the same place in image units: pixel coordinates scale by the size ratio
        ratio = np.array([small.width / view.width, small.height / view.height])
        np.testing.assert_allclose(project(small, scene.points), project(view, scene.points) * ratio, rtol=1e-5)
        # antialiased resampling keeps the mean colour and smooths the detail
        np.testing.assert_allclose(small.image.float().mean((0, 1)), view.image.float().mean((0, 1)), atol=2.0)
        assert small.image.float().std() <= view.image.float().std() + 1e-3


def test_masks_beside_the_undistorted_images_are_loaded_scaled_and_left_out_of_the_scores(tmp_path):
    """sfm writes undistorted/masks/<image file>.png (0 = ignore): training and the evaluation must not see what
    the mask hides, however wrong the photo is there."""
    from spaceport.splat.evaluate import evaluate_views, to_float_image
    from spaceport.splat.model import params_from_gaussians
    from spaceport.splat.train import masked_truth, photometric_loss

    truth = random_gaussians(120, sh_degree=0, seed=3, extent=1.0)
    synthetic = write_synthetic_scene(tmp_path, truth, num_views=2, width=80, height=60, num_points=50)
    masks_dir = synthetic.images_dir.parent / "masks"
    masks_dir.mkdir()
    keep = np.full((60, 80), 255, np.uint8)
    keep[:, 50:] = 0  # a "person" on the right
    Image.fromarray(keep).save(masks_dir / "view_000.png.png")
    scene = load_scene(synthetic.model_dir, synthetic.images_dir, holdout_every=0)
    masked, plain = scene.train_views
    assert plain.mask is None and masked.mask.shape == (60, 80) and masked.mask[:, :50].all()
    assert not masked.mask[:, 50:].any()
    half = masked.downscaled(2)
    assert half.mask.shape == (30, 40) and half.mask[:, :25].all() and not half.mask[:, 25:].any()

    # paint the hidden part of the photo: the scores of the true splat must not move
    params = params_from_gaussians(truth, "cpu")
    clean = evaluate_views(params, [masked], sh_degree=0, background=torch.zeros(3), backend="torch")
    painted_image = masked.image.clone()
    painted_image[:, 50:] = torch.tensor([255, 0, 255], dtype=torch.uint8)
    painted = View(masked.name, painted_image, masked.K, masked.viewmat, masked.mask)
    again = evaluate_views(params, [painted], sh_degree=0, background=torch.zeros(3), backend="torch")
    assert again["psnr"] == pytest.approx(clean["psnr"], abs=1e-4) and again["ssim"] == pytest.approx(
        clean["ssim"], abs=1e-4)
    unmasked = View(masked.name, painted_image, masked.K, masked.viewmat, None)
    assert evaluate_views(params, [unmasked], sh_degree=0, background=torch.zeros(3),
                          backend="torch")["psnr"] < clean["psnr"] - 3

    # the training loss ignores the painted pixels too, and still sees the kept ones
    rendered = (to_float_image(masked)[None] * 0.9).requires_grad_(True)

    def loss(view: View) -> torch.Tensor:
        return photometric_loss(rendered, masked_truth(view, to_float_image(view)[None], rendered), 0.2, "separable")

    assert float(loss(painted).detach()) == pytest.approx(float(loss(masked).detach()), abs=1e-6)
    assert float(loss(unmasked).detach()) > float(loss(masked).detach()) + 0.01
    (gradient,) = torch.autograd.grad(loss(painted), rendered)
    # beyond the SSIM window's reach (5 px) of the kept pixels nothing pulls the render (SSIM(x, x) is its maximum:
    # only rounding is left there)
    assert gradient[0, :, 56:].abs().max() < 1e-2 * gradient[0, :, :45].abs().max()
    (without_mask,) = torch.autograd.grad(loss(unmasked), rendered)
    assert without_mask[0, :, 56:].abs().max() > 0.5 * without_mask[0, :, :45].abs().max()


def _viewmat_at(centre: np.ndarray) -> torch.Tensor:
    """A world-to-camera matrix of a camera at ``centre`` (identity rotation)."""
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, 3] = -torch.from_numpy(centre)
    return viewmat.float()


def test_extent_ignores_a_few_far_cameras():
    # 40 cameras on a ring of radius 2 around the scene, then 3 photos from 15x farther (a ferry, a plane): the
    # learning-rate scale must stay that of the ring, not of the outliers (INRIA's max would give 33)
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    ring = [np.array([2 * np.cos(a), 0.0, 2 * np.sin(a)]) for a in angles]
    far = [np.array([30.0, 1.0, 0.0]), np.array([0.0, 2.0, -28.0]), np.array([-29.0, 0.0, 3.0])]
    assert camera_extent([_viewmat_at(c) for c in ring]) == pytest.approx(2.2, rel=0.02)
    assert camera_extent([_viewmat_at(c) for c in ring + far]) == pytest.approx(2.2, rel=0.05)
    assert camera_extent([_viewmat_at(c) for c in ring + far], quantile=1.0) > 30


def test_extent_follows_a_compact_subject_seen_from_afar():
    # a statue 1 unit across photographed from a ring 6 units away: the points set the scale, not the cameras
    rng = np.random.default_rng(0)
    statue = rng.uniform(-0.5, 0.5, size=(2000, 3))
    angles = np.linspace(0, 2 * np.pi, 30, endpoint=False)
    far_ring = [_viewmat_at(np.array([6 * np.cos(a), 0.0, 6 * np.sin(a)])) for a in angles]
    assert scene_extent(far_ring, statue) == pytest.approx(points_extent(statue)) and points_extent(statue) < 1.0
    # a room scanned from its middle: the walls lie beyond the cameras, whose spread stays the scale
    walls = rng.uniform(-8, 8, size=(2000, 3))
    near_ring = [_viewmat_at(np.array([np.cos(a), 0.0, np.sin(a)])) for a in angles]
    assert scene_extent(near_ring, walls) == pytest.approx(camera_extent(near_ring))


def looking_along_z(colour: tuple[int, int, int], size: int = 40) -> View:
    """A camera at the origin looking down +z, its photo one flat colour."""
    image = torch.tensor(colour, dtype=torch.uint8).expand(size, size, 3).contiguous()
    K = torch.tensor([[size / 2, 0, size / 2], [0, size / 2, size / 2], [0, 0, 1]], dtype=torch.float32)
    return View("flat.jpg", image, K, torch.eye(4))


def test_fibonacci_sphere_is_even_and_unit():
    directions = fibonacci_sphere(2000)
    assert np.allclose(np.linalg.norm(directions, axis=1), 1.0)
    assert np.abs(directions.mean(axis=0)).max() < 0.01  # no side favoured
    assert (directions[:, 2] > 0.5).mean() == pytest.approx(0.25, abs=0.01)  # a cap's share of the area


def test_background_shell_encloses_the_cameras_and_takes_the_photos_colours():
    points = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32) * 0.1 + [0, 0, 5]
    view = looking_along_z((200, 100, 50))
    shell, colours = background_shell(points, [view], 4000, radius_factor=3.0)
    centre = np.median(points, axis=0)
    radii = np.linalg.norm(shell - centre, axis=1)
    assert np.allclose(radii, radii[0], rtol=1e-5) and radii[0] == pytest.approx(3.0 * 5.0, rel=0.02)
    ahead = project_inside(view, shell)
    assert ahead.sum() > 50
    assert np.allclose(colours[ahead], np.array([200, 100, 50]) / 255.0, atol=1e-6)
    assert np.allclose(colours[~ahead], 0.5)  # unseen: grey
    assert background_shell(points, [view], 0)[0].shape == (0, 3)


def project_inside(view: View, xyz: np.ndarray) -> np.ndarray:
    depth = xyz @ view.viewmat[2, :3].double().numpy() + float(view.viewmat[2, 3])
    u, v = project(view, xyz).T
    return (depth > 0) & (u >= 0) & (u < view.width) & (v >= 0) & (v < view.height)

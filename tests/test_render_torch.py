"""The pure-PyTorch renderer on the CPU: analytic images, finite-difference gradients, culling, strategy info."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spaceport.splat.render import render, resolve_backend
from spaceport.splat.render.composite import composite_block, composite_reference, composite_slab
from spaceport.splat.render.projection import project_gaussians
from spaceport.splat.render.sh import sh_basis
from spaceport.splat.render.torch_cpu import render_torch
from spaceport.workspace import SpaceportError

DTYPE = torch.float64


def look_at_camera(eye: list[float], target: list[float], dtype=DTYPE) -> torch.Tensor:
    """World-to-camera (4, 4) of an OpenCV camera (x right, y down, z forward) at ``eye`` facing ``target``."""
    eye_t, target_t = torch.tensor(eye, dtype=dtype), torch.tensor(target, dtype=dtype)
    forward = torch.nn.functional.normalize(target_t - eye_t, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, torch.tensor([0.0, -1.0, 0.0], dtype=dtype)),
                                          dim=0)
    down = torch.linalg.cross(forward, right)
    rotation = torch.stack([right, down, forward])
    viewmat = torch.eye(4, dtype=dtype)
    viewmat[:3, :3] = rotation
    viewmat[:3, 3] = -rotation @ eye_t
    return viewmat


def intrinsics(fx: float, fy: float, cx: float, cy: float, dtype=DTYPE) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def random_scene(n: int, seed: int, sh_degree: int | None = 3, dtype=DTYPE) -> dict[str, torch.Tensor]:
    """n Gaussians around the origin, seen by a tilted camera 4 units away (32 x 24 px)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=generator, dtype=dtype)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    colors = randn(n, (sh_degree + 1) ** 2, 3) * 0.4 if sh_degree is not None else rand(n, 3)
    return {
        "means": (rand(n, 3) * 2 - 1) * torch.tensor([0.9, 0.7, 0.6], dtype=dtype),
        "quats": randn(n, 4),
        "scales": torch.exp(rand(n, 3) * 1.2 - 3.0),
        "opacities": 0.15 + 0.7 * rand(n),
        "colors": colors,
        "viewmats": look_at_camera([0.6, -0.4, -3.8], [0.0, 0.0, 0.0], dtype)[None],
        "Ks": intrinsics(30.0, 28.0, 16.5, 11.5, dtype)[None],
    }


def render_scene(scene: dict[str, torch.Tensor], width: int = 32, height: int = 24, **options):
    args = [scene[k] for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")]
    return render(*args, width, height, backend="torch", **options)


# ---------------------------------------------------------------- analytic images


@pytest.mark.parametrize("angle, scales", [(0.0, (0.05, 0.05, 0.05)), (0.6, (0.09, 0.03, 0.02))])
def test_single_gaussian_on_axis_matches_closed_form(angle, scales):
    """A Gaussian on the optical axis projects to mean (cx, cy) and covariance (f/z)^2 R diag(s^2) R^T + 0.3 I."""
    z, focal, opacity, width, height = 2.0, 100.0, 0.8, 40, 30
    color, background = torch.tensor([0.2, 0.6, 0.9], dtype=DTYPE), torch.tensor([0.1, 0.1, 0.3], dtype=DTYPE)
    quat = torch.tensor([[math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)]], dtype=DTYPE)  # about +z
    image, alpha, info = render(
        torch.tensor([[0.0, 0.0, z]], dtype=DTYPE), quat, torch.tensor([scales], dtype=DTYPE),
        torch.tensor([opacity], dtype=DTYPE), color[None], torch.eye(4, dtype=DTYPE)[None],
        intrinsics(focal, focal, width / 2, height / 2)[None], width, height,
        backgrounds=background[None], backend="torch",
    )
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=DTYPE)
    covariance = (focal / z) ** 2 * rotation @ torch.diag(torch.tensor(scales[:2], dtype=DTYPE) ** 2) @ rotation.T
    covariance += 0.3 * torch.eye(2, dtype=DTYPE)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=DTYPE) + 0.5, torch.arange(width, dtype=DTYPE) + 0.5,
                            indexing="ij")
    offsets = torch.stack([xs - width / 2, ys - height / 2], dim=-1)
    mahalanobis = torch.einsum("hwi,ij,hwj->hw", offsets, torch.linalg.inv(covariance), offsets)
    expected_alpha = opacity * torch.exp(-0.5 * mahalanobis)
    expected_alpha = torch.where(expected_alpha >= 1 / 255, expected_alpha, 0.0)

    torch.testing.assert_close(alpha[0, ..., 0], expected_alpha, atol=1e-12, rtol=0)
    expected_image = expected_alpha[..., None] * color + (1 - expected_alpha[..., None]) * background
    torch.testing.assert_close(image[0], expected_image, atol=1e-12, rtol=0)
    assert info["radii"].dtype == torch.int32 and info["radii"].shape == (1, 1, 2)
    # Opacity-aware 3-sigma box: sqrt(2 ln(255 o)) standard deviations, rounded up.
    extent = math.sqrt(2 * math.log(255 * opacity))
    expected_radii = [math.ceil(extent * math.sqrt(covariance[i, i].item())) for i in range(2)]
    assert info["radii"][0, 0].tolist() == expected_radii


def test_opaque_stack_stops_at_transmittance_1e_4_and_clamps_alpha():
    """Three opaque Gaussians on one pixel: alpha is clamped to 0.999; the third would take T below 1e-4."""
    means = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 2.0], [0.0, 0.0, 3.0]], dtype=DTYPE)
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=DTYPE)
    image, alpha, _ = render(means, torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=DTYPE),
                             torch.full((3, 3), 1.0, dtype=DTYPE), torch.ones(3, dtype=DTYPE), colors,
                             torch.eye(4, dtype=DTYPE)[None], intrinsics(1.0, 1.0, 0.5, 0.5)[None], 1, 1,
                             backgrounds=torch.tensor([[1.0, 1.0, 1.0]], dtype=DTYPE), backend="torch")
    # T after the first: 1e-3; the second would make it 1e-6 <= 1e-4, so the pixel stops before it.
    torch.testing.assert_close(image[0, 0, 0], torch.tensor([0.999 + 1e-3, 1e-3, 1e-3], dtype=DTYPE))
    torch.testing.assert_close(alpha[0, 0, 0, 0], torch.tensor(0.999, dtype=DTYPE))


def brute_force_render(scene: dict[str, torch.Tensor], width: int, height: int):
    """Every visible Gaussian at every pixel, composited one by one front to back with gsplat's rules.
    Returns the image, the alpha and which pixels stopped (transmittance would have reached 1e-4)."""
    projection = project_gaussians(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                                   scene["viewmats"], scene["Ks"], width, height)
    order = [i for i in torch.argsort(projection.depths[0]).tolist() if projection.visible[0, i]]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=DTYPE) + 0.5, torch.arange(width, dtype=DTYPE) + 0.5,
                            indexing="ij")
    image, transmittance = torch.zeros(height, width, 3, dtype=DTYPE), torch.ones(height, width, dtype=DTYPE)
    done = torch.zeros(height, width, dtype=torch.bool)
    for i in order:
        (mean_x, mean_y), (conic_xx, conic_xy, conic_yy) = projection.means2d[0, i], projection.conics[0, i]
        dx, dy = mean_x - xs, mean_y - ys
        sigma = 0.5 * (conic_xx * dx * dx + conic_yy * dy * dy) + conic_xy * dx * dy
        alpha = torch.clamp_max(scene["opacities"][i] * torch.exp(-sigma), 0.999)
        counts = ~done & (sigma >= 0) & (alpha >= 1 / 255)
        next_transmittance = transmittance * (1 - alpha)
        done |= counts & (next_transmittance <= 1e-4)
        counts &= ~done
        image += torch.where(counts[..., None], (alpha * transmittance)[..., None] * scene["colors"][i], 0.0)
        transmittance = torch.where(counts, next_transmittance, transmittance)
    return image, 1 - transmittance, done


def test_dense_overlapping_scene_matches_brute_force_compositing():
    """Hundreds of large, mostly opaque Gaussians: tiles hold more rows than a slab and many pixels stop."""
    scene = random_scene(300, seed=21, sh_degree=None)
    scene["scales"] = scene["scales"] * 2.5
    scene["opacities"] = 0.5 + 0.5 * scene["opacities"]
    image, alpha, info = render_scene(scene)
    expected_image, expected_alpha, stopped = brute_force_render(scene, 32, 24)
    assert 0.2 < stopped.float().mean() < 0.9, "many pixels, not all, must reach the stop"
    assert info["tiles_per_gauss"].sum() / info["tile_width"] / info["tile_height"] > 64, "tiles span slabs"
    torch.testing.assert_close(image[0], expected_image, rtol=0, atol=1e-12)
    torch.testing.assert_close(alpha[0, ..., 0], expected_alpha, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- gradients


def _loss(scene, weights_image, weights_alpha, **options):
    image, alpha, _ = render_scene(scene, **options)
    return (image * weights_image).sum() + (alpha * weights_alpha).sum()


@pytest.mark.parametrize("name", ["means", "quats", "scales", "opacities", "colors"])
def test_gradients_match_finite_differences(name):
    scene = random_scene(20, seed=3)
    generator = torch.Generator().manual_seed(5)
    weights_image = torch.randn(1, 24, 32, 3, generator=generator, dtype=DTYPE)
    weights_alpha = torch.randn(1, 24, 32, 1, generator=generator, dtype=DTYPE)
    options = dict(sh_degree=3, backgrounds=torch.tensor([[0.3, 0.2, 0.1]], dtype=DTYPE))
    parameter = scene[name].clone().requires_grad_(True)
    image, _, info = render_scene({**scene, name: parameter}, **options)
    assert (info["radii"] > 0).all(dim=-1).sum() >= 15, "the scene must keep most Gaussians in view"
    (gradient,) = torch.autograd.grad(_loss({**scene, name: parameter}, weights_image, weights_alpha, **options),
                                      parameter)
    assert gradient.abs().max() > 0

    def numeric_derivative(direction: torch.Tensor, step: float = 1e-6) -> float:
        plus = _loss({**scene, name: scene[name] + step * direction}, weights_image, weights_alpha, **options)
        minus = _loss({**scene, name: scene[name] - step * direction}, weights_image, weights_alpha, **options)
        return ((plus - minus) / (2 * step)).item()

    directions = [torch.randn(scene[name].shape, generator=generator, dtype=DTYPE) for _ in range(3)]
    for flat_index in torch.topk(gradient.abs().flatten(), 4).indices.tolist():
        one_hot = torch.zeros(gradient.numel(), dtype=DTYPE)
        one_hot[flat_index] = 1.0
        directions.append(one_hot.reshape(gradient.shape))
    for direction in directions:
        analytic = (gradient * direction).sum().item()
        assert analytic == pytest.approx(numeric_derivative(direction), rel=1e-5, abs=1e-7)


def _random_slab(generator: torch.Generator, rows: int = 30):
    basis = torch.cat([torch.ones(1, 16, dtype=DTYPE), torch.randn(5, 16, generator=generator, dtype=DTYPE)])
    coefficients = torch.randn(6, rows, 6, generator=generator, dtype=DTYPE) * 0.8
    coefficients[..., 0] -= 2.5
    coefficients[1, :, 0] += 4.5  # an opaque tile, whose pixels all stop
    colors = torch.rand(6, rows, 3, generator=generator, dtype=DTYPE)
    return coefficients.requires_grad_(True), basis, colors.requires_grad_(True)


def test_custom_composite_backward_matches_autograd_twin():
    """Random slabs with skipped, clamped (0.999) and stopping rows, behind pixels that are clear, partly
    covered, or already stopped."""
    generator = torch.Generator().manual_seed(11)
    coefficients, basis, colors = _random_slab(generator)
    log_transmittance_in = torch.cat([torch.zeros(2, 16, dtype=DTYPE), -5 * torch.rand(3, 16, dtype=DTYPE,
                                      generator=generator), torch.full((1, 16), -9.0, dtype=DTYPE)])
    log_transmittance_in.requires_grad_(True)
    stopped_in = torch.zeros(6, 16, dtype=torch.bool)
    stopped_in[5] = True
    weights_colors = torch.randn(6, 16, 3, generator=generator, dtype=DTYPE)
    weights_log_t = torch.randn(6, 16, generator=generator, dtype=DTYPE)
    alpha = torch.exp(coefficients.detach() @ basis)
    assert (alpha > 0.999).any() and (alpha < 1 / 255).any()
    results = []
    for function in (composite_slab, composite_reference):
        tile_colors, log_transmittance, stopped = function(coefficients, basis, colors, log_transmittance_in,
                                                           stopped_in)
        loss = (tile_colors * weights_colors).sum() + (log_transmittance * weights_log_t).sum()
        results.append((tile_colors, log_transmittance, stopped,
                        *torch.autograd.grad(loss, [coefficients, colors, log_transmittance_in])))
    assert results[0][2][1].all() and not results[0][2][:5].all(), "tile 1 stops, some other pixels do not"
    assert (results[0][0][5] == 0).all() and (results[0][1][5] == -9.0).all(), "stopped pixels stay put"
    for ours, twin in zip(*results, strict=True):
        torch.testing.assert_close(ours, twin, rtol=1e-10, atol=1e-12)


def test_two_slabs_composite_like_one():
    """The carried log-transmittance and stop flags make slabs of rows 0-11 then 12-29 equal rows 0-29;
    so does the block function with any slab size."""
    coefficients, basis, colors = _random_slab(torch.Generator().manual_seed(4))
    zeros, clear = torch.zeros(6, 16, dtype=DTYPE), torch.zeros(6, 16, dtype=torch.bool)
    whole = composite_slab(coefficients, basis, colors, zeros, clear)
    front = composite_slab(coefficients[:, :12], basis, colors[:, :12], zeros, clear)
    back = composite_slab(coefficients[:, 12:], basis, colors[:, 12:], front[1], front[2])
    assert front[2].any() and not front[2].all() and whole[2].sum() > front[2].sum()
    torch.testing.assert_close(front[0] + back[0], whole[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(back[1], whole[1], rtol=1e-12, atol=1e-14)
    assert torch.equal(back[2], whole[2])
    weights = torch.randn(6, 16, 3, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    split = torch.autograd.grad(((front[0] + back[0]) * weights).sum() + back[1].sum(), [coefficients, colors])
    joint = torch.autograd.grad((whole[0] * weights).sum() + whole[1].sum(), [coefficients, colors])
    for ours, reference in zip(split, joint, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    for slab_rows in (5, 12, 30):  # the block function walks slabs itself, dropping stopped tiles
        block = composite_block(coefficients, basis, colors, slab_rows)
        torch.testing.assert_close(block[0], whole[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(block[1], whole[1], rtol=1e-12, atol=1e-14)
        grads = torch.autograd.grad((block[0] * weights).sum() + block[1].sum(), [coefficients, colors])
        for ours, reference in zip(grads, joint, strict=True):
            torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


def test_tile_size_and_block_size_do_not_change_image_or_gradients():
    scene = random_scene(60, seed=8, sh_degree=1)
    params = {k: scene[k].clone().requires_grad_(True) for k in ("means", "scales", "opacities", "colors")}
    weights = torch.randn(1, 24, 32, 3, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    results = []
    for tile_size, block_elements, recompute_elements, slab_rows in [(8, 1 << 22, 1 << 26, 32),
                                                                      (4, 64, 1 << 26, 3), (16, 512, 1000, 1)]:
        args = [{**scene, **params}[k] for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")]
        image, alpha, _ = render_torch(*args, 32, 24, sh_degree=1, tile_size=tile_size, slab_rows=slab_rows,
                                       block_elements=block_elements, recompute_elements=recompute_elements)
        gradients = torch.autograd.grad((image * weights).sum() + alpha.sum(), list(params.values()))
        results.append([image, alpha, *gradients])
    for other in results[1:]:
        for reference, value in zip(results[0], other, strict=True):
            torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- backgrounds, alpha, cameras, culling


def test_background_is_added_through_final_transmittance():
    scene = random_scene(30, seed=2, sh_degree=None)
    scene["viewmats"] = torch.cat([scene["viewmats"], look_at_camera([-1.0, 0.5, -3.5], [0.0, 0.0, 0.0])[None]])
    scene["Ks"] = scene["Ks"].expand(2, 3, 3)
    backgrounds = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.2, 0.9]], dtype=DTYPE)
    black, alpha, _ = render_scene(scene)
    lit, alpha_lit, _ = render_scene(scene, backgrounds=backgrounds)
    torch.testing.assert_close(alpha_lit, alpha)
    torch.testing.assert_close(lit, black + (1 - alpha) * backgrounds[:, None, None, :])
    assert 0.05 < alpha.mean() < 0.95 and alpha.min() >= 0 and alpha.max() <= 1


def test_cameras_render_independently_of_batching():
    scene = random_scene(30, seed=4)
    second = {"viewmats": look_at_camera([1.0, 1.0, -3.0], [0.1, 0.0, 0.0])[None],
              "Ks": intrinsics(25.0, 25.0, 15.0, 13.0)[None]}
    both = {**scene, "viewmats": torch.cat([scene["viewmats"], second["viewmats"]]),
            "Ks": torch.cat([scene["Ks"], second["Ks"]])}
    image_both, alpha_both, info = render_scene(both, sh_degree=3)
    image_first, _, _ = render_scene(scene, sh_degree=3)
    image_second, alpha_second, _ = render_scene({**scene, **second}, sh_degree=3)
    torch.testing.assert_close(image_both, torch.cat([image_first, image_second]))
    torch.testing.assert_close(alpha_both[1], alpha_second[0])
    assert info["radii"].shape == (2, 30, 2) and info["n_cameras"] == 2


def test_empty_view_renders_background():
    scene = random_scene(10, seed=1, sh_degree=None)
    scene["means"] = scene["means"] + torch.tensor([0.0, 0.0, -10.0], dtype=DTYPE)  # all behind the camera
    background = torch.tensor([[0.25, 0.5, 0.75]], dtype=DTYPE)
    image, alpha, info = render_scene(scene, backgrounds=background)
    assert (info["radii"] == 0).all()
    torch.testing.assert_close(image, background[:, None, None, :].expand(1, 24, 32, 3))
    assert (alpha == 0).all()


@pytest.mark.parametrize("depth, near, far", [(-1.0, 0.01, 1e10), (0.0, 0.01, 1e10), (0.05, 0.1, 1e10),
                                              (50.0, 0.01, 20.0)])
def test_gaussians_outside_depth_range_are_culled_without_nan_gradients(depth, near, far):
    scene = random_scene(12, seed=6)
    options = dict(sh_degree=3, near_plane=near, far_plane=far)
    reference, _, _ = render_scene(scene, **options)
    camera_to_world = torch.linalg.inv(scene["viewmats"][0])
    intruder = camera_to_world[:3, :3] @ torch.tensor([0.0, 0.0, depth], dtype=DTYPE) + camera_to_world[:3, 3]
    params = {k: torch.cat([scene[k], scene[k][:1]]) for k in ("quats", "scales", "opacities", "colors")}
    params["opacities"][-1] = 0.99
    params["means"] = torch.cat([scene["means"], intruder[None]])
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    image, _, info = render_scene({**scene, **params}, **options)
    assert info["radii"][0, -1].tolist() == [0, 0]
    torch.testing.assert_close(image, reference)
    image.sum().backward()
    for name, tensor in params.items():
        assert torch.isfinite(tensor.grad).all(), name
        assert (tensor.grad[-1] == 0).all(), name


def test_gaussians_off_screen_are_culled():
    scene = random_scene(5, seed=9, sh_degree=None)
    scene["means"] = torch.cat([scene["means"], torch.tensor([[40.0, 0.0, 0.0]], dtype=DTYPE)])
    for k in ("quats", "scales", "opacities", "colors"):
        scene[k] = torch.cat([scene[k], scene[k][:1]])
    _, _, info = render_scene(scene)
    assert info["radii"][0, -1].tolist() == [0, 0] and (info["radii"][0, :5] > 0).all()


# ---------------------------------------------------------------- means2d for densification strategies


def test_means2d_gradient_is_in_pixels():
    """Shifting cx shifts every projected mean by one pixel per unit (J does not depend on cx here), so
    dL/dcx = sum over Gaussians of dL/dmeans2d_x; likewise for cy."""
    scene = random_scene(20, seed=12, sh_degree=None)
    weights = torch.randn(1, 24, 32, 3, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    image, _, info = render_scene({**scene, "means": scene["means"].clone().requires_grad_(True)})
    info["means2d"].retain_grad()
    (image * weights).sum().backward()
    grad2d = info["means2d"].grad
    assert grad2d.shape == (1, 20, 2)
    visible = (info["radii"] > 0).all(dim=-1)
    assert (grad2d[~visible] == 0).all() and (grad2d[visible].abs().sum(dim=-1) > 0).all()
    for axis, (row, col) in enumerate([(0, 2), (1, 2)]):
        def loss_at(shift, row=row, col=col):
            Ks = scene["Ks"].clone()
            Ks[0, row, col] += shift
            return (render_scene({**scene, "Ks": Ks})[0] * weights).sum().item()

        numeric = (loss_at(1e-6) - loss_at(-1e-6)) / 2e-6
        assert grad2d[0, :, axis].sum().item() == pytest.approx(numeric, rel=1e-5)


def test_absgrad_sums_per_pixel_magnitudes():
    """One round Gaussian: over the whole image the x-gradients of its two halves cancel; absgrad does not.
    Over the right half only, every pixel pulls the same way and absgrad equals |grad|."""
    args = (torch.tensor([[0.0, 0.0, 2.0]], dtype=DTYPE), torch.tensor([[1.0, 0, 0, 0]], dtype=DTYPE),
            torch.full((1, 3), 0.1, dtype=DTYPE), torch.tensor([0.7], dtype=DTYPE),
            torch.tensor([[1.0, 1.0, 1.0]], dtype=DTYPE), torch.eye(4, dtype=DTYPE)[None],
            intrinsics(100.0, 100.0, 16.0, 16.0)[None], 32, 32)
    for mask_right_half in (False, True):
        image, _, info = render(args[0].clone().requires_grad_(True), *args[1:], absgrad=True, backend="torch")
        info["means2d"].retain_grad()
        weights = torch.ones_like(image)
        if mask_right_half:
            weights[:, :, :16] = 0
        (image * weights).sum().backward()
        grad, absgrad = info["means2d"].grad[0, 0], info["means2d"].absgrad[0, 0]
        if mask_right_half:
            assert absgrad[0].item() == pytest.approx(abs(grad[0].item()), rel=1e-12)
            assert absgrad[0] > 0.1
        else:
            assert abs(grad[0].item()) < 1e-9 and absgrad[0] > 0.1


def test_info_feeds_gsplat_default_strategy():
    from gsplat.strategy import DefaultStrategy

    scene = random_scene(25, seed=14, sh_degree=None, dtype=torch.float32)
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(scene[k]) for k in
                                     ("means", "quats", "scales", "opacities", "colors")})
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=1000, absgrad=True)
    state = strategy.initialize_state()
    image, _, info = render(params["means"], params["quats"], params["scales"], params["opacities"],
                            params["colors"], scene["viewmats"], scene["Ks"], 32, 24, absgrad=True)
    strategy.step_pre_backward(params, optimizers, state, step=1, info=info)
    image.mean().backward()
    strategy.step_post_backward(params, optimizers, state, step=1, info=info, packed=False)
    visible = (info["radii"][0] > 0).all(dim=-1)
    torch.testing.assert_close(state["count"], visible.float())
    expected = info["means2d"].absgrad[0] * torch.tensor([32 / 2, 24 / 2])
    torch.testing.assert_close(state["grad2d"], expected.norm(dim=-1) * visible)


# ---------------------------------------------------------------- SH and backends


def test_sh_basis_is_orthonormal_on_the_sphere():
    """Gauss-Legendre in cos(theta) x uniform in phi integrates these degree <= 8 products exactly."""
    nodes, weights = (torch.from_numpy(array) for array in np.polynomial.legendre.leggauss(12))
    phi = torch.arange(24, dtype=DTYPE) * (2 * math.pi / 24)
    cos_theta, phi_grid = torch.meshgrid(nodes, phi, indexing="ij")
    sin_theta = torch.sqrt(1 - cos_theta**2)
    directions = torch.stack([sin_theta * torch.cos(phi_grid), sin_theta * torch.sin(phi_grid), cos_theta], -1)
    quadrature = (weights[:, None] * (2 * math.pi / 24)).expand_as(cos_theta)
    basis = sh_basis(4, directions).reshape(-1, 25)
    gram = basis.T @ (basis * quadrature.reshape(-1, 1))
    torch.testing.assert_close(gram, torch.eye(25, dtype=DTYPE), atol=1e-12, rtol=0)


def test_sh_degree_zero_is_dc_plus_half_clamped_at_zero():
    scene = random_scene(8, seed=15, sh_degree=0)
    scene["colors"][0, 0] = torch.tensor([-5.0, 0.3, 1.0], dtype=DTYPE)
    as_sh, _, _ = render_scene(scene, sh_degree=0)
    as_rgb, _, _ = render_scene({**scene, "colors": torch.clamp_min(0.28209479177387814 * scene["colors"][:, 0]
                                                                    + 0.5, 0.0)})
    torch.testing.assert_close(as_sh, as_rgb)


def test_resolve_backend():
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "gsplat"
    assert resolve_backend("torch", "cuda") == "torch"
    with pytest.raises(SpaceportError, match="needs CUDA"):
        resolve_backend("gsplat", "cpu")
    with pytest.raises(SpaceportError, match="unknown render backend"):
        resolve_backend("vulkan", "cpu")


def test_render_rejects_bad_shapes():
    scene = random_scene(4, seed=0)
    with pytest.raises(ValueError, match="sh_degree 3 needs colors"):
        render_scene({**scene, "colors": scene["colors"][:, :9]}, sh_degree=3)
    with pytest.raises(ValueError, match="quats has shape"):
        render_scene({**scene, "quats": scene["quats"][:3]}, sh_degree=3)


def test_projection_matches_pinhole_formula_off_axis():
    """means2d = (fx x/z + cx, fy y/z + cy) in camera coordinates; depth = z."""
    scene = random_scene(10, seed=7, sh_degree=None)
    projection = project_gaussians(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                                   scene["viewmats"], scene["Ks"], 32, 24)
    camera = scene["means"] @ scene["viewmats"][0, :3, :3].T + scene["viewmats"][0, :3, 3]
    expected = torch.stack([30.0 * camera[:, 0] / camera[:, 2] + 16.5, 28.0 * camera[:, 1] / camera[:, 2] + 11.5], -1)
    visible = projection.visible[0]
    torch.testing.assert_close(projection.means2d[0][visible], expected[visible])
    torch.testing.assert_close(projection.depths[0][visible], camera[visible, 2])

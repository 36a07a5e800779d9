"""Our pure-PyTorch renderer, run on CUDA tensors, against gsplat 1.5.3's CUDA rasterizer.

Run on a GPU machine with ``python -m pytest tests/gpu -q`` (gsplat compiles its kernels on first use,
about a minute with MAX_JOBS=16). Skipped where CUDA is absent.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from spaceport.splat.render import render

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's kernels need CUDA")

N_GAUSSIANS, WIDTH, HEIGHT, SH_DEGREE = 60_000, 320, 256, 3
# Measured on the H200 (torch 2.11, CUDA 13): image 1.9e-7 mean / 8.0e-5 max, alpha 2.1e-8 / 1.2e-5,
# radii and depths identical, means2d 3.1e-5 px, relative gradient errors 1.5e-5 to 1.3e-4. Limits: ~4x those.
TOLERANCES = {
    "image_mean_abs": 1e-6, "image_max_abs": 5e-4, "alpha_mean_abs": 1e-7, "alpha_max_abs": 1e-4,
    "radii_differ_fraction": 1e-4, "radii_max_diff": 1, "means2d_max_abs": 2e-4, "depths_max_rel": 1e-6,
    **{f"grad_rel_{name}": 5e-4 for name in ("means", "scales", "quats", "opacities", "colors", "means2d",
                                              "means2d_abs")},
}


def camera(yaw: float, distance: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera and intrinsics of a camera on a circle around the origin, looking at it."""
    rotation = torch.tensor([[math.cos(yaw), 0.0, -math.sin(yaw)], [0.0, 1.0, 0.0],
                             [math.sin(yaw), 0.0, math.cos(yaw)]], dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3] = rotation
    viewmat[:3, 3] = torch.tensor([0.0, 0.0, distance], dtype=torch.float64)
    K = torch.tensor([[300.0, 0.0, WIDTH / 2 - 3.0], [0.0, 310.0, HEIGHT / 2 + 2.0], [0.0, 0.0, 1.0]])
    return viewmat.float().to(device), K.to(device)


def random_scene(device: torch.device) -> dict[str, torch.Tensor]:
    """Gaussians filling the first camera's frustum between depths 2.5 and 6 (and mostly the second's)."""
    generator = torch.Generator().manual_seed(0)
    depth = 2.5 + 3.5 * torch.rand(N_GAUSSIANS, generator=generator)
    pixel = torch.rand(N_GAUSSIANS, 2, generator=generator) * torch.tensor([WIDTH, HEIGHT])
    viewmat, K = camera(0.0, 4.0, torch.device("cpu"))
    cam_x = (pixel[:, 0] - K[0, 2]) / K[0, 0] * depth
    cam_y = (pixel[:, 1] - K[1, 2]) / K[1, 1] * depth
    means_cam = torch.stack([cam_x, cam_y, depth], dim=-1)
    means = (means_cam - viewmat[:3, 3]) @ viewmat[:3, :3]  # camera -> world (rotation is orthonormal)
    n_coefficients = (SH_DEGREE + 1) ** 2
    sh = torch.randn(N_GAUSSIANS, n_coefficients, 3, generator=generator) * 0.15
    sh[:, 0] = torch.randn(N_GAUSSIANS, 3, generator=generator) * 0.8
    scene = {
        "means": means,
        "quats": torch.randn(N_GAUSSIANS, 4, generator=generator),
        "scales": torch.exp(torch.rand(N_GAUSSIANS, 3, generator=generator) * 2.0 - 5.0),
        "opacities": torch.sigmoid(torch.randn(N_GAUSSIANS, generator=generator) * 1.5),
        "colors": sh,
    }
    return {name: value.to(device) for name, value in scene.items()}


def render_with_gradients(backend: str, scene: dict[str, torch.Tensor], viewmats: torch.Tensor, Ks: torch.Tensor,
                          backgrounds: torch.Tensor, loss_weights: tuple[torch.Tensor, torch.Tensor]):
    params = {name: value.clone().requires_grad_(True) for name, value in scene.items()}
    image, alpha, info = render(params["means"], params["quats"], params["scales"], params["opacities"],
                                params["colors"], viewmats, Ks, WIDTH, HEIGHT, sh_degree=SH_DEGREE,
                                backgrounds=backgrounds, absgrad=True, backend=backend)
    info["means2d"].retain_grad()
    ((image * loss_weights[0]).sum() + (alpha * loss_weights[1]).sum()).backward()
    gradients = {name: value.grad for name, value in params.items()}
    gradients["means2d"] = info["means2d"].grad
    gradients["means2d_abs"] = info["means2d"].absgrad
    return image.detach(), alpha.detach(), info, gradients


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).norm() / reference.norm()).item()


def test_torch_backend_on_cuda_matches_gsplat():
    torch.backends.cuda.matmul.allow_tf32 = False  # our compositing uses (batched) matrix products
    device = torch.device("cuda")
    scene = random_scene(device)
    cameras = [camera(0.0, 4.0, device), camera(0.35, 4.2, device)]
    viewmats = torch.stack([viewmat for viewmat, _ in cameras])
    Ks = torch.stack([K for _, K in cameras])
    backgrounds = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]], device=device)
    generator = torch.Generator(device=device).manual_seed(1)
    loss_weights = (torch.randn(2, HEIGHT, WIDTH, 3, generator=generator, device=device),
                    torch.randn(2, HEIGHT, WIDTH, 1, generator=generator, device=device))

    reference = render_with_gradients("gsplat", scene, viewmats, Ks, backgrounds, loss_weights)
    ours = render_with_gradients("torch", scene, viewmats, Ks, backgrounds, loss_weights)
    (image_ref, alpha_ref, info_ref, grads_ref), (image, alpha, info, grads) = reference, ours

    visible = (info_ref["radii"] > 0).all(dim=-1)
    assert visible[0].float().mean() > 0.95, "the scene must fill the first view"
    assert alpha_ref.mean() > 0.5, "the scene must cover most pixels"

    radii_differ = (info["radii"] != info_ref["radii"]).any(dim=-1)
    both = visible & ~radii_differ
    errors = {name: relative_error(grads[name], grads_ref[name]) for name in grads_ref}
    measured = {
        "image_mean_abs": (image - image_ref).abs().mean().item(),
        "image_max_abs": (image - image_ref).abs().max().item(),
        "alpha_mean_abs": (alpha - alpha_ref).abs().mean().item(),
        "alpha_max_abs": (alpha - alpha_ref).abs().max().item(),
        "radii_differ_fraction": radii_differ.float().mean().item(),
        "radii_max_diff": (info["radii"] - info_ref["radii"]).abs().max().item(),
        "means2d_max_abs": (info["means2d"][both] - info_ref["means2d"][both]).abs().max().item(),
        "depths_max_rel": ((info["depths"][both] - info_ref["depths"][both]).abs()
                           / info_ref["depths"][both].abs()).max().item(),
        **{f"grad_rel_{name}": error for name, error in errors.items()},
    }
    print("twin measurements:", json.dumps(measured))
    for name, limit in TOLERANCES.items():
        assert measured[name] <= limit, (name, measured[name], limit)

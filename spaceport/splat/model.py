"""Gaussian parameters as trainable tensors, their initialisation, optimisers and rendering.

Parameters live in a ``torch.nn.ParameterDict`` with gsplat's names and raw parameterisation
(``means``, log ``scales``, unnormalised ``quats`` wxyz, logit ``opacities`` (N,), ``sh0`` (N,1,3),
``shN`` (N,K,3)), the form ``gsplat.strategy`` edits in place.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.spatial import cKDTree

from spaceport.formats.gaussians import SH_REST_COUNTS, Gaussians
from spaceport.splat.render import render

SH_C0 = 0.28209479177387814
PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")
ADAM_EPS, ADAM_BETAS = 1e-15, (0.9, 0.999)  # INRIA's eps
OptimizerKind = Literal["adam", "fused", "selective"]


def gaussians_from_points(
    points: np.ndarray, colors: np.ndarray, *, sh_degree: int, opacity: float = 0.1, scale: float = 1.0
) -> Gaussians:
    """Isotropic Gaussians at the sparse points: DC colour from the point colour, size from the mean
    distance to the 3 nearest neighbours (INRIA's initialisation)."""
    points = np.asarray(points, np.float32)
    n = len(points)
    neighbours = min(3, n - 1)
    if neighbours > 0:
        distances, _ = cKDTree(points).query(points, k=neighbours + 1)
        mean_distance = distances[:, 1:].mean(axis=1)
    else:
        mean_distance = np.ones(n)
    mean_distance = np.maximum(mean_distance, 1e-7) * scale
    quats = np.zeros((n, 4), np.float32)
    quats[:, 0] = 1.0
    return Gaussians(
        means=points.copy(),
        scales=np.repeat(np.log(mean_distance)[:, None], 3, axis=1).astype(np.float32),
        quats=quats,
        opacities=np.full(n, np.log(opacity / (1 - opacity)), np.float32),
        sh0=((np.asarray(colors, np.float32) - 0.5) / SH_C0).astype(np.float32),
        shN=np.zeros((n, SH_REST_COUNTS[sh_degree], 3), np.float32),
    )


def params_from_gaussians(gaussians: Gaussians, device: torch.device | str) -> torch.nn.ParameterDict:
    tensors = {
        "means": gaussians.means,
        "scales": gaussians.scales,
        "quats": gaussians.quats,
        "opacities": gaussians.opacities,
        "sh0": gaussians.sh0[:, None, :],
        "shN": gaussians.shN,
    }
    # copied into fresh tensors: numpy may give size-1 dims odd strides, which autograd warns about
    return torch.nn.ParameterDict(
        {name: torch.nn.Parameter(torch.empty(v.shape, device=device).copy_(torch.from_numpy(v)))
         for name, v in tensors.items()}
    )


def gaussians_from_params(params: torch.nn.ParameterDict) -> Gaussians:
    def array(name: str) -> np.ndarray:
        return params[name].detach().float().cpu().numpy()

    return Gaussians(
        means=array("means"), scales=array("scales"), quats=array("quats"),
        opacities=array("opacities"), sh0=array("sh0")[:, 0, :], shN=array("shN"),
    )


def empty_params_like(num_gaussians: int, sh_degree: int, device: torch.device | str) -> torch.nn.ParameterDict:
    """Zero parameters of the right shapes, to load a checkpoint's state_dict into."""
    shapes = {
        "means": (num_gaussians, 3), "scales": (num_gaussians, 3), "quats": (num_gaussians, 4),
        "opacities": (num_gaussians,), "sh0": (num_gaussians, 1, 3),
        "shN": (num_gaussians, SH_REST_COUNTS[sh_degree], 3),
    }
    return torch.nn.ParameterDict(
        {name: torch.nn.Parameter(torch.zeros(shape, device=device)) for name, shape in shapes.items()}
    )


def make_optimizers(params: torch.nn.ParameterDict, learning_rates: dict[str, float],
                    kind: OptimizerKind = "adam") -> dict[str, torch.optim.Adam]:
    """One Adam per parameter (the layout gsplat's strategies expect), INRIA's eps.

    ``kind``: "adam" (torch's default implementation), "fused" (one kernel per parameter, on CUDA and CPU), or
    "selective" (gsplat's SelectiveAdam on CUDA, ``SelectiveAdamTorch`` on the CPU: ``step(visibility)``)."""
    def one(name: str) -> torch.optim.Adam:
        groups = [{"params": [params[name]], "lr": learning_rates[name], "name": name}]
        if kind == "selective":
            if params[name].is_cuda:
                from gsplat.optimizers import SelectiveAdam

                return SelectiveAdam(groups, eps=ADAM_EPS, betas=ADAM_BETAS)
            return SelectiveAdamTorch(groups, eps=ADAM_EPS, betas=ADAM_BETAS)
        return torch.optim.Adam(groups, eps=ADAM_EPS, betas=ADAM_BETAS, fused=True if kind == "fused" else None)

    return {name: one(name) for name in PARAM_NAMES}


class SelectiveAdamTorch(torch.optim.Adam):
    """gsplat 1.5.3's ``SelectiveAdam`` in PyTorch (its CUDA kernel's arithmetic): rows whose Gaussian is not
    visible keep their parameter and both moments; visible rows take an Adam step without bias correction."""

    @torch.no_grad()
    def step(self, visibility: torch.Tensor) -> None:  # type: ignore[override]
        for group in self.param_groups:
            param = group["params"][0]
            if param.grad is None:
                continue
            state = self.state[param]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            beta1, beta2 = group["betas"]
            visible = visibility.view(-1, *[1] * (param.dim() - 1))
            grad, exp_avg, exp_avg_sq = param.grad, state["exp_avg"], state["exp_avg_sq"]
            exp_avg.copy_(torch.where(visible, beta1 * exp_avg + (1 - beta1) * grad, exp_avg))
            exp_avg_sq.copy_(torch.where(visible, beta2 * exp_avg_sq + (1 - beta2) * grad * grad, exp_avg_sq))
            update = -group["lr"] * exp_avg / (exp_avg_sq.sqrt() + group["eps"])
            param.add_(torch.where(visible, update, torch.zeros_like(update)))


def visible_gaussians(info: dict) -> torch.Tensor:
    """(N,) bool: the Gaussians any camera of a render saw (radius above zero), for SelectiveAdam."""
    radii = info["radii"]
    if info.get("gaussian_ids") is not None:  # packed: one row per (camera, visible Gaussian)
        visible = torch.zeros(info["n_gaussians"], dtype=torch.bool, device=radii.device)
        return visible.index_fill_(0, info["gaussian_ids"], True)
    return (radii > 0).all(dim=-1).any(dim=0)


def render_params(
    params: torch.nn.ParameterDict,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int,
    backgrounds: torch.Tensor | None = None,
    backend: str = "auto",
    absgrad: bool = False,
    packed: bool = False,
    opacity_scale: torch.Tensor | None = None,
):
    """Render raw parameters: activations applied here (exp scales, sigmoid opacities, each opacity times
    ``opacity_scale`` when given)."""
    colors = torch.cat([params["sh0"], params["shN"]], dim=1)
    opacities = torch.sigmoid(params["opacities"])
    if opacity_scale is not None:
        opacities = opacities * opacity_scale
    rendered, alphas, info = render(
        params["means"], params["quats"], torch.exp(params["scales"]), opacities,
        colors, viewmats, Ks, width, height, sh_degree=sh_degree, backgrounds=backgrounds,
        absgrad=absgrad, backend=backend, packed=packed,
    )
    info.setdefault("n_gaussians", params["means"].shape[0])
    return rendered, alphas, info


def render_gaussians(
    gaussians: Gaussians,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    *,
    backgrounds: torch.Tensor | None = None,
    backend: str = "auto",
):
    """Render a numpy Gaussian set without gradients (on the device of ``viewmats``)."""
    params = params_from_gaussians(gaussians, viewmats.device)
    with torch.no_grad():
        return render_params(params, viewmats, Ks, width, height, sh_degree=gaussians.sh_degree,
                             backgrounds=backgrounds, backend=backend)

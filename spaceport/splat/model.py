"""Gaussian parameters as trainable tensors, their initialisation, optimisers and rendering.

Parameters live in a ``torch.nn.ParameterDict`` with gsplat's names and raw parameterisation
(``means``, log ``scales``, unnormalised ``quats`` wxyz, logit ``opacities`` (N,), ``sh0`` (N,1,3),
``shN`` (N,K,3)), the form ``gsplat.strategy`` edits in place.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from spaceport.formats.gaussians import SH_REST_COUNTS, Gaussians
from spaceport.splat.render import render

SH_C0 = 0.28209479177387814
PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


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


def make_optimizers(params: torch.nn.ParameterDict, learning_rates: dict[str, float]) -> dict[str, torch.optim.Adam]:
    """One Adam per parameter (the layout gsplat's strategies expect), INRIA's eps."""
    return {
        name: torch.optim.Adam([{"params": [params[name]], "lr": learning_rates[name], "name": name}], eps=1e-15)
        for name in PARAM_NAMES
    }


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
):
    """Render raw parameters: activations applied here (exp scales, sigmoid opacities)."""
    colors = torch.cat([params["sh0"], params["shN"]], dim=1)
    return render(
        params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
        colors, viewmats, Ks, width, height, sh_degree=sh_degree, backgrounds=backgrounds,
        absgrad=absgrad, backend=backend,
    )


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

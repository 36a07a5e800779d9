"""Real spherical harmonics up to degree 4, in the basis and sign convention gsplat and the INRIA code use.

The constants are the normalisation factors of the real SH basis (Sloan, "Efficient Spherical Harmonic
Evaluation", JCGT 2013); the ordering within a band is m = -l..l, as in gsplat's ``spherical_harmonics``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_SH_DEGREE = 4


def sh_basis(degree: int, directions: Tensor) -> Tensor:
    """The (degree+1)**2 basis functions at unit ``directions`` (..., 3) -> (..., (degree+1)**2)."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    x, y, z = directions.unbind(-1)
    bands = [torch.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        bands += [-0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x]
    if degree >= 2:
        z2 = z * z
        cos1, sin1 = x * x - y * y, 2.0 * x * y  # cos(2 phi), sin(2 phi) times sin^2(theta)
        band2_m0 = 0.9461746957575601 * z2 - 0.3153915652525201
        bands += [
            0.5462742152960395 * sin1,
            -1.092548430592079 * z * y,
            band2_m0,
            -1.092548430592079 * z * x,
            0.5462742152960395 * cos1,
        ]
    if degree >= 3:
        cos2, sin2 = x * cos1 - y * sin1, x * sin1 + y * cos1
        factor_c = -2.285228997322329 * z2 + 0.4570457994644658
        band3_m0 = z * (1.865881662950577 * z2 - 1.119528997770346)
        bands += [
            -0.5900435899266435 * sin2,
            1.445305721320277 * z * sin1,
            factor_c * y,
            band3_m0,
            factor_c * x,
            1.445305721320277 * z * cos1,
            -0.5900435899266435 * cos2,
        ]
    if degree >= 4:
        cos3, sin3 = x * cos2 - y * sin2, x * sin2 + y * cos2
        factor_d = z * (-4.683325804901025 * z2 + 2.007139630671868)
        factor_c4 = 3.31161143515146 * z2 - 0.47308734787878
        bands += [
            0.6258357354491763 * sin3,
            -1.770130769779931 * z * sin2,
            factor_c4 * sin1,
            factor_d * y,
            1.984313483298443 * z * band3_m0 - 1.006230589874905 * band2_m0,
            factor_d * x,
            factor_c4 * cos1,
            -1.770130769779931 * z * cos2,
            0.6258357354491763 * cos3,
        ]
    return torch.stack(bands, dim=-1)


def sh_to_color(degree: int, directions: Tensor, coefficients: Tensor) -> Tensor:
    """Evaluate SH ``coefficients`` (..., K, 3) toward ``directions`` (..., 3, any length) -> (..., 3).

    Uses only the first (degree+1)**2 coefficients. Zero directions give the DC term alone, with finite
    gradients (gsplat's kernel would divide by zero there; such Gaussians sit on the camera and are culled).
    """
    n_bases = (degree + 1) ** 2
    if coefficients.shape[-2] < n_bases:
        raise ValueError(f"sh_degree {degree} needs {n_bases} coefficients, colors has {coefficients.shape[-2]}")
    basis = sh_basis(degree, F.normalize(directions, dim=-1))
    return torch.matmul(basis[..., None, :], coefficients[..., :n_bases, :]).squeeze(-2)

"""Torch twins of the two CUDA ops ``gsplat.strategy.MCMCStrategy`` calls, so MCMC also runs on the CPU.

``gsplat.strategy.ops`` binds ``compute_relocation`` and ``quat_scale_to_covar_preci`` at import;
``cpu_strategy_ops()`` swaps those two names for dispatchers for the duration of a ``with`` block:
CPU tensors go to the twins below, CUDA tensors to gsplat's kernels as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import gsplat.strategy.ops as strategy_ops
import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci  # gsplat's own reference, pinned 1.5.3


def compute_relocation_torch(
    opacities: torch.Tensor, scales: torch.Tensor, ratios: torch.Tensor, binoms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Equation 9 of "3D Gaussian Splatting as Markov Chain Monte Carlo", as gsplat's kernel computes it.

    A Gaussian sampled ``n`` times is replaced by ``n`` copies whose composite matches the original:
    opacity ``1 - (1 - o)^(1/n)``, scales multiplied by ``o / sum_{i=1..n} sum_{k<i} C(i-1,k)
    (-1)^k / sqrt(k+1) * o_new^(k+1)``. The alternating sum is evaluated in float64.
    """
    n_max = binoms.shape[0]
    ratios = ratios.clamp(1, n_max).long()
    opacities64 = opacities.double()
    new_opacities = 1.0 - torch.pow(1.0 - opacities64, 1.0 / ratios.double())
    k = torch.arange(n_max, device=opacities.device, dtype=torch.float64)
    signed_weights = (-1.0) ** k / torch.sqrt(k + 1.0)
    # coefficient of o_new^(k+1) for ratio n: sum over i = 1..n of C(i-1, k) (C is 0 for k > i-1)
    coefficients = torch.cumsum(binoms.double(), dim=0) * signed_weights  # row n-1 holds ratio n
    powers = new_opacities[:, None] ** (k[None, :] + 1.0)
    denominators = (coefficients[ratios - 1] * powers).sum(dim=1)
    new_scales = (opacities64 / denominators)[:, None] * scales.double()
    return new_opacities.to(opacities.dtype), new_scales.to(scales.dtype)


def quat_scale_to_covar_preci_torch(
    quats: torch.Tensor,
    scales: torch.Tensor,
    compute_covar: bool = True,
    compute_preci: bool = True,
    triu: bool = False,
):
    return _quat_scale_to_covar_preci(quats, scales, compute_covar, compute_preci, triu)


def _dispatch(cuda_op, torch_op, device_argument: str):
    def dispatcher(*args, **kwargs):
        tensor = kwargs[device_argument] if device_argument in kwargs else args[0]
        return (cuda_op if tensor.is_cuda else torch_op)(*args, **kwargs)

    dispatcher.__wrapped__ = cuda_op
    return dispatcher


@contextmanager
def cpu_strategy_ops() -> Iterator[None]:
    """Route gsplat's strategy ops on CPU tensors to the torch twins while the block runs."""
    originals = {
        "compute_relocation": strategy_ops.compute_relocation,
        "quat_scale_to_covar_preci": strategy_ops.quat_scale_to_covar_preci,
    }
    strategy_ops.compute_relocation = _dispatch(
        originals["compute_relocation"], compute_relocation_torch, "opacities")
    strategy_ops.quat_scale_to_covar_preci = _dispatch(
        originals["quat_scale_to_covar_preci"], quat_scale_to_covar_preci_torch, "quats")
    try:
        yield
    finally:
        for name, op in originals.items():
            setattr(strategy_ops, name, op)

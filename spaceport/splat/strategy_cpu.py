"""``CpuMCMCStrategy``: gsplat's ``MCMCStrategy`` on CPU tensors, through torch twins of its two CUDA ops.

gsplat 1.5.3's ``relocate``, ``sample_add`` and ``inject_noise_to_position`` call the CUDA kernels
``compute_relocation`` and ``quat_scale_to_covar_preci`` directly. Rather than swapping those functions inside
gsplat, the subclass re-states the three steps (same order, same random draws) around the twins below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci  # gsplat's own reference, pinned 1.5.3
from gsplat.strategy import MCMCStrategy
from gsplat.strategy.ops import _multinomial_sample, _update_param_with_optimizer

Params = dict[str, torch.nn.Parameter] | torch.nn.ParameterDict


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


def shared_footprint(
    params: Params, sampled: torch.Tensor, binoms: torch.Tensor, min_opacity: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Opacity and scales for each sampled Gaussian so that it and its new copies composite to the original."""
    opacities = torch.sigmoid(params["opacities"])
    new_opacities, new_scales = compute_relocation_torch(
        opacities[sampled], torch.exp(params["scales"])[sampled], torch.bincount(sampled)[sampled] + 1, binoms)
    return new_opacities.clamp(min=min_opacity, max=1.0 - torch.finfo(torch.float32).eps), new_scales


@torch.no_grad()
def relocate_torch(
    params: Params, optimizers: dict[str, torch.optim.Optimizer], dead: torch.Tensor, binoms: torch.Tensor,
    min_opacity: float,
) -> None:
    """gsplat's ``ops.relocate``: each dead Gaussian becomes a copy of a live one drawn by opacity."""
    dead_indices = dead.nonzero(as_tuple=True)[0]
    alive_indices = (~dead).nonzero(as_tuple=True)[0]
    opacities = torch.sigmoid(params["opacities"])
    sampled = alive_indices[_multinomial_sample(opacities[alive_indices].flatten(), len(dead_indices))]
    new_opacities, new_scales = shared_footprint(params, sampled, binoms, min_opacity)

    def param_fn(name: str, p: torch.Tensor) -> torch.Tensor:
        if name == "opacities":
            p[sampled] = torch.logit(new_opacities)
        elif name == "scales":
            p[sampled] = torch.log(new_scales)
        p[dead_indices] = p[sampled]
        return torch.nn.Parameter(p, requires_grad=p.requires_grad)

    def optimizer_fn(_key: str, moment: torch.Tensor) -> torch.Tensor:
        moment[sampled] = 0
        return moment

    _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)


@torch.no_grad()
def sample_add_torch(
    params: Params, optimizers: dict[str, torch.optim.Optimizer], n: int, binoms: torch.Tensor, min_opacity: float
) -> None:
    """gsplat's ``ops.sample_add``: ``n`` new copies of Gaussians drawn by opacity."""
    sampled = _multinomial_sample(torch.sigmoid(params["opacities"]).flatten(), n)
    new_opacities, new_scales = shared_footprint(params, sampled, binoms, min_opacity)

    def param_fn(name: str, p: torch.Tensor) -> torch.Tensor:
        if name == "opacities":
            p[sampled] = torch.logit(new_opacities)
        elif name == "scales":
            p[sampled] = torch.log(new_scales)
        return torch.nn.Parameter(torch.cat([p, p[sampled]]), requires_grad=p.requires_grad)

    def optimizer_fn(_key: str, moment: torch.Tensor) -> torch.Tensor:
        return torch.cat([moment, torch.zeros((len(sampled), *moment.shape[1:]), device=moment.device)])

    _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)


@torch.no_grad()
def inject_noise_torch(params: Params, scaler: float) -> None:
    """gsplat's ``ops.inject_noise_to_position``: move nearly transparent Gaussians along their own shape."""
    opacities = torch.sigmoid(params["opacities"].flatten())
    covars, _ = _quat_scale_to_covar_preci(params["quats"], torch.exp(params["scales"]), compute_covar=True,
                                           compute_preci=False, triu=False)
    transparency_gate = 1 / (1 + torch.exp(-100 * ((1 - opacities) - 0.995)))
    noise = torch.randn_like(params["means"]) * transparency_gate.unsqueeze(-1) * scaler
    params["means"].add_(torch.einsum("bij,bj->bi", covars, noise))


@dataclass
class CpuMCMCStrategy(MCMCStrategy):
    """``MCMCStrategy`` whose relocation, growth and noise run on CPU tensors (gsplat's need CUDA).

    ``grow_factor``: the Gaussians multiply by it at each refinement until ``cap_max`` (gsplat: 1.05)."""

    grow_factor: float = 1.05

    def step_post_backward(self, params, optimizers, state, step, info, lr):
        """As ``MCMCStrategy.step_post_backward``: relocate and add while refining, perturb every step."""
        binoms = state["binoms"] = state["binoms"].to(params["means"].device)
        if self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0:
            self._relocate_gs(params, optimizers, binoms)
            self._add_new_gs(params, optimizers, binoms)
        inject_noise_torch(params, scaler=lr * self.noise_lr)

    @torch.no_grad()
    def _relocate_gs(self, params, optimizers, binoms) -> int:
        dead = torch.sigmoid(params["opacities"].flatten()) <= self.min_opacity
        n_dead = int(dead.sum())
        if n_dead > 0:
            relocate_torch(params, optimizers, dead, binoms, self.min_opacity)
        return n_dead

    @torch.no_grad()
    def _add_new_gs(self, params, optimizers, binoms) -> int:
        current = len(params["means"])
        n_new = max(0, min(self.cap_max, int(self.grow_factor * current)) - current)
        if n_new > 0:
            sample_add_torch(params, optimizers, n_new, binoms, self.min_opacity)
        return n_new

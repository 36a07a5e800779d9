"""SSIM in four fused Triton kernels (two forward, two backward), for CUDA tensors; ``ssim_reference`` is its twin
(``tests/gpu/test_ssim_triton.py`` compares values and gradients).

Images become planes ``(P, H, W)`` (P = batch x channels). Forward: a horizontal pass blurs the five maps (a, b,
a^2, b^2, ab) with the 1D window into ``(5, P, H, W - 10)``; a vertical pass finishes the 2D blur over the valid
region, computes the SSIM map and, when a gradient is needed, its partial derivatives A = dS/dmu_a, B = dS/dE[a^2],
C = dS/dE[ab] (mu_a enters var_a and cov too; A includes that). Backward: the gradient of the mean is
``g * (blur*(A) + 2 a blur*(B) + b blur*(C))`` with g = 1 / (number of valid pixels) and blur* the transposed
("full") blur, again a horizontal then a vertical pass. Only ``a`` (the render) gets a gradient.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from functools import cache

import torch

from spaceport.splat.ssim import C1, C2, SIGMA, WINDOW_SIZE, gaussian_weights

BLOCK = 256  # columns per program


@cache
def triton_available() -> bool:
    """Triton imports and can launch here (CUDA, or its interpreter with TRITON_INTERPRET=1)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install must not break training: the separable kernel is used
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@cache
def triton_self_check(device: torch.device) -> str | None:
    """None when the kernels compile on ``device`` and agree with ``ssim_separable`` on a small random pair
    (value and gradient); else why not, also warned once. "auto" then uses the separable kernel."""
    from spaceport.splat.ssim import ssim_separable

    generator = torch.Generator().manual_seed(0)
    # the first caller may be an evaluation under no_grad: the check needs gradients whoever asks first
    with torch.inference_mode(False), torch.enable_grad():
        a = torch.rand(1, 40, 56, 3, generator=generator).to(device).requires_grad_(True)
        b = torch.rand(1, 40, 56, 3, generator=generator).to(device)
        try:
            value = ssim_triton(a, b)
            (gradient,) = torch.autograd.grad(value, a)
        except Exception as exc:  # a compiler or driver problem: reported, and training goes on without the kernel
            return _give_up(f"the Triton SSIM kernel failed on {device}: {type(exc).__name__}: {exc}")
        reference = ssim_separable(a, b)
        (expected,) = torch.autograd.grad(reference, a)
    value_error = abs(value.item() - reference.item())
    gradient_error = float((gradient - expected).abs().max() / expected.abs().max())
    if value_error < 1e-5 and gradient_error < 1e-3:
        return None
    return _give_up(f"the Triton SSIM kernel disagrees with the separable one on {device} (value {value_error:.2e}, "
                    f"relative gradient {gradient_error:.2e})")


def _give_up(problem: str) -> str:
    warnings.warn(problem + "; using the separable kernel", RuntimeWarning, stacklevel=3)
    return problem


@cache
def _kernels():
    import triton
    import triton.language as tl

    # sizes vary (coarse-to-fine levels, evaluation): one compiled kernel for all, not one per divisibility
    @triton.jit(do_not_specialize=["H", "W", "W_valid", "plane_out"])
    def forward_rows(a_ptr, b_ptr, w_ptr, out_ptr, H, W, W_valid, plane_out, K: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)  # p * H + y
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < W_valid
        base = row * W
        s_a = tl.zeros([BLOCK], dtype=tl.float32)
        s_b = tl.zeros([BLOCK], dtype=tl.float32)
        s_aa = tl.zeros([BLOCK], dtype=tl.float32)
        s_bb = tl.zeros([BLOCK], dtype=tl.float32)
        s_ab = tl.zeros([BLOCK], dtype=tl.float32)
        for k in tl.static_range(K):
            weight = tl.load(w_ptr + k)
            a = tl.load(a_ptr + base + cols + k, mask=inside, other=0.0)
            b = tl.load(b_ptr + base + cols + k, mask=inside, other=0.0)
            s_a += weight * a
            s_b += weight * b
            s_aa += weight * a * a
            s_bb += weight * b * b
            s_ab += weight * a * b
        out = out_ptr + row * W_valid + cols
        tl.store(out, s_a, mask=inside)
        tl.store(out + plane_out, s_b, mask=inside)
        tl.store(out + 2 * plane_out, s_aa, mask=inside)
        tl.store(out + 3 * plane_out, s_bb, mask=inside)
        tl.store(out + 4 * plane_out, s_ab, mask=inside)

    @triton.jit(do_not_specialize=["H", "H_valid", "W_valid", "plane_in", "plane_out"])
    def forward_columns(rows_ptr, w_ptr, map_ptr, deriv_ptr, H, H_valid, W_valid, plane_in, plane_out,
                        c1, c2, K: tl.constexpr, BLOCK: tl.constexpr, WITH_GRAD: tl.constexpr):
        out_row = tl.program_id(0)  # p * H_valid + y
        p = out_row // H_valid
        y = out_row % H_valid
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < W_valid
        mu_a = tl.zeros([BLOCK], dtype=tl.float32)
        mu_b = tl.zeros([BLOCK], dtype=tl.float32)
        e_aa = tl.zeros([BLOCK], dtype=tl.float32)
        e_bb = tl.zeros([BLOCK], dtype=tl.float32)
        e_ab = tl.zeros([BLOCK], dtype=tl.float32)
        for k in tl.static_range(K):
            weight = tl.load(w_ptr + k)
            src = rows_ptr + (p * H + y + k) * W_valid + cols
            mu_a += weight * tl.load(src, mask=inside, other=0.0)
            mu_b += weight * tl.load(src + plane_in, mask=inside, other=0.0)
            e_aa += weight * tl.load(src + 2 * plane_in, mask=inside, other=0.0)
            e_bb += weight * tl.load(src + 3 * plane_in, mask=inside, other=0.0)
            e_ab += weight * tl.load(src + 4 * plane_in, mask=inside, other=0.0)
        var_a = e_aa - mu_a * mu_a
        var_b = e_bb - mu_b * mu_b
        cov = e_ab - mu_a * mu_b
        n1 = 2.0 * mu_a * mu_b + c1
        n2 = 2.0 * cov + c2
        d1 = mu_a * mu_a + mu_b * mu_b + c1
        d2 = var_a + var_b + c2
        ssim = (n1 * n2) / (d1 * d2)
        out = out_row * W_valid + cols
        tl.store(map_ptr + out, ssim, mask=inside)
        if WITH_GRAD:
            d_e_aa = -ssim / d2
            d_e_ab = 2.0 * n1 / (d1 * d2)
            d_mu_a = 2.0 * mu_b * n2 / (d1 * d2) - 2.0 * mu_a * ssim / d1 - 2.0 * mu_a * d_e_aa - mu_b * d_e_ab
            tl.store(deriv_ptr + out, d_mu_a, mask=inside)
            tl.store(deriv_ptr + plane_out + out, d_e_aa, mask=inside)
            tl.store(deriv_ptr + 2 * plane_out + out, d_e_ab, mask=inside)

    @triton.jit(do_not_specialize=["W", "W_valid", "plane_in", "plane_out"])
    def backward_rows(deriv_ptr, w_ptr, out_ptr, W, W_valid, plane_in, plane_out, K: tl.constexpr,
                      BLOCK: tl.constexpr):
        row = tl.program_id(0)  # p * H_valid + y
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        s_mu = tl.zeros([BLOCK], dtype=tl.float32)
        s_aa = tl.zeros([BLOCK], dtype=tl.float32)
        s_ab = tl.zeros([BLOCK], dtype=tl.float32)
        for k in tl.static_range(K):
            weight = tl.load(w_ptr + k)
            source = cols - k
            valid = (source >= 0) & (source < W_valid)
            src = deriv_ptr + row * W_valid + source
            s_mu += weight * tl.load(src, mask=valid, other=0.0)
            s_aa += weight * tl.load(src + plane_in, mask=valid, other=0.0)
            s_ab += weight * tl.load(src + 2 * plane_in, mask=valid, other=0.0)
        inside = cols < W
        out = out_ptr + row * W + cols
        tl.store(out, s_mu, mask=inside)
        tl.store(out + plane_out, s_aa, mask=inside)
        tl.store(out + 2 * plane_out, s_ab, mask=inside)

    @triton.jit(do_not_specialize=["H", "H_valid", "W", "plane_in"])
    def backward_columns(rows_ptr, a_ptr, b_ptr, w_ptr, grad_ptr, scale, H, H_valid, W, plane_in,
                         K: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)  # p * H + y
        p = row // H
        y = row % H
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < W
        s_mu = tl.zeros([BLOCK], dtype=tl.float32)
        s_aa = tl.zeros([BLOCK], dtype=tl.float32)
        s_ab = tl.zeros([BLOCK], dtype=tl.float32)
        for k in tl.static_range(K):
            weight = tl.load(w_ptr + k)
            source = tl.zeros([BLOCK], dtype=tl.int32) + (y - k)  # as a block: masks must be tensors
            valid = inside & (source >= 0) & (source < H_valid)
            src = rows_ptr + (p * H_valid + source) * W + cols
            s_mu += weight * tl.load(src, mask=valid, other=0.0)
            s_aa += weight * tl.load(src + plane_in, mask=valid, other=0.0)
            s_ab += weight * tl.load(src + 2 * plane_in, mask=valid, other=0.0)
        pixel = row * W + cols
        a = tl.load(a_ptr + pixel, mask=inside, other=0.0)
        b = tl.load(b_ptr + pixel, mask=inside, other=0.0)
        tl.store(grad_ptr + pixel, scale * (s_mu + 2.0 * a * s_aa + b * s_ab), mask=inside)

    return forward_rows, forward_columns, backward_rows, backward_columns


def _grid(rows: int, cols: int) -> tuple[int, int]:
    return rows, (cols + BLOCK - 1) // BLOCK


class _FusedSsim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        forward_rows, forward_columns, _, _ = _kernels()
        planes, height, width = a.shape
        k = weights.numel()
        h_valid, w_valid = height - k + 1, width - k + 1
        rows = torch.empty((5, planes, height, w_valid), device=a.device, dtype=torch.float32)
        forward_rows[_grid(planes * height, w_valid)](a, b, weights, rows, height, width, w_valid,
                                                      planes * height * w_valid, K=k, BLOCK=BLOCK)
        ssim_map = torch.empty((planes, h_valid, w_valid), device=a.device, dtype=torch.float32)
        with_grad = ctx.needs_input_grad[0]
        derivatives = torch.empty((3, planes, h_valid, w_valid) if with_grad else (1,), device=a.device,
                                  dtype=torch.float32)
        forward_columns[_grid(planes * h_valid, w_valid)](
            rows, weights, ssim_map, derivatives, height, h_valid, w_valid, planes * height * w_valid,
            planes * h_valid * w_valid, C1, C2, K=k, BLOCK=BLOCK, WITH_GRAD=with_grad)
        if with_grad:
            ctx.save_for_backward(a, b, weights, derivatives)
        return ssim_map.mean()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        _, _, backward_rows, backward_columns = _kernels()
        a, b, weights, derivatives = ctx.saved_tensors
        planes, height, width = a.shape
        k = weights.numel()
        h_valid, w_valid = height - k + 1, width - k + 1
        rows = torch.empty((3, planes, h_valid, width), device=a.device, dtype=torch.float32)
        backward_rows[_grid(planes * h_valid, width)](derivatives, weights, rows, width, w_valid,
                                                      planes * h_valid * w_valid, planes * h_valid * width,
                                                      K=k, BLOCK=BLOCK)
        grad = torch.empty_like(a)
        scale = 1.0 / (planes * h_valid * w_valid)  # d mean / d map; grad_output (on the device) multiplies after
        backward_columns[_grid(planes * height, width)](rows, a, b, weights, grad, scale, height, h_valid, width,
                                                        planes * h_valid * width, K=k, BLOCK=BLOCK)
        return grad * grad_output, None, None


@cache
def _weights(device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return gaussian_weights(WINDOW_SIZE, SIGMA, device, torch.float32)


def ssim_triton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of ``(B, H, W, C)`` batches (window 11, sigma 1.5, valid region), gradient to ``a`` only."""
    if b.requires_grad:
        raise ValueError("ssim_triton: the second image must not need a gradient; use ssim_separable")
    batch, height, width, channels = a.shape

    def planes(x: torch.Tensor) -> torch.Tensor:
        return x.float().permute(0, 3, 1, 2).reshape(batch * channels, height, width).contiguous()

    return _FusedSsim.apply(planes(a), planes(b).detach(), _weights(a.device))

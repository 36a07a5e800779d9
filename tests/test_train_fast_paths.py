"""Issue 13's fast paths against their twins on the CPU: the separable SSIM against the 2D-window reference (values
and gradients), the sync-free DefaultStrategy statistics against gsplat's, SelectiveAdam's PyTorch twin and fused
Adam against plain Adam, the per-epoch view order against the per-step one; and what the new settings do in real
runs: coarse-to-fine levels, the photo-sized budget, early stopping (kept across a resume), keeping the best
evaluation, Gaussian dropout, the background shell, the step profiler."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from gsplat.strategy import DefaultStrategy

from spaceport.progress import NullProgress
from spaceport.splat.model import (
    SelectiveAdamTorch,
    gaussians_from_points,
    make_optimizers,
    params_from_gaussians,
    render_params,
)
from spaceport.splat.profiling import SECTIONS, StepProfiler, format_profile
from spaceport.splat.scene import Scene, View
from spaceport.splat.ssim import resolve_ssim_kernel, ssim, ssim_reference, ssim_separable
from spaceport.splat.train import (
    BudgetedDefaultStrategy,
    EpochOrder,
    dropout_rate_at,
    dropout_scale,
    fit_to_scene,
    prepare_run,
    resolution_factor_at,
    resolution_levels,
    run_train,
)
from spaceport.workspace import SpaceportError, Workspace
from tests.synthetic import write_synthetic_scene
from tests.test_train import ground_truth_scene, read_metrics, small_config, synthetic_source, workspace  # noqa: F401

# -- SSIM ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 23, 37, 3), (2, 40, 31, 3), (1, 64, 96, 1)])
def test_separable_ssim_matches_the_2d_reference_in_value_and_gradient(shape):
    generator = torch.Generator().manual_seed(sum(shape))
    truth = torch.rand(*shape, generator=generator)
    noisy = (truth + 0.15 * torch.randn(*shape, generator=generator)).clamp(0, 1)
    for kernel in (ssim_reference, ssim_separable):
        assert kernel(truth, truth).item() == pytest.approx(1.0, abs=1e-6)
    a = noisy.clone().requires_grad_(True)
    b = truth.clone().requires_grad_(True)
    reference = ssim_reference(a, b)
    reference_grads = torch.autograd.grad(reference, (a, b))
    separable = ssim_separable(a, b)
    separable_grads = torch.autograd.grad(separable, (a, b))
    assert 0.1 < reference.item() < 0.9
    assert separable.item() == pytest.approx(reference.item(), abs=1e-6)
    for ours, expected in zip(separable_grads, reference_grads, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_ssim_dispatch_picks_the_separable_kernel_on_the_cpu():
    assert resolve_ssim_kernel("auto", "cpu") == "separable"
    assert resolve_ssim_kernel("reference", "cpu") == "reference"
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_ssim_kernel("triton", "cpu")
    a, b = torch.rand(1, 20, 20, 3), torch.rand(1, 20, 20, 3)
    assert ssim(a, b).item() == pytest.approx(ssim_reference(a, b).item(), abs=1e-6)


def test_asking_for_triton_ssim_on_the_cpu_is_a_settings_error(workspace):  # noqa: F811
    with pytest.raises(SpaceportError, match="train.ssim_kernel"):
        run_train(workspace, small_config(ssim_kernel="triton"), NullProgress())


# -- strategy statistics without host syncs ----------------------------------------------------------


def strategy_inputs(n: int, cameras: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    params = {"means": torch.zeros(n, 3)}
    means2d = torch.zeros(cameras, n, 2, requires_grad=True)
    (means2d * torch.randn(cameras, n, 2, generator=generator)).sum().backward()
    radii = torch.randint(0, 4, (cameras, n, 2), generator=generator, dtype=torch.int32)
    info = {"means2d": means2d, "width": 64, "height": 48, "n_cameras": cameras, "gaussian_ids": None,
            "radii": radii}
    return params, info


@pytest.mark.parametrize("cameras", [1, 3])
def test_dense_strategy_statistics_equal_gsplat_s(cameras):
    ours = BudgetedDefaultStrategy(refine_scale2d_stop_iter=100)
    upstream = DefaultStrategy(refine_scale2d_stop_iter=100)
    states = [ours.initialize_state(), upstream.initialize_state()]
    for seed in range(3):  # accumulates over steps, some Gaussians unseen in some
        params, info = strategy_inputs(50, cameras, seed)
        ours._update_state(params, states[0], info)
        upstream._update_state(params, states[1], info)
    for key in ("grad2d", "count", "radii"):
        if cameras == 1:  # one add per Gaussian and step in both: the same bits
            assert torch.equal(states[0][key], states[1][key]), key
        elif key == "radii":  # gsplat assigns per camera through repeated ids (the last camera wins); ours is the max
            assert bool((states[0][key] >= states[1][key]).all())
        else:
            torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-6, atol=0)
    assert states[0]["count"].max() > 0 and (states[0]["count"] < 3 * cameras).any()


def test_packed_statistics_match_the_dense_ones():
    """gsplat's packed info (one row per visible Gaussian, with its id) accumulates what the dense grid does."""
    strategy = BudgetedDefaultStrategy()
    params, info = strategy_inputs(40, 1, seed=7)
    dense = strategy.initialize_state()
    strategy._update_state(params, dense, info)
    visible = (info["radii"][0] > 0).all(dim=-1)
    ids = visible.nonzero(as_tuple=True)[0]
    packed_means2d = info["means2d"].grad[0, ids].clone().requires_grad_(True)
    packed_means2d.grad = info["means2d"].grad[0, ids]
    packed_info = {**info, "means2d": packed_means2d, "radii": info["radii"][0, ids], "gaussian_ids": ids}
    packed = strategy.initialize_state()
    strategy._update_state(params, packed, packed_info, packed=True)
    assert torch.equal(dense["grad2d"], packed["grad2d"]) and torch.equal(dense["count"], packed["count"])


# -- optimizers --------------------------------------------------------------------------------------


def toy_params(seed: int = 0) -> torch.nn.ParameterDict:
    generator = torch.Generator().manual_seed(seed)
    n = 30
    return torch.nn.ParameterDict({
        "means": torch.randn(n, 3, generator=generator), "scales": torch.randn(n, 3, generator=generator),
        "quats": torch.randn(n, 4, generator=generator), "opacities": torch.randn(n, generator=generator),
        "sh0": torch.randn(n, 1, 3, generator=generator), "shN": torch.randn(n, 3, 3, generator=generator),
    })


def toy_gradients(params, step: int) -> None:
    generator = torch.Generator().manual_seed(100 + step)
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=generator)


def test_fused_adam_follows_plain_adam():
    rates = {name: 0.01 for name in ("means", "scales", "quats", "opacities", "sh0", "shN")}
    plain, fused = toy_params(), toy_params()
    plain_opt, fused_opt = make_optimizers(plain, rates, "adam"), make_optimizers(fused, rates, "fused")
    assert all(o.defaults["fused"] for o in fused_opt.values())
    for step in range(5):
        for params, optimizers in ((plain, plain_opt), (fused, fused_opt)):
            toy_gradients(params, step)
            for optimizer in optimizers.values():
                optimizer.step()
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-5, atol=1e-6)


def test_selective_adam_twin_updates_only_the_visible_gaussians():
    params = toy_params()
    before = {name: p.detach().clone() for name, p in params.items()}
    rates = {name: 0.01 for name in params}
    optimizers = make_optimizers(params, rates, "selective")
    assert all(isinstance(o, SelectiveAdamTorch) for o in optimizers.values())
    visibility = torch.arange(30) % 3 != 0
    moments = {name: (torch.zeros_like(p), torch.zeros_like(p)) for name, p in params.items()}
    expected = {name: p.clone() for name, p in before.items()}
    for step in range(3):
        toy_gradients(params, step)
        for name, optimizer in optimizers.items():
            grad = params[name].grad
            m, v = moments[name]
            rows = visibility.view(-1, *[1] * (grad.dim() - 1)).expand_as(grad)
            m[rows] = 0.9 * m[rows] + 0.1 * grad[rows]  # gsplat's kernel: no bias correction
            v[rows] = 0.999 * v[rows] + 0.001 * grad[rows] ** 2
            expected[name][rows] -= 0.01 * m[rows] / (v[rows].sqrt() + 1e-15)
            optimizer.step(visibility)
    for name, p in params.items():
        hidden = ~visibility
        assert torch.equal(p.detach()[hidden], before[name][hidden]), name  # untouched
        assert torch.equal(optimizers[name].state[p]["exp_avg"][hidden], torch.zeros_like(p)[hidden])
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6)


# -- views, levels, budget -----------------------------------------------------------------------------


def test_epoch_order_is_the_per_step_permutation():
    order = EpochOrder(7, seed=3)
    for step in range(40):
        epoch, position = divmod(step, 7)
        generator = torch.Generator().manual_seed(3 * 1_000_003 + epoch)
        assert order.index_at(step) == int(torch.randperm(7, generator=generator)[position])


def view_of_size(width: int, height: int) -> View:
    image = (torch.arange(width * height * 3) % 251).to(torch.uint8).reshape(height, width, 3)
    K = torch.tensor([[width * 0.9, 0, width / 2], [0, width * 0.9, height / 2], [0, 0, 1]])
    return View("v.png", image, K, torch.eye(4))


def test_resolution_levels_are_made_once_and_small_ones_fall_back():
    views = [view_of_size(256, 192), view_of_size(256, 192)]
    config = small_config(resolution_schedule=[[8, 10], [4, 20], [2, 30]])
    levels = resolution_levels(views, config)
    assert [v.width for v in levels[2]] == [128, 128] and levels[4][0].height == 48
    assert levels[8] is levels[4]  # 24 px would be under MIN_LEVEL_SIZE: the 1/4 level instead
    assert [resolution_factor_at(config, step) for step in (0, 9, 10, 19, 20, 29, 30, 1000)] == [8, 8, 4, 4, 2, 2,
                                                                                                 1, 1]


def test_budget_follows_the_training_pixels_and_mcmc_growth_reaches_it():
    views = [view_of_size(1000, 500)] * 4  # 2 megapixels
    scene = Scene(views, [], np.zeros((1000, 3), np.float32), np.zeros((1000, 3), np.float32), 1.0)
    config = small_config(strategy="mcmc", gaussians_per_megapixel=50_000, cap_max=3_000_000, refine_start=500,
                          refine_stop=5000, refine_every=100)
    fitted = fit_to_scene(config, scene)
    assert fitted.cap_max == 100_000
    refinements = len(range(600, 5000, 100))  # 44; the budget is reached after half of them
    assert fitted.mcmc_grow_factor == pytest.approx(100 ** (1 / (refinements // 2)), rel=1e-3)
    assert fit_to_scene(fitted, scene) == fitted  # idempotent: a checkpoint's config fits to itself
    assert fit_to_scene(config.model_copy(update={"cap_max": 20_000}), scene).cap_max == 20_000  # the upper bound


def test_photos_of_varying_appearance_get_the_lower_budget():
    views = [view_of_size(1000, 500)] * 4  # 2 megapixels: 100k Gaussians by the pixels
    scene = Scene(views, [], np.zeros((1000, 3), np.float32), np.zeros((1000, 3), np.float32), 1.0)
    config = small_config(strategy="mcmc", gaussians_per_megapixel=50_000, cap_max=3_000_000,
                          varying_appearance_cap=30_000)
    assert fit_to_scene(config, scene).cap_max == 100_000  # consistent photos: the pixels decide
    fitted = fit_to_scene(config, scene, varying_appearance=True)
    assert fitted.cap_max == 30_000
    assert fit_to_scene(fitted, scene, varying_appearance=True) == fitted
    uncapped = config.model_copy(update={"varying_appearance_cap": None})
    assert fit_to_scene(uncapped, scene, varying_appearance=True).cap_max == 100_000


# -- real runs ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def larger_source(tmp_path_factory):
    """The synthetic scene at 96x72, so that a 1/2-size level (48x36) exists."""
    root = tmp_path_factory.mktemp("synthetic_96")
    write_synthetic_scene(Workspace(root).undistorted_dir, ground_truth_scene(), num_views=10, width=96, height=72,
                          num_points=40)
    return root


def test_coarse_to_fine_run_trains_at_each_level_and_resumes_bit_exactly(larger_source, tmp_path):
    runs = [Workspace(tmp_path / name) for name in ("straight", "resumed")]
    for ws in runs:
        shutil.copytree(larger_source, ws.root)
    config = small_config(steps=60, resolution_schedule=[[2, 30]], strategy="mcmc", cap_max=60,
                          checkpoint_every=20, keep_checkpoints=5, background="random", log_every=10)
    result = run_train(runs[0], config, NullProgress())
    widths = {m["step"]: m["image_width"] for m in read_metrics(runs[0]) if "image_width" in m}
    assert widths == {10: 48, 20: 48, 30: 48, 40: 96, 50: 96, 60: 96}
    assert result.metrics["image_width"] == 96 and math.isfinite(result.metrics["psnr"])

    run_train(runs[1], config, NullProgress())
    for path in (runs[1].train_dir / "ckpt").glob("step_*.pt"):
        if path.name != "step_000020.pt":  # resume in the coarse level, cross into the fine one
            path.unlink()
    assert run_train(runs[1], config, NullProgress()).metrics["resumed_from_step"] == 20
    assert runs[0].splat_ply.read_bytes() == runs[1].splat_ply.read_bytes()


def test_early_stop_ends_the_run_and_a_rerun_stays_stopped(workspace):  # noqa: F811
    # no evaluation can gain 100 dB: the first sets the best, the next two do not rise -> stop at step 30
    config = small_config(steps=120, eval_every=10, early_stop_patience=2, early_stop_min_gain=100.0,
                          checkpoint_every=50)
    result = run_train(workspace, config, NullProgress())
    assert result.metrics["early_stopped_at"] == 30 and result.metrics["steps"] == 30
    evaluations = [m["step"] for m in read_metrics(workspace) if "eval_psnr" in m]
    assert evaluations == [10, 20, 30, 30]  # three during training, then the final one
    assert (workspace.train_dir / "ckpt" / "step_000030.pt").is_file()
    again = run_train(workspace, config, NullProgress())
    assert again.metrics["resumed_from_step"] == 30 and again.metrics["steps"] == 30


def test_keep_best_exports_the_best_evaluation_and_resumes_to_the_same_splat(workspace, tmp_path):  # noqa: F811
    # DefaultStrategy resets every opacity at step 50, so the last two steps score far below the evaluations
    config = small_config(steps=52, eval_every=10, strategy="default", refine_start=10, refine_every=10,
                          reset_opacity_every=50, checkpoint_every=51, keep_checkpoints=5)
    resumed, last_step_kept = (Workspace(tmp_path / name) for name in ("resumed", "last_step_kept"))
    for copy in (resumed, last_step_kept):
        shutil.copytree(workspace.root, copy.root)

    result = run_train(workspace, config, NullProgress())
    during = {m["step"]: m["eval_psnr"] for m in read_metrics(workspace) if "eval_psnr" in m and m["step"] < 52}
    kept = result.metrics["kept_step"]
    assert kept in during and during[kept] >= max(during.values()) - config.early_stop_min_gain
    assert result.metrics["steps"] == 52
    assert result.metrics["psnr"] == pytest.approx(during[kept], abs=1e-3)  # the same views, the same splat
    assert json.loads((workspace.train_dir / "eval.json").read_text())["step"] == kept
    assert read_metrics(workspace)[-1]["kept_step"] == kept

    without = run_train(last_step_kept, config.model_copy(update={"keep_best": False}), NullProgress())
    assert without.metrics["kept_step"] is None
    assert result.metrics["psnr"] > without.metrics["psnr"] + 1.0

    run_train(resumed, config, NullProgress())
    for path in (resumed.train_dir / "ckpt").glob("step_*.pt"):  # died after step 51: the best is in its checkpoint
        if path.name != "step_000051.pt":
            path.unlink()
    again = run_train(resumed, config, NullProgress())
    assert again.metrics["resumed_from_step"] == 51 and again.metrics["kept_step"] == kept
    assert resumed.splat_ply.read_bytes() == workspace.splat_ply.read_bytes()


def test_dropout_hides_gaussians_from_the_render_and_their_gradients(workspace):  # noqa: F811
    generator = torch.Generator().manual_seed(3)
    assert dropout_scale(1000, 0.0, generator) is None
    assert dropout_rate_at(small_config(steps=200, gaussian_dropout=0.2), 100) == pytest.approx(0.1)
    scale = dropout_scale(20_000, 0.25, generator)
    hidden = scale == 0
    assert 0.23 < hidden.float().mean() < 0.27 and torch.allclose(scale[~hidden], torch.tensor(1 / 0.75))

    run = prepare_run(workspace, small_config(), NullProgress())
    params = params_from_gaussians(gaussians_from_points(run.scene.points, run.scene.colors, sh_degree=1,
                                                         opacity=0.3), "cpu")
    view = run.scene.train_views[0]
    scale = dropout_scale(len(params["means"]), 0.5, generator)
    rendered, _, _ = render_params(params, view.viewmat[None], view.K[None], view.width, view.height, sh_degree=0,
                                   backend="torch", opacity_scale=scale)
    rendered.sum().backward()
    hidden = scale == 0
    assert hidden.any() and torch.all(params["means"].grad[hidden] == 0)
    assert params["means"].grad[~hidden].abs().sum() > 0

    kept = torch.nn.ParameterDict({name: value.detach()[~hidden] for name, value in params.items()})
    kept["opacities"] = torch.logit(kept["opacities"].sigmoid() * 2.0)  # the kept draw with twice their opacity
    alone, _, _ = render_params(kept, view.viewmat[None], view.K[None], view.width, view.height, sh_degree=0,
                                backend="torch")
    assert torch.allclose(rendered.detach(), alone, atol=2e-3)


def test_background_shell_joins_the_initial_gaussians(larger_source, tmp_path):
    ws = Workspace(tmp_path / "shell")
    shutil.copytree(larger_source, ws.root)
    run = prepare_run(ws, small_config(steps=10, background_points=30), NullProgress())
    assert len(run.scene.points) == 40 + 30  # the synthetic scene's sparse points, then the shell
    sparse, shell = run.scene.points[:40], run.scene.points[40:]
    centre = np.median(sparse, axis=0)
    assert np.linalg.norm(shell - centre, axis=1).min() > 2 * np.linalg.norm(sparse - centre, axis=1).max()
    assert math.isfinite(run_train(ws, small_config(steps=10, background_points=30), NullProgress()).metrics["psnr"])


def test_profiler_times_every_part_of_the_steps_it_covers(workspace):  # noqa: F811
    profiler = StepProfiler("cpu", start_step=5, num_steps=10)
    run_train(workspace, small_config(steps=30), NullProgress(), profiler=profiler)
    summary = profiler.summary()
    assert summary["steps"] == 10
    assert set(summary["parts"]) == {*SECTIONS, "step"}
    parts = summary["parts"]
    assert all(parts[name]["host_ms"] > 0 and parts[name]["device_ms"] is None for name in parts)
    assert sum(parts[name]["host_ms"] for name in SECTIONS) <= parts["step"]["host_ms"]
    assert parts["render"]["host_ms"] > parts["data"]["host_ms"]
    table = format_profile(summary)
    assert "render" in table and "10 steps profiled" in table

"""The training schedule does what its settings say, read back from what a real run leaves behind: SH degrees
come in on time (higher coefficients stay exactly zero until then), opacities are reset on schedule, the means'
learning rate decays to its final value, MCMC's opacity regularisation reaches the opacity gradients, held-out
evaluations are logged every ``eval_every`` steps, and a run neither reads nor changes the global RNGs."""

from __future__ import annotations

import random
import shutil

import gsplat
import numpy as np
import pytest
import torch
from gsplat.strategy import DefaultStrategy

from spaceport.progress import NullProgress
from spaceport.splat.scene import load_scene
from spaceport.splat.train import (
    GSPLAT_VERSIONS_WITHOUT_OPACITY_RESET,
    BudgetedDefaultStrategy,
    prepare_run,
    run_train,
    start_state,
    train_step,
)
from spaceport.workspace import Workspace
from tests.test_train import read_metrics, small_config, synthetic_source, workspace  # noqa: F401 (fixtures)

STEPS, SH_INTERVAL, RESET_EVERY, EVAL_EVERY = 60, 20, 25, 25
LR_START, LR_FINAL = 1.6e-4, 1.6e-6


@pytest.fixture(scope="module")
def scheduled_run(synthetic_source, tmp_path_factory):  # noqa: F811
    """One default-strategy run with a checkpoint after every step: SH degree 1 from step 20 and 2 from 40 (of 2),
    an opacity reset at step 25 (not at 50: refining stops at 45), held-out evaluations at 25 and 50."""
    ws = Workspace(tmp_path_factory.mktemp("scheduled") / "ws")
    shutil.copytree(synthetic_source, ws.root)
    config = small_config(
        steps=STEPS, sh_degree=2, sh_degree_interval=SH_INTERVAL, reset_opacity_every=RESET_EVERY,
        refine_start=1000, refine_stop=45, checkpoint_every=1, keep_checkpoints=STEPS, eval_every=EVAL_EVERY,
        lr_means=LR_START, lr_means_final=LR_FINAL,
    )
    run_train(ws, config, NullProgress())
    return ws


def checkpoint(ws: Workspace, step: int) -> dict:
    return torch.load(ws.train_dir / "ckpt" / f"step_{step:06d}.pt", weights_only=True)


def max_opacity(ws: Workspace, step: int) -> float:
    return torch.sigmoid(checkpoint(ws, step)["params"]["opacities"]).max().item()


def test_sh_degrees_come_in_on_schedule(scheduled_run):
    logged = {m["step"]: m["sh_degree"] for m in read_metrics(scheduled_run) if "sh_degree" in m}
    assert logged == {10: 0, 20: 1, 30: 1, 40: 2, 50: 2, 60: 2}  # raised every 20 steps, capped at 2
    # shN holds degree 1's 3 coefficients, then degree 2's 5; a degree not rendered yet gets no gradient
    assert not checkpoint(scheduled_run, SH_INTERVAL)["params"]["shN"].any()
    at_degree_1 = checkpoint(scheduled_run, 2 * SH_INTERVAL)["params"]["shN"]
    assert at_degree_1[:, :3].abs().max() > 1e-4 and not at_degree_1[:, 3:].any()
    assert checkpoint(scheduled_run, STEPS)["params"]["shN"][:, 3:].abs().max() > 1e-4


def test_opacities_are_reset_on_schedule_while_refining(scheduled_run):
    reset_level = DefaultStrategy().prune_opa * 2.0
    assert max_opacity(scheduled_run, RESET_EVERY) > 2 * reset_level  # step 25 not run yet
    assert max_opacity(scheduled_run, RESET_EVERY + 1) <= reset_level * (1 + 1e-5)  # reset after step 25's update
    assert max_opacity(scheduled_run, 2 * RESET_EVERY + 1) > 1.5 * reset_level  # step 50: refining has stopped


def test_means_learning_rate_decays_exponentially_to_its_final_value(scheduled_run):
    ws = scheduled_run
    extent = load_scene(ws.undistorted_dir / "sparse", ws.undistorted_dir / "images", holdout_every=5).extent

    def expected(step: int) -> float:
        return extent * LR_START * (LR_FINAL / LR_START) ** (step / STEPS)

    for completed in range(1, STEPS + 1):  # checkpoint N holds the rate step N-1 ran with
        lr = checkpoint(ws, completed)["optimizers"]["means"]["param_groups"][0]["lr"]
        assert lr == pytest.approx(expected(completed - 1), rel=1e-9), completed
    logged = {m["step"]: m["lr_means"] for m in read_metrics(ws) if "lr_means" in m}
    assert logged[STEPS] == pytest.approx(extent * LR_FINAL, rel=1e-9)
    for step, lr in logged.items():
        assert lr == pytest.approx(expected(step), rel=1e-9), step
    # the other parameters keep their rates
    assert checkpoint(ws, STEPS)["optimizers"]["scales"]["param_groups"][0]["lr"] == small_config().lr_scales


def test_held_out_evaluations_are_logged_every_eval_every_steps(scheduled_run):
    metrics = read_metrics(scheduled_run)
    evaluations = [m for m in metrics if "eval_psnr" in m]
    assert [m["step"] for m in evaluations] == [25, 50, 60]  # 60: the final evaluation
    assert all(10 < m["eval_psnr"] < 60 and 0 < m["eval_ssim"] <= 1 for m in evaluations)
    steps = [m["step"] for m in metrics]
    assert steps == sorted(steps)  # interleaved with the training lines in step order


def opacity_gradient_moment(ws: Workspace, **overrides) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's first moment of the opacities after one MCMC training step (0.1 x that step's gradient), and the
    opacities it started from."""
    run = prepare_run(ws, small_config(strategy="mcmc", **overrides), NullProgress())
    state = start_state(run)
    initial = state.params["opacities"].detach().clone()
    train_step(run, state)
    optimizer = state.optimizers["opacities"]
    return optimizer.state[state.params["opacities"]]["exp_avg"], initial


def test_mcmc_adds_its_opacity_regularisation_to_the_loss(workspace):  # noqa: F811
    assert small_config(strategy="mcmc").resolved().opacity_reg == 0.01  # the MCMC paper's weight
    regularised, initial = opacity_gradient_moment(workspace)
    plain, _ = opacity_gradient_moment(workspace, opacity_reg=0.0)
    opacity = torch.sigmoid(initial)
    # d/dlogit of 0.01 * mean(sigmoid(logit)), through Adam's (1 - beta1) = 0.1
    expected = 0.1 * 0.01 * opacity * (1 - opacity) / len(opacity)
    torch.testing.assert_close(regularised - plain, expected, rtol=1e-3, atol=1e-10)


def test_gsplat_skips_its_opacity_reset_exactly_on_the_versions_we_patch_in_a_hook():
    """gsplat's own DefaultStrategy on a due step: where it does not reset, our hook must be on, and off where it
    does (else opacities would be reset twice or never)."""
    def opacities_after_due_step(strategy: DefaultStrategy) -> torch.Tensor:
        n = 6
        params = torch.nn.ParameterDict({
            "means": torch.zeros(n, 3), "scales": torch.zeros(n, 3), "quats": torch.ones(n, 4),
            "opacities": torch.full((n,), 2.0), "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3),
        })
        optimizers = {name: torch.optim.Adam([{"params": [p], "lr": 0.0, "name": name}]) for name, p in params.items()}
        means2d = torch.zeros(1, n, 2, requires_grad=True)
        means2d.sum().backward()
        info = {"means2d": means2d, "width": 8, "height": 8, "n_cameras": 1, "gaussian_ids": None,
                "radii": torch.ones(1, n, 2, dtype=torch.int32)}
        state = strategy.initialize_state(scene_scale=1.0)
        strategy.step_post_backward(params, optimizers, state, step=10, info=info)
        return torch.sigmoid(params["opacities"].detach())

    schedule = dict(refine_start_iter=100, refine_stop_iter=200, reset_every=10)
    upstream_resets = bool((opacities_after_due_step(DefaultStrategy(**schedule)) < 0.5).all())
    assert upstream_resets == (gsplat.__version__ not in GSPLAT_VERSIONS_WITHOUT_OPACITY_RESET)
    assert BudgetedDefaultStrategy().reset_missing_upstream == (not upstream_resets)
    ours = opacities_after_due_step(BudgetedDefaultStrategy(**schedule))
    torch.testing.assert_close(ours, torch.full_like(ours, DefaultStrategy().prune_opa * 2.0))


def test_training_neither_reads_nor_changes_the_global_rngs(workspace, tmp_path):  # noqa: F811
    twin = Workspace(tmp_path / "twin")
    shutil.copytree(workspace.root, twin.root)
    # mcmc: noise every step and relocation draws; random backgrounds: the run's own generator
    config = small_config(strategy="mcmc", steps=45, cap_max=44, background="random", checkpoint_every=1000)

    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    run_train(workspace, config, NullProgress())
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]

    torch.manual_seed(99)  # another global state: the same splat
    run_train(twin, config, NullProgress())
    assert workspace.splat_ply.read_bytes() == twin.splat_ply.read_bytes()


def test_scene_extent_setting_scales_the_means_learning_rate(workspace):  # noqa: F811
    measured = prepare_run(workspace, small_config(), NullProgress())
    assert measured.scene.extent == pytest.approx(load_scene(
        workspace.undistorted_dir / "sparse", workspace.undistorted_dir / "images", holdout_every=5).extent)
    run = prepare_run(workspace, small_config(scene_extent=0.5), NullProgress())
    assert run.scene.extent == 0.5 != measured.scene.extent
    state = start_state(run)
    assert state.optimizers["means"].param_groups[0]["lr"] == pytest.approx(0.5 * run.config.lr_means)

"""The train stage on CUDA with gsplat's kernels: both strategies train, the caller's global RNGs (CPU and CUDA)
are left as they were, and a run resumes on CUDA from its checkpoint's random streams.

Run on a GPU machine with ``python -m pytest tests/gpu -q``. Skipped where CUDA is absent.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from spaceport.progress import NullProgress
from spaceport.splat.config import TrainConfig
from spaceport.splat.train import run_train
from spaceport.workspace import Workspace
from tests.synthetic import write_synthetic_scene
from tests.test_train import ground_truth_scene

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's kernels need CUDA")


@pytest.fixture(scope="module")
def synthetic_source(tmp_path_factory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("synthetic_cuda"))
    write_synthetic_scene(ws.undistorted_dir, ground_truth_scene(), num_views=10, width=96, height=72, num_points=40)
    return ws


def cuda_config(strategy: str) -> TrainConfig:
    return TrainConfig(
        steps=300, device="cuda", backend="gsplat", strategy=strategy, background="random", holdout_every=5,
        sh_degree=1, sh_degree_interval=100, refine_start=50, refine_every=25, refine_stop=200, cap_max=400,
        checkpoint_every=150, keep_checkpoints=5, log_every=50, num_renders=0,
    )


@pytest.mark.parametrize("strategy", ["default", "mcmc"])
def test_training_on_cuda_resumes_and_leaves_the_global_rngs_alone(synthetic_source, tmp_path, strategy):
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(synthetic_source.root, ws.root)
    torch.manual_seed(5)
    torch.cuda.manual_seed_all(5)
    cpu_before, cuda_before = torch.get_rng_state(), torch.cuda.get_rng_state()

    result = run_train(ws, cuda_config(strategy), NullProgress())
    assert torch.equal(torch.get_rng_state(), cpu_before)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_before)
    assert result.metrics["backend"] == "gsplat" and result.metrics["num_gaussians"] > 40  # it grew
    assert 10 < result.metrics["psnr"] < 60

    (ws.train_dir / "ckpt" / "step_000300.pt").unlink()  # resume from step 150 on the restored streams
    resumed = run_train(ws, cuda_config(strategy), NullProgress())
    assert resumed.metrics["resumed_from_step"] == 150 and resumed.metrics["steps"] == 300
    # gsplat's backward adds with atomics, so the two runs agree closely, not bit for bit
    assert abs(resumed.metrics["psnr"] - result.metrics["psnr"]) < 2.0
    print(strategy, "held-out PSNR", result.metrics["psnr"], "resumed", resumed.metrics["psnr"])

"""The train stage on the CPU (torch renderer): loss goes down on a synthetic scene with known cameras,
both densification strategies run, checkpoints survive SIGKILL/SIGTERM and resume to the same end."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spaceport.formats.gaussians import Gaussians, read_ply
from spaceport.presets import PRESETS
from spaceport.progress import NullProgress
from spaceport.splat.config import TrainConfig
from spaceport.splat.evaluate import evaluate_views, psnr, ssim
from spaceport.splat.model import gaussians_from_points, params_from_gaussians
from spaceport.splat.scene import load_scene
from spaceport.splat.strategy_cpu import CpuMCMCStrategy, compute_relocation_torch
from spaceport.splat.train import MULTINOMIAL_LIMIT, make_strategy, run_train
from spaceport.workspace import SpaceportError, Workspace
from tests.synthetic import write_synthetic_scene

REPO = Path(__file__).resolve().parents[1]


def ground_truth_scene(n: int = 40, seed: int = 0) -> Gaussians:
    """Opaque, mid-sized, coloured blobs inside the unit cube: a scene whose images have structure."""
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    return Gaussians(
        means=rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
        scales=rng.uniform(-1.8, -1.2, size=(n, 3)).astype(np.float32),
        quats=quats / np.linalg.norm(quats, axis=1, keepdims=True),
        opacities=rng.uniform(1, 4, size=n).astype(np.float32),
        sh0=rng.normal(0, 1.2, size=(n, 3)).astype(np.float32),
        shN=np.zeros((n, 0, 3), np.float32),
    )


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_ws")
    write_synthetic_scene(Workspace(root).undistorted_dir, ground_truth_scene(), num_views=10, width=48,
                          height=36, num_points=40)
    return root


@pytest.fixture
def workspace(synthetic_source, tmp_path) -> Workspace:
    root = tmp_path / "ws"
    shutil.copytree(synthetic_source, root)
    return Workspace(root)


def small_config(**overrides) -> TrainConfig:
    values = dict(
        steps=120, backend="torch", device="cpu", sh_degree=1, sh_degree_interval=50, holdout_every=5,
        refine_start=30, refine_every=20, refine_stop=100, reset_opacity_every=1000, cap_max=400,
        checkpoint_every=40, log_every=10, num_renders=1, background="black",  # the truth is on black
    )
    return TrainConfig(**{**values, **overrides})


def read_metrics(ws: Workspace) -> list[dict]:
    return [json.loads(line) for line in (ws.train_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_the_loss_and_writes_every_output(workspace):
    # no densification here: on this scene its splits need more than 120 steps to pay off (measured: the loss
    # ends near where it started, +0.2 to +2.2 dB held-out, against about -50 % and +6 dB without)
    result = run_train(workspace, small_config(refine_start=1000), NullProgress())

    losses = [m["loss"] for m in read_metrics(workspace) if "loss" in m]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses
    scene = load_scene(workspace.undistorted_dir / "sparse", workspace.undistorted_dir / "images",
                       holdout_every=5)
    initial = params_from_gaussians(
        gaussians_from_points(scene.points, scene.colors, sh_degree=1, opacity=0.1), "cpu")
    before = evaluate_views(initial, scene.test_views, sh_degree=1, background=torch.zeros(3), backend="torch")
    assert result.metrics["psnr"] > before["psnr"] + 4.0, (before["psnr"], result.metrics["psnr"])

    eval_json = json.loads((workspace.train_dir / "eval.json").read_text())
    assert [v["name"] for v in eval_json["views"]] == ["view_000.png", "view_005.png"]
    assert eval_json["psnr"] == pytest.approx(result.metrics["psnr"])
    assert result.metrics["steps"] == 120 and result.metrics["backend"] == "torch"
    assert result.metrics["num_gaussians"] == len(read_ply(workspace.splat_ply))
    for name in ("splat", "eval", "metrics", "checkpoint"):
        assert (workspace.root / result.outputs[name]).is_file(), name
    assert [p.name for p in (workspace.train_dir / "renders").iterdir()] == ["view_000.png"]
    # keep_checkpoints=2: only the newest two remain
    checkpoints = sorted(p.name for p in (workspace.train_dir / "ckpt").glob("step_*.pt"))
    assert checkpoints == ["step_000080.pt", "step_000120.pt"]


def test_default_strategy_densifies_within_its_budget(workspace):
    initial = 40
    result = run_train(workspace, small_config(cap_max=60, grow_grad2d=1e-5), NullProgress())
    counts = [m["num_gaussians"] for m in read_metrics(workspace) if "num_gaussians" in m]
    assert max(counts) > initial  # it grew
    assert max(counts) <= 60 and result.metrics["num_gaussians"] <= 60
    assert result.metrics["strategy"] == "default"


def test_mcmc_strategy_runs_on_cpu(workspace):
    result = run_train(workspace, small_config(strategy="mcmc", cap_max=44), NullProgress())
    counts = [m["num_gaussians"] for m in read_metrics(workspace) if "num_gaussians" in m]
    # the growth factor reaches the budget halfway through the refinements (40 -> 44 at the first), then stays
    assert counts[0] == 40 and result.metrics["num_gaussians"] == 44
    assert result.metrics["strategy"] == "mcmc" and math.isfinite(result.metrics["psnr"])


def test_relocation_twin_keeps_the_composite_opacity():
    from gsplat.strategy.mcmc import MCMCStrategy

    binoms = MCMCStrategy().initialize_state()["binoms"]
    opacities = torch.tensor([0.3, 0.9, 0.05, 0.6])
    scales = torch.rand(4, 3)
    ratios = torch.tensor([1, 2, 3, 7])
    new_opacities, new_scales = compute_relocation_torch(opacities, scales, ratios, binoms)
    # n copies of the new opacity composite to the old one
    np.testing.assert_allclose(1 - (1 - new_opacities) ** ratios, opacities, rtol=1e-5)
    # a Gaussian sampled once is unchanged
    assert new_scales[0].tolist() == pytest.approx(scales[0].tolist())
    # the scale factor is Equation 9 of the MCMC paper, summed term by term
    for i, n in enumerate(ratios.tolist()):
        o_new = float(new_opacities[i])
        denominator = sum(math.comb(j - 1, k) * (-1) ** k / math.sqrt(k + 1) * o_new ** (k + 1)
                          for j in range(1, n + 1) for k in range(j))
        np.testing.assert_allclose(new_scales[i], float(opacities[i]) / denominator * scales[i], rtol=1e-5)


def test_cpu_mcmc_relocates_dead_gaussians_onto_live_ones_and_grows():
    generator = torch.Generator().manual_seed(0)
    n = 20
    params = torch.nn.ParameterDict({
        "means": torch.randn(n, 3, generator=generator), "scales": torch.randn(n, 3, generator=generator) - 2,
        "quats": torch.randn(n, 4, generator=generator), "opacities": torch.full((n,), 1.0),
        "sh0": torch.randn(n, 1, 3, generator=generator), "shN": torch.zeros(n, 3, 3),
    })
    dead = torch.arange(n) < 5
    with torch.no_grad():
        params["opacities"][dead] = -10.0  # sigmoid 4.5e-5, below min_opacity
    optimizers = {name: torch.optim.Adam([{"params": [p], "lr": 1e-3, "name": name}]) for name, p in params.items()}
    strategy = CpuMCMCStrategy(cap_max=22, refine_start_iter=0, refine_every=1, noise_lr=0.0)
    state = strategy.initialize_state()
    strategy.step_post_backward(params, optimizers, state, step=1, info={}, lr=0.0)

    opacities = torch.sigmoid(params["opacities"])
    assert len(opacities) == 21  # 5% more, below the cap of 22
    assert bool((opacities > strategy.min_opacity).all())
    means = [tuple(m) for m in params["means"].tolist()]
    # every relocated Gaussian sits on a live one (with which it now shares the live one's opacity)
    for index in range(5):
        assert means.count(means[index]) >= 2
    assert all(optimizers[name].param_groups[0]["params"][0] is params[name] for name in params)


def test_ssim_and_psnr_behave():
    torch.manual_seed(0)
    image = torch.rand(1, 32, 32, 3)
    assert ssim(image, image).item() == pytest.approx(1.0, abs=1e-5)
    noisy = (image + 0.1 * torch.randn_like(image)).clamp(0, 1)
    assert ssim(image, noisy).item() < 0.95
    assert psnr(image[0], noisy[0]).item() == pytest.approx(
        -10 * math.log10(((image - noisy) ** 2).mean().item()), rel=1e-5)
    blurred = noisy.clone().requires_grad_(True)
    (1 - ssim(image, blurred)).backward()
    assert blurred.grad.abs().sum() > 0


def test_missing_sfm_output_is_reported(tmp_path):
    with pytest.raises(SpaceportError, match="cameras.bin"):
        run_train(Workspace(tmp_path), small_config(), NullProgress())


def test_presets_validate_and_preview_is_cpu_sized():
    preview = PRESETS["preview"].train
    assert preview.max_image_width <= 320 and preview.steps <= 5000 and preview.cap_max <= 100_000
    assert preview.strategy == "default" and not preview.resolution_schedule and not preview.early_stop_patience
    standard, quality = PRESETS["standard"].train, PRESETS["quality"].train
    for gpu in (standard, quality):  # full size, MCMC with a photo-sized budget, early stop
        assert gpu.max_image_width is None and gpu.strategy == "mcmc" and gpu.gaussians_per_megapixel
        assert gpu.refine_stop < gpu.steps and gpu.eval_every and gpu.early_stop_patience
    assert quality.steps > standard.steps and quality.refine_stop > standard.refine_stop
    assert quality.resolution_schedule and not standard.resolution_schedule  # measured: no gain within 3k steps
    for name in ("standard", "quality"):  # the GPU splats spend more of their margin than the preview's
        compress = PRESETS[name].compress
        assert compress.prune_threshold > PRESETS["preview"].compress.prune_threshold
        assert compress.sh_drop_threshold > PRESETS["preview"].compress.sh_drop_threshold


# -- checkpoints and resume --------------------------------------------------------------------------

TRAIN_SCRIPT = """
import json, sys
from spaceport.progress import NullProgress
from spaceport.splat.train import TrainConfig, run_train
from spaceport.workspace import Workspace
result = run_train(Workspace(sys.argv[1]), TrainConfig.model_validate_json(sys.argv[2]), NullProgress())
print(json.dumps(result.metrics))
"""


def start_training_process(ws: Workspace, config: TrainConfig) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(ws.root), config.model_dump_json()],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"training exited early: {process.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the training subprocess")
        time.sleep(0.02)


def checkpoint_steps(ws: Workspace) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (ws.train_dir / "ckpt").glob("step_*.pt"))


def test_resumes_after_sigkill(workspace):
    config = small_config(steps=100, checkpoint_every=20, keep_checkpoints=3, cap_max=60)
    process = start_training_process(workspace, config)
    wait_for(lambda: (workspace.train_dir / "ckpt").is_dir() and checkpoint_steps(workspace), process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    saved = checkpoint_steps(workspace)
    assert saved and saved[-1] < 100, "the run must have been killed before it finished"

    result = run_train(workspace, config, NullProgress())
    assert result.metrics["resumed_from_step"] == saved[-1]
    assert result.metrics["steps"] == 100
    steps_logged = [m["step"] for m in read_metrics(workspace) if "loss" in m]
    assert steps_logged == list(range(10, 101, 10))  # lines after the checkpoint were not duplicated


def test_sigterm_checkpoints_the_current_step_and_resumes(workspace):
    config = small_config(steps=100, checkpoint_every=100_000, log_every=5, cap_max=60)
    process = start_training_process(workspace, config)
    wait_for(lambda: (workspace.train_dir / "metrics.jsonl").exists(), process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and b"stopped by signal" in stderr
    saved = checkpoint_steps(workspace)
    assert len(saved) == 1 and 0 < saved[0] < 100

    result = run_train(workspace, config, NullProgress())
    assert result.metrics["resumed_from_step"] == saved[0]
    assert result.metrics["steps"] == 100


@pytest.mark.parametrize("strategy", [
    dict(strategy="mcmc", cap_max=44),  # relocation, growth and noise draw from the run's library stream
    dict(strategy="default", cap_max=60, grow_grad2d=1e-5),  # splits draw from it too
    # the other optimizers' states, and the early stop's (evaluations that never stop the run)
    dict(strategy="mcmc", cap_max=44, optimizer="selective", eval_every=30, early_stop_patience=5),
    dict(strategy="default", cap_max=60, grow_grad2d=1e-5, optimizer="fused"),
    dict(strategy="mcmc", cap_max=44, gaussian_dropout=0.3),  # hidden Gaussians: the run's own stream
])
def test_resumed_run_matches_an_uninterrupted_one(workspace, tmp_path, strategy):
    """On the CPU the loop is deterministic: stopping at a checkpoint and resuming gives the same splat
    (the random streams, backgrounds included, are restored from the checkpoint)."""
    twin = Workspace(tmp_path / "twin")
    shutil.copytree(workspace.root, twin.root)
    config = small_config(steps=80, checkpoint_every=40, keep_checkpoints=5, background="random", **strategy)
    run_train(workspace, config, NullProgress())

    run_train(twin, config, NullProgress())
    for path in (twin.train_dir / "ckpt").glob("step_*.pt"):  # pretend it died right after step 40
        if path.name != "step_000040.pt":
            path.unlink()
    result = run_train(twin, config, NullProgress())
    assert result.metrics["resumed_from_step"] == 40
    assert workspace.splat_ply.read_bytes() == twin.splat_ply.read_bytes()


class RecordingProgress(NullProgress):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def log(self, message: str, level: int = 0) -> None:
        self.messages.append(message)


def test_a_checkpoint_from_another_device_type_resumes_with_fresh_random_streams(workspace):
    config = small_config(steps=40, checkpoint_every=20, keep_checkpoints=5)
    run_train(workspace, config, NullProgress())
    path = workspace.train_dir / "ckpt" / "step_000020.pt"
    payload = torch.load(path, weights_only=True)
    payload["rng"] = {**payload["rng"], "device_type": "cuda", "background": torch.zeros(16, dtype=torch.uint8)}
    torch.save(payload, path)
    (workspace.train_dir / "ckpt" / "step_000040.pt").unlink()

    progress = RecordingProgress()
    result = run_train(workspace, config, progress)
    assert result.metrics["resumed_from_step"] == 20 and result.metrics["steps"] == 40
    assert any("made on cuda" in message and "start again from the seed" in message for message in progress.messages)


def test_mcmc_refuses_a_budget_gsplat_would_sample_with_numpy():
    make_strategy(small_config(strategy="mcmc", cap_max=MULTINOMIAL_LIMIT), torch.device("cpu"))
    with pytest.raises(SpaceportError, match="train.cap_max"):
        make_strategy(small_config(strategy="mcmc", cap_max=MULTINOMIAL_LIMIT + 1), torch.device("cpu"))

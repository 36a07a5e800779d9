"""The train stage: 3D Gaussian Splatting from an undistorted COLMAP model.

Adam with INRIA's per-parameter learning rates, L1 + D-SSIM, SH degree raised progressively, and
gsplat's densification strategies (``DefaultStrategy`` with a Gaussian budget, or ``MCMCStrategy``).
Checkpoints every N steps and on SIGTERM/SIGINT; a re-run resumes from the newest one.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gsplat
import torch
from gsplat.strategy import DefaultStrategy, MCMCStrategy
from gsplat.strategy.ops import reset_opa

from spaceport.devices import resolve_device
from spaceport.formats.gaussians import SH_REST_COUNTS, write_ply
from spaceport.progress import Progress
from spaceport.splat.config import TrainConfig
from spaceport.splat.evaluate import evaluate_views, ssim, to_float_image
from spaceport.splat.model import (
    empty_params_like,
    gaussians_from_params,
    gaussians_from_points,
    make_optimizers,
    params_from_gaussians,
    render_params,
)
from spaceport.splat.render import resolve_backend
from spaceport.splat.scene import Scene, View, check_model_dir, load_scene
from spaceport.splat.strategy_cpu import CpuMCMCStrategy
from spaceport.workspace import (
    SpaceportError,
    StageResult,
    Workspace,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_to,
)

CHECKPOINT_VERSION = 2  # 2: the run's own random streams instead of the global RNGs' states
# gsplat 1.5.3 tests ``step % reset_every == 0 & step > 0``; ``&`` binds before the comparisons, so it reads
# ``step % reset_every == 0 > 0`` and never holds: no opacity reset. 1.6.0 fixed it; 1.5.2 and older reset.
GSPLAT_VERSIONS_WITHOUT_OPACITY_RESET = frozenset({"1.5.3"})
MULTINOMIAL_LIMIT = 2**24  # above it gsplat's _multinomial_sample draws from numpy's global RNG
__all__ = ["TrainConfig", "TrainingInterrupted", "run_train"]


class TrainingInterrupted(SpaceportError):
    """Raised after a SIGTERM/SIGINT once the checkpoint is safely written."""


@dataclass
class BudgetedDefaultStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy with a Gaussian budget and, on gsplat versions that lost it, the opacity reset.

    It never grows past ``cap_max`` Gaussians: when more pass the gradient threshold than there is room
    for, only those with the highest gradients grow. Opacities are reset every ``reset_every`` steps while
    refining, as the INRIA recipe and gsplat 1.6 do; on gsplat 1.5.3 (``GSPLAT_VERSIONS_WITHOUT_OPACITY_RESET``)
    the ``reset_opacities_if_due`` hook does it, since gsplat's own test never holds there.
    """

    cap_max: int = 1_000_000
    reset_missing_upstream: bool = gsplat.__version__ in GSPLAT_VERSIONS_WITHOUT_OPACITY_RESET

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if self.reset_missing_upstream:
            self.reset_opacities_if_due(params, optimizers, state, step)

    @torch.no_grad()
    def reset_opacities_if_due(self, params, optimizers, state, step) -> None:
        """gsplat 1.6's reset: every ``reset_every`` steps before ``refine_stop_iter``, not at step 0."""
        if 0 < step < self.refine_stop_iter and step % self.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)

    @torch.no_grad()
    def _grow_gs(self, params, optimizers, state, step):
        room = self.cap_max - len(params["means"])
        if room <= 0:
            return 0, 0
        grads = state["grad2d"] / state["count"].clamp_min(1)
        candidates = grads[grads > self.grow_grad2d]
        if len(candidates) <= room:
            return super()._grow_gs(params, optimizers, state, step)
        threshold = float(torch.topk(candidates, room + 1).values[-1])
        configured = self.grow_grad2d
        self.grow_grad2d = threshold  # every duplicate or split adds one Gaussian
        try:
            return super()._grow_gs(params, optimizers, state, step)
        finally:
            self.grow_grad2d = configured


class RunRandomness:
    """The run's own random streams, saved in checkpoints so that a resumed run draws the same numbers.

    ``background`` draws the random training backgrounds, on the training device. ``library`` is what gsplat's
    strategies draw from: they use the global torch RNG (``randn_like`` noise and splits, ``multinomial``
    relocation), so ``library_stream()`` lends them the run's state and gives the caller's back afterwards.
    """

    def __init__(self, seed: int, device: torch.device):
        self.device = device
        self.background = torch.Generator(device).manual_seed(seed)
        self.library_cpu = torch.Generator().manual_seed(seed + 1).get_state()
        cuda = self._cuda_index() is not None
        self.library_cuda = torch.Generator(device).manual_seed(seed + 1).get_state() if cuda else None

    def _cuda_index(self) -> int | None:
        if self.device.type != "cuda":
            return None
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    @contextmanager
    def library_stream(self) -> Iterator[None]:
        """The global torch RNG (CPU and the run's GPU) on the run's library stream, the caller's restored after.

        Global while the block runs: two runs in threads of one process must not step their strategies at once.
        """
        index = self._cuda_index()
        with torch.random.fork_rng(devices=[] if index is None else [index]):
            torch.set_rng_state(self.library_cpu)
            if index is not None:
                torch.cuda.set_rng_state(self.library_cuda, index)
            yield
            self.library_cpu = torch.get_rng_state()
            if index is not None:
                self.library_cuda = torch.cuda.get_rng_state(index)

    def state_dict(self) -> dict[str, Any]:
        return {"device_type": self.device.type, "background": self.background.get_state(),
                "library_cpu": self.library_cpu, "library_cuda": self.library_cuda}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.background.set_state(saved["background"].cpu())
        self.library_cpu = saved["library_cpu"].cpu()
        if self.library_cuda is not None:
            self.library_cuda = saved["library_cuda"].cpu()


@dataclass
class TrainingState:
    params: torch.nn.ParameterDict
    optimizers: dict[str, torch.optim.Adam]
    strategy_state: dict[str, Any]
    rng: RunRandomness
    step: int = 0  # steps completed
    elapsed_seconds: float = 0.0  # training-loop time over all runs


@dataclass
class StopRequest:
    signal_number: int | None = None


@dataclass
class TrainRun:
    """What one call of ``run_train`` works with (passed explicitly instead of globals)."""

    config: TrainConfig
    scene: Scene
    device: torch.device
    backend: str
    strategy: DefaultStrategy | MCMCStrategy
    train_dir: Path
    progress: Progress
    log_lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def checkpoint_dir(self) -> Path:
        return self.train_dir / "ckpt"

    @property
    def metrics_path(self) -> Path:
        return self.train_dir / "metrics.jsonl"


# -- entry point -----------------------------------------------------------------------------------


def run_train(ws: Workspace, config: TrainConfig, progress: Progress) -> StageResult:
    """Train a splat on ``sfm/undistorted`` and write ``train/``: splat.ply, eval.json, metrics.jsonl,
    ckpt/step_NNNNNN.pt and renders/*.png. Resumes from the newest checkpoint if one exists."""
    started = time.perf_counter()
    run = prepare_run(ws, config, progress)
    config, device, backend, first = run.config, run.device, run.backend, run.scene.train_views[0]
    state, resumed_from = resume_or_start(run)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps_before = state.step
    loop_started = time.perf_counter()
    with stop_requests() as stop:
        train_loop(run, state, stop)
    loop_seconds = time.perf_counter() - loop_started
    steps_run = state.step - steps_before
    evaluation = evaluate_and_export(ws, run, state)
    metrics = {
        "psnr": evaluation["psnr"],
        "ssim": evaluation["ssim"],
        "num_gaussians": len(state.params["means"]),
        "steps": state.step,
        "resumed_from_step": resumed_from,
        "train_seconds": round(state.elapsed_seconds, 2),
        "steps_per_second": round(steps_run / loop_seconds if steps_run else state.step / max(
            state.elapsed_seconds, 1e-9), 3),
        "backend": backend,
        "strategy": config.strategy,
        "image_width": first.width,
        "image_height": first.height,
    }
    if device.type == "cuda":
        metrics["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    progress.log(f"train: held-out PSNR {evaluation['psnr']:.2f} dB, SSIM {evaluation['ssim']:.4f}, "
                 f"{metrics['num_gaussians']} Gaussians, {metrics['steps_per_second']} steps/s")
    outputs = {
        "splat": ws.rel(ws.splat_ply),
        "eval": ws.rel(ws.train_dir / "eval.json"),
        "metrics": ws.rel(run.metrics_path),
        "checkpoint": ws.rel(checkpoint_path(run.checkpoint_dir, state.step)),
        "renders": ws.rel(ws.train_dir / "renders"),
    }
    return StageResult("train", seconds=time.perf_counter() - started, outputs=outputs, metrics=metrics)


def prepare_run(ws: Workspace, config: TrainConfig, progress: Progress) -> TrainRun:
    """The resolved config, the scene on its device, the renderer and the strategy of one run."""
    config = config.resolved()
    model_dir, images_dir = ws.undistorted_dir / "sparse", ws.undistorted_dir / "images"
    check_model_dir(model_dir, images_dir)
    device = resolve_device(config.device, "train")
    backend = resolve_backend(config.backend, device)
    scene = load_scene(model_dir, images_dir, max_width=config.max_image_width,
                       holdout_every=config.holdout_every, max_points=config.max_init_points,
                       seed=config.seed).to(device)
    first = scene.train_views[0]
    progress.log(
        f"train: {len(scene.train_views)} training / {len(scene.test_views)} held-out views at "
        f"{first.width}x{first.height}, {len(scene.points)} sparse points, extent {scene.extent:.3g}, "
        f"backend {backend} on {device}, strategy {config.strategy}"
    )
    return TrainRun(config, scene, device, backend, make_strategy(config, device), ws.train_dir, progress)


def make_strategy(config: TrainConfig, device: torch.device) -> DefaultStrategy | MCMCStrategy:
    if config.strategy == "mcmc":
        if config.cap_max > MULTINOMIAL_LIMIT:
            raise SpaceportError(f"train.cap_max {config.cap_max} is above {MULTINOMIAL_LIMIT} with strategy mcmc, "
                                 "where gsplat samples from numpy's global random state; lower train.cap_max")
        mcmc_class = CpuMCMCStrategy if device.type == "cpu" else MCMCStrategy
        return mcmc_class(
            cap_max=config.cap_max, noise_lr=config.mcmc_noise_lr, refine_start_iter=config.refine_start,
            refine_stop_iter=config.refine_stop, refine_every=config.refine_every,
        )
    return BudgetedDefaultStrategy(
        cap_max=config.cap_max, grow_grad2d=config.grow_grad2d, refine_start_iter=config.refine_start,
        refine_stop_iter=config.refine_stop, refine_every=config.refine_every,
        reset_every=config.reset_opacity_every, absgrad=config.absgrad,
    )


def initial_strategy_state(run: TrainRun) -> dict[str, Any]:
    if isinstance(run.strategy, MCMCStrategy):
        return run.strategy.initialize_state()
    return run.strategy.initialize_state(scene_scale=run.scene.extent)


def learning_rates(config: TrainConfig, extent: float) -> dict[str, float]:
    return {
        "means": config.lr_means * extent, "scales": config.lr_scales, "quats": config.lr_quats,
        "opacities": config.lr_opacities, "sh0": config.lr_sh0, "shN": config.lr_shN,
    }


def means_lr_at(config: TrainConfig, extent: float, step: int) -> float:
    """Exponential decay from lr_means to lr_means_final over the run (scaled by the scene extent)."""
    t = min(step / max(config.steps, 1), 1.0)
    return extent * math.exp((1 - t) * math.log(config.lr_means) + t * math.log(config.lr_means_final))


def start_state(run: TrainRun) -> TrainingState:
    config, scene = run.config, run.scene
    gaussians = gaussians_from_points(scene.points, scene.colors, sh_degree=config.sh_degree,
                                      opacity=config.init_opacity, scale=config.init_scale)
    params = params_from_gaussians(gaussians, run.device)
    optimizers = make_optimizers(params, learning_rates(config, scene.extent))
    run.strategy.check_sanity(params, optimizers)
    return TrainingState(params, optimizers, initial_strategy_state(run), RunRandomness(config.seed, run.device))


# -- the loop --------------------------------------------------------------------------------------


def train_loop(run: TrainRun, state: TrainingState, stop: StopRequest) -> None:
    config = run.config
    task_started, steps_at_start = time.perf_counter(), state.step
    loss_sum = torch.zeros((), device=run.device)
    losses_in_sum = 0
    with run.progress.task("train", total=config.steps) as task:
        task.update(completed=state.step)
        while state.step < config.steps:
            step_started = time.perf_counter()
            loss_sum += train_step(run, state).detach()
            losses_in_sum += 1
            state.step += 1
            state.elapsed_seconds += time.perf_counter() - step_started
            if state.step % config.log_every == 0 or state.step == config.steps:
                rate = (state.step - steps_at_start) / (time.perf_counter() - task_started)
                mean_loss = float(loss_sum) / losses_in_sum
                loss_sum.zero_()
                losses_in_sum = 0
                log_step(run, state, mean_loss, rate)
                task.update(completed=state.step, loss=mean_loss,
                            gaussians=len(state.params["means"]), steps_s=round(rate, 2))
            if (config.eval_every and state.step % config.eval_every == 0 and state.step < config.steps
                    and run.scene.test_views):  # the final evaluation follows the loop
                log_evaluation(run, state)
            if state.step % config.checkpoint_every == 0 or state.step == config.steps:
                save_checkpoint(run, state)
            if stop.signal_number is not None:
                path = save_checkpoint(run, state)
                raise TrainingInterrupted(
                    f"train: stopped by signal {stop.signal_number} at step {state.step}; checkpoint "
                    f"{path.name} written, run again to resume"
                )


def train_step(run: TrainRun, state: TrainingState) -> torch.Tensor:
    config, params = run.config, state.params
    view = next_view(run, state.step)
    means_lr = means_lr_at(config, run.scene.extent, state.step)
    for group in state.optimizers["means"].param_groups:
        group["lr"] = means_lr
    background = training_background(config.background, run.device, state.rng.background)
    colors, _, info = render_params(
        params, view.viewmat[None], view.K[None], view.width, view.height,
        sh_degree=sh_degree_at(config, state.step),
        backgrounds=background[None], backend=run.backend, absgrad=config.absgrad,
    )
    loss = photometric_loss(colors, to_float_image(view)[None], config.ssim_lambda)
    if config.opacity_reg:
        loss = loss + config.opacity_reg * torch.sigmoid(params["opacities"]).mean()
    if config.scale_reg:
        loss = loss + config.scale_reg * torch.exp(params["scales"]).mean()
    run.strategy.step_pre_backward(params, state.optimizers, state.strategy_state, state.step, info)
    loss.backward()
    for optimizer in state.optimizers.values():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with state.rng.library_stream():
        if isinstance(run.strategy, MCMCStrategy):
            run.strategy.step_post_backward(params, state.optimizers, state.strategy_state, state.step, info,
                                            lr=means_lr)
        else:
            run.strategy.step_post_backward(params, state.optimizers, state.strategy_state, state.step, info)
    return loss


def sh_degree_at(config: TrainConfig, step: int) -> int:
    """One more SH degree every ``sh_degree_interval`` steps, up to ``sh_degree``."""
    return min(step // config.sh_degree_interval, config.sh_degree)


def photometric_loss(rendered: torch.Tensor, truth: torch.Tensor, ssim_lambda: float) -> torch.Tensor:
    l1 = (rendered - truth).abs().mean()
    return (1 - ssim_lambda) * l1 + ssim_lambda * (1 - ssim(rendered, truth))


def next_view(run: TrainRun, step: int) -> View:
    """Views in a fresh random order each epoch; the order is a function of (seed, epoch), so a resumed
    run visits the same views as an uninterrupted one."""
    views = run.scene.train_views
    epoch, position = divmod(step, len(views))
    generator = torch.Generator().manual_seed(run.config.seed * 1_000_003 + epoch)
    return views[int(torch.randperm(len(views), generator=generator)[position])]


def training_background(kind: str, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    if kind == "random":
        return torch.rand(3, device=device, generator=generator)
    return torch.full((3,), 1.0 if kind == "white" else 0.0, device=device)


def evaluation_background(kind: str, device: torch.device) -> torch.Tensor:
    return torch.full((3,), 1.0 if kind == "white" else 0.0, device=device)


# -- logging and evaluation -------------------------------------------------------------------------


def log_step(run: TrainRun, state: TrainingState, mean_loss: float, rate: float) -> None:
    config = run.config
    append_metrics(run, {
        "step": state.step,
        "loss": round(mean_loss, 6),
        "num_gaussians": len(state.params["means"]),
        "sh_degree": sh_degree_at(config, state.step),
        "lr_means": means_lr_at(config, run.scene.extent, state.step),
        "steps_per_second": round(rate, 3),
        "elapsed_seconds": round(state.elapsed_seconds, 2),
    })


def log_evaluation(run: TrainRun, state: TrainingState) -> dict[str, Any]:
    result = evaluate_views(
        state.params, run.scene.test_views, sh_degree=run.config.sh_degree,
        background=evaluation_background(run.config.background, run.device), backend=run.backend,
    )
    append_metrics(run, {"step": state.step, "eval_psnr": round(result["psnr"], 4),
                         "eval_ssim": round(result["ssim"], 5)})
    run.progress.log(f"train: step {state.step}: held-out PSNR {result['psnr']:.2f} dB, "
                     f"SSIM {result['ssim']:.4f}")
    return result


def append_metrics(run: TrainRun, line: dict[str, Any]) -> None:
    run.metrics_path.parent.mkdir(parents=True, exist_ok=True)
    with run.metrics_path.open("a") as f:
        f.write(json.dumps(line) + "\n")


def truncate_metrics(run: TrainRun, step: int) -> None:
    """Drop lines a killed run logged after its last checkpoint, so the file reads as one run."""
    if not run.metrics_path.exists():
        return
    kept = [line for line in run.metrics_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_bytes(run.metrics_path, "".join(line + "\n" for line in kept).encode())


def evaluate_and_export(ws: Workspace, run: TrainRun, state: TrainingState) -> dict[str, Any]:
    gaussians = gaussians_from_params(state.params)
    gaussians.validate(source=f"train step {state.step}")
    write_ply(ws.splat_ply, gaussians)
    if run.scene.test_views:
        views, held_out = run.scene.test_views, True
    else:
        run.progress.log("train: no held-out views (holdout_every=0); evaluating on the training views")
        views, held_out = run.scene.train_views, False
    result = evaluate_views(
        state.params, views, sh_degree=run.config.sh_degree,
        background=evaluation_background(run.config.background, run.device), backend=run.backend,
        renders_dir=run.train_dir / "renders", num_renders=run.config.num_renders,
    )
    result = {"step": state.step, "held_out": held_out, **result}
    atomic_write_json(run.train_dir / "eval.json", result)
    append_metrics(run, {"step": state.step, "eval_psnr": round(result["psnr"], 4),
                         "eval_ssim": round(result["ssim"], 5)})
    return result


# -- checkpoints -----------------------------------------------------------------------------------


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    return checkpoint_dir / f"step_{step:06d}.pt"


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    if not checkpoint_dir.is_dir():
        return []
    return sorted(checkpoint_dir.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def save_checkpoint(run: TrainRun, state: TrainingState) -> Path:
    """Write everything needed to continue bit-for-bit (atomically), then keep the newest few."""
    path = checkpoint_path(run.checkpoint_dir, state.step)
    payload = {
        "version": CHECKPOINT_VERSION,
        "step": state.step,
        "elapsed_seconds": state.elapsed_seconds,
        "config": run.config.model_dump(),
        "params": {name: p.detach() for name, p in state.params.items()},
        "optimizers": {name: opt.state_dict() for name, opt in state.optimizers.items()},
        "strategy_state": state.strategy_state,
        "rng": state.rng.state_dict(),
    }
    with atomic_write_to(path) as file:
        torch.save(payload, file)
    for old in list_checkpoints(run.checkpoint_dir)[: -run.config.keep_checkpoints]:
        old.unlink(missing_ok=True)
    return path


def resume_or_start(run: TrainRun) -> tuple[TrainingState, int]:
    """The newest checkpoint's state, or a fresh one. Returns (state, step resumed from)."""
    checkpoints = list_checkpoints(run.checkpoint_dir)
    if not checkpoints:
        if run.metrics_path.exists():
            run.metrics_path.unlink()
        return start_state(run), 0
    path = checkpoints[-1]
    state = load_checkpoint(path, run)
    truncate_metrics(run, state.step)
    run.progress.log(f"train: resuming from {path.name} (step {state.step} of {run.config.steps})")
    return state, state.step


def load_checkpoint(path: Path, run: TrainRun) -> TrainingState:
    try:
        payload = torch.load(path, map_location=run.device, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise SpaceportError(f"{path}: unreadable checkpoint ({exc}); delete it to resume from an older one") from exc
    if payload.get("version") != CHECKPOINT_VERSION:
        raise SpaceportError(f"{path}: checkpoint version {payload.get('version')} is not "
                             f"{CHECKPOINT_VERSION}; delete train/ckpt to start over")
    changed = sorted(k for k, v in payload["config"].items() if run.config.model_dump().get(k) != v)
    if changed:
        run.progress.log(f"train: the checkpoint was made with other settings ({', '.join(changed)}); "
                         "continuing with the new ones")
    saved = payload["params"]
    num_gaussians = saved["means"].shape[0]
    sh_degree = {v: d for d, v in SH_REST_COUNTS.items()}[saved["shN"].shape[1]]
    params = empty_params_like(num_gaussians, sh_degree, run.device)
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    optimizers = make_optimizers(params, learning_rates(run.config, run.scene.extent))
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(payload["optimizers"][name])
    rng = RunRandomness(run.config.seed, run.device)
    if payload["rng"]["device_type"] == run.device.type:
        rng.load_state_dict(payload["rng"])
    else:
        run.progress.log(f"train: the checkpoint was made on {payload['rng']['device_type']}; on {run.device.type} "
                         "the random streams start again from the seed")
    return TrainingState(params, optimizers, payload["strategy_state"], rng, payload["step"],
                         payload["elapsed_seconds"])


# -- signals ---------------------------------------------------------------------------------------


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """While the block runs, SIGTERM/SIGINT only set a flag; the loop checkpoints and stops cleanly.
    Handlers can only be installed from the main thread; elsewhere the default behaviour stays."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signal_number: int, _frame: Any) -> None:
        request.signal_number = signal_number

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

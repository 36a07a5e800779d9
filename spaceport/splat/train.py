"""The train stage: 3D Gaussian Splatting from an undistorted COLMAP model.

Adam with INRIA's per-parameter learning rates, L1 + D-SSIM, SH degree raised progressively, and
gsplat's densification strategies (``DefaultStrategy`` with a Gaussian budget, or ``MCMCStrategy``, whose budget
may follow the photos' pixel count). Optionally coarse to fine (images downscaled on the device once) and stopped
early when held-out PSNR stops rising. Checkpoints every N steps (written by a background thread) and on
SIGTERM/SIGINT; a re-run resumes from the newest one.

The step keeps the host ahead of the GPU: no host syncs of its own (gsplat's tile intersection has one, and
DefaultStrategy's refinements every ``refine_every`` steps), images stay on the device as uint8, the view order
is drawn once per epoch. ``bench/train_gpu.py --profile`` shows where a step's time goes.
"""

from __future__ import annotations

import dataclasses
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
import numpy as np
import torch
from gsplat.strategy import DefaultStrategy, MCMCStrategy
from gsplat.strategy.ops import reset_opa, sample_add

from spaceport.devices import resolve_device
from spaceport.formats.frames import MANIFEST_NAME
from spaceport.formats.gaussians import SH_REST_COUNTS, write_ply
from spaceport.progress import Progress
from spaceport.splat.appearance import AppearanceDecision, AppearanceModel, decide_for_scene
from spaceport.splat.config import TrainConfig
from spaceport.splat.evaluate import evaluate_views, to_float_image
from spaceport.splat.model import (
    OptimizerKind,
    empty_params_like,
    gaussians_from_params,
    gaussians_from_points,
    make_optimizers,
    params_from_gaussians,
    render_params,
    visible_gaussians,
)
from spaceport.splat.profiling import NULL_TIMER, NullTimer, StepProfiler, StepTimer
from spaceport.splat.render import resolve_backend
from spaceport.splat.scene import Scene, View, background_shell, check_model_dir, load_scene
from spaceport.splat.ssim import resolve_ssim_kernel, ssim
from spaceport.splat.strategy_cpu import CpuMCMCStrategy
from spaceport.workspace import (
    SpaceportError,
    StageResult,
    Workspace,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_to,
)

# 2: the run's own random streams instead of the global RNGs' states; 3: early-stop state; 4: per-photo appearance
CHECKPOINT_VERSION = 4
# gsplat 1.5.3 tests ``step % reset_every == 0 & step > 0``; ``&`` binds before the comparisons, so it reads
# ``step % reset_every == 0 > 0`` and never holds: no opacity reset. 1.6.0 fixed it; 1.5.2 and older reset.
GSPLAT_VERSIONS_WITHOUT_OPACITY_RESET = frozenset({"1.5.3"})
MULTINOMIAL_LIMIT = 2**24  # above it gsplat's _multinomial_sample draws from numpy's global RNG
GROW_TO_BUDGET_BY = 0.5  # mcmc_grow_factor None: the budget is reached after this share of the refinements
GSPLAT_MCMC_GROW_FACTOR, MAX_AUTO_GROW_FACTOR = 1.05, 1.6
MIN_LEVEL_SIZE = 32  # px, the shorter side of a coarse-to-fine level (SSIM's window is 11)
__all__ = ["TrainConfig", "TrainingInterrupted", "run_train"]


class TrainingInterrupted(SpaceportError):
    """Raised after a SIGTERM/SIGINT once the checkpoint is safely written."""


@dataclass
class BudgetedDefaultStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy with a Gaussian budget and, on gsplat versions that lost it, the opacity reset.

    It never grows past ``cap_max`` Gaussians: when more pass the gradient threshold than there is room
    for, only those with the highest gradients grow. Opacities are reset every ``reset_every`` steps while
    refining, as the INRIA recipe and gsplat 1.6 do; on gsplat 1.5.3 (``GSPLAT_VERSIONS_WITHOUT_OPACITY_RESET``)
    the ``reset_opacities_if_due`` hook does it, since gsplat's own test never holds there. Its per-step
    statistics are accumulated densely (``_update_state``), without gsplat's host sync.
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
    def _update_state(self, params, state, info, packed=False):
        """gsplat's statistics (mean screen-space gradient norm, visible count, largest radius) added densely over
        the (C, N) grid instead of through ``torch.where(visible)``, which waits for the GPU on every step. With
        one camera the sums are gsplat's, bit for bit (an invisible Gaussian adds 0)."""
        if packed:  # gsplat's packed branch indexes by the given ids: no sync
            return super()._update_state(params, state, info, packed=True)
        means2d = info[self.key_for_gradient]
        gradient = (means2d.absgrad if self.absgrad else means2d.grad).clone()
        gradient[..., 0] *= info["width"] / 2.0 * info["n_cameras"]
        gradient[..., 1] *= info["height"] / 2.0 * info["n_cameras"]
        norms = gradient.norm(dim=-1)  # (C, N)
        visible = (info["radii"] > 0.0).all(dim=-1)  # (C, N)
        n_gaussians = len(params["means"])
        for key in ("grad2d", "count") + (("radii",) if self.refine_scale2d_stop_iter > 0 else ()):
            if state[key] is None:
                state[key] = torch.zeros(n_gaussians, device=gradient.device)
        state["grad2d"] += torch.where(visible, norms, 0.0).sum(dim=0)
        state["count"] += visible.sum(dim=0)
        if self.refine_scale2d_stop_iter > 0:
            radii = torch.where(visible, info["radii"].max(dim=-1).values, 0).amax(dim=0)
            state["radii"] = torch.maximum(state["radii"], radii / float(max(info["width"], info["height"])))

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


@dataclass
class BudgetedMCMCStrategy(MCMCStrategy):
    """gsplat's MCMCStrategy whose Gaussians multiply by ``grow_factor`` (gsplat: 1.05) per refinement."""

    grow_factor: float = GSPLAT_MCMC_GROW_FACTOR

    @torch.no_grad()
    def _add_new_gs(self, params, optimizers, binoms) -> int:
        current = len(params["means"])
        n_new = max(0, min(self.cap_max, int(self.grow_factor * current)) - current)
        if n_new > 0:
            sample_add(params=params, optimizers=optimizers, state={}, n=n_new, binoms=binoms,
                       min_opacity=self.min_opacity)
        return n_new


class RunRandomness:
    """The run's own random streams, saved in checkpoints so that a resumed run draws the same numbers.

    ``background`` draws the random training backgrounds and ``dropout`` the hidden Gaussians, on the training
    device. ``library`` is what gsplat's strategies draw from: they use the global torch RNG (``randn_like`` noise
    and splits, ``multinomial`` relocation), so ``library_stream()`` lends them the run's state and gives the
    caller's back afterwards.
    """

    def __init__(self, seed: int, device: torch.device):
        self.device = device
        self.background = torch.Generator(device).manual_seed(seed)
        self.dropout = torch.Generator(device).manual_seed(seed + 2)
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
                "dropout": self.dropout.get_state(), "library_cpu": self.library_cpu,
                "library_cuda": self.library_cuda}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.background.set_state(saved["background"].cpu())
        if "dropout" in saved:  # checkpoints from before gaussian_dropout lack it
            self.dropout.set_state(saved["dropout"].cpu())
        self.library_cpu = saved["library_cpu"].cpu()
        if self.library_cuda is not None:
            self.library_cuda = saved["library_cuda"].cpu()


@dataclass
class EarlyStop:
    """The best held-out PSNR so far and how many evaluations since it; ``stopped_at`` once patience ran out."""

    best_psnr: float = -math.inf
    best_step: int = 0
    evaluations_since_best: int = 0
    stopped_at: int | None = None
    last_psnr: float = -math.inf
    last_step: int = -1

    def record(self, psnr: float, step: int, config: TrainConfig) -> bool:
        """Take an evaluation; True when the run should stop here."""
        self.last_psnr, self.last_step = psnr, step
        if psnr > self.best_psnr + config.early_stop_min_gain:
            self.best_psnr, self.best_step, self.evaluations_since_best = psnr, step, 0
        else:
            self.evaluations_since_best += 1
        if config.early_stop_patience and self.evaluations_since_best >= config.early_stop_patience:
            self.stopped_at = step
        return self.stopped_at is not None


@dataclass
class TrainingState:
    params: torch.nn.ParameterDict
    optimizers: dict[str, torch.optim.Adam]
    strategy_state: dict[str, Any]
    rng: RunRandomness
    step: int = 0  # steps completed
    elapsed_seconds: float = 0.0  # training-loop time over all runs
    early_stop: EarlyStop = field(default_factory=EarlyStop)
    appearance: AppearanceModel = field(default_factory=lambda: AppearanceModel(0, "none"))
    best_params: dict[str, torch.Tensor] | None = None  # keep_best: the parameters of early_stop.best_step


@dataclass
class StopRequest:
    signal_number: int | None = None


class EpochOrder:
    """Training views in a fresh random order each epoch, drawn once per epoch. The order is a function of
    (seed, epoch), so a resumed run visits the same views as an uninterrupted one."""

    def __init__(self, num_views: int, seed: int):
        self.num_views, self.seed = num_views, seed
        self.epoch, self.order = -1, []

    def index_at(self, step: int) -> int:
        epoch, position = divmod(step, self.num_views)
        if epoch != self.epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self.epoch, self.order = epoch, torch.randperm(self.num_views, generator=generator).tolist()
        return self.order[position]


class CheckpointWriter:
    """Writes checkpoints from a background thread: the loop pays for the copy to host memory, not the file."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, path: Path, payload: dict[str, Any], keep: int) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(path, payload, keep), daemon=True,
                                        name="checkpoint-writer")
        self._thread.start()

    def _write(self, path: Path, payload: dict[str, Any], keep: int) -> None:
        try:
            with atomic_write_to(path) as file:
                torch.save(payload, file)
            for old in list_checkpoints(path.parent)[:-keep]:
                old.unlink(missing_ok=True)
        except BaseException as exc:  # re-raised in the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        """Until the last checkpoint is on disk; raises what its writing raised."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise SpaceportError(f"train: writing a checkpoint failed: {error}") from error


@dataclass
class TrainRun:
    """What one call of ``run_train`` works with (passed explicitly instead of globals)."""

    config: TrainConfig  # resolved, and fitted to the scene (budget, MCMC growth)
    scene: Scene
    device: torch.device
    backend: str
    strategy: DefaultStrategy | MCMCStrategy
    train_dir: Path
    progress: Progress
    optimizer_kind: OptimizerKind = "adam"
    ssim_kernel: str = "separable"
    levels: dict[int, list[View]] = field(default_factory=dict)  # downscale factor -> training views
    view_order: EpochOrder | None = None
    profiler: StepProfiler | None = None
    checkpoints: CheckpointWriter = field(default_factory=CheckpointWriter)
    log_lines: list[dict[str, Any]] = field(default_factory=list)
    appearance: AppearanceDecision = AppearanceDecision("none", "appearance off")

    @property
    def checkpoint_dir(self) -> Path:
        return self.train_dir / "ckpt"

    @property
    def metrics_path(self) -> Path:
        return self.train_dir / "metrics.jsonl"


# -- entry point -----------------------------------------------------------------------------------


def run_train(ws: Workspace, config: TrainConfig, progress: Progress,
              profiler: StepProfiler | None = None) -> StageResult:
    """Train a splat on ``sfm/undistorted`` and write ``train/``: splat.ply, eval.json, metrics.jsonl,
    ckpt/step_NNNNNN.pt and renders/*.png. Resumes from the newest checkpoint if one exists.
    ``profiler``: times the parts of the steps it covers (``bench/train_gpu.py --profile``)."""
    started = time.perf_counter()
    run = prepare_run(ws, config, progress)
    run.profiler = profiler
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
    kept_step = keep_best_parameters(run, state)
    evaluation = evaluate_and_export(ws, run, state, kept_step or state.step)
    metrics = {
        "psnr": evaluation["psnr"],
        "ssim": evaluation["ssim"],
        "num_gaussians": len(state.params["means"]),
        "steps": state.step,
        "kept_step": kept_step,
        "resumed_from_step": resumed_from,
        "early_stopped_at": state.early_stop.stopped_at,
        "train_seconds": round(state.elapsed_seconds, 2),
        "steps_per_second": round(steps_run / loop_seconds if steps_run else state.step / max(
            state.elapsed_seconds, 1e-9), 3),
        "backend": backend,
        "strategy": config.strategy,
        "cap_max": config.cap_max,
        "optimizer": run.optimizer_kind,
        "ssim_kernel": run.ssim_kernel,
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
    if config.packed and backend != "gsplat":
        raise SpaceportError(f"train.packed is a gsplat option; backend {backend} renders non-packed only "
                             "(set train.packed=false)")
    try:
        ssim_kernel = resolve_ssim_kernel(config.ssim_kernel, device)
    except ValueError as exc:
        raise SpaceportError(f"train.ssim_kernel: {exc}") from exc
    scene = load_scene(model_dir, images_dir, max_width=config.max_image_width,
                       holdout_every=config.holdout_every, max_points=config.max_init_points,
                       seed=config.seed)
    if config.scene_extent is not None:
        scene = dataclasses.replace(scene, extent=config.scene_extent)
    if config.background_points:
        shell, shell_colours = background_shell(scene.points, scene.train_views, config.background_points)
        scene = dataclasses.replace(scene, points=np.concatenate([scene.points, shell]),
                                    colors=np.concatenate([scene.colors, shell_colours]))
    scene = scene.to(device)
    # the ingest stage's manifest, or the one a previous workspace brought along (--steps train)
    manifest_dir = next((folder for folder in (ws.images_dir, ws.input_dir / "images")
                         if (folder / MANIFEST_NAME).is_file()), ws.images_dir)
    appearance = decide_for_scene(config.appearance, scene, manifest_dir, model_dir)
    config = fit_to_scene(config, scene, varying_appearance=appearance.kind != "none")
    first = scene.train_views[0]
    progress.log(
        f"train: {len(scene.train_views)} training / {len(scene.test_views)} held-out views at "
        f"{first.width}x{first.height}, {len(scene.points) - config.background_points} sparse points"
        f"{f' and {config.background_points} on the background shell' if config.background_points else ''}, "
        f"extent {scene.extent:.3g}, "
        f"backend {backend} on {device}, strategy {config.strategy} (budget {config.cap_max} Gaussians)"
    )
    progress.log(f"train: {appearance.reason}")
    return TrainRun(config, scene, device, backend, make_strategy(config, device), ws.train_dir, progress,
                    appearance=appearance,
                    optimizer_kind=resolve_optimizer(config.optimizer, device), ssim_kernel=ssim_kernel,
                    levels=resolution_levels(scene.train_views, config),
                    view_order=EpochOrder(len(scene.train_views), config.seed))


def fit_to_scene(config: TrainConfig, scene: Scene, varying_appearance: bool = False) -> TrainConfig:
    """The budget from the training pixels (``gaussians_per_megapixel``, at most ``cap_max``, and at most
    ``varying_appearance_cap`` where the photos' appearance varies) and, for MCMC without a set
    ``mcmc_grow_factor``, the growth that reaches it after ``GROW_TO_BUDGET_BY`` of the refinements.
    Idempotent: a checkpoint's config fits again to itself."""
    updates: dict[str, Any] = {}
    cap = config.cap_max
    if config.gaussians_per_megapixel is not None:
        megapixels = sum(view.width * view.height for view in scene.train_views) / 1e6
        cap = max(1, min(cap, round(megapixels * config.gaussians_per_megapixel)))
    if varying_appearance and config.varying_appearance_cap is not None:
        cap = min(cap, config.varying_appearance_cap)
    if cap != config.cap_max:
        updates["cap_max"] = cap
    if config.strategy == "mcmc" and config.mcmc_grow_factor is None:
        first = (config.refine_start // config.refine_every + 1) * config.refine_every
        refinements = len(range(first, config.refine_stop, config.refine_every))
        growth_steps = max(1, math.floor(GROW_TO_BUDGET_BY * refinements))
        factor = (cap / max(len(scene.points), 1)) ** (1 / growth_steps)
        updates["mcmc_grow_factor"] = round(min(max(factor, GSPLAT_MCMC_GROW_FACTOR), MAX_AUTO_GROW_FACTOR), 4)
    return config.model_copy(update=updates)


def resolve_optimizer(kind: str, device: torch.device) -> OptimizerKind:
    """"auto": fused Adam on CUDA (one kernel per parameter), torch's default Adam on the CPU."""
    if kind == "auto":
        return "fused" if device.type == "cuda" else "adam"
    return kind  # type: ignore[return-value]


def resolution_levels(views: list[View], config: TrainConfig) -> dict[int, list[View]]:
    """The training views for every downscale factor of the resolution schedule (and 1), made once on the device.
    A factor that would leave an image under ``MIN_LEVEL_SIZE`` px gets the next finer level that does not."""
    levels, finest_coarse = {1: views}, 1
    shortest = min(min(view.width, view.height) for view in views)
    for factor, _ in sorted(config.resolution_schedule):
        if shortest / factor >= MIN_LEVEL_SIZE:
            levels[factor], finest_coarse = [view.downscaled(factor) for view in views], factor
        else:
            levels[factor] = levels[finest_coarse]
    return levels


def resolution_factor_at(config: TrainConfig, step: int) -> int:
    """The downscale factor of the training images at ``step`` (1: full size)."""
    for factor, until in config.resolution_schedule:
        if step < until:
            return factor
    return 1


def make_strategy(config: TrainConfig, device: torch.device) -> DefaultStrategy | MCMCStrategy:
    if config.strategy == "mcmc":
        if config.cap_max > MULTINOMIAL_LIMIT:
            raise SpaceportError(f"train.cap_max {config.cap_max} is above {MULTINOMIAL_LIMIT} with strategy mcmc, "
                                 "where gsplat samples from numpy's global random state; lower train.cap_max")
        mcmc_class = CpuMCMCStrategy if device.type == "cpu" else BudgetedMCMCStrategy
        return mcmc_class(
            cap_max=config.cap_max, noise_lr=config.mcmc_noise_lr, refine_start_iter=config.refine_start,
            refine_stop_iter=config.refine_stop, refine_every=config.refine_every,
            grow_factor=config.mcmc_grow_factor or GSPLAT_MCMC_GROW_FACTOR,
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


def new_appearance(run: TrainRun) -> AppearanceModel:
    return AppearanceModel(len(run.scene.train_views), run.appearance.kind, run.device,
                           lr=run.config.appearance_lr, reg_weight=run.config.appearance_reg)


def start_state(run: TrainRun) -> TrainingState:
    config, scene = run.config, run.scene
    gaussians = gaussians_from_points(scene.points, scene.colors, sh_degree=config.sh_degree,
                                      opacity=config.init_opacity, scale=config.init_scale)
    params = params_from_gaussians(gaussians, run.device)
    optimizers = make_optimizers(params, learning_rates(config, scene.extent), run.optimizer_kind)
    run.strategy.check_sanity(params, optimizers)
    return TrainingState(params, optimizers, initial_strategy_state(run), RunRandomness(config.seed, run.device),
                         appearance=new_appearance(run))


# -- the loop --------------------------------------------------------------------------------------


def train_loop(run: TrainRun, state: TrainingState, stop: StopRequest) -> None:
    config = run.config
    task_started, steps_at_start = time.perf_counter(), state.step
    loss_sum = torch.zeros((), device=run.device)
    losses_in_sum = 0
    try:
        with run.progress.task("train", total=config.steps) as task:
            task.update(completed=state.step)
            while state.step < config.steps and state.early_stop.stopped_at is None:
                timer = run.profiler.step_timer(state.step) if run.profiler else NULL_TIMER
                step_started = time.perf_counter()
                loss_sum += train_step(run, state, timer).detach()
                losses_in_sum += 1
                state.step += 1
                state.elapsed_seconds += time.perf_counter() - step_started
                if state.step % config.log_every == 0 or state.step == config.steps:
                    rate = (state.step - steps_at_start) / (time.perf_counter() - task_started)
                    mean_loss = float(loss_sum) / losses_in_sum  # the loop's one host sync between log lines
                    loss_sum.zero_()
                    losses_in_sum = 0
                    log_step(run, state, mean_loss, rate)
                    task.update(completed=state.step, loss=mean_loss,
                                gaussians=len(state.params["means"]), steps_s=round(rate, 2))
                if (config.eval_every and state.step % config.eval_every == 0 and state.step < config.steps
                        and run.scene.test_views):  # the final evaluation follows the loop
                    evaluate_during_training(run, state)
                if (state.step % config.checkpoint_every == 0 or state.step == config.steps
                        or state.early_stop.stopped_at is not None):
                    save_checkpoint(run, state)
                if run.profiler:
                    run.profiler.end_step(state.step - 1, timer)
                if stop.signal_number is not None:
                    path = save_checkpoint(run, state)
                    run.checkpoints.wait()
                    raise TrainingInterrupted(
                        f"train: stopped by signal {stop.signal_number} at step {state.step}; checkpoint "
                        f"{path.name} written, run again to resume"
                    )
    finally:
        if run.profiler:
            run.profiler.close()
        run.checkpoints.wait()


def train_step(run: TrainRun, state: TrainingState, timer: StepTimer | NullTimer = NULL_TIMER) -> torch.Tensor:
    config, params = run.config, state.params
    view = next_view(run, state.step)
    view_index = run.view_order.index_at(state.step)
    means_lr = means_lr_at(config, run.scene.extent, state.step)
    for group in state.optimizers["means"].param_groups:
        group["lr"] = means_lr
    with timer.section("data"):
        background = training_background(config.background, run.device, state.rng.background)
        truth = to_float_image(view)[None]
        kept = dropout_scale(len(params["opacities"]), dropout_rate_at(config, state.step), state.rng.dropout)
    with timer.section("render"):
        colors, _, info = render_params(
            params, view.viewmat[None], view.K[None], view.width, view.height,
            sh_degree=sh_degree_at(config, state.step),
            backgrounds=background[None], backend=run.backend, absgrad=config.absgrad, packed=config.packed,
            opacity_scale=kept,
        )
    with timer.section("loss"):
        colors = state.appearance(colors, view_index)
        loss = photometric_loss(colors, masked_truth(view, truth, colors), config.ssim_lambda, run.ssim_kernel)
        loss = loss + state.appearance.regularization(view_index)
        if config.opacity_reg:
            loss = loss + config.opacity_reg * torch.sigmoid(params["opacities"]).mean()
        if config.scale_reg:
            loss = loss + config.scale_reg * torch.exp(params["scales"]).mean()
    run.strategy.step_pre_backward(params, state.optimizers, state.strategy_state, state.step, info)
    with timer.section("backward"):
        loss.backward()
    with timer.section("optimizer"):
        step_optimizers(run, state, info)
        state.appearance.step()
    with timer.section("strategy"), state.rng.library_stream():
        if isinstance(run.strategy, MCMCStrategy):
            run.strategy.step_post_backward(params, state.optimizers, state.strategy_state, state.step, info,
                                            lr=means_lr)
        else:
            run.strategy.step_post_backward(params, state.optimizers, state.strategy_state, state.step, info,
                                            packed=config.packed)
    return loss


def step_optimizers(run: TrainRun, state: TrainingState, info: dict[str, Any]) -> None:
    if run.optimizer_kind == "selective":
        visibility = visible_gaussians(info)
        for optimizer in state.optimizers.values():
            optimizer.step(visibility)
            optimizer.zero_grad(set_to_none=True)
        return
    for optimizer in state.optimizers.values():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def sh_degree_at(config: TrainConfig, step: int) -> int:
    """One more SH degree every ``sh_degree_interval`` steps, up to ``sh_degree``."""
    return min(step // config.sh_degree_interval, config.sh_degree)


def dropout_rate_at(config: TrainConfig, step: int) -> float:
    """DropGaussian's schedule: from 0 at the first step to ``gaussian_dropout`` at the last."""
    return config.gaussian_dropout * step / config.steps


def dropout_scale(count: int, rate: float, generator: torch.Generator) -> torch.Tensor | None:
    """Per-Gaussian opacity factors: 0 for the hidden, 1 / (1 - rate) for the kept (inverted dropout, so the
    expected opacity is unchanged); None when nothing is hidden."""
    if rate <= 0.0:
        return None
    draws = torch.rand(count, device=generator.device, generator=generator)
    return (draws >= rate).to(torch.float32) / (1.0 - rate)


def masked_truth(view: View, truth: torch.Tensor, rendered: torch.Tensor) -> torch.Tensor:
    """The photo where its mask keeps it, the (detached) render where the mask hides it (people, cars), so the
    hidden pixels cost nothing in L1 and SSIM alike."""
    if view.mask is None:
        return truth
    return torch.where(view.mask[None, :, :, None], truth, rendered.detach())


def photometric_loss(rendered: torch.Tensor, truth: torch.Tensor, ssim_lambda: float,
                     ssim_kernel: str = "separable") -> torch.Tensor:
    l1 = (rendered - truth).abs().mean()
    return (1 - ssim_lambda) * l1 + ssim_lambda * (1 - ssim(rendered, truth, ssim_kernel))


def next_view(run: TrainRun, step: int) -> View:
    """The step's training view (a fresh random order each epoch), at the step's resolution."""
    return run.levels[resolution_factor_at(run.config, step)][run.view_order.index_at(step)]


def training_background(kind: str, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    if kind == "random":
        return torch.rand(3, device=device, generator=generator)
    return torch.full((3,), 1.0 if kind == "white" else 0.0, device=device)


def evaluation_background(kind: str, device: torch.device) -> torch.Tensor:
    return torch.full((3,), 1.0 if kind == "white" else 0.0, device=device)


# -- logging and evaluation -------------------------------------------------------------------------


def log_step(run: TrainRun, state: TrainingState, mean_loss: float, rate: float) -> None:
    config = run.config
    width = run.levels[resolution_factor_at(config, state.step - 1)][0].width
    append_metrics(run, {
        "step": state.step,
        "loss": round(mean_loss, 6),
        "num_gaussians": len(state.params["means"]),
        "sh_degree": sh_degree_at(config, state.step),
        "lr_means": means_lr_at(config, run.scene.extent, state.step),
        "image_width": width,
        "steps_per_second": round(rate, 3),
        "elapsed_seconds": round(state.elapsed_seconds, 2),
    })


def evaluate_during_training(run: TrainRun, state: TrainingState) -> dict[str, Any]:
    """Held-out PSNR/SSIM on ``eval_views`` views, logged, and fed to the early stop."""
    config = run.config
    result = evaluate_tracked_views(run, state.params, state.appearance)
    append_metrics(run, {"step": state.step, "eval_psnr": round(result["psnr"], 4),
                         "eval_ssim": round(result["ssim"], 5)})
    run.progress.log(f"train: step {state.step}: held-out PSNR {result['psnr']:.2f} dB, "
                     f"SSIM {result['ssim']:.4f}")
    if state.early_stop.record(result["psnr"], state.step, config):
        run.progress.log(f"train: stopping early at step {state.step}: held-out PSNR has not risen by "
                         f"{config.early_stop_min_gain} dB for {config.early_stop_patience} evaluations (best "
                         f"{state.early_stop.best_psnr:.2f} dB at step {state.early_stop.best_step})")
    if config.keep_best and state.early_stop.best_step == state.step:
        state.best_params = {name: p.detach().clone() for name, p in state.params.items()}
    return result


def evaluate_tracked_views(run: TrainRun, params: torch.nn.ParameterDict,
                           appearance: AppearanceModel) -> dict[str, Any]:
    """The evaluation early stopping and keep_best compare: the first ``eval_views`` held-out views."""
    config = run.config
    views = run.scene.test_views[: config.eval_views] if config.eval_views else run.scene.test_views
    return evaluate_views(params, views, sh_degree=config.sh_degree,
                          background=evaluation_background(config.background, run.device), backend=run.backend,
                          appearance=appearance)


def keep_best_parameters(run: TrainRun, state: TrainingState) -> int | None:
    """keep_best: put the best evaluation's parameters back when the last step scores lower on the same views;
    returns that evaluation's step, or None when the last step's parameters stay."""
    best, early_stop = state.best_params, state.early_stop
    if not run.config.keep_best or best is None or early_stop.best_step >= state.step:
        return None
    if early_stop.last_step == state.step:  # the run stopped early right after evaluating
        last_psnr = early_stop.last_psnr
    else:
        last_psnr = evaluate_tracked_views(run, state.params, state.appearance)["psnr"]
    if last_psnr >= early_stop.best_psnr:
        return None
    run.progress.log(f"train: keeping the splat of step {early_stop.best_step} (held-out PSNR "
                     f"{early_stop.best_psnr:.2f} dB) over step {state.step}'s ({last_psnr:.2f} dB)")
    state.params = torch.nn.ParameterDict({name: torch.nn.Parameter(tensor) for name, tensor in best.items()})
    return early_stop.best_step


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


def evaluate_and_export(ws: Workspace, run: TrainRun, state: TrainingState, step: int) -> dict[str, Any]:
    """Write splat.ply and eval.json of ``state.params``, the parameters of ``step``."""
    gaussians = gaussians_from_params(state.params)
    gaussians.validate(source=f"train step {step}")
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
        appearance=state.appearance,
    )
    result = {"step": step, "held_out": held_out, **result}
    atomic_write_json(run.train_dir / "eval.json", result)
    append_metrics(run, {"step": state.step, "eval_psnr": round(result["psnr"], 4),
                         "eval_ssim": round(result["ssim"], 5), **({"kept_step": step} if step != state.step else {})})
    return result


# -- checkpoints -----------------------------------------------------------------------------------


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    return checkpoint_dir / f"step_{step:06d}.pt"


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    if not checkpoint_dir.is_dir():
        return []
    return sorted(checkpoint_dir.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def save_checkpoint(run: TrainRun, state: TrainingState) -> Path:
    """Everything needed to continue bit-for-bit, copied to host memory now and written (atomically, then the
    newest ``keep_checkpoints`` kept) by the background writer; ``run.checkpoints.wait()`` waits for the file."""
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
        "early_stop": dataclasses.asdict(state.early_stop),
        "appearance": state.appearance.checkpoint_state(),
        "best_params": state.best_params,
    }
    run.checkpoints.submit(path, host_copy(payload), run.config.keep_checkpoints)
    return path


def host_copy(value: Any) -> Any:
    """``value`` with every tensor copied to host memory (training goes on changing the originals in place)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: host_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(host_copy(item) for item in value)
    return value


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
    optimizers = make_optimizers(params, learning_rates(run.config, run.scene.extent), run.optimizer_kind)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(payload["optimizers"][name])
    rng = RunRandomness(run.config.seed, run.device)
    if payload["rng"]["device_type"] == run.device.type:
        rng.load_state_dict(payload["rng"])
    else:
        run.progress.log(f"train: the checkpoint was made on {payload['rng']['device_type']}; on {run.device.type} "
                         "the random streams start again from the seed")
    appearance = new_appearance(run)
    appearance.load_checkpoint_state(payload["appearance"], source=str(path))
    return TrainingState(params, optimizers, payload["strategy_state"], rng, payload["step"],
                         payload["elapsed_seconds"], EarlyStop(**payload["early_stop"]), appearance,
                         payload.get("best_params"))


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

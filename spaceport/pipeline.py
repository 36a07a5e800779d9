"""The stage registry and the DAG: which stages a step selection runs, in what order, and run_pipeline().

The CLI, the service's embedded worker and the Celery workers all call ``run_pipeline`` or ``run_stage``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from spaceport.compress.stage import find_input_ply, run_compress
from spaceport.devices import describe_device
from spaceport.formats.frames import MANIFEST_NAME
from spaceport.formats.job import STEP_STAGES, Steps
from spaceport.ingest.inputs import inspect_input
from spaceport.ingest.stage import run_ingest
from spaceport.presets import PipelineConfig
from spaceport.progress import Progress
from spaceport.report import run_report
from spaceport.sfm.colmap import check_sfm_inputs, run_sfm
from spaceport.splat.scene import check_model_dir
from spaceport.splat.train import run_train
from spaceport.workspace import SpaceportError, StageResult, Workspace, staged_dir

__all__ = ["STAGES", "STEP_STAGES", "Stage", "Steps", "prepare_job", "run_pipeline", "run_stage"]

Resource = Literal["cpu", "gpu"]
ProgressFactory = Callable[[str, logging.Logger], Progress]


@dataclass(frozen=True)
class Stage:
    """One stage: what it needs (checked before it runs), what it writes, where it runs best, and its code."""

    name: str
    resource: Resource  # which worker queue runs it
    outputs: tuple[str, ...]  # workspace-relative paths it writes
    check_inputs: Callable[[Workspace], Any]  # raises SpaceportError naming the missing file and the fix
    run: Callable[[Workspace, Any, Progress], StageResult]

    def config(self, pipeline: PipelineConfig) -> BaseModel:
        return getattr(pipeline, self.name)


def _check_job_file(ws: Workspace) -> None:
    if not ws.job_file.exists():
        raise SpaceportError(f"{ws.job_file}: missing; the report describes a job: run it with spaceport run")


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("ingest", "cpu", ("images/",), lambda ws: inspect_input(ws.input_dir, ws.root), run_ingest),
    Stage("sfm", "cpu", ("sfm/sparse/0/", "sfm/undistorted/", "sfm/report.json"), check_sfm_inputs, run_sfm),
    Stage("train", "gpu", ("train/splat.ply", "train/eval.json", "train/metrics.jsonl"),
          lambda ws: check_model_dir(ws.undistorted_dir / "sparse", ws.undistorted_dir / "images"), run_train),
    Stage("compress", "cpu", ("compress/scene.sog",), find_input_ply, run_compress),
    Stage("report", "cpu", ("report/report.json", "report/index.html"), _check_job_file, run_report),
)}



# -- input ---------------------------------------------------------------------------------------


def import_input(ws: Workspace, source: Path, steps: str) -> None:
    """Copy what the user gave into input/ (never modified afterwards). Idempotent for the same source."""
    source = Path(source).resolve()
    job = ws.read_job()
    if job.source and job.source != str(source):
        raise SpaceportError(f"{ws.root}: this workspace was made from {job.source}; pass -o with a new "
                             "folder for a new input")
    if not source.exists():
        raise SpaceportError(f"{source}: no such file or folder; pass a folder or .zip of photos, a video, "
                             "a previous workspace (--steps train) or a .ply (--steps compress)")
    if not (ws.input_dir.exists() and any(ws.input_dir.iterdir())):
        with staged_dir(ws.input_dir) as staging:
            if steps == "train":
                _import_model(source, staging)
            elif source.is_dir():
                shutil.copytree(source, staging, dirs_exist_ok=True, symlinks=True)
            else:
                shutil.copy2(source, staging / source.name)
    ws.update_job(source=str(source))


def _import_model(source: Path, dest: Path) -> None:
    """--steps train takes a previous workspace, or a folder with images/ and a COLMAP sparse model."""
    previous = source / "sfm" / "undistorted"
    if (previous / "sparse").is_dir():
        shutil.copytree(previous / "images", dest / "images")
        shutil.copytree(previous / "sparse", dest / "sparse")
        manifest = source / "images" / MANIFEST_NAME  # its EXIF cameras decide appearance as they did there
        if manifest.is_file():
            shutil.copy2(manifest, dest / "images" / MANIFEST_NAME)
        return
    sparse = next((p for p in (source / "sparse" / "0", source / "sparse") if (p / "cameras.bin").exists()
                   or (p / "cameras.txt").exists()), None)
    if sparse is None or not (source / "images").is_dir():
        raise SpaceportError(f"{source}: --steps train needs a previous workspace (with sfm/undistorted) or a "
                             "folder holding images/ and a COLMAP model in sparse/0 (cameras, images, points3D)")
    shutil.copytree(source / "images", dest / "images")
    shutil.copytree(sparse, dest / "sparse")


def prepare_job(ws: Workspace, steps: str, config: PipelineConfig, source: Path | None = None, *,
                preset: str = "standard", settings: dict[str, Any] | None = None) -> None:
    """Copy the input (when given) and record in job.json what will run, with the resolved config."""
    if steps not in STEP_STAGES:
        raise SpaceportError(f"--steps {steps}: choose one of {', '.join(STEP_STAGES)}")
    ws.root.mkdir(parents=True, exist_ok=True)
    if source is not None:
        import_input(ws, source, steps)
    ws.update_job(steps=steps, preset=preset, settings=dict(settings or {}), config=config.model_dump(mode="json"),
                  status="running", stage=None, error=None)


# -- running -------------------------------------------------------------------------------------


class _PeakMemory:
    """Peak resident memory of this process (and GPU memory when CUDA is used) during one stage."""

    def __init__(self) -> None:
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, _rss_bytes())
            if self._stop.wait(0.25):
                return

    def __enter__(self) -> _PeakMemory:
        if _cuda_in_use():
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def metrics(self) -> dict[str, float]:
        out = {"peak_rss_gib": round(self.peak_rss / 2**30, 3)}
        if _cuda_in_use():
            import torch

            out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        return out


def _rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cuda_in_use() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def run_stage(ws: Workspace, name: str, config: PipelineConfig, make_progress: ProgressFactory) -> StageResult:
    """Run one stage unless its .done marker exists; its inputs are checked first and the marker written last.

    The caller holds the workspace lock (``run_pipeline`` does; a worker running one stage takes it itself).
    """
    if ws.is_done(name):
        result = ws.stage_result(name)
        assert result is not None
        result.skipped = True
        return result
    stage = STAGES[name]
    logger = ws.stage_logger(name)
    ws.update_job(status="running", stage=name)
    start = time.perf_counter()
    try:
        stage.check_inputs(ws)
        stage_config = stage.config(config)
        logger.info("start %s with %s", name, stage_config.model_dump_json())
        with _PeakMemory() as memory:
            result = stage.run(ws, stage_config, make_progress(name, logger))
    except BaseException as exc:
        logger.error("%s failed: %s", name, exc)
        ws.update_job(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", stage=name,
                      error=str(exc))
        raise
    result.seconds = round(time.perf_counter() - start, 2)
    result.metrics.update(memory.metrics())
    result.metrics.setdefault("device", describe_device(stage_config))  # "cuda:0 (NVIDIA H200, physical GPU 1)"
    ws.mark_done(result)
    logger.info("done %s in %.1f s: %s", name, result.seconds, result.metrics)
    return result


def run_pipeline(ws: Workspace, steps: str, config: PipelineConfig, make_progress: ProgressFactory,
                 source: Path | None = None, force: tuple[str, ...] = (), *, preset: str = "standard",
                 settings: dict[str, Any] | None = None, holder: str | None = "spaceport run") -> list[StageResult]:
    """Run the stages of ``steps`` in order under the workspace lock; finished stages are skipped (resume).

    ``force`` redoes the named stages and, since their outputs change, every later stage of the selection.
    ``holder`` names who takes the lock; None when the caller holds it already (the CLI takes it before it
    imports the stages, so that a busy workspace is reported at once).
    """
    if steps not in STEP_STAGES:
        raise SpaceportError(f"--steps {steps}: choose one of {', '.join(STEP_STAGES)}")
    names = STEP_STAGES[steps]
    unknown = [s for s in force if s not in names]
    if unknown:
        raise SpaceportError(f"--force {', '.join(unknown)}: not a stage of --steps {steps} ({', '.join(names)})")
    with ws.lock(holder, log=ws.stage_logger("pipeline").info) if holder else nullcontext():
        prepare_job(ws, steps, config, source, preset=preset, settings=settings)
        if force:
            for name in names[min(names.index(s) for s in force):]:
                ws.reset_stage(name)
        results = [run_stage(ws, name, config, make_progress) for name in names]
        ws.update_job(status="succeeded", stage=None, error=None)
    return results

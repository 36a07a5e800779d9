"""The DAG: which stages a step selection runs, in what order, and run_pipeline().

The CLI, the worker and the API all call run_pipeline (or run_stage for one stage).
"""

from __future__ import annotations

import importlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from spaceport.progress import Progress
from spaceport.workspace import STAGES, SpaceportError, StageResult, Workspace

Steps = Literal["full", "sfm", "train", "compress"]
STEP_STAGES: dict[str, list[str]] = {
    "full": ["ingest", "sfm", "train", "compress", "report"],
    "sfm": ["ingest", "sfm"],
    "train": ["train", "compress", "report"],
    "compress": ["compress"],
}
# stage -> (module, function, config class); imported lazily so a missing stage fails cleanly
STAGE_IMPL: dict[str, tuple[str, str, str]] = {
    "ingest": ("spaceport.ingest", "run_ingest", "IngestConfig"),
    "sfm": ("spaceport.sfm", "run_sfm", "SfmConfig"),
    "train": ("spaceport.splat.train", "run_train", "TrainConfig"),
    "compress": ("spaceport.compress", "run_compress", "CompressConfig"),
    "report": ("spaceport.report", "run_report", "ReportConfig"),
}
PRESETS = ("preview", "standard")
# stage-level preset overrides that belong to the pipeline; the trainer publishes TRAIN_PRESETS itself
PIPELINE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "preview": {"ingest": {"max_size": 1000}, "sfm": {"max_image_size": 1000}},
    "standard": {"ingest": {"max_size": 1600}, "sfm": {"max_image_size": 1600}},
}


def _load(stage: str) -> tuple[Callable[..., StageResult], type[BaseModel]]:
    module_name, function, config_class = STAGE_IMPL[stage]
    try:
        module = importlib.import_module(module_name)
        return getattr(module, function), getattr(module, config_class)
    except (ImportError, AttributeError) as exc:
        raise SpaceportError(f"stage '{stage}' is not available yet in this build ({exc})") from exc


class PipelineConfig(BaseModel):
    """Everything a job needs; stored in job.json so a resumed job uses the same settings."""

    steps: Steps = "full"
    preset: Literal["preview", "standard"] = "standard"
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-stage overrides

    def stage_config(self, stage: str) -> BaseModel:
        _, config_class = _load(stage)
        values: dict[str, Any] = dict(PIPELINE_PRESETS[self.preset].get(stage, {}))
        if stage == "train":
            from spaceport.splat.train import TRAIN_PRESETS

            values.update(TRAIN_PRESETS[self.preset])
        values.update(self.stages.get(stage, {}))
        return config_class(**values)

    def with_override(self, dotted: str, value: Any) -> PipelineConfig:
        stage, _, field = dotted.partition(".")
        if stage not in STAGE_IMPL or not field:
            raise SpaceportError(f"--set {dotted}: expected STAGE.FIELD with STAGE one of {', '.join(STAGES)}")
        stages = {k: dict(v) for k, v in self.stages.items()}
        stages.setdefault(stage, {})[field] = value
        return self.model_copy(update={"stages": stages})


# -- input ---------------------------------------------------------------------------------------


VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".m4v"}


def import_input(ws: Workspace, source: Path, steps: str) -> None:
    """Copy what the user gave into input/ (never modified afterwards). Idempotent for the same source."""
    source = Path(source).resolve()
    job = ws.read_job()
    if job.get("source") and job["source"] != str(source):
        raise SpaceportError(f"{ws.root}: this workspace was made from {job['source']}; pass -o with a new "
                             "folder for a new input")
    if not source.exists():
        raise SpaceportError(f"{source}: no such file or folder; pass a folder or .zip of photos, a video, "
                             "a previous workspace (--steps train) or a .ply (--steps compress)")
    if ws.input_dir.exists() and any(ws.input_dir.iterdir()):
        return
    tmp = ws.root / "input.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if steps == "train":
        _import_model(source, tmp)
    elif source.is_dir():
        shutil.copytree(source, tmp, dirs_exist_ok=True, symlinks=True)
    else:
        shutil.copy2(source, tmp / source.name)
    tmp.replace(ws.input_dir)
    ws.update_job(source=str(source))


def _import_model(source: Path, dest: Path) -> None:
    """--steps train takes a previous workspace, or a folder with images/ and a COLMAP sparse model."""
    previous = source / "sfm" / "undistorted"
    if (previous / "sparse").is_dir():
        shutil.copytree(previous / "images", dest / "images")
        shutil.copytree(previous / "sparse", dest / "sparse")
        return
    sparse = next((p for p in (source / "sparse" / "0", source / "sparse") if (p / "cameras.bin").exists()
                   or (p / "cameras.txt").exists()), None)
    if sparse is None or not (source / "images").is_dir():
        raise SpaceportError(f"{source}: --steps train needs a previous workspace (with sfm/undistorted) or a "
                             "folder holding images/ and a COLMAP model in sparse/0 (cameras, images, points3D)")
    shutil.copytree(source / "images", dest / "images")
    shutil.copytree(sparse, dest / "sparse")


def _materialize_model(ws: Workspace, progress: Progress) -> None:
    """For --steps train: put the imported model where training reads it (undistorting if needed)."""
    if (ws.undistorted_dir / "sparse").is_dir():
        return
    from spaceport.sfm.colmap import import_model

    import_model(ws, ws.input_dir / "sparse", ws.input_dir / "images", progress)


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
    import sys

    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


ProgressFactory = Callable[[str, logging.Logger], Progress]


def run_stage(ws: Workspace, stage: str, config: PipelineConfig, make_progress: ProgressFactory) -> StageResult:
    """Run one stage unless its .done marker exists; write the marker last."""
    if ws.is_done(stage):
        result = ws.stage_result(stage)
        assert result is not None
        result.skipped = True
        return result
    logger = ws.stage_logger(stage)
    ws.update_job(status="running", stage=stage)
    start = time.perf_counter()
    try:
        run, _ = _load(stage)
        stage_config = config.stage_config(stage)
        logger.info("start %s with %s", stage, stage_config.model_dump_json())
        with _PeakMemory() as memory:
            result = run(ws, stage_config, make_progress(stage, logger))
    except BaseException as exc:
        logger.error("%s failed: %s", stage, exc)
        ws.update_job(status="failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted",
                      stage=stage, error=str(exc))
        raise
    result.seconds = round(time.perf_counter() - start, 2)
    result.metrics.update(memory.metrics())
    ws.mark_done(result)
    logger.info("done %s in %.1f s: %s", stage, result.seconds, result.metrics)
    return result


def run_pipeline(ws: Workspace, config: PipelineConfig, make_progress: ProgressFactory,
                 source: Path | None = None, force: tuple[str, ...] = ()) -> list[StageResult]:
    """Run the stages of ``config.steps`` in order; finished stages are skipped (resume).

    ``force`` redoes the named stages and, since their outputs change, every later stage of the selection.
    """
    stages = STEP_STAGES[config.steps]
    unknown = [s for s in force if s not in stages]
    if unknown:
        raise SpaceportError(f"--force {', '.join(unknown)}: not a stage of --steps {config.steps} "
                             f"({', '.join(stages)})")
    ws.root.mkdir(parents=True, exist_ok=True)
    if source is not None:
        import_input(ws, source, config.steps)
    ws.update_job(config=config.model_dump(), steps=config.steps, status="running")
    if force:
        first = min(stages.index(s) for s in force)
        for stage in stages[first:]:
            ws.reset_stage(stage)
    if config.steps == "train" and "train" in stages and not ws.is_done("train"):
        _materialize_model(ws, make_progress("sfm", ws.stage_logger("sfm")))
    results = [run_stage(ws, stage, config, make_progress) for stage in stages]
    ws.update_job(status="succeeded", stage=None, error=None)
    return results

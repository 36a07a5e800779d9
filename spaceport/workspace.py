"""The on-disk contract between stages (see DESIGN.md, "The workspace").

Every job owns one folder. A stage writes its outputs under its own folder and, last,
an atomic ``<stage>/.done`` marker holding its result; a stage with a marker is never re-run
on resume unless forced.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spaceport.errors import SpaceportError, WorkspaceBusy
from spaceport.formats.atomic import atomic_write_bytes, atomic_write_json, atomic_write_to, staged_dir
from spaceport.formats.job import JobFile, read_job, utc_now, write_job

__all__ = ["STAGE_DIRS", "SpaceportError", "StageResult", "Workspace", "WorkspaceBusy", "atomic_write_bytes",
           "atomic_write_json", "atomic_write_to", "staged_dir"]

# ingest writes its outputs under images/, not ingest/; every other stage under its own name
STAGE_DIRS = {"ingest": "images", "sfm": "sfm", "train": "train", "compress": "compress", "report": "report"}
LOCK_FILE = ".lock"


@dataclass
class StageResult:
    stage: str
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)  # name -> path relative to the workspace
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False  # True when the stage was already done (resume)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageResult:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class Workspace:
    """Paths and stage markers of one job folder."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    # -- paths -------------------------------------------------------------------------------------
    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def masks_dir(self) -> Path:
        """Masks of the images (``<image file>.png``, 0 = ignore, 255 = keep), written by ingest when given."""
        return self.root / "masks"

    @property
    def sfm_dir(self) -> Path:
        return self.root / "sfm"

    @property
    def sparse_dir(self) -> Path:
        return self.root / "sfm" / "sparse" / "0"

    @property
    def undistorted_dir(self) -> Path:
        return self.root / "sfm" / "undistorted"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def splat_ply(self) -> Path:
        return self.root / "train" / "splat.ply"

    @property
    def compress_dir(self) -> Path:
        return self.root / "compress"

    @property
    def sog_path(self) -> Path:
        return self.root / "compress" / "scene.sog"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def job_file(self) -> Path:
        return self.root / "job.json"

    def stage_dir(self, stage: str) -> Path:
        return self.root / STAGE_DIRS[stage]

    def done_marker(self, stage: str) -> Path:
        return self.stage_dir(stage) / ".done"

    def rel(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root))

    # -- job.json ----------------------------------------------------------------------------------
    def read_job(self) -> JobFile:
        """job.json, or a new one where there is none yet."""
        return read_job(self.root) if self.job_file.exists() else JobFile()

    def update_job(self, **fields: Any) -> JobFile:
        job = self.read_job().model_copy(update=fields)
        write_job(self.root, JobFile.model_validate(job.model_dump()))
        return job

    # -- the lock: one writer per workspace -----------------------------------------------------------
    @contextmanager
    def lock(self, holder: str, log: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the workspace exclusively while the block runs; raise WorkspaceBusy if a live process has it.

        The kernel drops the lock (flock) when its process dies, so a crash never leaves the workspace stuck;
        the holder recorded in the file is only there to name it in messages.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read_holder(fd)
            os.close(fd)
            raise WorkspaceBusy(
                f"workspace {self.root} is busy: {other.get('holder', 'another process')} (pid "
                f"{other.get('pid', '?')} on {other.get('host', '?')}) since {other.get('since', '?')}; wait for "
                "it to finish or stop it"
            ) from None
        try:
            stale = _read_holder(fd)
            if stale and log is not None:
                log(f"taking over the lock of {stale.get('holder')} (pid {stale.get('pid')} on "
                    f"{stale.get('host')}, since {stale.get('since')}), which ended without releasing it")
            _write_holder(fd, {"holder": holder, "pid": os.getpid(), "host": socket.gethostname(),
                               "since": utc_now()})
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- stage markers -----------------------------------------------------------------------------
    def is_done(self, stage: str) -> bool:
        return self.done_marker(stage).exists()

    def stage_result(self, stage: str) -> StageResult | None:
        marker = self.done_marker(stage)
        if not marker.exists():
            return None
        return StageResult.from_json(json.loads(marker.read_text()))

    def mark_done(self, result: StageResult) -> None:
        atomic_write_json(self.done_marker(result.stage), result.to_json())

    def clear_done(self, stage: str) -> None:
        self.done_marker(stage).unlink(missing_ok=True)

    def reset_stage(self, stage: str) -> None:
        """Remove a stage's outputs entirely (used by --force)."""
        self.clear_done(stage)
        folder = self.stage_dir(stage)
        if folder.exists():
            shutil.rmtree(folder)

    # -- logs --------------------------------------------------------------------------------------
    def stage_logger(self, stage: str) -> logging.Logger:
        """A logger writing to logs/<stage>.log (appending, so a resumed run keeps the earlier lines)."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        logger = logging.getLogger(f"spaceport.{stage}.{self.root}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        log_file = str(self.logs_dir / f"{stage}.log")
        if not any(getattr(h, "baseFilename", None) == log_file for h in logger.handlers):
            handler = logging.FileHandler(log_file)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
        return logger


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 4096)
    try:
        return json.loads(data) if data.strip() else {}
    except ValueError:
        return {}


def _write_holder(fd: int, holder: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    os.fsync(fd)

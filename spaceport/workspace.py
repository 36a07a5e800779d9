"""The on-disk contract between stages (see DESIGN.md, "The workspace").

Every job owns one folder. A stage writes its outputs under its own folder and, last,
an atomic ``<stage>/.done`` marker holding its result; a stage with a marker is never re-run
on resume unless forced.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("ingest", "sfm", "train", "compress", "report")
# ingest writes its outputs under images/, not ingest/; every other stage under its own name
STAGE_DIRS = {"ingest": "images", "sfm": "sfm", "train": "train", "compress": "compress", "report": "report"}


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before worker threads exist
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class SpaceportError(Exception):
    """An error the user can act on: the message names the file and the fix. No traceback is shown."""


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


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
    def read_job(self) -> dict[str, Any]:
        if not self.job_file.exists():
            return {}
        return json.loads(self.job_file.read_text())

    def update_job(self, **fields: Any) -> dict[str, Any]:
        job = self.read_job()
        job.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        job.update(fields)
        job["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        atomic_write_json(self.job_file, job)
        return job

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

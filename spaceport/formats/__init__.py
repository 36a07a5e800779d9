"""Typed read/write of every file of the workspace contract (DESIGN.md, "The workspace").

Stages and the report read each other's outputs only through this package; a file that does not validate is a
``SpaceportError`` naming it. It imports nothing from the stages.
"""

from spaceport.formats.atomic import atomic_write_bytes, atomic_write_json, atomic_write_to, staged_dir
from spaceport.formats.compressed_ply import read_compressed_ply, write_compressed_ply
from spaceport.formats.frames import FramesManifest, read_frames, write_frames
from spaceport.formats.gaussians import Gaussians, read_ply, write_ply
from spaceport.formats.job import JobFile, read_job, write_job
from spaceport.formats.report import Report, read_report, write_report
from spaceport.formats.sfm import SfmReport, read_sfm_report, write_sfm_report
from spaceport.formats.sog import read_sog, write_sog
from spaceport.formats.splat import read_splat, write_splat
from spaceport.formats.spz import read_spz, write_spz
from spaceport.formats.train import (
    Evaluation,
    MetricsLine,
    append_metrics,
    kept_step,
    read_evaluation,
    read_metrics,
    write_evaluation,
)

__all__ = [
    "Evaluation", "FramesManifest", "Gaussians", "JobFile", "MetricsLine", "Report", "SfmReport", "append_metrics",
    "atomic_write_bytes", "atomic_write_json", "atomic_write_to", "kept_step", "read_compressed_ply",
    "read_evaluation", "read_frames", "read_job", "read_metrics", "read_ply", "read_report", "read_sfm_report",
    "read_sog", "read_splat", "read_spz", "staged_dir", "write_compressed_ply", "write_evaluation", "write_frames",
    "write_job", "write_ply", "write_report", "write_sfm_report", "write_sog", "write_splat", "write_spz",
]

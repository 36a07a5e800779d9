"""Ingest: a folder of photos, a zip of photos or a video -> normalized JPEGs and frames.json in images/, and the
masks given beside the photos (a masks/ folder) -> masks/ in the workspace.

The stage's code is imported on first use, so reading its config (``spaceport.ingest.config``) stays cheap.
"""

from importlib import import_module
from typing import Any

from spaceport.ingest.config import IngestConfig

_LAZY = {"run_ingest": "spaceport.ingest.stage", "DroppedRecord": "spaceport.formats.frames",
         "FrameRecord": "spaceport.formats.frames", "FramesManifest": "spaceport.formats.frames"}
__all__ = ["IngestConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spaceport.ingest' has no attribute {name!r}")

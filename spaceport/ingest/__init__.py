"""Ingest: a folder of photos, a zip of photos or a video -> normalized JPEGs and frames.json in images/."""

from spaceport.ingest.config import IngestConfig
from spaceport.ingest.manifest import DroppedRecord, FrameRecord, FramesManifest
from spaceport.ingest.stage import run_ingest

__all__ = ["DroppedRecord", "FrameRecord", "FramesManifest", "IngestConfig", "run_ingest"]

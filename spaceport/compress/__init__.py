"""Compression: a trained splat's PLY to PlayCanvas SOG, with our own self-organizing sort (PLAS)."""

from spaceport.compress.sog import read_sog
from spaceport.compress.stage import CompressConfig, compress_ply, run_compress

__all__ = ["CompressConfig", "compress_ply", "read_sog", "run_compress"]

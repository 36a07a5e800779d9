"""Compression: a trained splat's PLY to PlayCanvas SOG (and the other formats viewers read, ``export_splat``):
pruning and SH band dropping measured on the training views, Morton order (our PLAS sort as an option), precision
chosen by rendered held-out PSNR.

The stage's code (torch) is imported on first use, so reading its config (``spaceport.compress.config``) stays cheap.
"""

from importlib import import_module
from typing import Any

from spaceport.compress.config import CompressConfig

_LAZY = {"compress_ply": "stage", "run_compress": "stage", "export_splat": "export"}
__all__ = ["CompressConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"spaceport.compress.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'spaceport.compress' has no attribute {name!r}")

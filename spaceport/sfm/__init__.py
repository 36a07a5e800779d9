"""SfM stage: real COLMAP through pycolmap (extract, match, map, undistort).

The stage's code is imported on first use, so reading its config (``spaceport.sfm.config``) stays cheap.
"""

from importlib import import_module
from typing import Any

from spaceport.sfm.config import SfmConfig

_LAZY = {"camera_groups": "features", "choose_matcher": "features", "run_sfm": "colmap"}
__all__ = ["SfmConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"spaceport.sfm.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'spaceport.sfm' has no attribute {name!r}")

"""SfM stage: real COLMAP through pycolmap (extract, match, map, undistort)."""

from spaceport.sfm.colmap import SfmConfig, camera_groups, choose_matcher, run_sfm

__all__ = ["SfmConfig", "camera_groups", "choose_matcher", "run_sfm"]

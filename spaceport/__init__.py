"""Spaceport: photos or a video of a place -> COLMAP -> 3D Gaussian Splat -> PlayCanvas SOG."""

__version__ = "0.1.0"

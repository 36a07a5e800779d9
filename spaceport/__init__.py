"""Spaceport: photos or a video of a place -> COLMAP -> 3D Gaussian Splat -> PlayCanvas SOG."""

import os

# OpenMP's default spin-waiting makes torch's CPU renderer ~30x slower when the machine is shared with other
# busy processes (measured: 13.8 s vs 0.48 s per step); it must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

"""Dense initialisation experiment (issue 13): COLMAP's patch-match stereo and fusion on a finished SfM, and a copy
of the workspace whose undistorted model carries the fused points beside the sparse ones, for ``bench/gpu_tune.sh``.

    python bench/mvs_init.py --workspace WS --out WS_MVS [--max-image-size 1000] [--max-points 400000]

Needs pycolmap with CUDA (pycolmap-cuda12 on the lent GPU). Prints the stage times, the point counts and the
sparse scene extent (train the copy with ``--set scene_extent=...`` to compare at the same learning rates), and
writes them to WS_MVS/mvs.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pycolmap

from spaceport.splat.scene import load_scene
from spaceport.workspace import Workspace


def limit_sources(undistorted: Path, sources: int) -> None:
    """patch-match.cfg pairs each photo with its best ``sources`` neighbours instead of undistortion's 20."""
    config = undistorted / "stereo" / "patch-match.cfg"
    lines = config.read_text().splitlines()
    config.write_text("\n".join(f"__auto__, {sources}" if line.startswith("__auto__") else line
                                for line in lines) + "\n")


def dense_points(undistorted: Path, max_image_size: int, geometric: bool, iterations: int,
                 sources: int) -> tuple[pycolmap.Reconstruction, dict]:
    seconds = {}
    started = time.perf_counter()
    limit_sources(undistorted, sources)
    options = pycolmap.PatchMatchOptions(max_image_size=max_image_size, geom_consistency=geometric,
                                         filter=not geometric, num_iterations=iterations)
    pycolmap.patch_match_stereo(undistorted, options=options)
    seconds["patch_match"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    fused_dir = undistorted / "fused"
    fused_dir.mkdir(exist_ok=True)
    fused = pycolmap.stereo_fusion(fused_dir, undistorted, input_type="geometric" if geometric else "photometric",
                                   options=pycolmap.StereoFusionOptions(max_image_size=max_image_size))
    seconds["fusion"] = round(time.perf_counter() - started, 2)
    return fused, seconds


def add_points(model_dir: Path, fused: pycolmap.Reconstruction, max_points: int, seed: int = 0) -> int:
    model = pycolmap.Reconstruction(str(model_dir))
    points = list(fused.points3D.values())
    if len(points) > max_points:
        keep = np.random.default_rng(seed).choice(len(points), max_points, replace=False)
        points = [points[i] for i in keep]
    for point in points:
        model.add_point3D(point.xyz, pycolmap.Track(), point.color)
    model.write(str(model_dir))
    return len(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-image-size", type=int, default=1000)
    parser.add_argument("--max-points", type=int, default=400_000)
    parser.add_argument("--photometric", action="store_true", help="skip the geometric consistency pass")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--sources", type=int, default=6)
    args = parser.parse_args()
    source, target = Workspace(args.workspace), Workspace(args.out)
    shutil.rmtree(target.root, ignore_errors=True)
    target.root.mkdir(parents=True)
    shutil.copytree(source.root / "sfm", target.root / "sfm", symlinks=True)
    if (source.root / "images").is_dir():
        (target.root / "images").symlink_to((source.root / "images").resolve(), target_is_directory=True)
    undistorted = target.undistorted_dir
    sparse = load_scene(undistorted / "sparse", undistorted / "images", max_width=64)
    fused, seconds = dense_points(undistorted, args.max_image_size, not args.photometric, args.iterations,
                                   args.sources)
    added = add_points(undistorted / "sparse", fused, args.max_points)
    summary = {"seconds": seconds, "fused_points": len(fused.points3D), "added_points": added,
               "sparse_points": len(sparse.points), "sparse_extent": round(sparse.extent, 4),
               "max_image_size": args.max_image_size, "geometric": not args.photometric,
               "iterations": args.iterations, "sources": args.sources}
    (target.root / "mvs.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""gsplat's rasterization alone on a trained splat (issue 13's steps/s bound): forward and backward per view.

    python bench/raster_gpu.py --workspace WS --splat WS/train/splat.ply [--views 8] [--repeats 5] \
        [--json bench/results/raster_gpu_NAME.json]

WS is a workspace whose sfm stage is done; the splat is rendered from its training views at full size with the
settings training uses (classic, pinhole, a random background, SH at the splat's degree), then with one option
changed per row: gsplat's tile size (8, 32 against 16), packed mode, and a share of the Gaussians hidden
(``train.gaussian_dropout``'s last steps). Columns: forward and backward milliseconds (CUDA events, mean over the
views and repeats after a warm-up), tile intersections, and steps/s if a step were the rasterizer alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.outputs import write_result  # noqa: E402
from spaceport.formats.gaussians import read_ply  # noqa: E402
from spaceport.splat.model import params_from_gaussians  # noqa: E402
from spaceport.splat.scene import load_scene  # noqa: E402
from spaceport.workspace import Workspace  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "training settings (tile 16)": {},
    "tile 8": {"tile_size": 8},
    "tile 32": {"tile_size": 32},
    "packed": {"packed": True},
    "10% hidden": {"hidden": 0.1},
    "20% hidden": {"hidden": 0.2},
}


def time_variant(params: torch.nn.ParameterDict, views: list, sh_degree: int, repeats: int,
                 tile_size: int = 16, packed: bool = False, hidden: float = 0.0) -> dict[str, float]:
    from gsplat import rasterization

    generator = torch.Generator("cuda").manual_seed(0)
    forward_ms, backward_ms, intersections = [], [], []
    for repeat in range(repeats + 1):  # the first round warms up
        for view in views:
            opacities = torch.sigmoid(params["opacities"])
            if hidden:
                keep = torch.rand(len(opacities), device="cuda", generator=generator) >= hidden
                opacities = opacities * keep / (1.0 - hidden)
            colors = torch.cat([params["sh0"], params["shN"]], dim=1)
            background = torch.rand(1, 3, device="cuda", generator=generator)
            start, middle, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            start.record()
            rendered, _, info = rasterization(
                params["means"], params["quats"], torch.exp(params["scales"]), opacities, colors,
                view.viewmat[None], view.K[None], view.width, view.height, sh_degree=sh_degree,
                backgrounds=None if packed else background, packed=packed, tile_size=tile_size,
                rasterize_mode="classic", camera_model="pinhole")
            middle.record()
            (rendered * 0.5).sum().backward()
            end.record()
            torch.cuda.synchronize()
            for tensor in params.values():
                tensor.grad = None
            if repeat:
                forward_ms.append(start.elapsed_time(middle))
                backward_ms.append(middle.elapsed_time(end))
                intersections.append(info["isect_ids"].numel())
    forward, backward = sum(forward_ms) / len(forward_ms), sum(backward_ms) / len(backward_ms)
    return {"forward_ms": round(forward, 3), "backward_ms": round(backward, 3),
            "intersections_m": round(sum(intersections) / len(intersections) / 1e6, 2),
            "raster_bound_steps_s": round(1000.0 / (forward + backward), 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--splat", type=Path, required=True, help="a trained splat.ply")
    parser.add_argument("--views", type=int, default=8, help="training views timed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    ws = Workspace(args.workspace)
    scene = load_scene(ws.undistorted_dir / "sparse", ws.undistorted_dir / "images", max_width=None,
                       holdout_every=8, max_points=None, seed=0).to("cuda")
    views = scene.train_views[: args.views]
    gaussians = read_ply(args.splat)
    params = params_from_gaussians(gaussians, "cuda")
    rows = {}
    print(f"{len(gaussians.means):,} Gaussians, SH degree {gaussians.sh_degree}, {len(views)} views at "
          f"{views[0].width}x{views[0].height}")
    print(f"{'variant':<30} {'fwd ms':>8} {'bwd ms':>8} {'isects M':>9} {'bound steps/s':>14}")
    for name, options in VARIANTS.items():
        row = time_variant(params, views, gaussians.sh_degree, args.repeats, **options)
        rows[name] = row
        print(f"{name:<30} {row['forward_ms']:>8.2f} {row['backward_ms']:>8.2f} {row['intersections_m']:>9.2f} "
              f"{row['raster_bound_steps_s']:>14.1f}")
    result = {"gaussians": len(gaussians.means), "width": views[0].width, "height": views[0].height,
              "device": torch.cuda.get_device_name(), "variants": rows}
    write_result(result, args.json, "raster_gpu.json")
    return result


if __name__ == "__main__":
    main()

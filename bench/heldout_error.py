"""Where a splat's held-out error sits (issue 13): pixels by how many training photos see what they show.

    python bench/heldout_error.py --workspace WS --splat WS/train/splat.ply [--json bench/results/NAME.json] \
        [--images DIR]

WS is a workspace whose sfm stage is done. Each held-out photo is rendered with the training's evaluation settings
(black behind the splat) together with its depth; every pixel is lifted to 3D at that depth and projected into
the training photos, counting those whose frame it falls in (in front of the camera, not checked for occlusion,
so the counts are upper bounds). Per photo: the share of pixels and of the squared error in the
groups "seen by 0", "1", "2-3" and "4+" training photos, each group's PSNR, the share of nearly transparent
pixels (alpha < 0.5, where black shows), and the PSNR if the pixels seen by at most one photo were perfect.
Two diagnostics of what else the error is: the PSNR (8 px margin left out) after the best whole-image shift of the
render (pose error) and after the per-channel gain and offset that best match the blurred render to the
blurred photo (exposure, white balance).
``--images`` writes, per photo, the error map next to the coverage map.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.outputs import write_result  # noqa: E402
from spaceport.formats.gaussians import read_ply  # noqa: E402
from spaceport.splat.evaluate import to_float_image  # noqa: E402
from spaceport.splat.model import params_from_gaussians  # noqa: E402
from spaceport.splat.scene import View, load_scene  # noqa: E402
from spaceport.workspace import Workspace  # noqa: E402

GROUPS = {"0": (0, 0), "1": (1, 1), "2-3": (2, 3), "4+": (4, 10_000)}


def render_with_depth(params: torch.nn.ParameterDict, view: View, sh_degree: int):
    from gsplat import rasterization

    colors = torch.cat([params["sh0"], params["shN"]], dim=1)
    rendered, alphas, _ = rasterization(
        params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]), colors,
        view.viewmat[None], view.K[None], view.width, view.height, sh_degree=sh_degree, render_mode="RGB+ED",
        rasterize_mode="classic", camera_model="pinhole")  # no background: black, as the evaluation
    return rendered[0, ..., :3].clamp(0, 1), rendered[0, ..., 3], alphas[0, ..., 0]


def coverage(view: View, depth: torch.Tensor, train_views: list[View]) -> torch.Tensor:
    """How many training photos' frames each pixel's 3D point falls in."""
    ys, xs = torch.meshgrid(torch.arange(view.height, device=depth.device, dtype=torch.float32) + 0.5,
                            torch.arange(view.width, device=depth.device, dtype=torch.float32) + 0.5, indexing="ij")
    rays = torch.stack([(xs - view.K[0, 2]) / view.K[0, 0], (ys - view.K[1, 2]) / view.K[1, 1],
                        torch.ones_like(xs)], dim=-1)
    camera_points = rays * depth[..., None]
    to_world = torch.linalg.inv(view.viewmat)
    world = camera_points.reshape(-1, 3) @ to_world[:3, :3].T + to_world[:3, 3]
    count = torch.zeros(world.shape[0], dtype=torch.int32, device=depth.device)
    for other in train_views:
        cam = world @ other.viewmat[:3, :3].T + other.viewmat[:3, 3]
        in_front = cam[:, 2] > 1e-3
        u = cam[:, 0] / cam[:, 2].clamp_min(1e-3) * other.K[0, 0] + other.K[0, 2]
        v = cam[:, 1] / cam[:, 2].clamp_min(1e-3) * other.K[1, 1] + other.K[1, 2]
        inside = in_front & (u >= 0) & (u < other.width) & (v >= 0) & (v < other.height)
        count += inside.to(torch.int32)
    return count.reshape(depth.shape)


def psnr_of(squared_error_sum: float, values: int) -> float | None:
    if values == 0:
        return None
    return round(-10.0 * math.log10(max(squared_error_sum / values, 1e-12)), 2)


def shifted(image: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """The (H, W, 3) image resampled at (x + dx, y + dy), bilinear, edges repeated."""
    height, width = image.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(height, device=image.device, dtype=torch.float32),
                            torch.arange(width, device=image.device, dtype=torch.float32), indexing="ij")
    grid = torch.stack([(xs + dx + 0.5) / width * 2 - 1, (ys + dy + 0.5) / height * 2 - 1], dim=-1)[None]
    sampled = torch.nn.functional.grid_sample(image.permute(2, 0, 1)[None], grid, mode="bilinear",
                                              padding_mode="border", align_corners=False)
    return sampled[0].permute(1, 2, 0)


def best_shift(rendered: torch.Tensor, truth: torch.Tensor, margin: int = 8) -> tuple[float, float, float]:
    """The whole-image translation of the render (coarse 0.5 px grid over +-3 px, then 0.125 px) that best
    matches the photo: (dx, dy, PSNR on the interior). A diagnostic of pose error, not an evaluation protocol."""
    inner = (slice(margin, -margin), slice(margin, -margin))

    def score(dx: float, dy: float) -> float:
        mse = float(((shifted(rendered, dx, dy)[inner] - truth[inner]) ** 2).mean())
        return -10.0 * math.log10(max(mse, 1e-12))

    centre, step = (0.0, 0.0), 0.5
    for radius in (6, 4):
        candidates = [(centre[0] + i * step, centre[1] + j * step) for i in range(-radius, radius + 1)
                      for j in range(-radius, radius + 1)]
        centre = max(candidates, key=lambda c: score(*c))
        step /= 4
    return centre[0], centre[1], round(score(*centre), 2)


def colour_matched_psnr(rendered: torch.Tensor, truth: torch.Tensor, blur: int = 31) -> float:
    """PSNR after the per-channel gain and offset that best map the render to the photo (exposure, white
    balance): a diagnostic of colour error. Fitted on both images blurred by a ``blur``-pixel box, so that
    pixel-level error does not shrink the gain (a least-squares fit on the raw pixels would gain from that alone)."""

    def blurred(image: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(image.permute(2, 0, 1)[None], blur, stride=1, padding=blur // 2,
                                              count_include_pad=False)[0].permute(1, 2, 0).reshape(-1, 3)

    smooth_render, smooth_truth = blurred(rendered).double(), blurred(truth).double()
    render_mean, truth_mean = smooth_render.mean(dim=0), smooth_truth.mean(dim=0)
    gain = ((smooth_render - render_mean) * (smooth_truth - truth_mean)).mean(dim=0) / smooth_render.var(dim=0)
    matched = (rendered.reshape(-1, 3).double() - render_mean) * gain + truth_mean  # least squares, per channel
    mse = float(((matched.clamp(0, 1) - truth.reshape(-1, 3).double()) ** 2).mean())
    return round(-10.0 * math.log10(max(mse, 1e-12)), 2)


def analyse(view: View, params, sh_degree: int, train_views: list[View]) -> tuple[dict[str, Any], dict]:
    rendered, depth, alpha = render_with_depth(params, view, sh_degree)
    truth = to_float_image(view)
    squared = ((rendered - truth) ** 2).sum(dim=-1)  # per pixel, over the three channels
    seen = coverage(view, depth, train_views)
    total = float(squared.sum())
    pixels = seen.numel()
    row: dict[str, Any] = {"photo": view.name, "psnr": psnr_of(total, pixels * 3),
                           "transparent_share": round(float((alpha < 0.5).float().mean()), 4)}
    for group, (low, high) in GROUPS.items():
        members = (seen >= low) & (seen <= high)
        error = float(squared[members].sum())
        row[f"seen_{group}"] = {"pixel_share": round(float(members.float().mean()), 4),
                                "error_share": round(error / total, 4),
                                "psnr": psnr_of(error, int(members.sum()) * 3)}
    margin = 8
    inner = (slice(margin, -margin), slice(margin, -margin))
    row["psnr_interior"] = psnr_of(float(((rendered[inner] - truth[inner]) ** 2).sum()),
                                   truth[inner].numel())
    dx, dy, row["psnr_interior_best_shift"] = best_shift(rendered, truth, margin)
    row["best_shift_px"] = [dx, dy]
    row["psnr_colour_matched"] = colour_matched_psnr(rendered, truth)
    barely = float(squared[seen <= 1].sum())
    row["psnr_if_barely_seen_were_perfect"] = psnr_of(total - barely, pixels * 3)
    maps = {"error": squared.sqrt().clamp(0, 1).cpu().numpy(), "seen": seen.cpu().numpy(), "truth": truth.cpu().numpy(),
            "rendered": rendered.cpu().numpy()}
    return row, maps


def write_maps(path: Path, maps: dict) -> None:
    from PIL import Image

    palette = np.array([[200, 30, 30], [230, 150, 20], [230, 230, 60], [60, 170, 60]], np.uint8)  # 0, 1, 2-3, 4+
    groups = np.digitize(maps["seen"], [1, 2, 4])
    error = (np.repeat(maps["error"][..., None], 3, axis=-1) * 255).astype(np.uint8)
    panels = [(maps["truth"] * 255).astype(np.uint8), (maps["rendered"] * 255).astype(np.uint8), error,
              palette[groups]]
    Image.fromarray(np.concatenate(panels, axis=1)).save(path, quality=85)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--splat", type=Path, required=True)
    parser.add_argument("--holdout-every", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--images", type=Path, help="folder for truth | render | error | coverage JPEGs")
    args = parser.parse_args(argv)

    ws = Workspace(args.workspace)
    scene = load_scene(ws.undistorted_dir / "sparse", ws.undistorted_dir / "images",
                       holdout_every=args.holdout_every).to("cuda")
    gaussians = read_ply(args.splat)
    params = params_from_gaussians(gaussians, "cuda")
    rows = []
    with torch.no_grad():
        for view in scene.test_views:
            row, maps = analyse(view, params, gaussians.sh_degree, scene.train_views)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.images:
                args.images.mkdir(parents=True, exist_ok=True)
                write_maps(args.images / f"{Path(view.name).stem}_coverage.jpg", maps)
    result = {"splat": str(args.splat), "gaussians": len(gaussians.means), "views": rows}
    write_result(result, args.json, "heldout_error.json")
    return result


if __name__ == "__main__":
    main()

"""What compression costs in image quality: renders of the decoded SOG against the photos and the original.

    python bench/compress_quality.py --ply WS/train/splat.ply --workspace WS [--max-width 256]

For the held-out views of the workspace's undistorted COLMAP model (every ``--holdout-every``-th image
sorted by name, as training holds them out), renders the original splat, our SOG decoded (by default
twice: PLAS order and Morton order; ``--variant`` picks others), and
splat-transform's SOG of the same PLY decoded by splat-transform (``-g cpu -i ITERATIONS``; skip it with
``--st-iterations 0``), all with a black background as the trainer's evaluation does. Reports file sizes,
PLY/SOG ratios, PSNR against the photos (and the loss against the original splat's PSNR), and PSNR
against the original's renders. Renders on CUDA with gsplat when present, else with the torch renderer.
Writes bench/results/compress_quality.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spaceport.compress import CompressConfig, compress_ply
from spaceport.formats.gaussians import Gaussians, read_ply
from spaceport.formats.sog import read_sog
from spaceport.progress import NullProgress
from spaceport.splat.evaluate import psnr
from spaceport.splat.model import render_gaussians
from spaceport.splat.scene import View, load_scene

ROOT = Path(__file__).resolve().parents[1]
SPLAT_TRANSFORM = ROOT / "tests" / "js" / "node_modules" / ".bin" / "splat-transform"
DEFAULT_VARIANTS = ["spaceport SOG (PLAS)={}", 'spaceport SOG (Morton)={"sort": "morton"}']


def render_views(splat: Gaussians, views: list[View], device: torch.device) -> list[torch.Tensor]:
    images = []
    for view in views:
        colors, _, _ = render_gaussians(splat, view.viewmat[None].to(device), view.K[None].to(device),
                                        view.width, view.height,
                                        backgrounds=torch.zeros(1, 3, device=device))
        images.append(colors[0].clamp(0, 1).cpu())
    return images


def mean_psnr(images: list[torch.Tensor], references: list[torch.Tensor]) -> float:
    return float(np.mean([psnr(image, reference).item() for image, reference in zip(images, references,
                                                                                      strict=True)]))


def splat_transform_round_trip(ply: Path, folder: Path, iterations: int) -> tuple[Gaussians, int, float]:
    sog, decoded = folder / "splat_transform.sog", folder / "splat_transform_decoded.ply"
    started = time.perf_counter()
    subprocess.run([str(SPLAT_TRANSFORM), "-q", "-w", "-g", "cpu", "-i", str(iterations), str(ply), str(sog)],
                   check=True)
    seconds = time.perf_counter() - started
    subprocess.run([str(SPLAT_TRANSFORM), "-q", "-w", str(sog), str(decoded)], check=True)
    return read_ply(decoded), sog.stat().st_size, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ply", type=Path, required=True, help="a trained splat (INRIA PLY)")
    parser.add_argument("--workspace", type=Path, required=True,
                        help="the job folder with sfm/undistorted/{sparse,images}")
    parser.add_argument("--holdout-every", type=int, default=8)
    parser.add_argument("--max-width", type=int, help="downscale the views (as the training did)")
    parser.add_argument("--device", default="auto", help="compression device: auto | cpu | cuda")
    parser.add_argument("--st-iterations", type=int, default=1, help="splat-transform -i; 0 skips it")
    parser.add_argument("--variant", action="append", metavar="NAME=JSON",
                        help="one of our encodings: a name and CompressConfig overrides, e.g. "
                             "'palette 64k={\"palette_size\": 65536}'; repeatable (default: PLAS and Morton)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compress_quality.json")
    args = parser.parse_args()

    render_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    undistorted = args.workspace / "sfm" / "undistorted"
    scene = load_scene(undistorted / "sparse", undistorted / "images", max_width=args.max_width,
                       holdout_every=args.holdout_every)
    views = scene.test_views or scene.train_views
    photos = [view.image.float() / 255 for view in views]
    original = read_ply(args.ply)
    ply_bytes = args.ply.stat().st_size
    ours = dict(item.split("=", 1) for item in (args.variant or DEFAULT_VARIANTS))

    variants: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="compress_quality_") as tmp:
        folder = Path(tmp)
        for index, (name, overrides) in enumerate(ours.items()):
            config = CompressConfig(device=args.device, **json.loads(overrides))
            started = time.perf_counter()
            result = compress_ply(args.ply, folder / f"ours_{index}.sog", config, NullProgress())
            variants[name] = {"splat": read_sog(folder / f"ours_{index}.sog"), "bytes": result.metrics["sog_bytes"],
                              "encode_seconds": round(time.perf_counter() - started, 2),
                              "config": json.loads(overrides)}
        if args.st_iterations > 0:
            splat, size, seconds = splat_transform_round_trip(args.ply, folder, args.st_iterations)
            variants[f"splat-transform SOG (-i {args.st_iterations})"] = {"splat": splat, "bytes": size,
                                                                          "encode_seconds": round(seconds, 2)}

    reference = render_views(original, views, render_device)
    rows = [{"variant": "original PLY", "bytes": ply_bytes, "ratio": 1.0,
             "psnr_vs_photos": round(mean_psnr(reference, photos), 3), "psnr_vs_original": None}]
    for name, variant in variants.items():
        images = render_views(variant["splat"], views, render_device)
        rows.append({"variant": name, "config": variant.get("config"), "bytes": variant["bytes"],
                     "ratio": round(ply_bytes / variant["bytes"], 2),
                     "encode_seconds": variant["encode_seconds"],
                     "psnr_vs_photos": round(mean_psnr(images, photos), 3),
                     "psnr_vs_original": round(mean_psnr(images, reference), 3)})
    for row in rows[1:]:
        row["psnr_loss_db"] = round(rows[0]["psnr_vs_photos"] - row["psnr_vs_photos"], 3)

    print(f"{len(original)} Gaussians (SH degree {original.sh_degree}), {len(views)} held-out views "
          f"{views[0].width}x{views[0].height}, rendered on {render_device}")
    print(f"{'variant':<52} {'MB':>8} {'ratio':>7} {'PSNR photos':>12} {'loss dB':>8} {'PSNR vs orig':>13}")
    for row in rows:
        vs_original = "" if row["psnr_vs_original"] is None else f"{row['psnr_vs_original']:.2f}"
        print(f"{row['variant']:<52} {row['bytes'] / 1e6:>8.2f} {row['ratio']:>7.1f} {row['psnr_vs_photos']:>12.2f} "
              f"{row.get('psnr_loss_db', 0):>8.3f} {vs_original:>13}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "ply": str(args.ply), "num_gaussians": len(original), "sh_degree": original.sh_degree,
        "views": [view.name for view in views], "view_size": [views[0].width, views[0].height],
        "held_out": bool(scene.test_views), "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

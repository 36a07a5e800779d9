"""What compression costs in rendered quality: a size-quality curve of our encoder's settings on a trained splat.

    python bench/compress_quality.py --workspace WS                       # the curve (CPU)
    python bench/compress_quality.py --workspace WS --device cuda         # on the GPU (gsplat renders)
    python bench/compress_quality.py --workspace WS --set defaults        # one set of variants
    python bench/compress_quality.py --workspace WS --variant 'mine={"palette_size": 2048}'

For the held-out views of the workspace (every ``holdout_every``-th registered image sorted by name, as the
training held them out; the workspace's own training settings by default), each variant of ours is encoded from
the workspace's ``train/splat.ply`` with the compress stage's code (``compress_splat``: pruning with the
training cameras, SH band dropping, sort, quantization, WebP), decoded with our SOG reader and rendered with
our renderer (gsplat on CUDA, the torch twin on the CPU) with a black background, as the trainer's evaluation
does. Rows: bytes, PLY/SOG ratio, Gaussians kept, encode seconds, PSNR against the photos and its loss against
the uncompressed splat's PSNR, PSNR against the uncompressed splat's renders. ``--formats`` adds our other
exports (compressed PLY, .spz, .splat) at the default reduction, ``--st-iterations N`` splat-transform's SOG.

Variant sets (``--set``, repeatable; default: curve): ``defaults`` (today's defaults, and with each reduction
off), ``sort`` (PLAS against Morton), ``palette`` (palette sizes), ``sh`` (SH bands and the band-dropping
threshold), ``prune`` (pruning thresholds), ``precision`` (position bits, codebook entries), ``curve`` (all).
Writes bench/results/compress_quality.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spaceport.compress.config import CompressConfig
from spaceport.compress.reduce import cameras_from_colmap
from spaceport.compress.stage import compress_splat, reduce_for_config
from spaceport.formats.compressed_ply import read_compressed_ply, write_compressed_ply
from spaceport.formats.gaussians import Gaussians, read_ply
from spaceport.formats.sog import read_sog
from spaceport.formats.splat import read_splat, write_splat
from spaceport.formats.spz import read_spz, write_spz
from spaceport.progress import NullProgress
from spaceport.splat.evaluate import psnr
from spaceport.splat.model import render_gaussians
from spaceport.splat.scene import View, load_scene
from spaceport.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
SPLAT_TRANSFORM = ROOT / "tests" / "js" / "node_modules" / ".bin" / "splat-transform"
OFF = {"prune_threshold": 0, "sh_drop_threshold": 0}
VARIANT_SETS: dict[str, dict[str, dict]] = {
    "defaults": {"defaults": {}, "defaults, no pruning": {"prune_threshold": 0},
                 "defaults, no SH dropping": {"sh_drop_threshold": 0}, "no reduction": OFF},
    "sort": {"PLAS": {**OFF, "sort": "plas"}, "Morton": {**OFF, "sort": "morton"}, "none": {**OFF, "sort": "none"}},
    "palette": {f"palette {size}": {**OFF, "palette_size": size} for size in (256, 512, 1024, 2048, 4096, 8192,
                                                                                16384, 65536)},
    "sh": {"SH bands 0": {**OFF, "sh_bands": 0}, "SH bands 1": {**OFF, "sh_bands": 1},
           "SH bands 2": {**OFF, "sh_bands": 2},
           **{f"SH drop {steps}/255": {**OFF, "sh_drop_threshold": steps / 255} for steps in (1, 2, 4, 8, 16)}},
    "prune": {f"prune {threshold:g} px": {**OFF, "prune_threshold": threshold}
              for threshold in (0.05, 0.1, 0.25, 0.5, 1, 2)},
    "precision": {**{f"position bits {bits}": {**OFF, "position_bits": bits} for bits in (16, 14, 13, 12, 11, 10)},
                  **{f"{field} bits {bits}": {**OFF, f"{field}_bits": bits}
                     for field in ("rotation", "opacity") for bits in (7, 6, 5)},
                  **{f"{field} {levels}": {**OFF, f"{field}_levels": levels}
                     for field in ("scale", "colour", "sh") for levels in (128, 64, 32, 16)}},
}
VARIANT_SETS["curve"] = {name: overrides for key in ("defaults", "sort", "palette", "sh", "prune", "precision")
                         for name, overrides in VARIANT_SETS[key].items()}


def render_views(splat: Gaussians, views: list[View], device: torch.device) -> list[torch.Tensor]:
    images = []
    for view in views:
        colors, _, _ = render_gaussians(splat, view.viewmat[None].to(device), view.K[None].to(device),
                                        view.width, view.height,
                                        backgrounds=torch.zeros(1, 3, device=device))
        images.append(colors[0].clamp(0, 1).cpu())
    return images


def mean_psnr(images: list[torch.Tensor], references: list[torch.Tensor]) -> float:
    return float(np.mean([psnr(image, reference).item()
                          for image, reference in zip(images, references, strict=True)]))


def splat_transform_round_trip(ply: Path, folder: Path, iterations: int) -> tuple[Gaussians, int, float]:
    sog, decoded = folder / "splat_transform.sog", folder / "splat_transform_decoded.ply"
    started = time.perf_counter()
    subprocess.run([str(SPLAT_TRANSFORM), "-q", "-w", "-g", "cpu", "-i", str(iterations), str(ply), str(sog)],
                   check=True)
    seconds = time.perf_counter() - started
    subprocess.run([str(SPLAT_TRANSFORM), "-q", "-w", str(sog), str(decoded)], check=True)
    return read_ply(decoded), sog.stat().st_size, seconds


class Measure:
    """Renders and scores decoded splats against the photos and the uncompressed splat, at the held-out views
    (and, when given, at the training views too: more views, a steadier figure, but seen in training)."""

    def __init__(self, original: Gaussians, views: list[View], device: torch.device, ply_bytes: int,
                 train_views: list[View] | None = None):
        self.views, self.device, self.ply_bytes = views, device, ply_bytes
        self.train_views = train_views or []
        self.photos = [view.image.float() / 255 for view in views]
        self.reference = render_views(original, views, device)
        self.reference_psnr = mean_psnr(self.reference, self.photos)
        self.train_photos = [view.image.float() / 255 for view in self.train_views]
        self.train_reference_psnr = mean_psnr(render_views(original, self.train_views, device), self.train_photos) \
            if self.train_views else None

    def row(self, name: str, decoded: Gaussians, size: int, seconds: float, **extra) -> dict:
        images = render_views(decoded, self.views, self.device)
        vs_photos = mean_psnr(images, self.photos)
        row = {"variant": name, "bytes": size, "ratio": round(self.ply_bytes / size, 2),
               "gaussians": len(decoded), "encode_seconds": round(seconds, 2),
               "psnr_vs_photos": round(vs_photos, 3), "psnr_loss_db": round(self.reference_psnr - vs_photos, 3),
               "psnr_vs_original": round(mean_psnr(images, self.reference), 3)}
        if self.train_views:
            train_psnr = mean_psnr(render_views(decoded, self.train_views, self.device), self.train_photos)
            row["train_views_psnr_loss_db"] = round(self.train_reference_psnr - train_psnr, 3)
        return {**row, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True, help="a trained workspace (sfm/undistorted, train/)")
    parser.add_argument("--ply", type=Path, help="the splat (default: WS/train/splat.ply)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda: compression and rendering")
    parser.add_argument("--max-width", type=int, help="view width (default: the workspace's training width)")
    parser.add_argument("--holdout-every", type=int, help="default: the workspace's training setting")
    parser.add_argument("--set", dest="sets", action="append", choices=sorted(VARIANT_SETS),
                        help="variant set(s) to run (default: curve)")
    parser.add_argument("--variant", action="append", metavar="NAME=JSON", default=[],
                        help="an extra variant: CompressConfig overrides, e.g. 'p2k={\"palette_size\": 2048}'")
    parser.add_argument("--train-views", action="store_true",
                        help="also the PSNR loss at the training views (steadier than a few held-out views)")
    parser.add_argument("--formats", action="store_true", help="also our compressed PLY, .spz and .splat")
    parser.add_argument("--st-iterations", type=int, default=0, help="splat-transform -i (0: skip it)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compress_quality.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ws = Workspace(args.workspace)
    train = ws.read_job().config.get("train", {}) if ws.job_file.is_file() else {}
    max_width = args.max_width or train.get("max_image_width")
    holdout_every = args.holdout_every or train.get("holdout_every", 8)
    device = torch.device(args.device)
    undistorted = ws.undistorted_dir
    scene = load_scene(undistorted / "sparse", undistorted / "images", max_width=max_width,
                       holdout_every=holdout_every)
    views = scene.test_views or scene.train_views
    held_out = {view.name for view in scene.test_views}
    cameras = cameras_from_colmap(undistorted / "sparse", exclude=held_out, max_width=max_width)
    ply = args.ply or ws.splat_ply
    original = read_ply(ply)
    measure = Measure(original, views, device, ply.stat().st_size,
                      scene.train_views if args.train_views and scene.test_views else None)

    variants: dict[str, dict] = {}
    for name in args.sets or ["curve"]:
        variants.update(VARIANT_SETS[name])
    variants.update({name: json.loads(text) for name, text in (item.split("=", 1) for item in args.variant)})

    rows = [{"variant": "original PLY", "bytes": measure.ply_bytes, "ratio": 1.0, "gaussians": len(original),
             "psnr_vs_photos": round(measure.reference_psnr, 3), "psnr_loss_db": 0.0, "psnr_vs_original": None}]
    print(f"{len(original)} Gaussians (SH degree {original.sh_degree}), {len(views)} held-out views "
          f"{views[0].width}x{views[0].height}, {len(cameras)} training cameras for pruning, on {device}", flush=True)
    with tempfile.TemporaryDirectory(prefix="compress_quality_") as tmp:
        folder = Path(tmp)
        for index, (name, overrides) in enumerate(variants.items()):
            config = CompressConfig(device=args.device, **overrides)
            out = folder / f"ours_{index}.sog"
            started = time.perf_counter()
            outcome = compress_splat(original, out, config, NullProgress(), cameras)
            seconds = time.perf_counter() - started
            rows.append(measure.row(f"SOG {name}", read_sog(out), out.stat().st_size, seconds, config=overrides,
                                    pruned=outcome.reduction.num_pruned,
                                    sh_bands_histogram=outcome.reduction.sh_bands_histogram))
            print(json.dumps(rows[-1]), flush=True)
        if args.formats:
            started = time.perf_counter()
            reduced = reduce_for_config(original, CompressConfig(device=args.device), cameras, NullProgress(),
                                        args.device).splat
            reduce_seconds = time.perf_counter() - started
            for label, suffix, write, read in (("compressed PLY", ".compressed.ply", write_compressed_ply,
                                                read_compressed_ply), (".spz v3", ".spz", write_spz, read_spz),
                                               (".splat", ".splat", write_splat, read_splat)):
                started = time.perf_counter()
                size = write(folder / f"export{suffix}", reduced)
                seconds = reduce_seconds + time.perf_counter() - started
                rows.append(measure.row(f"{label} (default reduction)", read(folder / f"export{suffix}"), size,
                                        seconds))
                print(json.dumps(rows[-1]), flush=True)
        if args.st_iterations > 0:
            splat, size, seconds = splat_transform_round_trip(ply, folder, args.st_iterations)
            rows.append(measure.row(f"splat-transform 3.7.0 SOG (-i {args.st_iterations})", splat, size, seconds))

    print(f"\n{'variant':<44} {'KB':>8} {'ratio':>6} {'kept':>7} {'enc s':>6} {'PSNR':>7} {'loss dB':>8} "
          f"{'vs orig':>8} {'train loss':>10}")
    for row in rows:
        vs_original = "" if row["psnr_vs_original"] is None else f"{row['psnr_vs_original']:.2f}"
        train_loss = f"{row['train_views_psnr_loss_db']:.3f}" if "train_views_psnr_loss_db" in row else ""
        print(f"{row['variant']:<44} {row['bytes'] / 1e3:>8.1f} {row['ratio']:>6.2f} {row['gaussians']:>7} "
              f"{row.get('encode_seconds', 0):>6.2f} {row['psnr_vs_photos']:>7.3f} {row['psnr_loss_db']:>8.3f} "
              f"{vs_original:>8} {train_loss:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "workspace": str(args.workspace), "ply": str(ply), "num_gaussians": len(original),
        "sh_degree": original.sh_degree, "views": [view.name for view in views],
        "view_size": [views[0].width, views[0].height], "held_out": bool(scene.test_views),
        "training_cameras": len(cameras), "device": str(device), "defaults": CompressConfig().model_dump(),
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

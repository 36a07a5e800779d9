"""SOG encode time and size: ours (CPU, and CUDA when asked) against PlayCanvas' splat-transform 3.7.0.

    python bench/compress.py --workspace WS                   # a trained splat, side by side (below)
    python bench/compress.py --workspace WS --devices cuda --st-gpu 0   # the same on the GPU machine
    python bench/compress.py                                  # ours on the CPU at 50k, 100k, 1M, 3M
    python bench/compress.py --devices cuda --sizes 100000,1000000,3000000 --st-sizes ""   # on the GPU
    python bench/compress.py --sizes 50000 --st-sizes 50000   # the 10x check against splat-transform

With ``--workspace``: the workspace's trained ``train/splat.ply`` through our compress stage's code (the settings
its job ran with, e.g. the GPU presets' pruning below 2 px, then any ``--set``: pruning with the training cameras,
SH band dropping, sort, quantization, WebP) and through
``splat-transform -g cpu|N in.ply out.sog`` (its defaults: 10 SH k-means iterations), each timed as a whole
PLY -> .sog conversion; both SOGs decoded by our reader and rendered at the held-out views
(bench/compress_quality.py's measure): size, ratio, seconds, PSNR against the photos and against the
uncompressed splat. Writes bench/results/compress_side_by_side_<devices>.json.

Input: ``random_gaussians(N, sh_degree=3)`` written as an INRIA PLY (or ``--ply`` a real splat, cut to
each size by a seeded random subset). Each row times one whole PLY -> .sog conversion as the CLI does it
(read, sort, quantize, WebP, write); ours reports its split too. splat-transform runs as
``splat-transform -g cpu -i ITERATIONS in.ply out.sog`` from tests/js (``npm ci --prefix tests/js``).
On a machine shared with other jobs, run with OMP_WAIT_POLICY=PASSIVE (torch is imported before spaceport
sets it): with OpenMP's default spinning, 2 threads on 2 busy cores made 50k Gaussians take 36 s instead of 3.
Sizes where splat-transform also ran get the speed-up on the same input, in wall-clock seconds and in
CPU seconds (user + system of every thread; steadier than wall time on a machine shared with other
work). Writes
bench/results/compress_<device>.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spaceport.compress import CompressConfig, compress_ply
from spaceport.formats.gaussians import Gaussians, random_gaussians, read_ply, write_ply
from spaceport.progress import NullProgress

ROOT = Path(__file__).resolve().parents[1]
SPLAT_TRANSFORM = ROOT / "tests" / "js" / "node_modules" / ".bin" / "splat-transform"


def parse_sizes(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def make_input(size: int, source: Gaussians | None, folder: Path, seed: int) -> Path:
    path = folder / f"input_{size}.ply"
    if not path.exists():
        if source is None:
            splat = random_gaussians(size, sh_degree=3, seed=seed)
        else:
            if size > len(source):
                raise SystemExit(f"--ply holds {len(source)} Gaussians, fewer than the size {size}")
            splat = source.subset(np.sort(np.random.default_rng(seed).choice(len(source), size, replace=False)))
        write_ply(path, splat)
    return path


def run_ours(ply: Path, out: Path, device: str, config: dict) -> dict:
    started, cpu_started = time.perf_counter(), time.process_time()
    result = compress_ply(ply, out, CompressConfig(device=device, **config), NullProgress())
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    metrics = result.metrics
    return {"tool": "spaceport", "device": device, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2),
            "sog_bytes": metrics["sog_bytes"], "ply_bytes": metrics["ply_bytes"],
            "neighbour_before": metrics["neighbour_distance_before"],
            "neighbour_after": metrics["neighbour_distance_after"],
            "split": {k.removeprefix("seconds_"): v for k, v in metrics.items() if k.startswith("seconds_")}}


def run_splat_transform(ply: Path, out: Path, iterations: int, timeout: float) -> dict:
    if not SPLAT_TRANSFORM.exists():
        raise SystemExit(f"{SPLAT_TRANSFORM} missing: run `npm ci --prefix tests/js`")
    command = [str(SPLAT_TRANSFORM), "-q", "-w", "-g", "cpu", "-i", str(iterations), str(ply), str(out)]
    started, children_started = time.perf_counter(), _children_cpu_seconds()
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"tool": "splat-transform", "device": "cpu", "seconds": None, "timed_out_after": timeout,
                "iterations": iterations, "ply_bytes": ply.stat().st_size}
    seconds = time.perf_counter() - started
    return {"tool": "splat-transform", "device": "cpu", "seconds": round(seconds, 2),
            "cpu_seconds": round(_children_cpu_seconds() - children_started, 2),
            "iterations": iterations, "sog_bytes": out.stat().st_size, "ply_bytes": ply.stat().st_size}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def warm_up(device: str, folder: Path) -> None:
    """One small run first, so CUDA context creation and first-call costs are not in the timings."""
    ply = make_input(4096, None, folder, seed=99)
    compress_ply(ply, folder / "warm_up.sog", CompressConfig(device=device), NullProgress())


def print_table(rows: list[dict]) -> None:
    header = f"{'N':>9} {'tool':<16} {'device':<6} {'seconds':>9} {'CPU s':>8} {'PLY MB':>8} {'SOG MB':>8} " \
             f"{'ratio':>6} {'speed-up':>9} {'CPU-s speed-up':>15} {'neighbour dist.':>16}"
    print(header)
    print("-" * len(header))
    for row in rows:
        seconds = "timeout" if row["seconds"] is None else f"{row['seconds']:.2f}"
        sog = row.get("sog_bytes")
        ratio = f"{row['ply_bytes'] / sog:.1f}" if sog else "-"
        speedup = f"{row['speedup_vs_splat_transform']:.1f}x" if row.get("speedup_vs_splat_transform") else ""
        cpu_speedup = f"{row['cpu_speedup_vs_splat_transform']:.1f}x" if row.get("cpu_speedup_vs_splat_transform") \
            else ""
        neighbour = f"{row['neighbour_before']:.2f}->{row['neighbour_after']:.2f}" if "neighbour_after" in row else ""
        cpu = f"{row['cpu_seconds']:.1f}" if row.get("cpu_seconds") is not None else "-"
        print(f"{row['n']:>9} {row['tool']:<16} {row['device']:<6} {seconds:>9} {cpu:>8} "
              f"{row['ply_bytes'] / 1e6:>8.1f} {(sog or 0) / 1e6:>8.2f} {ratio:>6} {speedup:>9} {cpu_speedup:>15} "
              f"{neighbour:>16}")


def side_by_side(args: argparse.Namespace, devices: list[str], config: dict) -> None:
    """Ours and splat-transform on the workspace's trained PLY: size, time, decoded held-out PSNR."""
    from compress_quality import Measure  # bench/ is on sys.path when this script runs

    from spaceport.compress.reduce import cameras_from_colmap
    from spaceport.compress.stage import compress_splat
    from spaceport.formats.sog import read_sog
    from spaceport.splat.scene import load_scene
    from spaceport.workspace import Workspace

    ws = Workspace(args.workspace)
    job_config = ws.read_job().config if ws.job_file.is_file() else {}
    train = job_config.get("train", {})
    # ours as the pipeline ran it on this workspace (its preset's compress settings), then the --set overrides
    config = {**{k: v for k, v in job_config.get("compress", {}).items() if k != "device"}, **config}
    scene = load_scene(ws.undistorted_dir / "sparse", ws.undistorted_dir / "images",
                       max_width=train.get("max_image_width"), holdout_every=train.get("holdout_every", 8))
    held_out = {view.name for view in scene.test_views}
    ply = args.ply or ws.splat_ply
    original = read_ply(ply)
    render_device = torch.device("cuda" if "cuda" in devices else "cpu")
    measure = Measure(original, scene.test_views or scene.train_views, render_device, ply.stat().st_size)
    rows = [{"tool": "original PLY", "bytes": measure.ply_bytes, "ratio": 1.0, "gaussians": len(original),
             "psnr_vs_photos": round(measure.reference_psnr, 3), "psnr_loss_db": 0.0}]
    with tempfile.TemporaryDirectory(prefix="bench_compress_") as tmp:
        folder = Path(tmp)
        for device in devices:
            warm_up(device, folder)
            started, cpu_started = time.perf_counter(), time.process_time()
            # the stage's whole conversion: read the PLY and the cameras, reduce, sort, quantize, write
            splat = read_ply(ply)
            cameras = cameras_from_colmap(ws.undistorted_dir / "sparse", exclude=held_out,
                                          max_width=train.get("max_image_width"))
            out = folder / f"ours_{device}.sog"
            outcome = compress_splat(splat, out, CompressConfig(device=device, **config), NullProgress(), cameras)
            seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
            rows.append({**measure.row(f"spaceport ({device})", read_sog(out), out.stat().st_size, seconds),
                         "tool": "spaceport", "device": device, "cpu_seconds": round(cpu_seconds, 2),
                         "pruned": outcome.reduction.num_pruned, "split": outcome.seconds})
            print(json.dumps(rows[-1]), flush=True)
        if args.st_iterations != 0:
            out = folder / "splat_transform.sog"
            gpu = ["-g", args.st_gpu]
            iterations = ["-i", str(args.st_iterations)] if args.st_iterations > 0 else []
            result = run_splat_transform_command([*gpu, *iterations, str(ply), str(out)], args.st_timeout)
            if result["seconds"] is not None:
                rows.append({**measure.row(f"splat-transform 3.7.0 (-g {args.st_gpu})", read_sog(out),
                                           out.stat().st_size, result["seconds"]),
                             "tool": "splat-transform", "device": args.st_gpu, "cpu_seconds": result["cpu_seconds"],
                             "iterations": args.st_iterations if args.st_iterations > 0 else 10})
            else:
                rows.append({"tool": "splat-transform", "failed": result.get("error"),
                             "timed_out_after": None if result.get("error") else args.st_timeout})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{len(original)} Gaussians, SH degree {original.sh_degree}, {ply}")
    print(f"{'tool':<32} {'KB':>9} {'ratio':>6} {'kept':>8} {'seconds':>8} {'CPU s':>7} {'PSNR':>7} {'loss dB':>8}")
    for row in rows:
        if "bytes" not in row:
            print(f"{row['tool']:<32} " + (f"failed: {row['failed'][-300:]}" if row.get("failed")
                                           else f"timed out after {row['timed_out_after']} s"))
            continue
        print(f"{row.get('variant', row['tool']):<32} {row['bytes'] / 1e3:>9.1f} {row['ratio']:>6.2f} "
              f"{row['gaussians']:>8} {row.get('encode_seconds', 0):>8.2f} {row.get('cpu_seconds') or 0:>7.1f} "
              f"{row['psnr_vs_photos']:>7.3f} {row['psnr_loss_db']:>8.3f}")
    out = args.out or ROOT / "bench" / "results" / f"compress_side_by_side_{'_'.join(devices)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpu_threads": args.threads,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "torch": torch.__version__},
        "workspace": str(args.workspace), "ply": str(ply), "num_gaussians": len(original),
        "sh_degree": original.sh_degree, "held_out_views": sorted(held_out), "config": config,
        "splat_transform": {"version": "3.7.0", "gpu": args.st_gpu, "iterations": args.st_iterations},
        "rows": rows,
    }, indent=2) + "\n")
    print(f"\nwrote {out}")


def run_splat_transform_command(arguments: list[str], timeout: float) -> dict:
    if not SPLAT_TRANSFORM.exists():
        raise SystemExit(f"{SPLAT_TRANSFORM} missing: run `npm ci --prefix tests/js`")
    started, children_started = time.perf_counter(), _children_cpu_seconds()
    try:
        subprocess.run([str(SPLAT_TRANSFORM), "-q", "-w", *arguments], check=True, capture_output=True,
                       timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "cpu_seconds": None}
    except subprocess.CalledProcessError as exc:  # e.g. -g 0 where WebGPU finds no adapter: keep our rows
        return {"seconds": None, "cpu_seconds": None, "error": exc.stderr.decode(errors="replace")[-2000:]}
    return {"seconds": round(time.perf_counter() - started, 2),
            "cpu_seconds": round(_children_cpu_seconds() - children_started, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, help="side by side on this trained workspace's splat")
    parser.add_argument("--st-gpu", default="cpu", help="splat-transform -g: cpu or a GPU adapter index")
    parser.add_argument("--sizes", default="50000,100000,1000000,3000000", help="Gaussian counts for ours")
    parser.add_argument("--devices", default="cpu", help="comma list of cpu, cuda")
    parser.add_argument("--st-sizes", default="50000", help="counts for splat-transform ('' = skip it)")
    parser.add_argument("--st-iterations", type=int, default=1,
                        help="splat-transform -i (SH k-means); with --workspace: -1 its default (10), 0 skips it")
    parser.add_argument("--st-timeout", type=float, default=1800, help="seconds before giving up on it")
    parser.add_argument("--ply", type=Path, help="a real splat to cut the sizes from (default: random)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="CompressConfig override, e.g. --set sort_iterations=2")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/compress_<devices>.json)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    st_sizes = parse_sizes(args.st_sizes)
    sizes = sorted(set(parse_sizes(args.sizes)) | (set(st_sizes) if "cpu" in devices else set()))
    config = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    if args.workspace:
        side_by_side(args, devices, config)
        return
    source = read_ply(args.ply) if args.ply else None

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_compress_") as tmp:
        folder = Path(tmp)
        for device in devices:
            warm_up(device, folder)
        for size in sizes:
            ply = make_input(size, source, folder, args.seed)
            size_rows = []
            if size in st_sizes:
                size_rows.append(run_splat_transform(ply, folder / f"st_{size}.sog", args.st_iterations,
                                                     args.st_timeout))
            for device in devices:
                size_rows.append(run_ours(ply, folder / f"ours_{size}_{device}.sog", device, config))
            reference = next((r for r in size_rows if r["tool"] == "splat-transform" and r["seconds"]), None)
            for row in size_rows:
                row["n"] = size
                if reference and row["tool"] == "spaceport":
                    row["speedup_vs_splat_transform"] = round(reference["seconds"] / row["seconds"], 1)
                    row["cpu_speedup_vs_splat_transform"] = round(reference["cpu_seconds"] / row["cpu_seconds"], 1)
                print(json.dumps(row), flush=True)
            rows.extend(size_rows)
            ply.unlink()

    print()
    print_table(rows)
    out = args.out or ROOT / "bench" / "results" / f"compress_{'_'.join(devices)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpu_threads": args.threads,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "torch": torch.__version__},
        "input": str(args.ply) if args.ply else "random_gaussians(N, sh_degree=3)",
        "config_overrides": config,
        "splat_transform": {"version": "3.7.0", "iterations": args.st_iterations},
        "rows": rows,
    }, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

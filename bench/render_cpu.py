"""Forward + backward time of the pure-PyTorch renderer on the CPU.

    python bench/render_cpu.py [--repeats 5] [--threads 2 [1 ...]]

Scene: N Gaussians filling the camera frustum between depths 2.5 and 6 (random rotations, log-scales
uniform in [-5, -3], opacities sigmoid(N(0, 1.5)), SH degree 3), one camera of W x H px with fx = 0.94 W.
Reports wall time (median and min over repeats, after one warm-up), the process CPU time of the fastest
repeat (all threads; less sensitive to other jobs on a shared machine) and the work: visible Gaussians,
tile size chosen, tile rows, (row, pixel) pairs. The 1-minute load average is recorded beside each case.
Writes bench/results/render_cpu.json.

On a machine shared with other jobs, run with OMP_WAIT_POLICY=PASSIVE: with OpenMP's default spinning,
every parallel op waits for a descheduled peer thread and 2 threads can be 5x slower than 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from spaceport.splat.render import render

CASES = [(20_000, 256, 256), (5_000, 128, 128), (20_000, 200, 150), (50_000, 256, 256), (100_000, 512, 384)]
SH_DEGREE = 3


def frustum_scene(n: int, width: int, height: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    focal = 0.94 * width
    depth = 2.5 + 3.5 * torch.rand(n, generator=generator)
    pixel = torch.rand(n, 2, generator=generator) * torch.tensor([width, height])
    means = torch.stack([(pixel[:, 0] - width / 2) / focal * depth, (pixel[:, 1] - height / 2) / focal * depth,
                         depth], dim=-1)
    sh = torch.randn(n, (SH_DEGREE + 1) ** 2, 3, generator=generator) * 0.15
    return {
        "means": means,
        "quats": torch.randn(n, 4, generator=generator),
        "log_scales": torch.rand(n, 3, generator=generator) * 2.0 - 5.0,
        "logit_opacities": torch.randn(n, generator=generator) * 1.5,
        "sh": sh,
        "viewmats": torch.eye(4)[None],
        "Ks": torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])[None],
    }


def time_step(scene: dict[str, torch.Tensor], width: int, height: int) -> tuple[float, float, float, dict]:
    params = {k: scene[k].clone().requires_grad_(True) for k in ("means", "quats", "log_scales",
                                                                 "logit_opacities", "sh")}
    start, start_cpu = time.perf_counter(), time.process_time()
    image, alpha, info = render(params["means"], params["quats"], torch.exp(params["log_scales"]),
                                torch.sigmoid(params["logit_opacities"]), params["sh"], scene["viewmats"],
                                scene["Ks"], width, height, sh_degree=SH_DEGREE, backend="torch")
    forward = time.perf_counter() - start
    (image.mean() + alpha.mean()).backward()
    total, total_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return forward, total, total_cpu, {"alpha_mean": alpha.mean().item(), "info": info}


def run_case(n: int, width: int, height: int, repeats: int) -> dict:
    scene = frustum_scene(n, width, height)
    time_step(scene, width, height)  # warm-up
    forwards, totals, cpu_times = [], [], []
    load_before = os.getloadavg()[0]
    for _ in range(repeats):
        forward, total, total_cpu, extra = time_step(scene, width, height)
        forwards.append(forward)
        totals.append(total)
        cpu_times.append(total_cpu)
    info = extra["info"]
    visible = int((info["radii"] > 0).all(dim=-1).sum())
    rows = int(info["tiles_per_gauss"].sum())
    return {
        "gaussians": n, "width": width, "height": height, "visible": visible, "tile_rows": rows,
        "tile_size": info["tile_size"], "row_pixel_pairs": rows * info["tile_size"] ** 2,
        "alpha_mean": round(extra["alpha_mean"], 4),
        "forward_s": statistics.median(forwards), "forward_backward_s": statistics.median(totals),
        "forward_backward_min_s": min(totals), "forward_backward_cpu_s": cpu_times[totals.index(min(totals))],
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="torch thread counts to run with")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "render_cpu.json")
    args = parser.parse_args()
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        results += [{"threads": threads, **run_case(n, width, height, args.repeats)} for n, width, height in CASES]
    print(f"{'threads':>7} {'gaussians':>9} {'size':>9} {'visible':>8} {'tile':>4} {'rows':>8} {'pairs':>10} "
          f"{'alpha':>6} {'fwd s':>7} {'fwd+bwd s':>9} {'min s':>7} {'cpu s':>7} {'load':>5}")
    for r in results:
        print(f"{r['threads']:>7} {r['gaussians']:>9} {r['width']:>4}x{r['height']:<4} {r['visible']:>8} "
              f"{r['tile_size']:>4} {r['tile_rows']:>8} {r['row_pixel_pairs']:>10} {r['alpha_mean']:>6.3f} "
              f"{r['forward_s']:>7.3f} {r['forward_backward_s']:>9.3f} {r['forward_backward_min_s']:>7.3f} "
              f"{r['forward_backward_cpu_s']:>7.3f} {r['load_average_1min'][1]:>5.1f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "cpu_count": os.cpu_count(), "machine": platform.processor() or
              platform.machine(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "repeats": args.repeats,
              "cases": results}
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

"""End to end: photos -> SOG from a fresh workspace, then the per-stage table from report/report.json.

    python bench/e2e.py PHOTOS --name monstree [--preset standard] [-- extra `spaceport run` options]

Prints the table and writes bench/results/e2e_<name>.json (and $OUT/e2e_<name>.json when $OUT is set, as on
the lent GPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        return "none"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("photos")
    parser.add_argument("--name", required=True)
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--workspace", default=None)
    args, extra = parser.parse_known_args()  # the rest goes to `spaceport run`
    workspace = Path(args.workspace or f"/tmp/spaceport_e2e_{args.name}")
    shutil.rmtree(workspace, ignore_errors=True)  # a fresh workspace every time
    command = [sys.executable, "-m", "spaceport", "run", args.photos, "-o", str(workspace),
               "--preset", args.preset, *extra]
    start = time.perf_counter()
    completed = subprocess.run(command)
    wall = time.perf_counter() - start
    report_file = workspace / "report" / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    result = {"name": args.name, "date": time.strftime("%Y-%m-%d"), "gpu": gpu_name(), "cpus": os.cpu_count(),
              "host": platform.node(), "command": " ".join(command[1:]), "exit_code": completed.returncode,
              "wall_seconds": round(wall, 1), "report": report}
    sfm_report = workspace / "sfm" / "report.json"
    if sfm_report.exists():
        result["sfm"] = json.loads(sfm_report.read_text())
    evaluation = workspace / "train" / "eval.json"
    if evaluation.exists():  # held-out PSNR/SSIM per photo: which views the average hides
        result["held_out"] = json.loads(evaluation.read_text())
    print_table(result)
    out_dirs = [Path("bench/results")] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    for folder in out_dirs:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"e2e_{args.name}.json").write_text(json.dumps(result, indent=2))
    sys.exit(completed.returncode)


def print_table(result: dict) -> None:
    report = result.get("report", {})
    print(f"\n## e2e {result['name']} — {result['date']}, GPU {result['gpu']}, {result['cpus']} CPUs")
    print(f"exit code {result['exit_code']}, wall {result['wall_seconds']} s, "
          f"quality score {report.get('quality_score')}")
    print("| stage | seconds | peak RSS GiB | peak GPU GiB | key figures |")
    print("|---|---|---|---|---|")
    for stage, timing in report.get("stages", {}).items():
        check = report.get("checks", {}).get(stage, {})
        figures = ", ".join(f"{k}={v}" for k, v in check.items() if k not in ("ok", "missing", "error"))
        print(f"| {stage} | {timing.get('seconds', '-')} | {timing.get('peak_rss_gib', '-')} | "
              f"{timing.get('peak_gpu_gib', '-')} | {figures} |")
    if "sfm" in result:
        sfm = result["sfm"]
        print(f"sfm: matcher {sfm['matcher']}, mapper {sfm['mapper']}, {sfm['registered']}/{sfm['total']} "
              f"registered, {sfm['mean_reprojection_error_px']:.3f} px, steps {sfm['seconds']}")


if __name__ == "__main__":
    main()

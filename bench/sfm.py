"""SfM on real photo sets: spaceport's sfm stage against pycolmap alone with one shared camera.

    python bench/sfm.py                                   # monstree and liberty (liberty: ~15+ min on 2 cores)
    python bench/sfm.py --sets monstree --no-baseline
    python bench/sfm.py --sets liberty --per-group-extraction   # also time the old one-call-per-camera extraction
    python bench/sfm.py --sets liberty --no-baseline --name cpu_liberty_sequential --matcher sequential
    python bench/sfm.py --compare          # every row measured so far (this machine's and the GPU machine's files)

For each set: a fresh ``spaceport run PHOTOS --steps sfm`` (its report's extract/match/map times, registered photos,
mean reprojection error, focal spread, the device SIFT ran on), then the same ingested images through plain
pycolmap calls (``extract_features`` with one shared camera, ``match_exhaustive``, ``incremental_mapping``, largest
model). Prints a table and writes bench/results/sfm_<host kind>.json (and $OUT/ when set, as on the GPU machine).
Which pycolmap build runs is whichever is installed: CPU here, ``pycolmap-cuda12`` on the GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {"monstree": DATA / "monstree" / "images", "liberty": DATA / "liberty" / "images"}


def spaceport_row(name: str, photos: Path, workspace: Path, extra: list[str]) -> dict[str, Any]:
    shutil.rmtree(workspace, ignore_errors=True)
    command = [sys.executable, "-m", "spaceport", "run", str(photos), "-o", str(workspace), "--steps", "sfm", *extra]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    how = " ".join(["spaceport sfm", *extra])
    row: dict[str, Any] = {"set": name, "how": how, "command": " ".join(command[2:]),
                           "exit_code": completed.returncode, "wall_s": round(wall, 1)}
    report_file = workspace / "sfm" / "report.json"
    if not report_file.exists():
        return {**row, **failure_row(workspace, completed.stderr[-2000:] + completed.stdout[-2000:])}
    return {**row, **report_row(json.loads(report_file.read_text()))}


def failure_row(workspace: Path, error: str) -> dict[str, Any]:
    """A failed run's step times (sfm/steps.json) and, from its error, how many photos the best model held."""
    steps_file = workspace / "sfm" / "steps.json"
    steps = json.loads(steps_file.read_text()) if steps_file.exists() else {}
    held = re.search(r"SfM registered (\d+) of (\d+) photos", error)
    return {"error": error, "extract_s": steps.get("extract"), "match_s": steps.get("match"),
            "registered": int(held[1]) if held else None, "total": int(held[2]) if held else None}


def report_row(report: dict[str, Any]) -> dict[str, Any]:
    """A row's figures from spaceport's sfm/report.json."""
    focal = report.get("focal") or {}
    return dict(extract_s=report["seconds"].get("extract"), match_s=report["seconds"].get("match"),
               map_s=report["seconds"].get("map"), undistort_s=report["seconds"].get("undistort"),
               registered=report["registered"], total=report["total"],
               mean_error_px=round(report["mean_reprojection_error_px"], 3), cameras=report["cameras"],
               camera_mode=report.get("camera_mode"), mapper=report["mapper"],
               focal_px=[focal.get("min_px"), focal.get("median_px"), focal.get("max_px")],
               focal_fraction=[focal.get("min_fraction"), focal.get("median_fraction"), focal.get("max_fraction")],
               device=report.get("feature_device", "cpu"), warnings=report.get("warnings", []),
               removed=[p for p in report.get("left_out", []) if p["test"] in ("focal", "far", "few_points")],
               attempts=report.get("attempts", []))


def baseline_row(name: str, images: Path, work: Path, max_image_size: int) -> dict[str, Any]:
    """pycolmap alone: one shared camera, exhaustive matching, incremental mapping, the largest model."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    database = work / "database.db"
    device = pycolmap.Device.cuda if pycolmap.has_cuda else pycolmap.Device.cpu
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_image_size
    times = {}
    started = time.perf_counter()
    pycolmap.extract_features(database, images, camera_mode=pycolmap.CameraMode.SINGLE,
                              extraction_options=extraction, device=device)
    times["extract_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    pycolmap.match_exhaustive(database, device=device)
    times["match_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    (work / "models").mkdir()
    models = pycolmap.incremental_mapping(database, images, work / "models")
    times["map_s"] = round(time.perf_counter() - started, 1)
    row: dict[str, Any] = {"set": name, "how": "pycolmap alone, one shared camera", **times,
                           "device": "cuda" if pycolmap.has_cuda else "cpu"}
    if not models:
        return {**row, "registered": 0}
    best = max(models.values(), key=lambda m: m.num_reg_images())
    focal = [c.mean_focal_length() for c in best.cameras.values()]
    long_side = max(next(iter(best.cameras.values())).width, next(iter(best.cameras.values())).height)
    return {**row, "registered": best.num_reg_images(), "total": len(_photos(images)),
            "mean_error_px": round(best.compute_mean_reprojection_error(), 3), "cameras": best.num_cameras(),
            "mapper": "incremental", "models": len(models),
            "focal_px": [round(min(focal), 1), round(float(np.median(focal)), 1), round(max(focal), 1)],
            "focal_fraction": [round(min(focal) / long_side, 3), None, round(max(focal) / long_side, 3)]}


def per_group_extraction(images: Path, work: Path, max_image_size: int) -> dict[str, Any]:
    """The extraction spaceport did before issue 12: one pycolmap call per camera group, here a camera per photo."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_image_size
    names = _photos(images)
    started = time.perf_counter()
    for name in names:
        pycolmap.extract_features(work / "database.db", images, image_names=[name],
                                  camera_mode=pycolmap.CameraMode.SINGLE, extraction_options=extraction,
                                  device=pycolmap.Device.cpu)
    return {"calls": len(names), "extract_s": round(time.perf_counter() - started, 1)}


def _photos(images: Path) -> list[str]:
    return sorted(p.name for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'set':9} {'how':52} {'device':6} {'extract':>8} {'match':>8} {'map':>7} {'registered':>10} "
              f"{'error':>7} {'cams':>5}  focal px (min/median/max), × long side")
    print(header)
    print("-" * len(header))
    for row in rows:
        if "error" in row:
            print(f"{row['set']:9} {row['how']:52} {'':6} {_s(row.get('extract_s')):>8} {_s(row.get('match_s')):>8} "
                  f"failed (exit {row.get('exit_code')}): the best model held {row.get('registered')}/"
                  f"{row.get('total')} photos")
            continue
        focal = "/".join("–" if v is None else f"{v:,.0f}" for v in row.get("focal_px", []))
        fraction = "/".join("–" if v is None else f"{v:.2f}" for v in row.get("focal_fraction", []))
        print(f"{row['set']:9} {row['how']:52} {row.get('device', ''):6} {_s(row.get('extract_s')):>8} "
              f"{_s(row.get('match_s')):>8} {_s(row.get('map_s')):>7} "
              f"{row.get('registered', 0):>4}/{row.get('total', '?'):<5} {row.get('mean_error_px', 0):>7.3f} "
              f"{row.get('cameras', 0):>5}  {focal} px, {fraction}")


def compare(results: Path) -> None:
    """One table of every SfM row measured so far, CPU and GPU builds side by side: bench/sfm.py's result files,
    and the sfm section of bench/e2e.py's files (a whole pipeline run, e.g. liberty on the GPU machine)."""
    rows = []
    for path in sorted(results.glob("sfm_*.json")):
        measured = json.loads(path.read_text())
        for row in measured["rows"]:
            rows.append({**row, "how": f"{row['how']} [{measured.get('cpus', '?')} cores, {measured.get('date')}]"})
    for path in sorted(results.glob("e2e_*.json")):
        measured = json.loads(path.read_text())
        report = measured.get("sfm")
        if report and report.get("source") == "photos" and "focal" in report:
            rows.append({"set": measured["name"], "how": f"spaceport run, {path.stem} [{measured.get('cpus')} cores]",
                         **report_row(report)})
    rows.sort(key=lambda row: (row["set"], row.get("device", ""), row["how"]))
    print_table(rows)


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--no-baseline", action="store_true", help="skip the pycolmap-alone rows")
    parser.add_argument("--per-group-extraction", action="store_true",
                        help="also time one extraction call per photo (the extraction before issue 12)")
    parser.add_argument("--work", default="/tmp/spaceport_bench_sfm")
    parser.add_argument("--name", default=None, help="results file suffix (default: cuda or cpu)")
    parser.add_argument("--compare", action="store_true",
                        help="only print the rows already measured (bench/results), CPU and GPU side by side")
    args, extra = parser.parse_known_args()  # the rest goes to `spaceport run`
    if args.compare:
        compare(Path(__file__).parent / "results")
        return
    work = Path(args.work)
    rows, extraction = [], {}
    for name in args.sets:
        workspace = work / name
        rows.append(spaceport_row(name, SETS[name], workspace, extra))
        print_table(rows[-1:])
        images = workspace / "images"  # the ingested photos: both rows see the same input
        if not args.no_baseline and images.is_dir():
            rows.append(baseline_row(name, images, work / f"{name}_pycolmap", 1600))
            print_table(rows[-1:])
        if args.per_group_extraction and images.is_dir():
            extraction[name] = per_group_extraction(images, work / f"{name}_per_group", 1600)
            print(f"{name}: one extraction call per photo: {extraction[name]}")
    print()
    print_table(rows)
    device = "cuda" if pycolmap.has_cuda else "cpu"
    result = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpus": os.cpu_count(),
              "pycolmap": pycolmap.__version__, "has_cuda": pycolmap.has_cuda,
              "load_average": os.getloadavg(), "rows": rows, "per_group_extraction": extraction}
    out_dirs = [Path("bench/results")] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    for folder in out_dirs:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"sfm_{args.name or device}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""The report stage: per-stage status, time and memory, quality figures and a 0-100 quality score.

Quality score (the successor of the old "production validation"); each part counts only when the job's
step selection includes the stage it measures, and the score is 100 x earned / possible:

  outputs valid     10 points per stage whose output re-reads cleanly (images, COLMAP model, PLY, SOG)
  registration      20 x registered / total photos
  held-out PSNR     25 x clamp((PSNR - 15) / 15, 0, 1)      (15 dB -> 0, 30 dB -> 25)
  held-out SSIM     10 x clamp((SSIM - 0.5) / 0.4, 0, 1)    (0.5 -> 0, 0.9 -> 10)
  compression       15 x clamp((PLY/SOG size ratio - 1) / 14, 0, 1)   (15x smaller -> 15)
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from spaceport.progress import Progress
from spaceport.workspace import SpaceportError, StageResult, Workspace, atomic_write_bytes, atomic_write_json

PIPELINE_STAGES = ("ingest", "sfm", "train", "compress")


class ReportConfig(BaseModel):
    min_score: float = 0.0  # the stage itself never fails on score; `spaceport validate` applies a threshold


def _clamp01(x: float) -> float:
    return max(0.0, min(1.0, x))


def _job_stages(ws: Workspace) -> list[str]:
    from spaceport.pipeline import STEP_STAGES

    steps = ws.read_job().get("steps", "full")
    return [s for s in STEP_STAGES.get(steps, list(PIPELINE_STAGES)) if s in PIPELINE_STAGES]


# -- re-reading each stage's outputs ----------------------------------------------------------------


def _check_images(ws: Workspace) -> dict[str, Any]:
    frames_file = ws.images_dir / "frames.json"
    if not frames_file.exists():
        return {"ok": False, "error": f"{frames_file} missing"}
    frames = json.loads(frames_file.read_text())["frames"]
    missing = [f["file"] for f in frames if not (ws.images_dir / f["file"]).exists()]
    return {"ok": not missing and len(frames) >= 3, "images": len(frames), "missing": missing}


def _check_sfm(ws: Workspace) -> dict[str, Any]:
    import pycolmap

    try:
        model = pycolmap.Reconstruction(str(ws.sparse_dir))
    except Exception as exc:  # pycolmap raises a bare RuntimeError/ValueError for unreadable models
        return {"ok": False, "error": f"{ws.sparse_dir}: {exc}"}
    frames_file = ws.images_dir / "frames.json"
    total = len(json.loads(frames_file.read_text())["frames"]) if frames_file.exists() else model.num_images()
    registered = model.num_reg_images()
    undistorted = (ws.undistorted_dir / "sparse").is_dir()
    return {"ok": registered >= 3 and undistorted, "registered": registered, "total": total,
            "points3d": model.num_points3D(),
            "mean_reprojection_error_px": round(float(model.compute_mean_reprojection_error()), 4)}


def _check_train(ws: Workspace) -> dict[str, Any]:
    from spaceport.splat.ply import read_ply

    try:
        gaussians = read_ply(ws.splat_ply)
        gaussians.validate(str(ws.splat_ply))
    except SpaceportError as exc:
        return {"ok": False, "error": str(exc)}
    out: dict[str, Any] = {"ok": True, "num_gaussians": len(gaussians), "ply_bytes": ws.splat_ply.stat().st_size}
    eval_file = ws.train_dir / "eval.json"
    if eval_file.exists():
        evaluation = json.loads(eval_file.read_text())
        mean = evaluation.get("mean", evaluation)
        out["psnr"] = mean.get("psnr")
        out["ssim"] = mean.get("ssim")
        out["eval_views"] = len(evaluation.get("views", []))
    else:
        out["ok"] = False
        out["error"] = f"{eval_file} missing"
    return out


def _check_compress(ws: Workspace) -> dict[str, Any]:
    if not ws.sog_path.exists():
        return {"ok": False, "error": f"{ws.sog_path} missing"}
    from spaceport.compress import read_sog

    try:
        decoded = read_sog(ws.sog_path)
    except Exception as exc:  # any decode failure means the file is not valid SOG
        return {"ok": False, "error": f"{ws.sog_path}: {exc}"}
    out: dict[str, Any] = {"ok": len(decoded) > 0, "num_gaussians": len(decoded),
                           "sog_bytes": ws.sog_path.stat().st_size}
    source = ws.splat_ply if ws.splat_ply.exists() else next(iter(ws.input_dir.glob("*.ply")), None)
    if source is not None:
        out["ply_bytes"] = source.stat().st_size
        out["size_ratio"] = round(out["ply_bytes"] / out["sog_bytes"], 2)
    return out


CHECKS = {"ingest": _check_images, "sfm": _check_sfm, "train": _check_train, "compress": _check_compress}


def quality_score(stages: list[str], checks: dict[str, dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    """Score 0-100 and its parts (earned, possible) as documented in this module's docstring."""
    parts: dict[str, tuple[float, float]] = {}
    for stage in stages:
        parts[f"{stage}_valid"] = (10.0 if checks[stage].get("ok") else 0.0, 10.0)
    if "sfm" in stages:
        sfm = checks["sfm"]
        ratio = sfm.get("registered", 0) / max(1, sfm.get("total", 1))
        parts["registration"] = (20 * _clamp01(ratio), 20.0)
    if "train" in stages:
        psnr, ssim = checks["train"].get("psnr"), checks["train"].get("ssim")
        parts["psnr"] = (25 * _clamp01(((psnr or 0) - 15) / 15), 25.0)
        parts["ssim"] = (10 * _clamp01(((ssim or 0) - 0.5) / 0.4), 10.0)
    if "compress" in stages:
        ratio = checks["compress"].get("size_ratio", 0)
        parts["compression"] = (15 * _clamp01((ratio - 1) / 14), 15.0)
    earned = sum(e for e, _ in parts.values())
    possible = sum(p for _, p in parts.values())
    score = round(100 * earned / possible, 1) if possible else 0.0
    return score, {k: {"earned": round(e, 2), "possible": p} for k, (e, p) in parts.items()}


def build_report(ws: Workspace) -> dict[str, Any]:
    stages = _job_stages(ws)
    checks = {stage: CHECKS[stage](ws) for stage in stages}
    score, parts = quality_score(stages, checks)
    timings = {}
    for stage in stages:
        result = ws.stage_result(stage)
        timings[stage] = ({"status": "done", "seconds": result.seconds, **{k: v for k, v in result.metrics.items()
                                                                            if k.startswith("peak_")}}
                          if result else {"status": "not run"})
    total = round(sum(t.get("seconds", 0) for t in timings.values()), 2)
    return {"workspace": str(ws.root), "steps": ws.read_job().get("steps"), "stages": timings,
            "total_seconds": total, "checks": checks, "quality_score": score, "score_parts": parts}


def run_report(ws: Workspace, config: ReportConfig, progress: Progress) -> StageResult:
    report = build_report(ws)
    atomic_write_json(ws.report_dir / "report.json", report)
    atomic_write_bytes(ws.report_dir / "index.html", render_html(ws, report).encode())
    progress.log(f"report: quality score {report['quality_score']} / 100")
    return StageResult(stage="report", outputs={"report": "report/report.json", "html": "report/index.html"},
                       metrics={"quality_score": report["quality_score"]})


def validate_workspace(ws: Workspace) -> dict[str, Any]:
    """Recompute the report from the workspace's files; flag where report/report.json disagrees."""
    if not ws.job_file.exists():
        raise SpaceportError(f"{ws.root}: no job.json; this is not a spaceport workspace")
    report = build_report(ws)
    stored_file = ws.report_dir / "report.json"
    mismatches = []
    if stored_file.exists():
        stored = json.loads(stored_file.read_text())
        if abs(stored.get("quality_score", -1) - report["quality_score"]) > 0.5:
            mismatches.append(f"stored quality score {stored.get('quality_score')} != recomputed "
                              f"{report['quality_score']}")
    else:
        mismatches.append(f"{stored_file} missing")
    report["mismatches"] = mismatches
    if mismatches:
        report["quality_score"] = min(report["quality_score"], 0.0)
    return report


# -- HTML ------------------------------------------------------------------------------------------


def _loss_curve_svg(metrics_file: Path) -> str:
    if not metrics_file.exists():
        return ""
    points = []
    for line in metrics_file.read_text().splitlines():
        row = json.loads(line)
        if "loss" in row and "step" in row:
            points.append((row["step"], row["loss"]))
    if len(points) < 2:
        return ""
    max_step = max(s for s, _ in points) or 1
    max_loss = max(v for _, v in points) or 1
    path = " ".join(f"{600 * s / max_step:.1f},{200 - 190 * v / max_loss:.1f}" for s, v in points)
    return (f'<svg width="600" height="200" style="border:1px solid #ccc"><polyline fill="none" stroke="#36c" '
            f'points="{path}"/></svg><p>training loss over {max_step} steps (max {max_loss:.4f})</p>')


def render_html(ws: Workspace, report: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(stage)}</td><td>{t.get('status')}</td><td>{t.get('seconds', '')}</td>"
        f"<td>{t.get('peak_rss_gib', '')}</td><td>{t.get('peak_gpu_gib', '')}</td>"
        f"<td><pre>{html.escape(json.dumps(report['checks'].get(stage, {}), indent=1))}</pre></td></tr>"
        for stage, t in report["stages"].items())
    renders = "".join(f'<figure><img src="../train/renders/{p.name}" width="800"><figcaption>{p.name}'
                      f"</figcaption></figure>" for p in sorted((ws.train_dir / "renders").glob("*.png")))
    parts = "".join(f"<li>{k}: {v['earned']} / {v['possible']}</li>" for k, v in report["score_parts"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Spaceport report</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{border:1px solid #ddd;padding:4px;vertical-align:top}}
table{{border-collapse:collapse}} pre{{margin:0;font-size:11px}}</style></head><body>
<h1>Spaceport report: quality score {report['quality_score']} / 100</h1>
<p>Workspace {html.escape(report['workspace'])}, steps {report['steps']}, total {report['total_seconds']} s</p>
<ul>{parts}</ul>
<table><tr><th>stage</th><th>status</th><th>seconds</th><th>peak RSS GiB</th><th>peak GPU GiB</th>
<th>checks</th></tr>{rows}</table>
<h2>Training</h2>{_loss_curve_svg(ws.train_dir / "metrics.jsonl")}
<h2>Held-out views (photo | render)</h2>{renders}
</body></html>"""

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

from typing import Any

from pydantic import BaseModel, ConfigDict

from spaceport.formats import (
    Report,
    read_evaluation,
    read_frames,
    read_job,
    read_ply,
    read_report,
    read_sog,
    write_report,
)
from spaceport.formats.job import STEP_STAGES
from spaceport.progress import Progress
from spaceport.workspace import SpaceportError, StageResult, Workspace, atomic_write_bytes

PIPELINE_STAGES = ("ingest", "sfm", "train", "compress")


class ReportConfig(BaseModel):
    """The report has no settings yet; it never fails on the score (`spaceport validate --min-score` does)."""

    model_config = ConfigDict(extra="forbid")


def _clamp01(x: float) -> float:
    return max(0.0, min(1.0, x))


def _job_stages(ws: Workspace) -> list[str]:
    return [s for s in STEP_STAGES[read_job(ws.root).steps] if s in PIPELINE_STAGES]


# -- re-reading each stage's outputs ----------------------------------------------------------------


def _check_images(ws: Workspace) -> dict[str, Any]:
    try:
        frames = read_frames(ws.images_dir).frames
    except SpaceportError as exc:
        return {"ok": False, "error": str(exc)}
    missing = [f.file for f in frames if not (ws.images_dir / f.file).exists()]
    return {"ok": not missing and len(frames) >= 3, "images": len(frames), "missing": missing}


def _check_sfm(ws: Workspace) -> dict[str, Any]:
    import pycolmap

    try:
        model = pycolmap.Reconstruction(str(ws.sparse_dir))
    except Exception as exc:  # pycolmap raises a bare RuntimeError/ValueError for unreadable models
        return {"ok": False, "error": f"{ws.sparse_dir}: {exc}"}
    total = len(read_frames(ws.images_dir).frames) if ws.is_done("ingest") else model.num_images()
    registered = model.num_reg_images()
    undistorted = (ws.undistorted_dir / "sparse").is_dir()
    return {"ok": registered >= 3 and undistorted, "registered": registered, "total": total,
            "points3d": model.num_points3D(),
            "mean_reprojection_error_px": round(float(model.compute_mean_reprojection_error()), 4)}


def _check_train(ws: Workspace) -> dict[str, Any]:
    try:
        gaussians = read_ply(ws.splat_ply)
        gaussians.validate(str(ws.splat_ply))
    except SpaceportError as exc:
        return {"ok": False, "error": str(exc)}
    out: dict[str, Any] = {"ok": True, "num_gaussians": len(gaussians), "ply_bytes": ws.splat_ply.stat().st_size}
    try:
        evaluation = read_evaluation(ws.train_dir)
    except SpaceportError as exc:
        return {**out, "ok": False, "error": str(exc)}
    return {**out, "psnr": evaluation.psnr, "ssim": evaluation.ssim, "eval_views": evaluation.num_views,
            "held_out": evaluation.held_out, "protocol": evaluation.protocol}


def _check_compress(ws: Workspace) -> dict[str, Any]:
    if not ws.sog_path.exists():
        return {"ok": False, "error": f"{ws.sog_path} missing"}
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
    return {**out, **_reduction(ws)}


def _reduction(ws: Workspace) -> dict[str, Any]:
    """What the compress stage removed before encoding (pruned Gaussians, dropped SH bands), from its result."""
    result = ws.stage_result("compress")
    if result is None:
        return {}
    keys = ("num_gaussians_in", "num_pruned", *(f"num_sh_bands_{bands}" for bands in range(4)))
    return {key: result.metrics[key] for key in keys if key in result.metrics}


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


def build_report(ws: Workspace) -> Report:
    stages = _job_stages(ws)
    checks = {stage: CHECKS[stage](ws) for stage in stages}
    score, parts = quality_score(stages, checks)
    timings = {}
    for stage in stages:
        result = ws.stage_result(stage)
        timings[stage] = ({"status": "done", "seconds": result.seconds, **{k: v for k, v in result.metrics.items()
                                                                            if k.startswith("peak_") or k == "device"}}
                          if result else {"status": "not run"})
    total = round(sum(t.get("seconds", 0) for t in timings.values()), 2)
    return Report(workspace=str(ws.root), steps=read_job(ws.root).steps, stages=timings, total_seconds=total,
                  checks=checks, quality_score=score, score_parts=parts)


def run_report(ws: Workspace, config: ReportConfig, progress: Progress) -> StageResult:
    report = build_report(ws)
    write_report(ws.report_dir, report)
    atomic_write_bytes(ws.report_dir / "index.html", render_html(ws, report).encode())
    progress.log(f"report: quality score {report.quality_score} / 100")
    return StageResult(stage="report", outputs={"report": "report/report.json", "html": "report/index.html"},
                       metrics={"quality_score": report.quality_score})


def validate_workspace(ws: Workspace) -> Report:
    """Recompute the report from the workspace's files; flag where report/report.json disagrees."""
    if not ws.job_file.exists():
        raise SpaceportError(f"{ws.root}: no job.json; this is not a spaceport workspace")
    report = build_report(ws)
    if "report" not in STEP_STAGES[report.steps]:  # e.g. --steps sfm: there is no stored report to compare
        return report
    try:
        stored = read_report(ws.report_dir)
        if abs(stored.quality_score - report.quality_score) > 0.5:
            report.mismatches.append(f"stored quality score {stored.quality_score} != recomputed "
                                     f"{report.quality_score}")
    except SpaceportError as exc:
        report.mismatches.append(str(exc))
    if report.mismatches:
        report.quality_score = min(report.quality_score, 0.0)
    return report


# -- HTML ------------------------------------------------------------------------------------------


def render_html(ws: Workspace, report: Report) -> str:
    """report/index.html: see spaceport.report.html (imported here: matplotlib and jinja2 load only when used)."""
    from spaceport.report.html import render_report_page

    return render_report_page(ws, report)

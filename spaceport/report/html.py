"""``report/index.html``: the human report, one self-contained file that opens from disk.

Every image is inlined (data: URIs), and so is the viewer with the SOG when the SOG is small enough. Sections
appear only for the stages the job's step selection ran; a section whose files cannot be read shows what went
wrong instead of failing the report.
"""

from __future__ import annotations

import base64
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from PIL import Image

from spaceport.formats import (
    Report,
    SfmReport,
    kept_step,
    read_evaluation,
    read_frames,
    read_job,
    read_metrics,
    read_sfm_report,
)
from spaceport.report import plots
from spaceport.workspace import SpaceportError, Workspace

EMBED_VIEWER_MAX_BYTES = 30_000_000  # a bigger SOG makes the report slow to open: point to `spaceport view`
VIEW_IMAGE_MAX_SIDE = 1280
STEPS_TITLE = {"full": "full pipeline", "sfm": "structure from motion only", "train": "3DGS from a COLMAP model",
               "compress": "compression only"}
STAGE_TITLE = {"ingest": "Ingest", "sfm": "Structure from motion", "train": "Training", "compress": "Compression"}


@dataclass
class Picture:
    src: str  # a data: URI
    alt: str
    width: int
    height: int


@dataclass
class Section:
    """What one section shows; ``problem`` is set instead when its files could not be read."""

    data: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


# -- formatting ---------------------------------------------------------------------------------------------------


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f}\u00a0s" if seconds >= 1 else f"{seconds:.2f}\u00a0s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}\u00a0min {secs:02d}\u00a0s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}\u00a0h {minutes:02d}\u00a0min"


def format_bytes(size: int | None) -> str:
    if size is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f}\u00a0{unit}"
    return f"{size}\u00a0B"


def format_gib(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}\u00a0GiB"


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure_picture(figure, alt: str, svg: bool = True) -> Picture:
    width, height = (int(v * 96) for v in figure.get_size_inches())  # CSS px at the figures' 96 dpi layout
    data = plots.figure_svg(figure) if svg else plots.figure_png(figure)
    return Picture(_data_uri("image/svg+xml" if svg else "image/png", data), alt, width, height)


def _jpeg_picture(image: Image.Image, alt: str) -> Picture:
    image = image.convert("RGB")
    image.thumbnail((VIEW_IMAGE_MAX_SIDE, VIEW_IMAGE_MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return Picture(_data_uri("image/jpeg", buffer.getvalue()), alt, image.width, image.height)


def _guarded(build: Callable[[], dict[str, Any] | None], what: str) -> Section | None:
    try:
        data = build()
    except Exception as exc:  # the report describes broken workspaces too: show the problem, keep the page
        return Section(problem=f"The {what} could not be shown: {exc}")
    return None if data is None else Section(data=data)


# -- sections -----------------------------------------------------------------------------------------------------


def _score_parts(report: Report) -> list[dict[str, Any]]:
    checks = report.checks
    sfm, train, compress = checks.get("sfm", {}), checks.get("train", {}), checks.get("compress", {})
    described = {
        "registration": ("Photos registered", "20 × registered / total",
                         f"{sfm.get('registered', '?')} / {sfm.get('total', '?')}"),
        "psnr": ("Held-out PSNR", "25 × (PSNR − 15 dB) / 15 dB", _maybe(train.get("psnr"), "{:.2f} dB")),
        "ssim": ("Held-out SSIM", "10 × (SSIM − 0.5) / 0.4", _maybe(train.get("ssim"), "{:.3f}")),
        "compression": ("Compression", "15 × (PLY / SOG − 1) / 14", _maybe(compress.get("size_ratio"), "{:.1f}×")),
    }
    rows = []
    for name, part in report.score_parts.items():
        if name.endswith("_valid"):
            stage = name.removesuffix("_valid")
            ok = checks.get(stage, {}).get("ok")
            label, rule, value = (f"{STAGE_TITLE.get(stage, stage)} output valid", "10 when it re-reads cleanly",
                                  "yes" if ok else "no")
        else:
            label, rule, value = described.get(name, (name, "", ""))
        rows.append({"label": label, "rule": rule, "value": value, "earned": part.earned, "possible": part.possible,
                     "percent": round(100 * part.earned / part.possible) if part.possible else 0})
    return rows


def _maybe(value: float | None, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


NERF_W = "nerf-w-right-half"  # spaceport.splat.evaluate's protocol for photos whose colours differ


def _key_figures(report: Report) -> list[dict[str, str]]:
    checks, figures = report.checks, []
    if "sfm" in checks and "registered" in checks["sfm"]:
        figures.append({"label": "Photos registered", "value": f"{checks['sfm']['registered']} / "
                                                               f"{checks['sfm']['total']}"})
    train = checks.get("train", {})
    if train.get("psnr") is not None:
        which = "Held-out" if train.get("held_out") else "Training-view"
        halves = " (right halves)" if train.get("protocol") == NERF_W else ""
        figures.append({"label": f"{which} PSNR{halves}", "value": f"{train['psnr']:.2f} dB"})
        figures.append({"label": f"{which} SSIM", "value": f"{train['ssim']:.3f}"})
    gaussians = checks.get("compress", {}).get("num_gaussians") or train.get("num_gaussians")
    if gaussians:
        figures.append({"label": "Gaussians", "value": f"{gaussians:,}"})
    if checks.get("compress", {}).get("sog_bytes"):
        figures.append({"label": "SOG size", "value": format_bytes(checks["compress"]["sog_bytes"])})
    figures.append({"label": "Total time", "value": format_seconds(report.total_seconds)})
    return figures


def _stage_rows(report: Report) -> list[dict[str, Any]]:
    rows = []
    for stage, timing in report.stages.items():
        check = report.checks.get(stage, {})
        rows.append({"stage": STAGE_TITLE.get(stage, stage), "status": timing.status,
                     "time": format_seconds(timing.seconds), "rss": format_gib(timing.peak_rss_gib),
                     "gpu": format_gib(timing.peak_gpu_gib), "device": timing.device or "",
                     "ok": bool(check.get("ok")), "error": check.get("error")})
    return rows


def _sfm_section(ws: Workspace, report: Report) -> dict[str, Any]:
    sfm = read_sfm_report(ws.sfm_dir)
    not_used = []
    if "ingest" in report.stages:
        for dropped in read_frames(ws.images_dir).dropped:
            at = f" (frame {dropped.frame_index})" if dropped.frame_index is not None else ""
            not_used.append({"photo": dropped.source + at, "stage": "ingest", "reason": dropped.reason})
    not_used += _sfm_left_out(sfm)
    facts = [
        ("Registered photos", f"{sfm.registered} / {sfm.total}"),
        ("Sparse points", f"{sfm.points3d:,}"),
        ("Mean reprojection error", f"{sfm.mean_reprojection_error_px:.3f} px"),
        ("Mean track length", f"{sfm.mean_track_length:.2f} photos per point"),
        ("Cameras (intrinsics)", f"{sfm.cameras}, a focal length per photo" if sfm.camera_mode == "per-image"
         else f"{sfm.cameras} in {sfm.camera_groups} group{'s' * (sfm.camera_groups != 1)}"),
        ("Matcher / mapper", f"{sfm.matcher} / {sfm.mapper}"),
    ]
    if sfm.focal:
        f = sfm.focal
        facts.append(("Focal length", f"{f.min_px:,.0f}–{f.max_px:,.0f} px, median {f.median_px:,.0f} "
                                      f"({f.min_fraction:.2f}–{f.max_fraction:.2f} × the long side)"))
    if len(sfm.attempts) > 1:
        facts.append(("Mapping attempts", " · ".join(
            f"{a.mapper}, {a.cameras()}: {a.registered}{' (kept)' if a.kept else ''}"
            for a in sfm.attempts)))
    if sfm.source == "model":
        facts.insert(0, ("Source", "a COLMAP model you provided (imported, no SfM ran)"))
    if sfm.seconds:
        facts.append(("Time", " · ".join(f"{step}\u00a0{format_seconds(s)}" for step, s in sfm.seconds.items())))
    top_view = _guarded(lambda: {"picture": _top_view(ws, sfm.registered, sfm.points3d)}, "top view")
    return {"facts": facts, "not_used": not_used, "top_view": top_view, "warnings": sfm.warnings}


def _sfm_left_out(sfm: SfmReport) -> list[dict[str, str]]:
    """Each photo SfM left out with its reason (reports before the camera check only list names)."""
    if sfm.left_out:
        return [{"photo": photo.name, "stage": "sfm camera check" if photo.test in ("focal", "far", "few_points")
                 else "sfm", "reason": photo.reason} for photo in sfm.left_out]
    if len(sfm.model_sizes) > 1:
        why = (f"SfM made {len(sfm.model_sizes)} separate models (photos in each: "
               f"{', '.join(map(str, sfm.model_sizes))}); only the largest is kept and this photo is not in it")
    else:
        why = "COLMAP found no pose for it (too few verified matches with the registered photos)"
    return [{"photo": name, "stage": "sfm", "reason": why} for name in sfm.unregistered]


def _held_out_names(ws: Workspace) -> set[str]:
    try:
        evaluation = read_evaluation(ws.train_dir)
    except SpaceportError:  # no training (yet), or its eval.json is broken: the views section says so
        return set()
    return {view.name for view in evaluation.views} if evaluation.held_out else set()


def _top_view(ws: Workspace, registered: int, points: int) -> Picture:
    held_out = _held_out_names(ws)
    geometry = plots.read_sfm_geometry(ws.sparse_dir)
    alt = (f"Top view of the reconstruction: {registered} camera positions with arrows for their viewing "
           f"directions, over {points:,} sparse points in their colours")
    return _figure_picture(plots.top_view_figure(geometry, held_out), alt, svg=False)


def _views_section(ws: Workspace) -> dict[str, Any]:
    evaluation = read_evaluation(ws.train_dir)
    scores = {Path(view.name).stem: view for view in evaluation.views}
    views = []
    for path in sorted((ws.train_dir / "renders").glob("*.png")):
        pair = Image.open(path)
        half = pair.width // 2  # written photo | render, side by side, same size
        score = scores.get(path.stem)
        name = score.name if score else path.stem
        views.append({
            "name": name,
            "photo": _jpeg_picture(pair.crop((0, 0, half, pair.height)), f"Photo {name}"),
            "render": _jpeg_picture(pair.crop((half, 0, 2 * half, pair.height)), f"Render of the splat from the "
                                                                                  f"camera of {name}"),
            "psnr": score.psnr if score else None, "ssim": score.ssim if score else None,
        })
    return {"held_out": evaluation.held_out, "step": evaluation.step, "psnr": evaluation.psnr,
            "nerf_w": evaluation.protocol == NERF_W,
            "ssim": evaluation.ssim, "views": views, "scores": evaluation.views,
            # portrait photos: two views a row, each pair still tall enough to compare; landscape: one a row
            "portrait": bool(views) and views[0]["photo"].height > views[0]["photo"].width}


def _training_section(ws: Workspace, report: Report) -> dict[str, Any]:
    metrics = read_metrics(ws.train_dir)
    held_out = report.checks.get("train", {}).get("held_out", True)
    curves = []
    loss = plots.loss_figure(metrics)
    if loss is not None:
        curves.append(_figure_picture(loss, "Training loss against step"))
    psnr = plots.psnr_figure(metrics, held_out)
    if psnr is not None:
        curves.append(_figure_picture(psnr, f"{'Held-out' if held_out else 'Training-view'} PSNR against step"))
    gaussians = plots.gaussians_figure(metrics)
    if gaussians is not None:
        curves.append(_figure_picture(gaussians, "Number of Gaussians against step"))
    logged = [m for m in metrics if m.loss is not None]
    facts = []
    if logged:
        last = logged[-1]
        facts.append(("Steps", f"{last.step:,}"))
        facts.append(("Final loss", f"{last.loss:.4f}"))
        if last.num_gaussians is not None:
            facts.append(("Gaussians at the end", f"{last.num_gaussians:,}"))
        speeds = sorted(m.steps_per_second for m in logged if m.steps_per_second)
        if speeds:
            facts.append(("Speed (median)", f"{speeds[len(speeds) // 2]:.1f} steps/s"))
        if last.elapsed_seconds is not None:
            facts.append(("Training time", format_seconds(last.elapsed_seconds)))
    kept = kept_step(metrics)
    if kept is not None:
        facts.append(("Splat kept from", f"step {kept:,}, its best held-out evaluation"))
    return {"curves": curves, "facts": facts}


def _sizes_section(report: Report) -> dict[str, Any] | None:
    compress = report.checks.get("compress", {})
    if "sog_bytes" not in compress:
        return None
    ply, sog = compress.get("ply_bytes"), compress["sog_bytes"]
    largest = max(ply or 0, sog)
    bars = [{"label": "PLY (training output)", "size": format_bytes(ply), "bytes": ply,
             "percent": 100 * ply / largest} if ply else None,
            {"label": "SOG (compressed)", "size": format_bytes(sog), "bytes": sog, "percent": 100 * sog / largest}]
    return {"bars": [bar for bar in bars if bar], "ratio": compress.get("size_ratio"),
            "gaussians": compress.get("num_gaussians"), "reduction": _reduction_facts(compress)}


def _reduction_facts(compress: dict[str, Any]) -> list[str]:
    """One sentence per thing the compress stage removed before encoding."""
    facts = []
    trained, pruned = compress.get("num_gaussians_in"), compress.get("num_pruned")
    if trained and pruned is not None:
        facts.append(f"{pruned:,} of {trained:,} Gaussians ({100 * pruned / trained:.1f}%) were pruned: they add "
                     "less than a pixel to every training view.")
    bands = [(int(key.rsplit("_", 1)[1]), count) for key, count in compress.items()
             if key.startswith("num_sh_bands_")]
    if len(bands) > 1:
        kept = ", ".join(f"{count:,} keep {band} band{'s' if band != 1 else ''}" for band, count in sorted(bands))
        facts.append(f"View-dependent colour (SH bands) was dropped where it changes no colour by more than a few "
                     f"8-bit steps: {kept}.")
    return facts


def _viewer_section(ws: Workspace) -> dict[str, Any] | None:
    if not ws.sog_path.is_file():
        return None
    size = ws.sog_path.stat().st_size
    command = f"spaceport view {ws.root}"
    if size > EMBED_VIEWER_MAX_BYTES:
        return {"srcdoc": None, "command": command, "size": format_bytes(size),
                "limit": format_bytes(EMBED_VIEWER_MAX_BYTES)}
    return {"srcdoc": embedded_viewer_page(ws), "command": command, "size": format_bytes(size)}


def embedded_viewer_page(ws: Workspace) -> str:
    """The viewer page with the workspace's SOG inlined (the viewer package's self-contained export), for the
    report's <iframe srcdoc>. The one place the report calls the viewer."""
    from spaceport.viewer import export_html  # the viewer bundle is only needed when a SOG is shown

    with tempfile.TemporaryDirectory(prefix="spaceport-report-") as folder:
        page = export_html(ws.root, Path(folder) / "viewer.html")
        return page.read_text(encoding="utf-8")


# -- the page -----------------------------------------------------------------------------------------------------


def render_report_page(ws: Workspace, report: Report) -> str:
    """The whole page for ``report`` (built from ``ws`` by spaceport.report.build_report)."""
    job = read_job(ws.root)
    stages = {stage for stage, timing in report.stages.items() if timing.status == "done"}
    context = {
        "title": ws.root.name,
        "workspace": str(ws.root),
        "steps": STEPS_TITLE.get(report.steps, report.steps),
        "preset": job.preset,
        "updated": job.updated.replace("T", " ").replace("Z", " UTC"),
        "score": report.quality_score,
        "score_class": "good" if report.quality_score >= 75 else "fair" if report.quality_score >= 50 else "poor",
        "key_figures": _key_figures(report),
        "score_parts": _score_parts(report),
        "mismatches": report.mismatches,
        "stage_rows": _stage_rows(report),
        "total_time": format_seconds(report.total_seconds),
        "viewer": _guarded(lambda: _viewer_section(ws), "viewer") if "compress" in stages else None,
        "views": _guarded(lambda: _views_section(ws), "held-out views") if "train" in stages else None,
        "training": _guarded(lambda: _training_section(ws, report), "training curves") if "train" in stages else None,
        "sfm": _guarded(lambda: _sfm_section(ws, report), "SfM summary") if "sfm" in stages else None,
        "sizes": _guarded(lambda: _sizes_section(report), "sizes") if "compress" in stages else None,
    }
    return TEMPLATE.render(**context)


_ENVIRONMENT = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                  undefined=jinja2.StrictUndefined)

TEMPLATE = _ENVIRONMENT.from_string("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{{ title }} · Spaceport report</title>
<style>
:root { --ink: #1f2430; --muted: #5b6472; --line: #e3e6eb; --panel: #f6f7f9; --accent: #2563eb;
        --good: #047857; --fair: #b45309; --poor: #b91c1c; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: #fff; }
a { color: var(--accent); }
a:focus-visible, iframe:focus-visible, summary:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.skip { position: absolute; left: -999px; top: 0; background: #fff; padding: .5em 1em; }
.skip:focus { left: 1em; z-index: 10; }
header.top { background: #111827; color: #f9fafb; }
header.top .wrap { display: flex; gap: 2rem; align-items: center; justify-content: space-between; flex-wrap: wrap;
                   padding-top: 1.6rem; padding-bottom: 1.6rem; }
header.top h1 { margin: 0 0 .25rem; font-size: 1.7rem; letter-spacing: -.01em; }
header.top p { margin: 0; color: #cbd5e1; font-size: .92rem; }
header.top code { color: #e5e7eb; }
.score { text-align: center; min-width: 8.5rem; padding: .6rem 1.2rem; border-radius: 12px; background: #1f2937; }
.score strong { display: block; font-size: 2.6rem; line-height: 1.1; }
.score span { font-size: .8rem; color: #cbd5e1; text-transform: uppercase; letter-spacing: .06em; }
.score.good strong { color: #34d399; } .score.fair strong { color: #fbbf24; } .score.poor strong { color: #f87171; }
nav { border-bottom: 1px solid var(--line); background: #fff; position: sticky; top: 0; z-index: 5; }
nav ul { list-style: none; margin: 0 auto; padding: 0 1.5rem; display: flex; gap: 1.2rem; max-width: 1120px;
         overflow-x: auto; }
nav a { display: block; padding: .7rem 0; text-decoration: none; color: var(--muted); font-size: .92rem;
        white-space: nowrap; }
nav a:hover { color: var(--ink); }
.wrap { max-width: 1120px; margin: 0 auto; padding: 0 1.5rem; }
main section { padding: 1.8rem 0 .6rem; border-bottom: 1px solid var(--line); scroll-margin-top: 3rem; }
main section:last-of-type { border-bottom: 0; }
h2 { font-size: 1.3rem; margin: 0 0 1rem; }
h3 { font-size: 1rem; margin: 1.4rem 0 .6rem; }
.lead { color: var(--muted); margin: -.5rem 0 1rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(9.5rem, 1fr)); gap: .8rem; margin: 0 0 1.4rem;
         padding: 0; list-style: none; }
.cards li { background: var(--panel); border-radius: 10px; padding: .8rem 1rem; }
.cards .label { display: block; font-size: .78rem; color: var(--muted); text-transform: uppercase;
                letter-spacing: .05em; }
.cards .value { display: block; font-size: 1.35rem; font-weight: 650; margin-top: .15rem; }
.cards.compact .value { font-size: 1.05rem; }
table { border-collapse: collapse; width: 100%; font-size: .92rem; }
.scroll { overflow-x: auto; }
.scroll:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
abbr { text-decoration: none; }
@media (max-width: 700px) { .wide-only { display: none; } }
caption { text-align: left; font-weight: 600; padding-bottom: .5rem; }
th, td { text-align: left; padding: .45rem .7rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; }
thead th { color: var(--muted); font-size: .78rem; text-transform: uppercase; letter-spacing: .04em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.bar { display: inline-block; width: 8rem; height: .55rem; background: var(--line); border-radius: 4px;
       vertical-align: middle; overflow: hidden; }
.bar i { display: block; height: 100%; background: var(--accent); }
.ok { color: var(--good); font-weight: 600; } .bad { color: var(--poor); font-weight: 600; }
.muted { color: var(--muted); }
.note { background: #fffbeb; border: 1px solid #fde68a; border-radius: 8px; padding: .7rem 1rem; margin: .8rem 0; }
.note.error { background: #fef2f2; border-color: #fecaca; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .35rem 1.2rem; margin: 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; font-variant-numeric: tabular-nums; }
.split { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1.25fr); gap: 2rem; align-items: start; }
@media (max-width: 860px) { .split { grid-template-columns: 1fr; } }
figure { margin: 0; }
img { max-width: 100%; height: auto; display: block; }
.plot { border: 1px solid var(--line); border-radius: 10px; background: #fff; }
.views { display: grid; gap: 1.2rem; }
.views.portrait { grid-template-columns: repeat(auto-fit, minmax(min(100%, 460px), 1fr)); }
.view { background: var(--panel); border-radius: 12px; padding: .9rem; }
.view .pair { display: grid; grid-template-columns: 1fr 1fr; gap: .6rem; }
.view .pair figure { position: relative; }
.view .pair img { width: 100%; border-radius: 6px; }
.view .pair figcaption { position: absolute; left: .5rem; top: .5rem; background: rgba(17,24,39,.75); color: #fff;
                         font-size: .75rem; padding: .1rem .5rem; border-radius: 4px; }
.view h3 { margin: 0 0 .6rem; display: flex; justify-content: space-between; flex-wrap: wrap; gap: .5rem; }
.view h3 span { font-weight: 500; color: var(--muted); font-variant-numeric: tabular-nums; }
.curves { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 1rem; margin-bottom: 1rem; }
.viewer-frame { width: 100%; aspect-ratio: 16 / 9; border: 0; border-radius: 12px; background: #121217;
                display: block; }
code, kbd { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .88em; }
kbd { border: 1px solid var(--line); border-bottom-width: 2px; border-radius: 4px; padding: 0 .3em; }
pre.command { background: #111827; color: #f9fafb; padding: .7rem 1rem; border-radius: 8px; overflow-x: auto; }
footer { color: var(--muted); font-size: .85rem; padding: 1.5rem 0 2.5rem; }
</style>
</head>
<body>
<a class="skip" href="#summary">Skip to the report</a>
<header class="top">
  <div class="wrap">
    <div>
      <h1>Spaceport report: {{ title }}</h1>
      <p>{{ steps | capitalize }} · preset <strong>{{ preset }}</strong> · updated {{ updated }}</p>
      <p>Workspace <code>{{ workspace }}</code></p>
    </div>
    <div class="score {{ score_class }}" role="img" aria-label="Quality score {{ score }} out of 100">
      <strong>{{ score }}</strong><span>quality score / 100</span>
    </div>
  </div>
</header>
<nav aria-label="Sections">
  <ul>
    <li><a href="#summary">Summary</a></li>
    {% if viewer %}<li><a href="#viewer">3D viewer</a></li>{% endif %}
    {% if views %}<li><a href="#views">Held-out views</a></li>{% endif %}
    {% if training %}<li><a href="#training">Training</a></li>{% endif %}
    {% if sfm %}<li><a href="#sfm">Structure from motion</a></li>{% endif %}
    {% if sizes %}<li><a href="#sizes">Sizes</a></li>{% endif %}
    <li><a href="#stages">Stages</a></li>
  </ul>
</nav>
<main class="wrap">

<section id="summary" aria-labelledby="summary-title">
  <h2 id="summary-title">Summary</h2>
  <ul class="cards">
    {% for figure in key_figures %}
    <li><span class="label">{{ figure.label }}</span><span class="value">{{ figure.value }}</span></li>
    {% endfor %}
  </ul>
  {% for mismatch in mismatches %}<p class="note error">{{ mismatch }}</p>{% endfor %}
  <div class="scroll" tabindex="0" role="region" aria-label="Quality score table">
  <table>
    <caption>How the quality score of {{ score }} is made</caption>
    <thead><tr><th scope="col">Part</th><th scope="col">Measured</th><th scope="col" class="wide-only">Rule</th>
      <th scope="col" class="num">Points</th><th scope="col"><span class="muted">share</span></th></tr></thead>
    <tbody>
    {% for part in score_parts %}
    <tr><th scope="row">{{ part.label }}</th><td>{{ part.value }}</td><td class="muted wide-only">{{ part.rule }}</td>
      <td class="num">{{ "%.1f" | format(part.earned) }} / {{ "%g" | format(part.possible) }}</td>
      <td><span class="bar" role="img" aria-label="{{ part.percent }} percent"><i style="width: {{ part.percent }}%">
      </i></span></td></tr>
    {% endfor %}
    </tbody>
  </table>
  </div>
</section>

{% if viewer %}
<section id="viewer" aria-labelledby="viewer-title">
  <h2 id="viewer-title">3D viewer</h2>
  {% if viewer.problem %}<p class="note error">{{ viewer.problem }}</p>
  {% elif viewer.data.srcdoc %}
  <p class="lead">The compressed splat ({{ viewer.data.size }}), from the first training camera. Drag to orbit,
    right-drag or <kbd>Shift</kbd>-drag to pan, scroll to zoom, <kbd>W</kbd><kbd>A</kbd><kbd>S</kbd><kbd>D</kbd>
    to fly, <kbd>R</kbd> to reset the view.</p>
  <iframe class="viewer-frame" title="3D viewer of the compressed splat" allow="fullscreen"
          srcdoc="{{ viewer.data.srcdoc }}"></iframe>
  <p class="muted">Full window: <code>{{ viewer.data.command }}</code></p>
  {% else %}
  <p class="note">The SOG is {{ viewer.data.size }}, over the {{ viewer.data.limit }} this page inlines. Open it in
    the viewer with:</p>
  <pre class="command">{{ viewer.data.command }}</pre>
  {% endif %}
</section>
{% endif %}

{% if views %}
<section id="views" aria-labelledby="views-title">
  {% if views.problem %}<h2 id="views-title">Held-out views</h2><p class="note error">{{ views.problem }}</p>
  {% else %}
  {% set v = views.data %}
  <h2 id="views-title">{{ "Held-out views" if v.held_out else "Training views" }}</h2>
  <p class="lead">{% if v.held_out %}Photos training never saw, beside the splat rendered from their
    cameras{% else %}No photo was held out, so these are training photos (an optimistic
    measure){% endif %}, at step {{ v.step }}: mean PSNR {{ "%.2f" | format(v.psnr) }} dB,
    SSIM {{ "%.3f" | format(v.ssim) }}.{% if v.nerf_w %} The photos differ in colour (cameras, exposure), so
    training learned a colour transform per photo; for each held-out photo the transform was fitted on its left
    half and PSNR/SSIM measure its right half only (the NeRF-W protocol).{% endif %}</p>
  <div class="views{{ ' portrait' if v.portrait else '' }}">
    {% for view in v.views %}
    <article class="view" aria-label="{{ view.name }}">
      <h3>{{ view.name }}{% if view.psnr is not none %}<span>PSNR {{ "%.2f" | format(view.psnr) }} dB ·
        SSIM {{ "%.3f" | format(view.ssim) }}</span>{% endif %}</h3>
      <div class="pair">
        <figure><img src="{{ view.photo.src }}" alt="{{ view.photo.alt }}" width="{{ view.photo.width }}"
          height="{{ view.photo.height }}"><figcaption>Photo</figcaption></figure>
        <figure><img src="{{ view.render.src }}" alt="{{ view.render.alt }}" width="{{ view.render.width }}"
          height="{{ view.render.height }}"><figcaption>Render</figcaption></figure>
      </div>
    </article>
    {% else %}
    <p class="muted">Training wrote no renders (train.num_renders is 0).</p>
    {% endfor %}
  </div>
  {% if v.scores | length > v.views | length %}
  <h3>Every evaluated view</h3>
  <table>
    <thead><tr><th scope="col">View</th><th scope="col" class="num">PSNR</th><th scope="col" class="num">SSIM</th>
    </tr></thead>
    <tbody>{% for score in v.scores %}<tr><th scope="row">{{ score.name }}</th>
      <td class="num">{{ "%.2f" | format(score.psnr) }} dB</td><td class="num">{{ "%.3f" | format(score.ssim) }}</td>
      </tr>{% endfor %}</tbody>
  </table>
  {% endif %}
  {% endif %}
</section>
{% endif %}

{% if training %}
<section id="training" aria-labelledby="training-title">
  <h2 id="training-title">Training</h2>
  {% if training.problem %}<p class="note error">{{ training.problem }}</p>
  {% else %}
  <div class="curves">
    {% for curve in training.data.curves %}
    <figure><img class="plot curve" src="{{ curve.src }}" alt="{{ curve.alt }}" width="{{ curve.width }}"
      height="{{ curve.height }}"></figure>
    {% else %}<p class="muted">Training logged no metrics.</p>
    {% endfor %}
  </div>
  <ul class="cards compact">
    {% for label, value in training.data.facts %}
    <li><span class="label">{{ label }}</span><span class="value">{{ value }}</span></li>
    {% endfor %}
  </ul>
  {% endif %}
</section>
{% endif %}

{% if sfm %}
<section id="sfm" aria-labelledby="sfm-title">
  <h2 id="sfm-title">Structure from motion</h2>
  {% if sfm.problem %}<p class="note error">{{ sfm.problem }}</p>
  {% else %}
  {% for warning in sfm.data.warnings %}<p class="note sfm-warning">Warning: {{ warning }}</p>{% endfor %}
  <div class="split">
    <div>
      <dl class="facts">
        {% for label, value in sfm.data.facts %}<dt>{{ label }}</dt><dd>{{ value }}</dd>{% endfor %}
      </dl>
      <h3>Photos not in the reconstruction</h3>
      {% if sfm.data.not_used %}
      <table>
        <thead><tr><th scope="col">Photo</th><th scope="col">Left out by</th><th scope="col">Why</th></tr></thead>
        <tbody>{% for row in sfm.data.not_used %}<tr><th scope="row">{{ row.photo }}</th><td>{{ row.stage }}</td>
          <td>{{ row.reason }}</td></tr>{% endfor %}</tbody>
      </table>
      {% else %}<p class="ok">None: every photo was used.</p>{% endif %}
    </div>
    <figure>
      {% if sfm.data.top_view.problem %}<p class="note error">{{ sfm.data.top_view.problem }}</p>
      {% else %}{% set top = sfm.data.top_view.data.picture %}
      <img class="plot" id="top-view" src="{{ top.src }}" alt="{{ top.alt }}" width="{{ top.width }}"
        height="{{ top.height }}">
      <figcaption class="muted">Seen from above (perpendicular to the photos' mean up direction); arrows show
        where each camera looks.</figcaption>{% endif %}
    </figure>
  </div>
  {% endif %}
</section>
{% endif %}

{% if sizes %}
<section id="sizes" aria-labelledby="sizes-title">
  <h2 id="sizes-title">Sizes</h2>
  {% if sizes.problem %}<p class="note error">{{ sizes.problem }}</p>
  {% else %}{% set s = sizes.data %}
  <table>
    <thead><tr><th scope="col">File</th><th scope="col" class="num">Size</th><th scope="col">
      <span class="muted">relative</span></th></tr></thead>
    <tbody>{% for bar in s.bars %}<tr><th scope="row">{{ bar.label }}</th>
      <td class="num" title="{{ '{:,}'.format(bar.bytes) }} bytes">{{ bar.size }}</td>
      <td><span class="bar" style="width: 16rem"><i style="width: {{ '%.1f' | format(bar.percent) }}%"></i></span>
      </td></tr>{% endfor %}</tbody>
  </table>
  <p>{% if s.ratio %}The SOG is <strong>{{ "%.1f" | format(s.ratio) }}× smaller</strong> than the PLY{% endif %}
    {% if s.gaussians %}{{ "; it" if s.ratio else "It" }} holds {{ "{:,}".format(s.gaussians) }} Gaussians{% endif %}.
  </p>
  {% for fact in s.reduction %}<p>{{ fact }}</p>{% endfor %}
  {% endif %}
</section>
{% endif %}

<section id="stages" aria-labelledby="stages-title">
  <h2 id="stages-title">Stages</h2>
  <div class="scroll" tabindex="0" role="region" aria-label="Stages table">
  <table>
    <thead><tr><th scope="col">Stage</th><th scope="col">Status</th><th scope="col" class="num">Time</th>
      <th scope="col" class="num"><abbr title="peak resident memory of the process">Peak RAM</abbr></th>
      <th scope="col" class="num"><abbr title="peak GPU memory allocated">Peak GPU</abbr></th>
      <th scope="col">Device</th><th scope="col">Output</th></tr></thead>
    <tbody>
    {% for row in stage_rows %}
    <tr><th scope="row">{{ row.stage }}</th><td>{{ row.status }}</td><td class="num">{{ row.time }}</td>
      <td class="num">{{ row.rss }}</td><td class="num">{{ row.gpu }}</td><td>{{ row.device }}</td>
      <td>{% if row.ok %}<span class="ok">valid</span>{% else %}<span class="bad">invalid</span>
        {% if row.error %}<span class="muted">{{ row.error }}</span>{% endif %}{% endif %}</td></tr>
    {% endfor %}
    </tbody>
    <tfoot><tr><th scope="row">Total</th><td></td><td class="num">{{ total_time }}</td><td colspan="4"></td></tr>
    </tfoot>
  </table>
  </div>
</section>
</main>
<footer class="wrap">Made by Spaceport from <code>report/report.json</code> and the workspace's files. This page is
  self-contained: it needs no other file or network access.</footer>
</body>
</html>
""")

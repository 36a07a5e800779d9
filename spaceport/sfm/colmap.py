"""Structure from motion with real COLMAP through pycolmap: extract, match, map (with attempts, per-photo
intrinsics and a camera check), undistort, report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pycolmap

from spaceport.formats import FramesManifest, SfmReport, read_frames, write_sfm_report
from spaceport.formats.sfm import LeftOutPhoto, MappingAttempt
from spaceport.progress import Progress
from spaceport.sfm.config import SfmConfig
from spaceport.sfm.features import (
    assign_cameras,
    choose_feature_device,
    choose_matcher,
    colmap_mask_folder,
    exif_groups,
    extract,
    mapping_groups,
    match,
    resolve_camera_mode,
)
from spaceport.sfm.mapping import MIN_REGISTERED, Outcome, map_with_attempts
from spaceport.sfm.masks import undistort_masks
from spaceport.sfm.quality import focal_spread, photo_quality, sfm_warnings
from spaceport.sfm.upright import make_upright
from spaceport.workspace import SpaceportError, StageResult, Workspace, atomic_write_json, staged_dir

# -- inputs ----------------------------------------------------------------------------------------


def has_imported_model(ws: Workspace) -> bool:
    """True when the job started from a COLMAP model the user brought (--steps train), not from photos."""
    return (ws.input_dir / "sparse").is_dir() and not ws.images_dir.is_dir()


def check_sfm_inputs(ws: Workspace) -> FramesManifest | None:
    """The ingested frames (None for an imported model); raises SpaceportError naming what is missing."""
    if has_imported_model(ws):
        if not (ws.input_dir / "images").is_dir():
            raise SpaceportError(f"{ws.input_dir / 'images'}: missing; a COLMAP model comes with its images/ folder")
        return None
    if not ws.images_dir.is_dir():
        raise SpaceportError(f"{ws.images_dir}: missing; run the ingest stage first (spaceport run ... --steps sfm)")
    frames = read_frames(ws.images_dir)
    missing = [f.file for f in frames.frames if not (ws.images_dir / f.file).exists()]
    if missing:
        raise SpaceportError(f"{ws.images_dir}: listed images are missing ({', '.join(missing[:5])}); "
                             "re-run ingest with --force ingest")
    if len(frames.frames) < MIN_REGISTERED:
        raise SpaceportError(f"{ws.images_dir}: only {len(frames.frames)} image(s); SfM needs at least "
                             f"{MIN_REGISTERED} overlapping photos of the same place")
    return frames


@contextmanager
def colmap_log_to(path: Path) -> Iterator[None]:
    """COLMAP's own log goes to ``path``, not the terminal (the progress bars are there), for the block only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    also_to_stderr = pycolmap.logging.alsologtostderr
    pycolmap.logging.alsologtostderr = False
    pycolmap.logging.set_log_destination(pycolmap.logging.INFO, path)
    try:
        yield
    finally:
        pycolmap.logging.set_log_destination(pycolmap.logging.INFO, "")  # glog: an empty name stops file logging
        pycolmap.logging.alsologtostderr = also_to_stderr




class _Steps:
    """Sub-step markers inside sfm/ so a killed SfM resumes after its last finished step."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.file = ws.sfm_dir / "steps.json"
        self.timings: dict[str, float] = json.loads(self.file.read_text()) if self.file.exists() else {}

    def done(self, step: str) -> bool:
        return step in self.timings

    def finish(self, step: str, seconds: float) -> None:
        self.timings[step] = round(seconds, 2)
        atomic_write_json(self.file, self.timings)


def _undistort(ws: Workspace, images_dir: Path, mask_folder: Path | None, masked: list[str],
               progress: Progress) -> None:
    """PINHOLE images + model for training, built beside sfm/undistorted and renamed into place; masks, when the
    photos have them, undistorted the same way into sfm/undistorted/masks/<image file>.png."""
    with progress.task("sfm: undistort", total=None), staged_dir(ws.undistorted_dir) as staging:
        pycolmap.undistort_images(staging, ws.sparse_dir, images_dir, output_type="COLMAP")
        if mask_folder is not None:
            undistort_masks(pycolmap.Reconstruction(str(ws.sparse_dir)), mask_folder, set(masked), staging / "masks")


def _write_model(ws: Workspace, model: pycolmap.Reconstruction) -> None:
    """Only the registered photos: those removed by the camera check are not in the files training reads."""
    with staged_dir(ws.sparse_dir) as staging:
        model.write_binary(str(staging))


def run_sfm(ws: Workspace, config: SfmConfig, progress: Progress) -> StageResult:
    """Photos in ``images/`` (or a COLMAP model the user brought in ``input/``) -> a COLMAP model in
    ``sfm/sparse/0``, PINHOLE ``sfm/undistorted`` for training, and ``sfm/report.json``."""
    frames = check_sfm_inputs(ws)
    with colmap_log_to(ws.logs_dir / "sfm.colmap.log"):
        if frames is None:
            report = _import_model(ws, config, progress)
        else:
            report = _reconstruct(ws, frames, config, progress)
    write_sfm_report(ws.sfm_dir, report)
    progress.log(f"sfm: registered {report.registered}/{report.total} images, {report.points3d} points, "
                 f"mean reprojection error {report.mean_reprojection_error_px:.3f} px")
    for warning in report.warnings:
        progress.log(f"sfm: warning: {warning}", logging.WARNING)
    return StageResult(
        stage="sfm",
        outputs={"model": ws.rel(ws.sparse_dir), "undistorted": ws.rel(ws.undistorted_dir),
                 "report": ws.rel(ws.sfm_dir / "report.json")},
        metrics=report.model_dump(include={"registered", "total", "points3d", "mean_reprojection_error_px",
                                           "matcher", "mapper", "source"}),
    )


def _reconstruct(ws: Workspace, frames: FramesManifest, config: SfmConfig, progress: Progress) -> SfmReport:
    ws.sfm_dir.mkdir(parents=True, exist_ok=True)
    database = ws.sfm_dir / "database.db"
    steps = _Steps(ws)
    matcher = choose_matcher(frames, config)
    camera_mode = resolve_camera_mode(frames, config.camera_mode)
    mask_folder, masked = colmap_mask_folder(ws, frames)
    features_file = ws.sfm_dir / "features.json"
    progress.log(f"sfm: {len(frames.frames)} images, {len(exif_groups(frames))} EXIF camera group(s), camera mode "
                 f"{camera_mode}, matcher {matcher}, mapper {config.mapper}"
                 + (f", {len(masked)} with a mask" if masked else ""))

    def timed(step: str, fn: Any) -> None:
        if steps.done(step):
            progress.log(f"sfm: {step} already done, skipped")
            return
        start = time.perf_counter()
        fn()
        steps.finish(step, time.perf_counter() - start)

    def extract_all() -> None:
        database.unlink(missing_ok=True)  # a half-written database from a killed run
        device = choose_feature_device(config.feature_device)
        extract(ws, frames, config, device, mask_folder, progress)
        assign_cameras(database, frames, mapping_groups(frames, camera_mode))
        atomic_write_json(features_file, {"device": device, "masked": masked})

    timed("extract", extract_all)
    # a workspace whose extraction ran before features.json existed: the CPU, no masks
    features = json.loads(features_file.read_text()) if features_file.exists() else {"device": "cpu", "masked": []}
    timed("match", lambda: match(ws, frames, matcher, config, features["device"], progress))

    def map_and_write() -> None:
        best, outcomes = map_with_attempts(database, ws.images_dir, ws.sfm_dir / "models", frames, camera_mode,
                                           config, progress)
        _check_registered(ws, frames, best, outcomes, config, matcher)
        upright = make_upright(best.model, config.up)
        _write_model(ws, best.model)
        atomic_write_json(ws.sfm_dir / "models.json", {
            "upright": upright.model_dump(),
            "model_sizes": best.model_sizes, "mapper": best.attempt.mapper, "camera_mode": best.attempt.camera_mode,
            "camera_groups": len(mapping_groups(frames, best.attempt.camera_mode)),
            "left_out": [photo.model_dump() for photo in best.left_out],
            "focal_disagreement": best.focal_disagreement,
            "attempts": [outcome.attempt.model_dump() for outcome in outcomes]})

    timed("map", map_and_write)
    models = _read_models(ws, config)
    timed("undistort", lambda: _undistort(ws, ws.images_dir, mask_folder, features["masked"], progress))
    model = pycolmap.Reconstruction(str(ws.sparse_dir))
    left_out = [LeftOutPhoto.model_validate(photo) for photo in models["left_out"]]
    report = _report(model, total=len(frames.frames), matcher=matcher, mapper=models["mapper"],
                     camera_mode=models["camera_mode"], camera_groups=models["camera_groups"],
                     seconds=steps.timings, model_sizes=models["model_sizes"], left_out=left_out,
                     unregistered=[photo.name for photo in left_out],
                     attempts=[MappingAttempt.model_validate(a) for a in models["attempts"]],
                     feature_device=features["device"], masks=len(features["masked"]), upright=models.get("upright"))
    report.warnings = sfm_warnings(report, config, models.get("focal_disagreement", {}))
    return report


def _read_models(ws: Workspace, config: SfmConfig) -> dict[str, Any]:
    """sfm/models.json; one written before the camera check (names only) reads with what it says."""
    models = json.loads((ws.sfm_dir / "models.json").read_text())
    if "left_out" not in models:
        models["left_out"] = [LeftOutPhoto(name=name, test="not_registered", reason="COLMAP found no pose for it")
                              .model_dump() for name in models.get("unregistered", [])]
    defaults = {"mapper": config.mapper, "camera_mode": "", "camera_groups": 0, "model_sizes": [], "attempts": []}
    return {**defaults, **models}


def _check_registered(ws: Workspace, frames: FramesManifest, best: Outcome, outcomes: list[Outcome],
                      config: SfmConfig, matcher: str) -> None:
    """Refuse what training cannot use: fewer than 3 photos, or a fragment of the collection."""
    total = len(frames.frames)
    out = [photo.name for photo in best.left_out]
    if best.registered < MIN_REGISTERED:
        raise SpaceportError(
            f"{ws.images_dir}: SfM registered {best.registered} of {total} photos (needs at least {MIN_REGISTERED}); "
            f"the photos do not overlap enough (tried: {attempts_tried(outcomes)}). Unregistered: {', '.join(out)}. "
            + fragment_hint(matcher, frames.kind, outcomes, "Take photos with ~60% overlap, moving around "
                            "the subject."))
    if best.registered < config.min_registered_fraction * total:
        raise SpaceportError(
            f"{ws.images_dir}: SfM registered {best.registered} of {total} photos (tried: "
            f"{attempts_tried(outcomes)}); refusing to train on a fragment. "
            + fragment_hint(matcher, frames.kind, outcomes, "Try another --camera-mode, or lower "
                            f"--min-registered (now {config.min_registered_fraction}).")
            + f" Unregistered: {', '.join(out[:20])}")


def attempts_tried(outcomes: list[Outcome]) -> str:
    """Each mapping attempt: the photos in its largest model and how many of them the camera check kept."""
    return "; ".join(f"{o.attempt.mapper} mapper with {o.attempt.cameras()}: "
                     f"{o.model_sizes[0] if o.model_sizes else 0} mapped, {o.registered} kept" for o in outcomes)


def fragment_hint(matcher: str, kind: str, outcomes: list[Outcome], otherwise: str) -> str:
    """What to change when too few photos registered: the matcher first when it paired only some photos, then the
    global mapper unless an attempt used it."""
    if matcher in ("sequential", "spatial") and kind != "video":
        return (f"The {matcher} matcher paired each photo only with its neighbours (by name or GPS): photos taken "
                "in no order need --matcher exhaustive (or vocabtree with --vocab-tree).")
    tried_global = any(o.attempt.mapper == "global" for o in outcomes)
    return ("" if tried_global else "Try --mapper global. ") + otherwise


def _report(model: pycolmap.Reconstruction, **fields: Any) -> SfmReport:
    return SfmReport(
        registered=model.num_reg_images(),
        points3d=model.num_points3D(),
        mean_reprojection_error_px=float(model.compute_mean_reprojection_error()),
        mean_track_length=float(model.compute_mean_track_length()),
        cameras=model.num_cameras(),
        focal=focal_spread(model),
        photos=photo_quality(model),
        **fields,
    )


def _import_model(ws: Workspace, config: SfmConfig, progress: Progress) -> SfmReport:
    """Use the COLMAP model the user brought (--steps train): validate it, then undistort it for training."""
    model_dir, images_dir = ws.input_dir / "sparse", ws.input_dir / "images"
    started = time.perf_counter()
    try:
        model = pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:  # pycolmap raises bare RuntimeError/ValueError for unreadable models
        raise SpaceportError(f"{model_dir}: not a readable COLMAP model ({exc}); it needs cameras, images "
                             "and points3D (.bin or .txt)") from exc
    missing = [model.image(i).name for i in model.reg_image_ids() if not (images_dir / model.image(i).name).exists()]
    if missing:
        raise SpaceportError(f"{images_dir}: images of the COLMAP model are missing ({', '.join(missing[:5])})")
    if model.num_reg_images() < MIN_REGISTERED or model.num_points3D() == 0:
        raise SpaceportError(f"{model_dir}: the model has {model.num_reg_images()} registered images and "
                             f"{model.num_points3D()} points; training needs >= {MIN_REGISTERED} and a point cloud")
    ws.sfm_dir.mkdir(parents=True, exist_ok=True)
    upright = make_upright(model, config.up)
    _write_model(ws, model)
    _undistort(ws, images_dir, None, [], progress)
    return _report(model, source="model", total=model.num_images(), matcher="none", mapper="none",
                   camera_groups=model.num_cameras(), seconds={"import": round(time.perf_counter() - started, 2)},
                   upright=upright.model_dump())

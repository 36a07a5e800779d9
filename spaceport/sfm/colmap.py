"""Structure from motion with real COLMAP through pycolmap: extract, match, map, undistort."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pycolmap

from spaceport.formats import FramesManifest, SfmReport, read_frames, write_sfm_report
from spaceport.progress import Progress
from spaceport.sfm.config import CameraMode, SfmConfig
from spaceport.workspace import SpaceportError, StageResult, Workspace, atomic_write_json, staged_dir

MIN_REGISTERED = 3


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


# -- camera grouping and matcher choice ------------------------------------------------------------


def camera_groups(frames: FramesManifest, mode: CameraMode) -> list[list[str]]:
    """Partition image names into groups that share one camera (intrinsics)."""
    names = [f.file for f in frames.frames]
    if mode == "single":
        return [names]
    if mode == "per-image":
        return [[n] for n in names]
    groups: dict[tuple, list[str]] = defaultdict(list)
    for f in frames.frames:
        key = (f.exif.make, f.exif.model, f.exif.focal_length_mm, f.width, f.height)
        groups[key].append(f.file)
    result = list(groups.values())
    if mode == "auto" and len(result) > max(3, len(names) // 10):
        # many cameras with few photos each (an internet collection): per-group intrinsics have too few
        # views to be estimated; one shared camera registers far more (liberty: 135/135 vs fragments).
        return [names]
    return result


def choose_matcher(frames: FramesManifest, config: SfmConfig) -> str:
    if config.matcher != "auto":
        return config.matcher
    if frames.kind == "video":
        return "sequential"
    count = len(frames.frames)
    with_gps = sum(1 for f in frames.frames if f.exif.gps)
    if with_gps >= 0.8 * count and count > config.exhaustive_max_images:
        return "spatial"
    if count <= config.exhaustive_max_images:
        return "exhaustive"
    return "vocabtree" if config.vocab_tree_path else "sequential"


# -- progress from the COLMAP database -------------------------------------------------------------


def _count_rows(database: Path, table: str) -> int | None:
    """Rows COLMAP has written so far, or None while they cannot be read.

    ``nolock=1``: our reader takes no lock, because COLMAP aborts the whole process ("database is locked") when
    one of its writes meets a reader's lock; a count read during a write may be off, which a progress bar can bear.
    """
    try:
        with sqlite3.connect(f"file:{database}?mode=ro&nolock=1", uri=True, timeout=0.2) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:
        return None


@contextmanager
def _poll_database(task: Any, database: Path, table: str) -> Iterator[None]:
    """COLMAP gives no callback for extraction/matching: follow the rows it writes instead."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.5):
            count = _count_rows(database, table)
            if count is not None:
                task.update(completed=count)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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


# -- the steps -------------------------------------------------------------------------------------


def _extract(ws: Workspace, frames: FramesManifest, config: SfmConfig, progress: Progress) -> list[list[str]]:
    database = ws.sfm_dir / "database.db"
    groups = camera_groups(frames, config.camera_mode)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = config.num_threads
    extraction.max_image_size = config.max_image_size
    extraction.sift.max_num_features = config.max_num_features
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = config.camera_model
    with progress.task("sfm: extract features", total=len(frames.frames)) as task:
        with _poll_database(task, database, "keypoints"):
            for group in groups:
                pycolmap.extract_features(database, ws.images_dir, image_names=group,
                                          camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                                          extraction_options=extraction, device=pycolmap.Device.cpu)
        task.update(completed=_count_rows(database, "keypoints"))
    return groups


def _match(ws: Workspace, frames: FramesManifest, matcher: str, config: SfmConfig, progress: Progress) -> None:
    database = ws.sfm_dir / "database.db"
    options = pycolmap.FeatureMatchingOptions()
    options.num_threads = config.num_threads
    n = len(frames.frames)
    expected = n * (n - 1) // 2 if matcher == "exhaustive" else None
    with progress.task(f"sfm: match ({matcher})", total=expected) as task:
        with _poll_database(task, database, "two_view_geometries"):
            if matcher == "exhaustive":
                pycolmap.match_exhaustive(database, matching_options=options, device=pycolmap.Device.cpu)
            elif matcher == "sequential":
                pairing = pycolmap.SequentialPairingOptions()
                pairing.overlap = config.sequential_overlap
                if config.vocab_tree_path:
                    pairing.loop_detection = True
                    pairing.vocab_tree_path = config.vocab_tree_path
                pycolmap.match_sequential(database, matching_options=options, pairing_options=pairing,
                                          device=pycolmap.Device.cpu)
            elif matcher == "spatial":
                pycolmap.match_spatial(database, matching_options=options, device=pycolmap.Device.cpu)
            elif matcher == "vocabtree":
                if not config.vocab_tree_path or not Path(config.vocab_tree_path).exists():
                    raise SpaceportError(f"vocabulary tree file '{config.vocab_tree_path}' not found; pass "
                                         "--vocab-tree PATH (nothing is downloaded) or use another matcher")
                pairing = pycolmap.VocabTreePairingOptions()
                pairing.vocab_tree_path = config.vocab_tree_path
                pycolmap.match_vocabtree(database, matching_options=options, pairing_options=pairing,
                                         device=pycolmap.Device.cpu)
            else:
                raise SpaceportError(f"unknown matcher '{matcher}'")
        # pairs are written in blocks, so the poll can lag behind: show the final count
        task.update(completed=_count_rows(database, "two_view_geometries"))


def _map(ws: Workspace, frames: FramesManifest, config: SfmConfig, progress: Progress) -> dict[int, Any]:
    database = ws.sfm_dir / "database.db"
    models_dir = ws.sfm_dir / "models"
    shutil.rmtree(models_dir, ignore_errors=True)
    models_dir.mkdir(parents=True)
    n = len(frames.frames)
    if config.mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
        options.num_threads = config.num_threads
        options.random_seed = config.seed
        with progress.task("sfm: global mapping (GLOMAP)", total=None):
            return pycolmap.global_mapping(database, ws.images_dir, models_dir, options)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = config.num_threads
    options.random_seed = config.seed
    with progress.task("sfm: incremental mapping", total=n) as task:
        # the callback fires per registered image (across all models); cap at n for the bar
        counter = {"n": 2}
        task.update(completed=2)

        def next_image() -> None:
            counter["n"] += 1
            task.update(completed=min(counter["n"], n))

        return pycolmap.incremental_mapping(database, ws.images_dir, models_dir, options,
                                            next_image_callback=next_image)


def _pick_largest(ws: Workspace, frames: FramesManifest, config: SfmConfig) -> tuple[pycolmap.Reconstruction, dict]:
    models_dir = ws.sfm_dir / "models"
    models = []
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        models.append(pycolmap.Reconstruction(str(folder)))
    names = [f.file for f in frames.frames]
    sizes = sorted((m.num_reg_images() for m in models), reverse=True)
    if not models or sizes[0] < MIN_REGISTERED:
        raise SpaceportError(
            f"{ws.images_dir}: SfM registered {sizes[0] if sizes else 0} of {len(names)} photos (needs at least "
            f"{MIN_REGISTERED}); the photos do not overlap enough. Unregistered: {', '.join(names)}. "
            "Take photos with ~60% overlap, moving around the subject."
        )
    best = max(models, key=lambda m: m.num_reg_images())
    registered = {best.image(i).name for i in best.reg_image_ids()}
    info = {"model_sizes": sizes, "unregistered": [n for n in names if n not in registered]}
    fraction = len(registered) / len(names)
    if fraction < config.min_registered_fraction:
        raise SpaceportError(
            f"{ws.images_dir}: the largest SfM model holds only {len(registered)}/{len(names)} photos "
            f"(models: {sizes}); refusing to train on a fragment. Try --mapper global, --camera-mode single, "
            f"or lower --min-registered (now {config.min_registered_fraction}). "
            f"Unregistered: {', '.join(info['unregistered'][:20])}"
        )
    return best, info


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


def _undistort(ws: Workspace, images_dir: Path, progress: Progress) -> None:
    """PINHOLE images + model for training, built beside sfm/undistorted and renamed into place."""
    with progress.task("sfm: undistort", total=None), staged_dir(ws.undistorted_dir) as staging:
        pycolmap.undistort_images(staging, ws.sparse_dir, images_dir, output_type="COLMAP")


def _write_model(ws: Workspace, model: pycolmap.Reconstruction) -> None:
    with staged_dir(ws.sparse_dir) as staging:
        model.write_binary(str(staging))


def run_sfm(ws: Workspace, config: SfmConfig, progress: Progress) -> StageResult:
    """Photos in ``images/`` (or a COLMAP model the user brought in ``input/``) -> a COLMAP model in
    ``sfm/sparse/0``, PINHOLE ``sfm/undistorted`` for training, and ``sfm/report.json``."""
    frames = check_sfm_inputs(ws)
    with colmap_log_to(ws.logs_dir / "sfm.colmap.log"):
        if frames is None:
            report = _import_model(ws, progress)
        else:
            report = _reconstruct(ws, frames, config, progress)
    write_sfm_report(ws.sfm_dir, report)
    progress.log(f"sfm: registered {report.registered}/{report.total} images, {report.points3d} points, "
                 f"mean reprojection error {report.mean_reprojection_error_px:.3f} px")
    return StageResult(
        stage="sfm",
        outputs={"model": ws.rel(ws.sparse_dir), "undistorted": ws.rel(ws.undistorted_dir),
                 "report": ws.rel(ws.sfm_dir / "report.json")},
        metrics=report.model_dump(include={"registered", "total", "points3d", "mean_reprojection_error_px",
                                           "matcher", "mapper", "source"}),
    )


def _reconstruct(ws: Workspace, frames: FramesManifest, config: SfmConfig, progress: Progress) -> SfmReport:
    ws.sfm_dir.mkdir(parents=True, exist_ok=True)
    steps = _Steps(ws)
    matcher = choose_matcher(frames, config)
    groups = camera_groups(frames, config.camera_mode)
    progress.log(f"sfm: {len(frames.frames)} images, {len(groups)} camera group(s), matcher {matcher}, "
                 f"mapper {config.mapper}")

    def timed(step: str, fn: Any) -> None:
        if steps.done(step):
            progress.log(f"sfm: {step} already done, skipped")
            return
        start = time.perf_counter()
        fn()
        steps.finish(step, time.perf_counter() - start)

    if not steps.done("extract"):
        (ws.sfm_dir / "database.db").unlink(missing_ok=True)  # a half-written database from a killed run
    timed("extract", lambda: _extract(ws, frames, config, progress))
    timed("match", lambda: _match(ws, frames, matcher, config, progress))

    def map_and_write() -> None:
        _map(ws, frames, config, progress)
        best, info = _pick_largest(ws, frames, config)
        _write_model(ws, best)
        atomic_write_json(ws.sfm_dir / "models.json", info)

    timed("map", map_and_write)
    models = json.loads((ws.sfm_dir / "models.json").read_text())
    timed("undistort", lambda: _undistort(ws, ws.images_dir, progress))
    return _report(pycolmap.Reconstruction(str(ws.sparse_dir)), total=len(frames.frames), matcher=matcher,
                   mapper=config.mapper, camera_groups=len(groups), seconds=steps.timings, **models)


def _report(model: pycolmap.Reconstruction, **fields: Any) -> SfmReport:
    return SfmReport(
        registered=model.num_reg_images(),
        points3d=model.num_points3D(),
        mean_reprojection_error_px=float(model.compute_mean_reprojection_error()),
        mean_track_length=float(model.compute_mean_track_length()),
        cameras=model.num_cameras(),
        **fields,
    )


def _import_model(ws: Workspace, progress: Progress) -> SfmReport:
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
    _write_model(ws, model)
    _undistort(ws, images_dir, progress)
    return _report(model, source="model", total=model.num_images(), matcher="none", mapper="none",
                   camera_groups=model.num_cameras(), seconds={"import": round(time.perf_counter() - started, 2)})

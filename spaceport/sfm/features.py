"""Which photos share a camera, SIFT extraction in one pass, camera assignment in COLMAP's database, matching."""

from __future__ import annotations

import shutil
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pycolmap
from PIL import Image

from spaceport.formats import FramesManifest
from spaceport.formats.frames import FrameRecord
from spaceport.progress import Progress
from spaceport.sfm.config import CameraMode, SfmConfig
from spaceport.sfm.polling import count_rows, poll_database
from spaceport.workspace import SpaceportError, Workspace

# -- camera grouping -------------------------------------------------------------------------------


def exif_key(frame: FrameRecord) -> tuple:
    return (frame.exif.make, frame.exif.model, frame.exif.focal_length_mm, frame.width, frame.height)


def _grouped(frames: FramesManifest, key: Callable[[FrameRecord], tuple]) -> list[list[str]]:
    groups: dict[tuple, list[str]] = defaultdict(list)
    for frame in frames.frames:
        groups[key(frame)].append(frame.file)
    return list(groups.values())


def exif_groups(frames: FramesManifest) -> list[list[str]]:
    return _grouped(frames, exif_key)


def size_groups(frames: FramesManifest) -> list[list[str]]:
    return _grouped(frames, lambda frame: (frame.width, frame.height))


def is_collection(frames: FramesManifest) -> bool:
    """Many cameras with few photos each (an internet collection): per-group intrinsics would have too few views."""
    return len(exif_groups(frames)) > max(3, len(frames.frames) // 10)


def resolve_camera_mode(frames: FramesManifest, mode: CameraMode) -> str:
    if mode != "auto":
        return mode
    return "per-image" if is_collection(frames) else "exif"


def camera_groups(frames: FramesManifest, mode: CameraMode) -> list[list[str]]:
    """The photos that share one camera (intrinsics) in the final model."""
    resolved = resolve_camera_mode(frames, mode)
    if resolved == "per-image":
        return [[frame.file] for frame in frames.frames]
    return size_groups(frames) if resolved == "single" else exif_groups(frames)


def mapping_groups(frames: FramesManifest, mode: str) -> list[list[str]]:
    """The photos that share one camera while mapping: per-image intrinsics are split off a mapped model later
    (a shared camera per size for a collection, per EXIF group otherwise)."""
    if mode == "single" or (mode == "per-image" and is_collection(frames)):
        return size_groups(frames)
    return exif_groups(frames)


# -- where features run ----------------------------------------------------------------------------


def _gpu_present() -> bool:
    try:
        import torch  # only asked on a CUDA build of pycolmap; the CPU path never imports torch
    except ImportError:
        return Path("/dev/nvidia0").exists()
    return bool(torch.cuda.is_available())


def choose_feature_device(requested: str, has_cuda: bool | None = None,
                          gpu_present: Callable[[], bool] = _gpu_present) -> str:
    """``cuda`` when the installed pycolmap is a CUDA build (pycolmap-cuda12) and a GPU answers, else ``cpu``.

    A CUDA build without a GPU would abort inside COLMAP, so the GPU is looked for first."""
    has_cuda = pycolmap.has_cuda if has_cuda is None else has_cuda
    if requested == "cpu":
        return "cpu"
    if has_cuda and gpu_present():
        return "cuda"
    if requested == "cuda":
        why = "no GPU answers" if has_cuda else "the installed pycolmap is a CPU build (install pycolmap-cuda12)"
        raise SpaceportError(f"sfm.feature_device=cuda: {why}; use sfm.feature_device=auto or cpu")
    return "cpu"


def _device(name: str) -> pycolmap.Device:
    return pycolmap.Device.cuda if name == "cuda" else pycolmap.Device.cpu


# -- masks -----------------------------------------------------------------------------------------


def masks_dir(ws: Workspace) -> Path:
    return getattr(ws, "masks_dir", ws.root / "masks")


def colmap_mask_folder(ws: Workspace, frames: FramesManifest) -> tuple[Path | None, list[str]]:
    """The folder to give COLMAP as ``mask_path`` (sfm/masks) and the photos that have a mask (none: no folder).

    COLMAP wants ``<image file>.png`` for every image once a mask folder is given (a missing one fails the
    image), so photos without a mask get an all-white one; masks named after the image's stem (``a.png`` for
    ``a.jpg``) are taken too."""
    folder = masks_dir(ws)
    if not folder.is_dir():
        return None, []
    found: dict[str, Path] = {}
    for frame in frames.frames:
        for candidate in (folder / f"{frame.file}.png", folder / f"{Path(frame.file).stem}.png"):
            if candidate.is_file():
                found[frame.file] = candidate
                break
    if not found:
        return None, []
    staged = ws.sfm_dir / "masks"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    for frame in frames.frames:
        target = staged / f"{frame.file}.png"
        if frame.file in found:
            shutil.copyfile(found[frame.file], target)
        else:
            Image.new("L", (frame.width, frame.height), 255).save(target)
    return staged, sorted(found)


# -- extraction ------------------------------------------------------------------------------------


def extract(ws: Workspace, frames: FramesManifest, config: SfmConfig, device: str, mask_folder: Path | None,
            progress: Progress) -> None:
    """All photos in one COLMAP call (a camera per photo, grouped afterwards in the database): one call per camera
    group cost liberty 196 s against 14 s on 16 cores, the extractor being set up again for every group."""
    database = ws.sfm_dir / "database.db"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = config.num_threads
    extraction.max_image_size = config.max_image_size
    extraction.sift.max_num_features = config.max_num_features
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = config.camera_model
    if mask_folder is not None:
        reader.mask_path = str(mask_folder)
    with progress.task("sfm: extract features", total=len(frames.frames)) as task:
        with poll_database(task, database, "keypoints"):
            pycolmap.extract_features(database, ws.images_dir, image_names=[f.file for f in frames.frames],
                                      camera_mode=pycolmap.CameraMode.PER_IMAGE, reader_options=reader,
                                      extraction_options=extraction, device=_device(device))
        unread = _without_features(database, [f.file for f in frames.frames])
        task.update(completed=len(frames.frames) - len(unread))
    if unread:
        raise SpaceportError(f"{ws.images_dir}: COLMAP could not read {len(unread)} image(s) "
                             f"({', '.join(unread[:5])}); see {ws.logs_dir / 'sfm.colmap.log'} and re-run ingest "
                             "(--force ingest)")


def _without_features(database: Path, names: list[str]) -> list[str]:
    db = pycolmap.Database.open(database)
    try:
        with_features = {image.name for image in db.read_all_images() if db.exists_keypoints(image.image_id)}
    finally:
        db.close()
    return [name for name in names if name not in with_features]


# -- cameras in the database -----------------------------------------------------------------------


def _same_exif_focal(frames: FramesManifest, names: list[str]) -> bool:
    by_name = {f.file: f for f in frames.frames}
    keys = {exif_key(by_name[n]) for n in names}
    return len(keys) == 1 and next(iter(keys))[2] is not None


def assign_cameras(database: Path, frames: FramesManifest, groups: list[list[str]]) -> None:
    """Give each group one camera in COLMAP's database (cameras, rigs, frames, images rewritten; unused rows
    deleted). A group of one EXIF camera keeps the focal prior COLMAP read from the first photo's EXIF; a mixed
    group starts from COLMAP's default (1.2 × the long side), without a prior: a collection's EXIF describes
    photos that were cropped and resized since."""
    db = pycolmap.Database.open(database)
    try:
        images = {image.name: image for image in db.read_all_images()}
        cameras = {camera.camera_id: camera for camera in db.read_all_cameras()}
        frames_by_id = {frame.frame_id: frame for frame in db.read_all_frames()}
        with pycolmap.DatabaseTransaction(db):
            for group in groups:
                camera = pycolmap.Camera(cameras[images[group[0]].camera_id].todict())
                if not _same_exif_focal(frames, group):
                    camera.params = pycolmap.Camera.create_from_model_name(
                        0, camera.model.name, 1.2 * max(camera.width, camera.height), camera.width,
                        camera.height).params
                    camera.has_prior_focal_length = False
                camera_id = db.write_camera(camera)
                sensor = pycolmap.sensor_t(pycolmap.SensorType.CAMERA, camera_id)
                rig = pycolmap.Rig()
                rig.add_ref_sensor(sensor)
                rig_id = db.write_rig(rig)
                for name in group:
                    image = images[name]
                    frame = frames_by_id[image.frame_id]
                    frame.rig_id = rig_id
                    frame.clear_data_ids()
                    frame.add_data_id(pycolmap.data_t(sensor, image.image_id))
                    db.update_frame(frame)
                    image.camera_id = camera_id
                    db.update_image(image)
    finally:
        db.close()
    # pycolmap.Database deletes no single camera or rig; the schema is COLMAP's own (cameras, rigs, rig_sensors)
    with sqlite3.connect(database) as conn:
        conn.execute("DELETE FROM rig_sensors WHERE rig_id NOT IN (SELECT rig_id FROM frames)")
        conn.execute("DELETE FROM rigs WHERE rig_id NOT IN (SELECT rig_id FROM frames)")
        conn.execute("DELETE FROM cameras WHERE camera_id NOT IN (SELECT camera_id FROM images)")
    conn.close()


# -- matching --------------------------------------------------------------------------------------


def choose_matcher(frames: FramesManifest, config: SfmConfig) -> str:
    if config.matcher != "auto":
        return config.matcher
    if frames.kind == "video":
        return "sequential"
    count = len(frames.frames)
    with_gps = sum(1 for f in frames.frames if f.exif.gps)
    if count <= config.exhaustive_max_images:
        return "exhaustive"
    if config.vocab_tree_path:
        return "vocabtree"
    return "spatial" if with_gps >= 0.8 * count else "sequential"


def match(ws: Workspace, frames: FramesManifest, matcher: str, config: SfmConfig, device: str,
          progress: Progress) -> None:
    database = ws.sfm_dir / "database.db"
    options = pycolmap.FeatureMatchingOptions()
    options.num_threads = config.num_threads
    n = len(frames.frames)
    expected = n * (n - 1) // 2 if matcher == "exhaustive" else None
    on = _device(device)
    with progress.task(f"sfm: match ({matcher})", total=expected) as task:
        with poll_database(task, database, "two_view_geometries"):
            if matcher == "exhaustive":
                pycolmap.match_exhaustive(database, matching_options=options, device=on)
            elif matcher == "sequential":
                pairing = pycolmap.SequentialPairingOptions()
                pairing.overlap = config.sequential_overlap
                if config.vocab_tree_path:
                    pairing.loop_detection = True
                    pairing.vocab_tree_path = config.vocab_tree_path
                pycolmap.match_sequential(database, matching_options=options, pairing_options=pairing, device=on)
            elif matcher == "spatial":
                pycolmap.match_spatial(database, matching_options=options, device=on)
            elif matcher == "vocabtree":
                if not config.vocab_tree_path or not Path(config.vocab_tree_path).exists():
                    raise SpaceportError(f"vocabulary tree file '{config.vocab_tree_path}' not found; pass "
                                         "--vocab-tree PATH (nothing is downloaded) or use another matcher")
                pairing = pycolmap.VocabTreePairingOptions()
                pairing.vocab_tree_path = config.vocab_tree_path
                pycolmap.match_vocabtree(database, matching_options=options, pairing_options=pairing, device=on)
            else:
                raise SpaceportError(f"unknown matcher '{matcher}'")
        # pairs are written in blocks, so the poll can lag behind: show the final count
        task.update(completed=count_rows(database, "two_view_geometries"))

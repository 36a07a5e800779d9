"""Masks through SfM: features only where the mask keeps pixels, masks undistorted beside the training images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image

from spaceport.formats import read_frames, read_sfm_report
from spaceport.ingest import IngestConfig, run_ingest
from spaceport.progress import NullProgress
from spaceport.sfm import SfmConfig, run_sfm
from spaceport.workspace import Workspace

IGNORED = 0.4  # the synthetic masks black out the left 40 % of a photo


def test_masks_restrict_features_and_are_undistorted_for_training(monstree_small: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(monstree_small, ws.input_dir)
    ws.mark_done(run_ingest(ws, IngestConfig(), NullProgress()))
    frames = read_frames(ws.images_dir).frames
    masked = {f.file: f for f in frames[:3]}
    masks = ws.root / "masks"
    masks.mkdir()
    for number, (name, frame) in enumerate(masked.items()):
        keep = np.full((frame.height, frame.width), 255, dtype=np.uint8)
        keep[:, : int(IGNORED * frame.width)] = 0
        # COLMAP's layout (a.jpg.png), and once the stem's name (a.png), which SfM renames for COLMAP
        Image.fromarray(keep).save(masks / (f"{Path(name).stem}.png" if number == 2 else f"{name}.png"))

    run_sfm(ws, SfmConfig(max_image_size=480), NullProgress())

    report = read_sfm_report(ws.sfm_dir)
    assert report.masks == 3 and report.registered == 10
    db = pycolmap.Database.open(ws.sfm_dir / "database.db")
    try:
        for image in db.read_all_images():
            x = db.read_keypoints(image.image_id)[:, 0]
            width = next(f.width for f in frames if f.file == image.name)
            if image.name in masked:
                assert x.min() >= IGNORED * width - 1, image.name
            else:
                assert (x < IGNORED * width).sum() > 100, image.name
    finally:
        db.close()
    undistorted = ws.undistorted_dir
    written = sorted(p.name for p in (undistorted / "masks").iterdir())
    assert written == sorted(f"{name}.png" for name in masked)
    for name in masked:
        mask = np.asarray(Image.open(undistorted / "masks" / f"{name}.png"))
        photo = Image.open(undistorted / "images" / name)
        assert mask.shape == (photo.height, photo.width) and set(np.unique(mask)) == {0, 255}
        ignored_columns = (mask == 0).all(axis=0).mean()
        assert abs(ignored_columns - IGNORED) < 0.03, (name, ignored_columns)

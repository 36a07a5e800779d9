"""Masks through SfM: undistorted with their photo's camera, so training can ignore the same pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image

KEEP = 128  # a mask pixel at or above this grey level is kept (white), below it ignored (black)


def undistort_masks(model: pycolmap.Reconstruction, mask_folder: Path, masked: set[str], output: Path) -> int:
    """Each registered photo's mask, for the photos in ``masked`` (``<image file>.png`` in ``mask_folder``,
    COLMAP's layout) undistorted like
    the photo by COLMAP's undistorter, written as ``output/<image file>.png`` (0 or 255) at the undistorted
    image's size; returns how many were written."""
    output.mkdir(parents=True, exist_ok=True)
    options = pycolmap.UndistortCameraOptions()  # the defaults undistort_images uses for the photos
    written = 0
    for image_id in sorted(model.reg_image_ids()):
        image = model.image(image_id)
        source = mask_folder / f"{image.name}.png"
        if image.name not in masked or not source.is_file():
            continue
        grey = np.asarray(Image.open(source).convert("L"))
        bitmap, _camera = pycolmap.undistort_image(options, pycolmap.Bitmap.from_array(grey), image.camera)
        kept = np.asarray(bitmap.to_array()).reshape(bitmap.height, bitmap.width, -1)[..., 0] >= KEEP
        target = output / f"{image.name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((kept * 255).astype(np.uint8), mode="L").save(target)
        written += 1
    return written

"""Image measures used to choose and filter images: sharpness and a perceptual hash."""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image
from scipy import ndimage


def analysis_copy(image: Image.Image, long_side: int) -> Image.Image:
    """A small grey copy on which measures are comparable between images of different sizes."""
    grey = image.convert("L")
    if max(grey.size) > long_side:
        grey.thumbnail((long_side, long_side), Image.Resampling.BILINEAR)
    return grey


def sharpness(grey: Image.Image | np.ndarray) -> float:
    """Variance of the Laplacian: high for crisp edges, low for blurred or featureless images."""
    pixels = np.asarray(grey, dtype=np.float32)
    return float(ndimage.laplace(pixels).var())


def perceptual_hash(grey: Image.Image) -> np.ndarray:
    """64-bit DCT hash (pHash) as a flat bool array; near-identical images differ in few bits."""
    return imagehash.phash(grey, hash_size=8).hash.flatten()


def hash_distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.count_nonzero(a != b))


def blurry_indices(values: list[float], ratio: float) -> list[int]:
    """Indices of values below ratio × median: images far blurrier than their set."""
    if not values or ratio <= 0:
        return []
    threshold = ratio * float(np.median(values))
    return [index for index, value in enumerate(values) if value < threshold]

"""Any image mode Pillow opens -> 8-bit RGB or L with its tones kept, and the ICC profile that still fits it.

16-bit samples map to 8 bits as v / 257 (65535 -> 255): the values of a 16-bit PNG or TIFF are gamma-encoded like
their 8-bit versions, so a linear rescale keeps the tones (Pillow's own ``convert`` of 16-bit grey clips every value
over 255 to white). Pillow already reads 16-bit RGB(A) as the high byte of each sample (v >> 8, within one level of
v / 257). CMYK goes through its embedded ICC profile to sRGB where it has one, Pillow's plain formula otherwise.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageCms

SIXTEEN_BIT_GREY = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
GREY_MODES = frozenset({"1", "LA", "La", "I", "F"}) | SIXTEEN_BIT_GREY
# What Pillow raises for a file that is not a decodable image (truncated, garbage, absurdly large).
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
MAX_8 = 255
MAX_16 = 65535
# The ICC colour space each output mode can carry.
PROFILE_SPACE = {"RGB": "RGB", "L": "GRAY"}


def to_8bit(image: Image.Image, icc_profile: bytes | None = None) -> tuple[Image.Image, bytes | None]:
    """image as 8-bit RGB or L, and icc_profile when it still describes the result (None when it does not)."""
    if image.mode in ("RGB", "L"):
        return image, _fitting_profile(icc_profile, image.mode)
    if image.mode == "CMYK" and icc_profile:
        converted = _cmyk_through_profile(image, icc_profile)
        if converted is not None:
            return converted, None  # now sRGB, which a JPEG without a profile is taken to be
    if image.mode in SIXTEEN_BIT_GREY or image.mode in ("I", "F"):
        converted = _scaled_grey(image)
    elif image.mode in GREY_MODES:
        converted = image.convert("L")
    else:  # P, PA, RGBA, RGBX, RGBa, CMYK, YCbCr, LAB, HSV
        converted = image.convert("RGB")
    return converted, _fitting_profile(icc_profile, converted.mode)


def _scaled_grey(image: Image.Image) -> Image.Image:
    """Single-channel 16-bit, 32-bit integer or float pixels scaled into 0..255 by the range their type implies."""
    pixels = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if image.mode in SIXTEEN_BIT_GREY:
        top = float(MAX_16)
    else:  # "I" or "F": no declared range; infer the usual one from the values
        brightest = float(pixels.max(initial=0.0))
        if image.mode == "F" and brightest <= 1.0:
            top = 1.0
        elif brightest <= MAX_8:
            top = float(MAX_8)
        elif brightest <= MAX_16:
            top = float(MAX_16)
        else:
            top = brightest
    scaled = np.clip(np.rint(pixels * (MAX_8 / top)), 0, MAX_8).astype(np.uint8)
    return Image.fromarray(scaled)  # uint8, one channel: mode L


def _cmyk_through_profile(image: Image.Image, icc_profile: bytes) -> Image.Image | None:
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def _fitting_profile(icc_profile: bytes | None, mode: str) -> bytes | None:
    """The profile if its colour space is the one of mode (an RGB profile on an RGB image, a grey one on L)."""
    if not icc_profile:
        return None
    try:
        space = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile)).profile.xcolor_space.strip()
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None
    return icc_profile if space == PROFILE_SPACE[mode] else None

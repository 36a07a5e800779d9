"""The EXIF facts SfM cares about, read from a photo, and EXIF made fit to write into a re-encoded JPEG."""

from __future__ import annotations

import math

from PIL import ExifTags, Image

from spaceport.formats.frames import ExifSummary

TAG_ORIENTATION = 0x0112
TAG_MAKER_NOTE = 0x927C
TAG_PIXEL_X = 0xA002
TAG_PIXEL_Y = 0xA003
# A JPEG APP1 segment holds at most 65,533 bytes after its "Exif\0\0" header.
MAX_EXIF_BYTES = 65_000
# Tags of a TIFF's own IFD0 that describe its pixel layout or carry other blocks (XMP, IPTC, Photoshop layers,
# ICC): stale or meaningless in a JPEG's EXIF, and some are large.
TIFF_LAYOUT_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 292, 293, 317, 320, 322, 323,
    324, 325, 338, 339, 340, 341, 347, 530, 700, 33723, 34377, 34675, 37724,
})


def summarize_exif(exif: Image.Exif) -> ExifSummary:
    exif_ifd = exif.get_ifd(ExifTags.IFD.Exif)
    gps_ifd = exif.get_ifd(ExifTags.IFD.GPSInfo)
    return ExifSummary(
        make=_clean_text(exif.get(ExifTags.Base.Make)),
        model=_clean_text(exif.get(ExifTags.Base.Model)),
        focal_length_mm=_positive_number(exif_ifd.get(ExifTags.Base.FocalLength)),
        focal_length_35mm=_positive_number(exif_ifd.get(ExifTags.Base.FocalLengthIn35mmFilm)),
        gps=_gps_position(gps_ifd),
        datetime=_iso_datetime(exif_ifd.get(ExifTags.Base.DateTimeOriginal) or exif.get(ExifTags.Base.DateTime)),
    )


def exif_for_output(exif: Image.Exif, width: int, height: int) -> bytes:
    """EXIF bytes for a JPEG whose pixels are already upright and possibly resized.

    Orientation is reset to 1 and the recorded pixel size updated; focal length, make/model and GPS stay, since
    COLMAP reads its focal-length prior and position prior from them. A TIFF's layout tags go. The maker note goes
    only if the block would not fit in one JPEG segment.
    """
    for tag in TIFF_LAYOUT_TAGS & set(exif):
        del exif[tag]
    exif[TAG_ORIENTATION] = 1
    exif_ifd = exif.get_ifd(ExifTags.IFD.Exif)  # loaded here so that tobytes() writes it back
    exif.get_ifd(ExifTags.IFD.GPSInfo)
    if TAG_PIXEL_X in exif_ifd:
        exif_ifd[TAG_PIXEL_X] = width
    if TAG_PIXEL_Y in exif_ifd:
        exif_ifd[TAG_PIXEL_Y] = height
    data = exif.tobytes()
    if len(data) > MAX_EXIF_BYTES:
        exif_ifd.pop(TAG_MAKER_NOTE, None)
        data = exif.tobytes()
    return data if len(data) <= MAX_EXIF_BYTES else b""


def _clean_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", "").strip()
    return text or None


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]  # IFDRational, int or float
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) else None


def _positive_number(value: object) -> float | None:
    number = _number(value)
    return number if number is not None and number > 0 else None


def _degrees(dms: object) -> float | None:
    if not isinstance(dms, tuple) or len(dms) != 3:
        return None
    degrees, minutes, seconds = (_number(part) for part in dms)
    if degrees is None or minutes is None or seconds is None:
        return None
    return degrees + minutes / 60 + seconds / 3600


def _gps_position(gps: dict[int, object]) -> tuple[float, float, float | None] | None:
    latitude = _degrees(gps.get(ExifTags.GPS.GPSLatitude))
    longitude = _degrees(gps.get(ExifTags.GPS.GPSLongitude))
    if latitude is None or longitude is None:
        return None
    if _clean_text(gps.get(ExifTags.GPS.GPSLatitudeRef)) == "S":
        latitude = -latitude
    if _clean_text(gps.get(ExifTags.GPS.GPSLongitudeRef)) == "W":
        longitude = -longitude
    altitude = _number(gps.get(ExifTags.GPS.GPSAltitude))
    if altitude is not None and gps.get(ExifTags.GPS.GPSAltitudeRef) in (1, b"\x01"):
        altitude = -altitude  # reference 1 means below sea level
    return latitude, longitude, altitude


def _iso_datetime(value: object) -> str | None:
    text = _clean_text(value)
    if text is None or len(text) < 19:
        return None
    date, _, time = text[:19].partition(" ")
    return f"{date.replace(':', '-')}T{time}" if time else None

"""Ingest of photos in other formats made from real monstree photos: HEIC with its EXIF, 16-bit RGB and grey PNG and
TIFF (scaled to 8 bits, not clipped), CMYK, palette and grey+alpha images; all become upright JPEGs."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import ExifTags, Image

from spaceport.ingest import IngestConfig, run_ingest
from spaceport.ingest.color import to_8bit
from spaceport.ingest.exif import TIFF_LAYOUT_TAGS
from spaceport.progress import NullProgress
from spaceport.workspace import Workspace
from tests.media import (
    heic_bytes,
    monstree_photos,
    png16_bytes,
    small_photo_copies,
    tiff16_rgb_bytes,
    to_16_bits,
    upright,
)

FOCAL_MM = 3.99  # the iPhone 7's, as in monstree's EXIF


@dataclass
class Ingested:
    ws: Workspace
    sources: dict[str, Path]  # input file name -> the real photo it was made from (as the camera stored it)
    frames: dict[str, dict]  # input file name -> its frame in frames.json
    jpeg_frames: dict[str, dict]  # the first three photos ingested as they are (JPEGs), by file name

    def output(self, name: str) -> Image.Image:
        return Image.open(self.ws.images_dir / self.frames[name]["file"])


def stored_and_exif(photo: Path) -> tuple[Image.Image, bytes]:
    """The photo's pixels as stored (portrait photos lie on their side, orientation 6) and its EXIF bytes."""
    image = Image.open(photo)
    return image.convert("RGB"), image.info["exif"]


def ingest_frames(root: Path, contents: dict[str, bytes]) -> tuple[Workspace, dict[str, dict], dict]:
    (root / "input").mkdir(parents=True)
    for name, data in contents.items():
        (root / "input" / name).write_bytes(data)
    ws = Workspace(root)
    result = run_ingest(ws, IngestConfig(), NullProgress())
    manifest = json.loads((ws.images_dir / "frames.json").read_text())
    assert manifest["dropped"] == [] and result.metrics["images"] == len(contents)
    return ws, {frame["source"].removeprefix("input/"): frame for frame in manifest["frames"]}, result.metrics


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    """One ingest of eight distinct monstree photos (240x320 upright), each given in another format."""
    photos = small_photo_copies(monstree_photos()[:8], tmp_path_factory.mktemp("monstree320"))
    stored = [stored_and_exif(photo) for photo in photos]
    grey_exif = stored[3][1]
    contents = {
        "phone.heic": heic_bytes(stored[0][0], exif=stored[0][1]),
        "scan16.png": png16_bytes(to_16_bits(stored[1][0]), exif=stored[1][1]),
        "scan16.tif": tiff16_rgb_bytes(to_16_bits(stored[2][0]), orientation=6, make="Apple", focal_length_mm=FOCAL_MM),
        "grey16.png": png16_bytes(to_16_bits(stored[3][0].convert("L")), exif=grey_exif),
        "grey16.tif": _pillow_bytes(Image.fromarray(to_16_bits(stored[4][0].convert("L"))), "TIFF", exif=stored[4][1]),
        "print.jpg": _pillow_bytes(upright(photos[5]).convert("CMYK"), "JPEG", quality=95),
        "palette.png": _pillow_bytes(upright(photos[6]).quantize(256), "PNG"),
        "grey_alpha.png": _pillow_bytes(upright(photos[7]).convert("LA"), "PNG"),
    }
    sources = dict(zip(contents, photos, strict=True))
    ws, frames, _ = ingest_frames(tmp_path_factory.mktemp("formats"), contents)
    _, jpeg_frames, _ = ingest_frames(tmp_path_factory.mktemp("jpegs"), {p.name: p.read_bytes() for p in photos[:3]})
    return Ingested(ws, sources, frames, jpeg_frames)


def _pillow_bytes(image: Image.Image, kind: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def mean_difference(output: Image.Image, expected: Image.Image) -> float:
    assert output.size == expected.size
    return float(np.abs(np.asarray(output, dtype=float) - np.asarray(expected, dtype=float)).mean())


def test_a_heic_photo_becomes_an_upright_jpeg_with_its_exif(ingested: Ingested) -> None:
    frame, output = ingested.frames["phone.heic"], ingested.output("phone.heic")
    source = ingested.sources["phone.heic"]
    assert Image.open(source).getexif()[ExifTags.Base.Orientation] == 6  # stored on its side
    assert frame["file"] == "phone.jpg" and output.format == "JPEG" and output.mode == "RGB"
    assert output.size == upright(source).size == (frame["width"], frame["height"]) == (240, 320)
    assert mean_difference(output, upright(source)) < 6  # HEVC at quality 90, then JPEG

    # the same EXIF facts as the JPEG it was made from: make/model, date, focal length, GPS
    assert frame["exif"] == ingested.jpeg_frames[source.name]["exif"]
    assert frame["exif"]["make"] == "Apple" and frame["exif"]["gps"] is not None
    exif = output.getexif()
    assert exif[ExifTags.Base.Orientation] == 1
    assert float(exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.FocalLength]) == pytest.approx(FOCAL_MM)
    assert ExifTags.GPS.GPSLatitude in exif.get_ifd(ExifTags.IFD.GPSInfo)
    camera = pycolmap.infer_camera_from_image(ingested.ws.images_dir / frame["file"])
    assert camera.has_prior_focal_length  # COLMAP reads the focal-length prior from the written JPEG


@pytest.mark.parametrize("name", ["scan16.png", "scan16.tif"])
def test_16_bit_rgb_is_scaled_to_8_bits_and_turned_upright(name: str, ingested: Ingested) -> None:
    frame, output = ingested.frames[name], ingested.output(name)
    expected = upright(ingested.sources[name])
    assert output.mode == "RGB" and output.size == expected.size == (240, 320)
    assert mean_difference(output, expected) < 2.5  # v16 / 257 is the 8-bit photo; only the JPEG codec differs
    assert frame["exif"]["make"] == "Apple"
    assert frame["exif"]["focal_length_mm"] == pytest.approx(FOCAL_MM)
    exif = output.getexif()
    assert exif[ExifTags.Base.Orientation] == 1
    assert float(exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.FocalLength]) == pytest.approx(FOCAL_MM)
    assert not TIFF_LAYOUT_TAGS & set(exif)  # a TIFF's strip offsets and bit depths are no JPEG's


@pytest.mark.parametrize("name", ["grey16.png", "grey16.tif"])
def test_16_bit_grey_is_scaled_by_257_not_clipped(name: str, ingested: Ingested) -> None:
    output, expected = ingested.output(name), upright(ingested.sources[name]).convert("L")
    assert output.mode == "L" and output.size == expected.size
    pixels = np.asarray(output)
    assert pixels.mean() < 200 and (pixels == 255).mean() < 0.05  # Pillow's own convert() makes nearly all white
    assert mean_difference(output, expected) < 2.5
    assert ingested.frames[name]["exif"]["focal_length_mm"] == pytest.approx(FOCAL_MM)


@pytest.mark.parametrize(("name", "mode"), [
    ("print.jpg", "RGB"),  # a CMYK JPEG (Adobe, stored inverted), no profile: Pillow's formula
    ("palette.png", "RGB"),  # 256 colours, dithered: the palette's colours
    ("grey_alpha.png", "L"),  # grey + alpha: the grey
])
def test_cmyk_palette_and_alpha_images_convert(name: str, mode: str, ingested: Ingested) -> None:
    output = ingested.output(name)
    source = upright(ingested.sources[name])
    expected = {"print.jpg": source, "palette.png": source.quantize(256).convert("RGB"),
                "grey_alpha.png": source.convert("L")}[name]
    assert output.mode == mode
    assert mean_difference(output, expected) < 2.5  # only the JPEG codec at quality 95 differs (measured 1.0-1.7)


def test_to_8bit_infers_the_range_of_integer_and_float_pixels() -> None:
    ramp = np.linspace(0, 1, 256, dtype=np.float64).reshape(16, 16)
    expected = np.rint(ramp * 255)
    for pixels in (ramp.astype(np.float32), (ramp * 65535).astype(np.int32), (ramp * 255).astype(np.int32)):
        converted, profile = to_8bit(Image.fromarray(pixels))
        assert converted.mode == "L" and profile is None
        assert np.abs(np.asarray(converted, dtype=float) - expected).max() <= 1


def test_a_profile_is_kept_only_where_it_still_fits(ingested: Ingested) -> None:
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo = upright(ingested.sources["print.jpg"])
    assert to_8bit(photo, srgb)[1] == srgb
    assert to_8bit(photo.convert("RGBA"), srgb)[1] == srgb
    assert to_8bit(photo.convert("L"), srgb)[1] is None  # an RGB profile on grey pixels would be wrong

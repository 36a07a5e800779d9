"""Test inputs made from the real photo sets: small photo copies, videos, archives good and hostile, corrupt files."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageFilter, ImageOps

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MONSTREE_IMAGES = DATA_DIR / "monstree" / "images"

PhotoLike = Path | Image.Image


def monstree_photos() -> list[Path]:
    return sorted(path for path in MONSTREE_IMAGES.iterdir() if path.suffix.lower() in (".jpg", ".jpeg"))


def small_photo_copies(sources: Sequence[Path], folder: Path, long_side: int = 320) -> list[Path]:
    """Downscaled copies of real photos, pixels stored as the camera stored them and EXIF kept whole
    (orientation included), so they still need the same rotation as the originals."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in sources:
        with Image.open(source) as image:
            exif = image.info.get("exif", b"")
            image.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
            target = folder / source.name
            image.save(target, "JPEG", quality=92, exif=exif)
        copies.append(target)
    return copies


def upright(photo: PhotoLike) -> Image.Image:
    """The photo as it is meant to be seen: EXIF orientation applied, RGB."""
    image = Image.open(photo) if isinstance(photo, Path) else photo
    return ImageOps.exif_transpose(image).convert("RGB")


def blurred(photo: PhotoLike, radius: float = 4.0) -> Image.Image:
    return upright(photo).filter(ImageFilter.GaussianBlur(radius))


def make_video_from_photos(
    photos: Sequence[PhotoLike],
    out_path: Path,
    fps: int = 10,
    size: tuple[int, int] = (240, 320),
    *,
    frames_per_photo: int = 1,
    codec: str = "libx264",
    display_rotation: int = 0,
) -> Path:
    """Encode photos (paths or PIL images) as the frames of a video with PyAV, each shown frames_per_photo times.

    Each photo is made upright, then scaled and centre-cropped to size (width, height; even numbers), so every
    frame is the same pinhole camera. The container follows out_path's suffix (.mp4, .mov, .mkv, .avi).
    display_rotation (degrees counter-clockwise, a multiple of 90; phones filming upright write -90) stores the
    frames turned the other way plus that display matrix, so a player shows them upright at size.
    """
    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"video size must be even, got {size}")
    if display_rotation % 180:
        width, height = height, width
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out_path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if display_rotation:
            stream.set_display_rotation(display_rotation)
        for photo in photos:
            image = ImageOps.fit(upright(photo), size, Image.Resampling.LANCZOS)
            frame = av.VideoFrame.from_image(image.rotate(-display_rotation, expand=True))
            for _ in range(frames_per_photo):
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out_path


def make_zip(out_path: Path, entries: Mapping[str, bytes | Path], symlinks: Mapping[str, str] | None = None) -> Path:
    """A zip with the given entry names (any name, even hostile ones) and contents; symlinks maps an entry
    name to a link target, stored as a Unix symlink entry."""
    with zipfile.ZipFile(out_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content.read_bytes() if isinstance(content, Path) else content)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix, so the mode bits below are meaningful
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return out_path


def make_zip_bomb(out_path: Path, expanded_bytes: int, entries: int = 1) -> Path:
    """Entries of zeros that deflate to almost nothing but expand to expanded_bytes in all."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(out_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for index in range(entries):
            remaining = expanded_bytes // entries
            with archive.open(f"photos/zeros_{index}.jpg", "w", force_zip64=True) as entry:
                while remaining > 0:
                    entry.write(chunk[: min(len(chunk), remaining)])
                    remaining -= len(chunk)
    return out_path


def make_lying_zip(out_path: Path, name: str, real_content: bytes, declared_size: int) -> Path:
    """A zip whose headers declare declared_size bytes for an entry that really inflates to more
    (a bomb that hides from a check of the declared sizes)."""
    make_zip(out_path, {name: real_content})
    data = bytearray(out_path.read_bytes())
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, declared_size)  # uncompressed size in the local header
    struct.pack_into("<I", data, central + 24, declared_size)  # ... and in the central directory
    out_path.write_bytes(bytes(data))
    return out_path


def truncated_copy(source: Path, target: Path, keep_fraction: float = 0.5) -> Path:
    """The first part of a file only: a JPEG cut in the middle of its image data, a video without its index."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep_fraction)])
    return target


def jpeg_bytes(image: Image.Image, quality: int = 90, exif: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **({"exif": exif} if exif else {}))
    return buffer.getvalue()


def with_orientation(image: Image.Image, orientation: int, target: Path) -> Path:
    """Store an upright image as a camera would with the given EXIF orientation (supported: 1, 3, 6, 8)."""
    stored_by_orientation = {
        1: image,
        3: image.transpose(Image.Transpose.ROTATE_180),
        6: image.transpose(Image.Transpose.ROTATE_90),  # shown after a 90° clockwise turn
        8: image.transpose(Image.Transpose.ROTATE_270),
    }
    exif = Image.Exif()
    exif[0x0112] = orientation
    target.write_bytes(jpeg_bytes(stored_by_orientation[orientation], quality=95, exif=exif.tobytes()))
    return target


def workspace_with_input(root: Path, files: Sequence[Path] = (), contents: Mapping[str, bytes] | None = None) -> Path:
    """A job folder whose input/ holds copies of files (and extra named contents), as the pipeline leaves it."""
    input_dir = root / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    for source in files:
        (input_dir / source.name).write_bytes(source.read_bytes())
    for name, data in (contents or {}).items():
        (input_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (input_dir / name).write_bytes(data)
    return root


# -- other photo formats: HEIC, 16-bit PNG and TIFF ------------------------------------------------------------------

TIFF_SHORT, TIFF_LONG, TIFF_ASCII, TIFF_RATIONAL = 3, 4, 2, 5
TIFF_EXIF_IFD, TIFF_STRIP_OFFSETS = 34665, 273


def heic_bytes(image: Image.Image, exif: bytes | None = None, quality: int = 90) -> bytes:
    """The image encoded as HEIC by pillow-heif (libheif, x265), EXIF included; an EXIF orientation becomes the
    file's rotation, as iPhones write it."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    buffer = io.BytesIO()
    image.save(buffer, "HEIF", quality=quality, **({"exif": exif} if exif else {}))
    return buffer.getvalue()


def to_16_bits(image: Image.Image, seed: int = 0) -> np.ndarray:
    """A 16-bit version of an 8-bit image: each value v becomes v*257 plus up to +-128 of noise, so the low byte
    carries detail and round(v16 / 257) gives v back exactly."""
    pixels = np.asarray(image).astype(np.int64) * 257
    noise = np.random.default_rng(seed).integers(-128, 129, size=pixels.shape)
    return np.clip(pixels + noise, 0, 65535).astype(np.uint16)


def png16_bytes(pixels: np.ndarray, exif: bytes | None = None) -> bytes:
    """A 16-bit PNG (grey for HxW, RGB for HxWx3 uint16 pixels), with EXIF in an eXIf chunk; Pillow cannot write
    16-bit RGB PNGs."""
    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    rows = pixels.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    chunks = [(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))]
    if exif:
        chunks.append((b"eXIf", exif.removeprefix(b"Exif\x00\x00")))
    chunks += [(b"IDAT", zlib.compress(raw)), (b"IEND", b"")]
    body = b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        for kind, data in chunks
    )
    return b"\x89PNG\r\n\x1a\n" + body


def tiff16_rgb_bytes(
    pixels: np.ndarray, orientation: int = 1, make: str | None = None, focal_length_mm: float | None = None
) -> bytes:
    """An uncompressed little-endian 16-bit RGB TIFF (HxWx3 uint16) with an orientation, a make and an EXIF focal
    length; Pillow cannot write 16-bit RGB TIFFs."""
    height, width, _ = pixels.shape
    image_data = pixels.astype("<u2").tobytes()
    main: list[tuple[int, int, Sequence]] = [
        (256, TIFF_LONG, [width]), (257, TIFF_LONG, [height]), (258, TIFF_SHORT, [16, 16, 16]),
        (259, TIFF_SHORT, [1]), (262, TIFF_SHORT, [2]), (TIFF_STRIP_OFFSETS, TIFF_LONG, [0]),
        (274, TIFF_SHORT, [orientation]), (277, TIFF_SHORT, [3]), (278, TIFF_LONG, [height]),
        (279, TIFF_LONG, [len(image_data)]), (284, TIFF_SHORT, [1]),
    ]
    if make:
        main.append((271, TIFF_ASCII, [make]))
    exif: list[tuple[int, int, Sequence]] = []
    if focal_length_mm:
        exif.append((37386, TIFF_RATIONAL, [(round(focal_length_mm * 1000), 1000)]))
        main.append((TIFF_EXIF_IFD, TIFF_LONG, [0]))
    # Two passes: the first finds where the EXIF IFD and the pixels land.
    main_ifd, main_blobs = _tiff_ifd(main, 8)
    exif_offset = 8 + len(main_ifd) + len(main_blobs)
    exif_ifd, exif_blobs = _tiff_ifd(exif, exif_offset) if exif else (b"", b"")
    pixels_offset = exif_offset + len(exif_ifd) + len(exif_blobs)
    placed = {TIFF_STRIP_OFFSETS: [pixels_offset], TIFF_EXIF_IFD: [exif_offset]}
    main = [(tag, kind, placed.get(tag, values)) for tag, kind, values in main]
    main_ifd, main_blobs = _tiff_ifd(main, 8)
    header = b"II*\x00" + struct.pack("<I", 8)
    return header + main_ifd + main_blobs + exif_ifd + exif_blobs + image_data


def _tiff_ifd(entries: Iterable[tuple[int, int, Sequence]], offset: int) -> tuple[bytes, bytes]:
    """One IFD at offset (no next IFD) and the values that do not fit in its entries, placed right after it."""
    entries = sorted(entries)
    blobs_offset = offset + 2 + 12 * len(entries) + 4
    table, blobs = struct.pack("<H", len(entries)), b""
    for tag, kind, values in entries:
        if kind == TIFF_ASCII:
            data, count = values[0].encode() + b"\x00", len(values[0]) + 1
        elif kind == TIFF_RATIONAL:
            data, count = b"".join(struct.pack("<II", *pair) for pair in values), len(values)
        else:
            data, count = struct.pack(f"<{len(values)}{'H' if kind == TIFF_SHORT else 'I'}", *values), len(values)
        if len(data) <= 4:
            field = data.ljust(4, b"\x00")
        else:
            field = struct.pack("<I", blobs_offset + len(blobs))
            blobs += data + b"\x00" * (len(data) % 2)
        table += struct.pack("<HHI", tag, kind, count) + field
    return table + struct.pack("<I", 0), blobs

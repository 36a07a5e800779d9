"""Test inputs made from the real photo sets: small photo copies, videos, archives good and hostile, corrupt files."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import av
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

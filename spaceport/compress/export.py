"""``spaceport export WORKSPACE|IN.ply|IN.sog|... --format FORMAT -o FILE``: one splat, any format viewers read.

Formats: ``sog`` (PlayCanvas SOG, our encoder), ``ply`` (INRIA 3DGS PLY, lossless), ``compressed-ply``
(PlayCanvas/SuperSplat), ``spz`` (Niantic, version 3), ``splat`` (antimatter15's viewer; no higher SH bands).

From a workspace the source is its trained ``train/splat.ply`` (else the ``.ply`` the job started from, else its
``compress/scene.sog``). Every format but ``ply`` gets the compress stage's reduction first (pruning with
the workspace's training cameras, per-Gaussian SH band dropping), with the workspace's own compress settings
when its job.json holds valid ones; ``ply`` is the splat as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from spaceport.compress.config import CompressConfig
from spaceport.compress.stage import compress_splat, find_input_ply, reduce_for_config, training_cameras
from spaceport.devices import resolve_device
from spaceport.formats.compressed_ply import is_compressed_ply, read_compressed_ply, write_compressed_ply
from spaceport.formats.gaussians import Gaussians, read_ply, write_ply
from spaceport.formats.sog import read_sog
from spaceport.formats.splat import read_splat, write_splat
from spaceport.formats.spz import read_spz, write_spz
from spaceport.progress import NullProgress, Progress
from spaceport.workspace import SpaceportError, Workspace

FORMAT_SUFFIXES = {"sog": ".sog", "ply": ".ply", "compressed-ply": ".compressed.ply", "spz": ".spz",
                   "splat": ".splat"}
READABLE = ".ply, .compressed.ply, .sog, .spz, .splat"


def read_splat_file(path: str | Path) -> Gaussians:
    """Any splat file we read, by its name: .sog, .spz, .splat, .compressed.ply or an INRIA .ply (a .ply with
    PlayCanvas' chunk layout is read as a compressed PLY whatever its name)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceportError(f"{path}: no such file; pass a workspace folder or a splat file ({READABLE})")
    suffix = path.suffix.lower()
    readers: dict[str, Callable[[Path], Gaussians]] = {".sog": read_sog, ".spz": read_spz, ".splat": read_splat}
    if suffix in readers:
        return readers[suffix](path)
    if suffix == ".ply":
        return read_compressed_ply(path) if is_compressed_ply(path) else read_ply(path)
    if path.name == "meta.json":
        return read_sog(path)
    raise SpaceportError(f"{path}: not a splat file we read; pass one of {READABLE} or a workspace folder")


def export_source(target: str | Path) -> tuple[Path, Workspace | None]:
    """The file to export from ``target`` and the workspace it belongs to (None for a loose file)."""
    target = Path(target)
    if target.is_dir():
        ws = Workspace(target)
        try:  # train/splat.ply, else the one .ply a compress-only job started from: lossless, before its SOG
            return find_input_ply(ws), ws
        except SpaceportError as exc:
            if ws.sog_path.is_file():
                return ws.sog_path, ws
            raise SpaceportError(f"{target}: no splat to export ({exc})") from exc
    return target, None


def workspace_config(ws: Workspace | None) -> CompressConfig:
    """The compress settings the workspace ran with (defaults for a loose file or an unreadable job.json)."""
    if ws is None or not ws.job_file.is_file():
        return CompressConfig()
    try:
        return CompressConfig(**ws.read_job().config.get("compress", {}))
    except (SpaceportError, ValidationError):
        return CompressConfig()


def export_splat(target: str | Path, fmt: str, output: str | Path, config: CompressConfig | None = None,
                 progress: Progress | None = None) -> Path:
    """Write the splat of ``target`` (a workspace or a splat file) as ``fmt`` to ``output``; returns ``output``."""
    if fmt not in FORMAT_SUFFIXES:
        raise SpaceportError(f"--format {fmt}: choose one of {', '.join(FORMAT_SUFFIXES)}")
    output = Path(output)
    suffix = FORMAT_SUFFIXES[fmt]
    if not output.name.lower().endswith(suffix) or (fmt == "ply" and output.name.lower().endswith(".compressed.ply")):
        raise SpaceportError(f"{output}: a {fmt} export is named FILE{suffix}; readers tell formats by the name")
    progress = progress or NullProgress()
    source, ws = export_source(target)
    config = config or workspace_config(ws)
    splat = read_splat_file(source)
    splat.validate(str(source))
    if fmt == "ply":
        write_ply(output, splat)
        return output
    cameras = training_cameras(ws, progress) if ws is not None else None
    if fmt == "sog":
        compress_splat(splat, output, config, progress, cameras)
        return output
    device = resolve_device(config.device, "compress")
    reduced = reduce_for_config(splat, config, cameras, progress, device).splat
    writers: dict[str, Callable[[Path, Gaussians], int]] = {
        "compressed-ply": write_compressed_ply, "spz": write_spz, "splat": write_splat}
    writers[fmt](output, reduced)
    return output

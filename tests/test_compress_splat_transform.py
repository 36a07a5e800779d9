"""The independent check: PlayCanvas' own splat-transform (pinned in tests/js) reads what we write, and we read
what it writes.

- Our .sog (bundled and unbundled), .compressed.ply, .spz and .splat decoded by splat-transform to PLY: every
  attribute matches our input within that format's quantization, and equals what our own reader decodes.
- splat-transform's .sog, .compressed.ply, .spz (versions 3 and 4) and .splat of a PLY read by our readers:
  the same splat as splat-transform's own decoding of that file.

Needs ``npm ci --prefix tests/js`` (the README's test command runs it); without it these tests fail rather than
skip, so a CI run cannot pass without the check.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from spaceport.compress.export import read_splat_file
from spaceport.formats.compressed_ply import write_compressed_ply
from spaceport.formats.gaussians import Gaussians, random_gaussians, read_ply, write_ply
from spaceport.formats.sog import read_sog
from spaceport.formats.splat import write_splat
from spaceport.formats.spz import write_spz
from tests.test_compress import FAST, assert_within_quantization, compress_in_order, sog_meta
from tests.test_export import NAMES, stored_order
from tests.test_export import assert_within_quantization as assert_within_format_quantization

JS_DIR = Path(__file__).resolve().parent / "js"
CLI = JS_DIR / "node_modules" / ".bin" / "splat-transform"
VERSION = "3.7.0"


@pytest.fixture(scope="module")
def splat_transform() -> Path:
    if not CLI.exists():
        pytest.fail(f"{CLI} is missing: run `npm ci --prefix tests/js` (the README's test command does)")
    version = subprocess.run([str(CLI), "--version"], capture_output=True, text=True, timeout=60)
    assert VERSION in version.stdout + version.stderr, version.stdout + version.stderr
    return CLI


def run_splat_transform(cli: Path, *arguments: str | Path) -> None:
    run = subprocess.run([str(cli), "-q", "-w", *map(str, arguments)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"splat-transform {arguments} failed:\n{run.stdout}\n{run.stderr}"


def decode_with_splat_transform(cli: Path, source: Path, out_ply: Path) -> Gaussians:
    run_splat_transform(cli, source, out_ply)
    return read_ply(out_ply)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-values.astype(np.float64)))


def assert_same_as_our_reader(theirs: Gaussians, ours: Gaussians, quaternion_atol: float = 1e-6) -> None:
    for field in ("means", "scales", "sh0", "shN"):
        np.testing.assert_allclose(getattr(theirs, field), getattr(ours, field), rtol=1e-6, atol=1e-6,
                                   err_msg=field)
    # opacity 0 or 1 decodes to -inf / inf in some of their readers, to finite logits in ours
    np.testing.assert_allclose(sigmoid(theirs.opacities), sigmoid(ours.opacities), atol=1e-6)
    np.testing.assert_allclose(theirs.quats, ours.quats, atol=quaternion_atol)


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_splat_transform_decodes_our_sog_within_quantization(tmp_path: Path, splat_transform: Path,
                                                             sh_degree: int) -> None:
    count = 3000
    splat = random_gaussians(count, sh_degree=sh_degree, seed=21)
    sog = tmp_path / "scene.sog"
    stored = compress_in_order(splat, sog, palette_size=count, **FAST)  # a palette entry per splat
    theirs = decode_with_splat_transform(splat_transform, sog, tmp_path / "decoded.ply")
    assert_within_quantization(theirs, stored, sog_meta(sog), palette_is_exact=True)
    assert_same_as_our_reader(theirs, read_sog(sog))


def test_splat_transform_reads_a_shared_palette_and_unbundled_files(tmp_path: Path,
                                                                    splat_transform: Path) -> None:
    count = 4000
    splat = random_gaussians(count, sh_degree=2, seed=22)
    sog = tmp_path / "out" / "scene.sog"
    stored = compress_in_order(splat, sog, unbundled=True, **FAST)  # default palette: 1024 entries
    meta = sog_meta(sog)
    assert meta["shN"]["count"] <= 1024
    for source in (sog, sog.parent / "meta.json"):
        theirs = decode_with_splat_transform(splat_transform, source, tmp_path / f"{source.stem}.ply")
        assert_within_quantization(theirs, stored, meta, palette_is_exact=False)
        assert_same_as_our_reader(theirs, read_sog(sog))


def test_splat_transform_reads_dropped_sh_bands(tmp_path: Path, splat_transform: Path) -> None:
    """Gaussians whose SH bands we zeroed share palette entry 0, an exact zero, in their reader too."""
    splat = random_gaussians(2000, sh_degree=3, seed=23)
    splat.shN[::2] = 0
    sog = tmp_path / "scene.sog"
    stored = compress_in_order(splat, sog, **FAST)
    theirs = decode_with_splat_transform(splat_transform, sog, tmp_path / "decoded.ply")
    silent = ~stored.shN.reshape(len(stored), -1).any(1)
    assert silent.sum() == 1000
    codebook = np.asarray(sog_meta(sog)["shN"]["codebook"])
    assert np.abs(theirs.shN[silent]).max() <= np.abs(codebook).min() + 1e-7  # the codebook entry nearest 0
    assert_same_as_our_reader(theirs, read_sog(sog))


def test_splat_transform_reads_our_default_sog(tmp_path: Path, splat_transform: Path) -> None:
    """The defaults' coarser precision (fewer codebook entries used, padded with zeros; rounded positions,
    rotations and opacities; dropped SH bands) is still plain SOG: their reader decodes what ours does."""
    splat = random_gaussians(3000, sh_degree=3, seed=26)
    sog = tmp_path / "scene.sog"
    compress_in_order(splat, sog)
    assert len(sog_meta(sog)["scales"]["codebook"]) == 256
    theirs = decode_with_splat_transform(splat_transform, sog, tmp_path / "decoded.ply")
    assert_same_as_our_reader(theirs, read_sog(sog))


WRITERS = {"compressed-ply": write_compressed_ply, "spz": write_spz, "splat": write_splat}


@pytest.mark.parametrize("fmt", ["compressed-ply", "spz", "splat"])
def test_splat_transform_decodes_our_exports_within_quantization(tmp_path: Path, splat_transform: Path,
                                                                 fmt: str) -> None:
    splat = random_gaussians(3000, sh_degree=3, seed=24)
    path = tmp_path / NAMES[fmt]
    WRITERS[fmt](path, splat)
    theirs = decode_with_splat_transform(splat_transform, path, tmp_path / "decoded.ply")
    assert_within_format_quantization(fmt, theirs, stored_order(fmt, splat))
    # their .splat reader maps a rotation byte b to b / 127.5 - 1, ours (the viewer's) to (b - 128) / 128
    assert_same_as_our_reader(theirs, read_splat_file(path), quaternion_atol=8e-3 if fmt == "splat" else 1e-6)


@pytest.mark.parametrize("name, options", [("their.sog", ["-g", "cpu", "-i", "1"]),
                                           ("their.compressed.ply", []),
                                           ("their_v3.spz", ["--spz-version", "3"]),
                                           ("their_v4.spz", []),
                                           ("their.splat", [])])
def test_we_read_what_splat_transform_writes(tmp_path: Path, splat_transform: Path, name: str,
                                             options: list[str]) -> None:
    ply = tmp_path / "in.ply"
    write_ply(ply, random_gaussians(1500, sh_degree=2, seed=25))
    written = tmp_path / name
    run_splat_transform(splat_transform, *options, ply, written)
    theirs = decode_with_splat_transform(splat_transform, written, tmp_path / "decoded.ply")
    ours = read_splat_file(written)
    assert len(ours) == 1500
    assert_same_as_our_reader(theirs, ours, quaternion_atol=8e-3 if name.endswith(".splat") else 1e-6)

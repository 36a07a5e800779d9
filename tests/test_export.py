"""Exports: compressed PLY, .spz and .splat written and read back within each format's quantization, errors on
bad files, and `spaceport export` from a workspace and from files (splat-transform's side of the round trips is
tests/test_compress_splat_transform.py)."""

from __future__ import annotations

import gzip
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spaceport.cli import app
from spaceport.compress.config import CompressConfig
from spaceport.compress.export import export_splat, read_splat_file
from spaceport.formats.compressed_ply import CHUNK_SIZE, SH_C0, morton_order, read_compressed_ply, write_compressed_ply
from spaceport.formats.gaussians import Gaussians, random_gaussians, read_ply, write_ply
from spaceport.formats.sog import read_sog
from spaceport.formats.splat import importance_order, read_splat, write_splat
from spaceport.formats.spz import encode_spz, read_spz, write_spz
from spaceport.workspace import SpaceportError, Workspace

COUNT = 2000
FORMATS = ("compressed-ply", "spz", "splat")


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-values.astype(np.float64)))


def unit(quats: np.ndarray) -> np.ndarray:
    return quats / np.linalg.norm(quats, axis=1, keepdims=True)


def quaternion_component_error(decoded: np.ndarray, original: np.ndarray, tolerance: float = 1e-4) -> np.ndarray:
    """Error of the three stored components of unit quaternions (the largest, rebuilt from the others, is set
    to 0) after choosing the sign (q and -q are one rotation); the whole rotation must agree too."""
    reference = unit(original.astype(np.float64))
    aligned = np.where((reference * decoded).sum(1, keepdims=True) < 0, -reference, reference)
    assert (1 - np.abs((reference * decoded).sum(1))).max() < tolerance
    error = np.abs(decoded - aligned)
    error[np.arange(len(error)), np.abs(reference).argmax(1)] = 0
    return error


def chunk_steps(values: np.ndarray, bits: tuple[int, ...]) -> np.ndarray:
    """(N, D) quantization step of each value: its 256-splat chunk's range over 2**bits - 1."""
    chunks = np.arange(len(values)) // CHUNK_SIZE
    low = np.stack([values[chunks == c].min(0) for c in range(chunks.max() + 1)])[chunks]
    high = np.stack([values[chunks == c].max(0) for c in range(chunks.max() + 1)])[chunks]
    return (high - low) / (2.0 ** np.asarray(bits) - 1)


def assert_within_quantization(fmt: str, decoded: Gaussians, original: Gaussians) -> None:
    """``decoded`` matches ``original`` (in file order) up to the steps ``fmt`` stores values in."""
    assert len(decoded) == len(original)
    opacity_error = np.abs(sigmoid(decoded.opacities) - sigmoid(original.opacities))
    assert opacity_error.max() <= 0.5 / 255 + 1e-6, opacity_error.max()
    if fmt == "compressed-ply":
        for name, values in (("means", original.means), ("scales", original.scales)):
            error = np.abs(getattr(decoded, name).astype(np.float64) - values)
            assert (error <= 0.5 * chunk_steps(values.astype(np.float64), (11, 10, 11)) * 1.001 + 1e-6).all(), name
        colours = 0.5 + SH_C0 * original.sh0.astype(np.float64)
        colour_error = np.abs(0.5 + SH_C0 * decoded.sh0 - colours)
        assert (colour_error <= 0.5 * chunk_steps(colours, (8, 8, 8)) * 1.001 + 1e-6).all()
        assert np.abs(quaternion_component_error(decoded.quats, original.quats)).max() <= \
            0.5 * math.sqrt(2) / 1023 + 1e-6
        assert np.abs(decoded.shN - np.clip(original.shN, -4, 4)).max(initial=0) <= 8 / 256 + 1e-6
    elif fmt == "spz":
        assert np.abs(decoded.means - original.means).max() <= 0.5 / 4096 + 1e-6
        assert np.abs(decoded.scales - np.clip(original.scales, -10, 255 / 16 - 10)).max() <= 1 / 32 + 1e-6
        colours = np.clip(original.sh0 * 0.15 + 0.5, 0, 1)
        assert np.abs(decoded.sh0 * 0.15 + 0.5 - colours).max() <= 0.5 / 255 + 1e-6
        assert quaternion_component_error(decoded.quats, original.quats).max() <= 0.5 * math.sqrt(0.5) / 511 + 1e-6
        expected = np.clip(original.shN, -1, 127 / 128)
        assert np.abs(decoded.shN[:, :3] - expected[:, :3]).max(initial=0) <= 4.5 / 128 + 1e-6  # 5 bits kept
        if original.shN.shape[1] > 3:
            assert np.abs(decoded.shN[:, 3:] - expected[:, 3:]).max() <= 8.5 / 128 + 1e-6  # 4 bits kept
    elif fmt == "splat":
        np.testing.assert_array_equal(decoded.means, original.means)
        np.testing.assert_allclose(decoded.scales, original.scales, atol=1e-5)
        colours = np.clip(0.5 + SH_C0 * original.sh0, 0, 1)
        assert np.abs(0.5 + SH_C0 * decoded.sh0 - colours).max() <= 0.5 / 255 + 1e-6
        # 8 bits per component (readers differ: the viewer maps b to (b - 128) / 128, splat-transform to
        # b / 127.5 - 1), renormalized
        assert quaternion_component_error(decoded.quats, original.quats, tolerance=3e-4).max() < 1.5 / 128
        assert decoded.sh_degree == 0
    else:
        raise AssertionError(fmt)


def stored_order(fmt: str, splat: Gaussians) -> Gaussians:
    """``splat`` in the order ``fmt``'s writer stores it."""
    if fmt == "compressed-ply":
        return splat.subset(morton_order(splat.means))
    if fmt == "splat":
        return splat.subset(importance_order(splat))
    return splat


WRITERS = {"compressed-ply": write_compressed_ply, "spz": write_spz, "splat": write_splat}
READERS = {"compressed-ply": read_compressed_ply, "spz": read_spz, "splat": read_splat}
NAMES = {"compressed-ply": "scene.compressed.ply", "spz": "scene.spz", "splat": "scene.splat"}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_round_trip_within_quantization(tmp_path: Path, fmt: str, sh_degree: int) -> None:
    splat = random_gaussians(COUNT, sh_degree=sh_degree, seed=40 + sh_degree)
    path = tmp_path / NAMES[fmt]
    size = WRITERS[fmt](path, splat)
    assert size == path.stat().st_size
    decoded = READERS[fmt](path)
    assert_within_quantization(fmt, decoded, stored_order(fmt, splat))
    if fmt != "splat":
        assert decoded.sh_degree == sh_degree
    assert read_splat_file(path).means.shape == decoded.means.shape


def test_spz_version_2_and_the_header(tmp_path: Path) -> None:
    splat = random_gaussians(500, sh_degree=2, seed=50)
    path = tmp_path / "v2.spz"
    write_spz(path, splat, version=2)
    raw = gzip.decompress(path.read_bytes())
    assert raw[:4] == b"NGSP" and int.from_bytes(raw[4:8], "little") == 2
    assert int.from_bytes(raw[8:12], "little") == 500 and raw[12] == 2 and raw[13] == 12
    decoded = read_spz(path)
    # version 2 stores x, y, z of the quaternion with w >= 0 in 8 bits each (w is rebuilt from them)
    reference = unit(splat.quats.astype(np.float64))
    reference *= np.where(reference[:, :1] < 0, -1, 1)
    assert np.abs(decoded.quats[:, 1:] - reference[:, 1:]).max() <= 0.5 / 127.5 + 1e-6
    np.testing.assert_allclose(decoded.means, splat.means, atol=0.5 / 4096 + 1e-6)
    with pytest.raises(ValueError, match="versions 2 and 3"):
        encode_spz(splat, version=4)


def test_spz_keeps_far_scenes_with_fewer_fractional_bits(tmp_path: Path) -> None:
    splat = random_gaussians(100, sh_degree=0, seed=51, extent=5000.0)  # beyond 2**11 units: 12 bits overflow
    path = tmp_path / "far.spz"
    write_spz(path, splat)
    bits = gzip.decompress(path.read_bytes())[13]
    assert bits < 12
    np.testing.assert_allclose(read_spz(path).means, splat.means, atol=0.5 / 2**bits + 1e-3)


def test_edge_values_stay_finite(tmp_path: Path) -> None:
    """Opacity 0 or 1 and a zero quaternion decode to finite values, as the reference readers clamp them."""
    splat = random_gaussians(300, sh_degree=1, seed=52)
    splat.opacities[:10] = 40
    splat.opacities[10:20] = -40
    splat.quats[20] = 0
    for fmt in FORMATS:
        path = tmp_path / NAMES[fmt]
        WRITERS[fmt](path, splat)
        decoded = READERS[fmt](path)
        decoded.validate(str(path))
        assert np.isfinite(decoded.quats).all() and (np.abs(np.linalg.norm(decoded.quats, axis=1) - 1) < 1e-3).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_files_name_the_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / NAMES[fmt]
    WRITERS[fmt](path, random_gaussians(600, sh_degree=1, seed=53))
    data = path.read_bytes()
    truncated = tmp_path / ("cut_" + NAMES[fmt])
    truncated.write_bytes(data[: len(data) // 2 + 1])
    garbage = tmp_path / ("garbage_" + NAMES[fmt])
    garbage.write_bytes(b"\x00" * 33)
    for bad in (truncated, garbage, tmp_path / ("missing_" + NAMES[fmt])):
        with pytest.raises(SpaceportError) as error:
            READERS[fmt](bad)
        assert str(bad) in str(error.value)


def test_export_from_files_and_bad_requests(tmp_path: Path) -> None:
    splat = random_gaussians(COUNT, sh_degree=2, seed=54)
    ply = tmp_path / "in.ply"
    write_ply(ply, splat)
    spz = export_splat(ply, "spz", tmp_path / "out.spz", CompressConfig(sh_drop_threshold=0))
    assert_within_quantization("spz", read_spz(spz), splat)
    # by default the negligible SH bands are dropped (zeros) first
    dropped = read_spz(export_splat(ply, "spz", tmp_path / "dropped.spz"))
    assert (~dropped.shN.reshape(COUNT, -1).any(1)).sum() > (~splat.shN.reshape(COUNT, -1).any(1)).sum()
    # any format in, any format out: .spz -> compressed PLY -> .sog
    compressed = export_splat(spz, "compressed-ply", tmp_path / "out.compressed.ply")
    assert len(read_compressed_ply(compressed)) == COUNT
    sog = export_splat(compressed, "sog", tmp_path / "out.sog")
    assert len(read_sog(sog)) == COUNT
    back = export_splat(sog, "ply", tmp_path / "back.ply")
    assert read_ply(back).sh_degree == 2
    with pytest.raises(SpaceportError, match="FILE.spz"):
        export_splat(ply, "spz", tmp_path / "out.ply")
    with pytest.raises(SpaceportError, match="FILE.ply"):
        export_splat(ply, "ply", tmp_path / "out.compressed.ply")
    with pytest.raises(SpaceportError, match="choose one of"):
        export_splat(ply, "ksplat", tmp_path / "out.ksplat")
    (tmp_path / "notes.txt").write_text("not a splat")
    with pytest.raises(SpaceportError, match="not a splat file"):
        export_splat(tmp_path / "notes.txt", "spz", tmp_path / "x.spz")


def test_cli_exports_a_workspace_in_every_format(tmp_path: Path, preview_workspace: Path) -> None:
    workspace = tmp_path / "W"
    shutil.copytree(preview_workspace, workspace)
    trained = read_ply(Workspace(workspace).splat_ply)
    runner = CliRunner()
    decoded = {}
    for fmt, name in (("ply", "a.ply"), ("sog", "a.sog"), ("compressed-ply", "a.compressed.ply"), ("spz", "a.spz"),
                      ("splat", "a.splat")):
        result = runner.invoke(app, ["export", str(workspace), "--format", fmt, "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert "wrote" in result.output
        decoded[fmt] = read_splat_file(tmp_path / name)
    np.testing.assert_array_equal(decoded["ply"].means, trained.means)  # ply: the splat as it is
    # the other formats all hold the same reduced splat (the compress stage's pruning and SH dropping)
    counts = {fmt: len(g) for fmt, g in decoded.items() if fmt != "ply"}
    assert len(set(counts.values())) == 1 and 0 < counts["sog"] <= len(trained), counts
    bad = runner.invoke(app, ["export", str(workspace), "--format", "spz", "-o", str(tmp_path / "a.ply")])
    assert bad.exit_code == 2 and "FILE.spz" in bad.output

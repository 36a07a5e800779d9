"""The independent check: PlayCanvas' own splat-transform (pinned in tests/js) reads our SOG.

It decodes our .sog (and unbundled meta.json) to PLY; every attribute must match our input within the
format's quantization. Needs ``npm ci --prefix tests/js`` (the README's test command runs it); without it
these tests fail rather than skip, so a CI run cannot pass without the check.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from spaceport.formats.gaussians import Gaussians, random_gaussians, read_ply
from spaceport.formats.sog import read_sog
from tests.test_compress import FAST, assert_within_quantization, compress_in_order, sog_meta

JS_DIR = Path(__file__).resolve().parent / "js"
CLI = JS_DIR / "node_modules" / ".bin" / "splat-transform"
VERSION = "2.7.1"


@pytest.fixture(scope="module")
def splat_transform() -> Path:
    if not CLI.exists():
        pytest.fail(f"{CLI} is missing: run `npm ci --prefix tests/js` (the README's test command does)")
    version = subprocess.run([str(CLI), "--version"], capture_output=True, text=True, timeout=60)
    assert VERSION in version.stdout + version.stderr, version.stdout + version.stderr
    return CLI


def decode_with_splat_transform(cli: Path, source: Path, out_ply: Path) -> Gaussians:
    run = subprocess.run([str(cli), "-q", "-w", str(source), str(out_ply)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"splat-transform failed on {source}:\n{run.stdout}\n{run.stderr}"
    return read_ply(out_ply)


def assert_same_as_our_reader(theirs: Gaussians, ours: Gaussians) -> None:
    for field in ("means", "scales", "opacities", "sh0", "shN"):
        np.testing.assert_allclose(getattr(theirs, field), getattr(ours, field), rtol=1e-6, atol=1e-6,
                                   err_msg=field)
    np.testing.assert_allclose(theirs.quats, ours.quats, atol=1e-6)


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

"""INRIA PLY layout: bit-exact round trip, property order, and errors that name the problem."""

from __future__ import annotations

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from spaceport.formats.gaussians import SH_REST_COUNTS, Gaussians, random_gaussians, read_ply, write_ply
from spaceport.workspace import SpaceportError

FIELDS = ("means", "scales", "quats", "opacities", "sh0", "shN")


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_round_trip_is_bit_exact(tmp_path, sh_degree):
    original = random_gaussians(257, sh_degree=sh_degree, seed=sh_degree)
    # values whose float32 bits are easy to lose: subnormals, -0.0, extremes
    original.means[0] = [np.float32(1e-45), -0.0, np.finfo(np.float32).max]
    path = tmp_path / "a.ply"
    write_ply(path, original)
    loaded = read_ply(path)
    assert loaded.sh_degree == sh_degree
    for name in FIELDS:
        a, b = getattr(original, name), getattr(loaded, name)
        assert a.shape == b.shape, name
        assert b.dtype == np.float32, name
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), name
    write_ply(tmp_path / "b.ply", loaded)
    assert (tmp_path / "a.ply").read_bytes() == (tmp_path / "b.ply").read_bytes()


def test_layout_is_inria_order_float32_little_endian(tmp_path):
    gaussians = random_gaussians(5, sh_degree=3)
    path = tmp_path / "s.ply"
    write_ply(path, gaussians)
    ply = PlyData.read(str(path))
    names = [p.name for p in ply["vertex"].properties]
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                + [f"f_rest_{i}" for i in range(45)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expected
    assert all(p.val_dtype in ("f4", "float32") for p in ply["vertex"].properties)
    assert b"format binary_little_endian 1.0" in path.read_bytes()[:200]
    # f_rest is channel-major: the 15 red coefficients first
    vertex = ply["vertex"]
    assert np.array_equal(vertex["f_rest_0"], gaussians.shN[:, 0, 0])
    assert np.array_equal(vertex["f_rest_1"], gaussians.shN[:, 1, 0])
    assert np.array_equal(vertex["f_rest_15"], gaussians.shN[:, 0, 1])


def test_reads_a_file_written_by_another_writer(tmp_path):
    """A PLY built field by field with plyfile (as other tools write it) reads back the same numbers."""
    n, k = 4, SH_REST_COUNTS[1]
    rng = np.random.default_rng(3)
    names = (["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(3 * k)]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    values = rng.normal(size=(n, len(names))).astype(np.float32)
    record = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        record[name] = values[:, i]
    path = tmp_path / "other.ply"
    PlyData([PlyElement.describe(record, "vertex")]).write(str(path))
    loaded = read_ply(path)
    assert np.array_equal(loaded.means, values[:, 0:3])
    assert np.array_equal(loaded.sh0, values[:, 3:6])
    assert np.array_equal(loaded.shN[:, :, 2], values[:, 6 + 2 * k: 6 + 3 * k])
    assert np.array_equal(loaded.opacities, values[:, 6 + 3 * k])


def test_missing_file_and_missing_properties_are_named(tmp_path):
    with pytest.raises(SpaceportError, match="no such file"):
        read_ply(tmp_path / "absent.ply")
    record = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    path = tmp_path / "points.ply"
    PlyData([PlyElement.describe(record, "vertex")]).write(str(path))
    with pytest.raises(SpaceportError, match="missing properties f_dc_0"):
        read_ply(path)


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "t.ply"
    write_ply(path, random_gaussians(100, sh_degree=0))
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(SpaceportError, match="truncated"):
        read_ply(path)


def test_validate_rejects_nan_and_empty():
    gaussians = random_gaussians(10, sh_degree=0)
    gaussians.scales[7, 1] = np.nan
    with pytest.raises(SpaceportError, match="row 7"):
        gaussians.validate()
    empty = Gaussians(*(np.zeros((0,) + getattr(gaussians, f).shape[1:], np.float32) for f in FIELDS))
    with pytest.raises(SpaceportError, match="zero Gaussians"):
        empty.validate()

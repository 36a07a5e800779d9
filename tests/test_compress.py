"""Compression: SOG round trip within the format's quantization, determinism, bad inputs, PLAS, the stage."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from spaceport.compress import CompressConfig, compress_ply, run_compress
from spaceport.compress.kmeans import kmeans, quantize_1d
from spaceport.compress.plas import PlasSchedule, neighbour_distance, plas_sort, sorting_features
from spaceport.compress.reduce import Camera
from spaceport.compress.sog import auto_position_bits
from spaceport.compress.stage import compress_splat
from spaceport.formats.gaussians import REQUIRED, Gaussians, random_gaussians, write_ply
from spaceport.formats.sog import log_transform, pack_means, read_sog, texture_size
from spaceport.progress import NullProgress
from spaceport.workspace import SpaceportError, Workspace

COUNT = 3000  # small: every test here must stay fast on 2 shared cores
# the format's own precision, no reduction: what the exact round-trip checks below need (the defaults are coarser)
EXACT = dict(position_bits=16, rotation_bits=8, opacity_bits=8, scale_levels=256, colour_levels=256, sh_levels=256,
             prune_threshold=0, sh_drop_threshold=0)
FAST = dict(sort_iterations=1, sort_radius_shrink=0.8, kmeans_iterations=3, **EXACT)


# -- shared checks (also used by test_compress_splat_transform.py) ----------------------------------


def nearest_codebook_error(values: np.ndarray, codebook: list[float]) -> np.ndarray:
    """Distance of each value to the nearest codebook entry: the best any decoder can do."""
    entries = np.asarray(codebook, np.float64)
    return np.abs(values.astype(np.float64)[..., None] - entries).min(-1)


def assert_within_quantization(decoded: Gaussians, original: Gaussians, meta: dict,
                               palette_is_exact: bool) -> None:
    """Every attribute of ``decoded`` equals ``original`` up to the step the SOG format allows.

    ``palette_is_exact``: the SH palette has an entry per splat, so shN is only scalar-quantized.
    """
    assert len(decoded) == len(original) == meta["count"]

    # positions: 16 bits over [min, max] of sign(v) ln(|v| + 1), per axis
    steps = (np.asarray(meta["means"]["maxs"]) - np.asarray(meta["means"]["mins"])) / 65535
    transformed_error = np.abs(log_transform(decoded.means.astype(np.float64))
                               - log_transform(original.means.astype(np.float64)))
    assert (transformed_error <= 0.5 * steps * 1.001 + 1e-6).all(), transformed_error.max(0) / steps

    # scales and DC colours: the nearest entry of their 256-value codebooks
    for name in ("scales", "sh0"):
        error = np.abs(getattr(decoded, name).astype(np.float64) - getattr(original, name))
        best = nearest_codebook_error(getattr(original, name), meta[name]["codebook"])
        assert len(meta[name]["codebook"]) == 256
        assert np.allclose(error, best, atol=1e-6), f"{name}: worst excess {(error - best).max()}"

    # opacity: sigmoid in 8 bits
    def sigmoid(x: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-x.astype(np.float64)))

    opacity_error = np.abs(sigmoid(decoded.opacities) - sigmoid(original.opacities))
    assert opacity_error.max() <= 0.5 / 255 + 1e-6, opacity_error.max()

    # rotation: three components in 8 bits spanning [-1/sqrt(2), 1/sqrt(2)], the largest rebuilt
    unit = original.quats / np.linalg.norm(original.quats, axis=1, keepdims=True)
    aligned = np.where((unit * decoded.quats).sum(1, keepdims=True) < 0, -unit, unit)
    component_error = np.abs(decoded.quats - aligned)
    component_error[np.arange(len(unit)), np.abs(unit).argmax(1)] = 0
    assert component_error.max() <= 1 / (255 * math.sqrt(2)) + 1e-6, component_error.max()
    assert (1 - np.abs((unit * decoded.quats).sum(1))).max() < 1e-4

    # higher SH: the splat's palette centroid, whose values go through a 256-entry codebook
    assert decoded.shN.shape == original.shN.shape
    if original.shN.shape[1] and palette_is_exact:
        error = np.abs(decoded.shN.astype(np.float64) - original.shN)
        best = nearest_codebook_error(original.shN, meta["shN"]["codebook"])
        assert np.allclose(error, best, atol=1e-6), f"shN: worst excess {(error - best).max()}"
    elif original.shN.shape[1]:
        # a shared palette: a splat gets its cluster's centroid, so only the overall error is bounded
        rms_error = np.sqrt(((decoded.shN - original.shN) ** 2).mean())
        assert rms_error < 0.8 * original.shN.std(), (rms_error, original.shN.std())


def sog_meta(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("meta.json"))


def compress_in_order(splat: Gaussians, out: Path, **config) -> Gaussians:
    """Compress ``splat`` and return it in the order the SOG stores it (texel order)."""
    outcome = compress_splat(splat, out, CompressConfig(device="cpu", **config), NullProgress())
    assert sorted(outcome.order.tolist()) == list(range(len(splat)))
    return splat.subset(outcome.order)


# -- round trip ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_round_trip_within_quantization(tmp_path: Path, sh_degree: int) -> None:
    splat = random_gaussians(COUNT, sh_degree=sh_degree, seed=1)
    out = tmp_path / "scene.sog"
    stored = compress_in_order(splat, out, palette_size=COUNT, **FAST)
    assert_within_quantization(read_sog(out), stored, sog_meta(out), palette_is_exact=True)


@pytest.mark.parametrize("sort", ["morton", "none"])
def test_other_orders_round_trip(tmp_path: Path, sort: str) -> None:
    splat = random_gaussians(COUNT, sh_degree=1, seed=16)
    out = tmp_path / "scene.sog"
    outcome = compress_splat(splat, out, CompressConfig(device="cpu", sort=sort, palette_size=COUNT, **FAST),
                             NullProgress())
    if sort == "none":
        assert np.array_equal(outcome.order, np.arange(COUNT))
        assert outcome.neighbour_distance_after == outcome.neighbour_distance_before
    else:  # a Z-order curve keeps positions together, not colours or sizes: a smaller gain than PLAS
        assert outcome.neighbour_distance_after < outcome.neighbour_distance_before
    assert_within_quantization(read_sog(out), splat.subset(outcome.order), sog_meta(out), palette_is_exact=True)


def test_shared_palette_round_trip(tmp_path: Path) -> None:
    splat = random_gaussians(COUNT, sh_degree=3, seed=2)
    out = tmp_path / "scene.sog"
    stored = compress_in_order(splat, out, palette_size=512, **FAST)
    meta = sog_meta(out)
    assert meta["shN"]["count"] <= 512 and meta["shN"]["bands"] == 3
    assert_within_quantization(read_sog(out), stored, meta, palette_is_exact=False)


def test_fewer_sh_bands_than_the_ply(tmp_path: Path) -> None:
    splat = random_gaussians(500, sh_degree=3, seed=3)
    out = tmp_path / "scene.sog"
    stored = compress_in_order(splat, out, sh_bands=1, palette_size=500, **FAST)
    decoded = read_sog(out)
    assert decoded.sh_degree == 1
    np.testing.assert_array_less(np.abs(decoded.shN - stored.shN[:, :3]), 0.05)
    with zipfile.ZipFile(out) as archive:
        assert "shN_labels.webp" in archive.namelist()
    compress_in_order(splat, out, sh_bands=0, **FAST)
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == sorted(["meta.json", "means_l.webp", "means_u.webp",
                                                     "quats.webp", "scales.webp", "sh0.webp"])
    assert read_sog(out).sh_degree == 0


def test_texture_layout(tmp_path: Path) -> None:
    from PIL import Image

    for count in (1, 5, 17, 1001):
        out = tmp_path / f"n{count}.sog"
        stored = compress_in_order(random_gaussians(count, sh_degree=1, seed=count), out, **FAST)
        width, height = texture_size(count)
        assert width % 4 == 0 and height % 4 == 0 and width * height >= count
        with zipfile.ZipFile(out) as archive:
            for name in ("means_l.webp", "quats.webp", "sh0.webp", "shN_labels.webp"):
                assert Image.open(archive.open(name)).size == (width, height)
        assert_within_quantization(read_sog(out), stored, sog_meta(out), palette_is_exact=count <= 256)


def test_unbundled_files_match_the_bundle(tmp_path: Path) -> None:
    ply = tmp_path / "in.ply"
    write_ply(ply, random_gaussians(800, sh_degree=2, seed=4))
    result = compress_ply(ply, tmp_path / "out" / "scene.sog", CompressConfig(unbundled=True, **FAST),
                          NullProgress())
    meta_path = Path(result.outputs["meta"])
    names = json.loads(meta_path.read_text())
    assert set(names["means"]["files"] + names["shN"]["files"]) <= {p.name for p in meta_path.parent.iterdir()}
    bundled, unbundled = read_sog(tmp_path / "out" / "scene.sog"), read_sog(meta_path)
    for field in ("means", "scales", "quats", "opacities", "sh0", "shN"):
        np.testing.assert_array_equal(getattr(bundled, field), getattr(unbundled, field))


def test_same_seed_same_bytes_other_seed_other_order(tmp_path: Path) -> None:
    ply = tmp_path / "in.ply"
    write_ply(ply, random_gaussians(COUNT, sh_degree=3, seed=5))
    outputs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        compress_ply(ply, tmp_path / f"{name}.sog", CompressConfig(seed=seed, **FAST), NullProgress())
        outputs.append((tmp_path / f"{name}.sog").read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_zero_quaternion_decodes_as_identity(tmp_path: Path) -> None:
    splat = random_gaussians(64, sh_degree=0, seed=6)
    splat.quats[3] = 0
    out = tmp_path / "scene.sog"
    stored = compress_in_order(splat, out, sort="none", **EXACT)
    decoded = read_sog(out)
    np.testing.assert_allclose(decoded.quats[3], [1, 0, 0, 0], atol=1 / (255 * math.sqrt(2)) + 1e-6)
    assert np.all(np.isfinite(decoded.quats))
    assert len(stored) == 64


# -- bad input -------------------------------------------------------------------------------------


def write_vertex_ply(path: Path, columns: dict[str, np.ndarray]) -> None:
    count = len(next(iter(columns.values())))
    record = np.empty(count, dtype=[(name, "<f4") for name in columns])
    for name, values in columns.items():
        record[name] = values
    PlyData([PlyElement.describe(record, "vertex")]).write(str(path))


def expect_error(ply: Path, tmp_path: Path, *fragments: str) -> None:
    with pytest.raises(SpaceportError) as error:
        compress_ply(ply, tmp_path / "out.sog", CompressConfig(**FAST), NullProgress())
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, message
    assert not (tmp_path / "out.sog").exists()


def test_missing_properties(tmp_path: Path) -> None:
    ply = tmp_path / "points.ply"
    write_vertex_ply(ply, {name: np.zeros(10) for name in ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2")})
    expect_error(ply, tmp_path, str(ply), "missing properties", "opacity", "scale_0", "rot_0")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path: Path, bad: float) -> None:
    splat = random_gaussians(100, sh_degree=1, seed=7)
    splat.scales[42, 1] = bad
    ply = tmp_path / "bad.ply"
    write_ply(ply, splat)
    expect_error(ply, tmp_path, str(ply), "NaN/Inf", "scales", "row 42")


def test_zero_gaussians(tmp_path: Path) -> None:
    ply = tmp_path / "empty.ply"
    write_vertex_ply(ply, {name: np.zeros(0) for name in REQUIRED})
    expect_error(ply, tmp_path, str(ply), "zero Gaussians")


def test_truncated_file(tmp_path: Path) -> None:
    ply = tmp_path / "whole.ply"
    write_ply(ply, random_gaussians(200, sh_degree=3, seed=8))
    truncated = tmp_path / "truncated.ply"
    truncated.write_bytes(ply.read_bytes()[: ply.stat().st_size // 2])
    expect_error(truncated, tmp_path, str(truncated), "truncated")


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    expect_error(tmp_path / "nowhere.ply", tmp_path, "nowhere.ply", "no such file")
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"\x00\x01 not a ply at all")
    expect_error(garbage, tmp_path, str(garbage), "not a readable PLY")


def test_bad_sog_files(tmp_path: Path) -> None:
    with pytest.raises(SpaceportError, match="no such file"):
        read_sog(tmp_path / "none.sog")
    not_zip = tmp_path / "not_zip.sog"
    not_zip.write_bytes(b"garbage")
    with pytest.raises(SpaceportError, match="not a zip"):
        read_sog(not_zip)
    good = tmp_path / "good.sog"
    compress_in_order(random_gaussians(50, sh_degree=0, seed=9), good, **FAST)
    partial = tmp_path / "partial.sog"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(partial, "w") as target:
        for name in source.namelist():
            if name != "quats.webp":
                target.writestr(name, source.read(name))
    with pytest.raises(SpaceportError, match="quats.webp"):
        read_sog(partial)


def test_cuda_asked_without_cuda(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error cannot happen")
    ply = tmp_path / "in.ply"
    write_ply(ply, random_gaussians(10, sh_degree=0))
    with pytest.raises(SpaceportError, match="CUDA is not available"):
        compress_ply(ply, tmp_path / "out.sog", CompressConfig(device="cuda"), NullProgress())


# -- PLAS, k-means, 1-D codebooks ------------------------------------------------------------------


def test_plas_improves_neighbour_distance_and_is_deterministic() -> None:
    features = sorting_features(random_gaussians(COUNT, sh_degree=0, seed=10))
    width, _ = texture_size(COUNT)
    schedule = PlasSchedule(iterations_per_radius=2)
    first = plas_sort(features, width, seed=3, schedule=schedule)
    again = plas_sort(features, width, seed=3, schedule=schedule)
    assert torch.equal(first.order, again.order)
    assert sorted(first.order.tolist()) == list(range(COUNT))
    assert first.distance_before == pytest.approx(neighbour_distance(features, torch.arange(COUNT), width))
    assert first.distance_after == pytest.approx(neighbour_distance(features, first.order, width))
    assert first.distance_after < 0.65 * first.distance_before, (first.distance_before, first.distance_after)


def test_plas_recovers_a_shuffled_smooth_grid() -> None:
    side = 32
    ys, xs = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
                            indexing="ij")
    features = torch.stack([ys.flatten(), xs.flatten()], 1)
    shuffled = features[torch.randperm(side * side, generator=torch.Generator().manual_seed(0))]
    result = plas_sort(shuffled, side, seed=0, schedule=PlasSchedule(iterations_per_radius=4))
    # a perfect arrangement has distance 1 between neighbours; a random one about side / 2
    assert result.distance_before > 10
    assert result.distance_after < 1.6, result.distance_after


def test_plas_keeps_padding_at_the_end() -> None:
    count = 1001  # width 32: 31 full rows and 9 splats on the last one
    features = sorting_features(random_gaussians(count, sh_degree=0, seed=11))
    result = plas_sort(features, texture_size(count)[0], seed=0, schedule=PlasSchedule(iterations_per_radius=1))
    assert sorted(result.order.tolist()) == list(range(count))


def test_quantize_1d_nearest_entry_and_exact_small_sets() -> None:
    values = torch.randn(5000, 3, generator=torch.Generator().manual_seed(0)) ** 3
    codebook = quantize_1d(values)
    assert codebook.values.shape == (256,) and codebook.labels.dtype == torch.uint8
    assert torch.all(codebook.values[1:] >= codebook.values[:-1])
    error = (codebook.values[codebook.labels.long()] - values).abs()
    best = (values[..., None] - codebook.values).abs().min(-1).values
    assert torch.allclose(error, best)
    # a codebook spent on the centre would leave the tails of a heavy-tailed set far off
    assert error.max() < 0.05 * (values.max() - values.min())
    few = torch.tensor([0.5, -2.0, 0.5, 7.25, -2.0])
    exact = quantize_1d(few)
    assert torch.equal(exact.values[exact.labels.long()], few)


def test_kmeans_clusters_are_good_and_deterministic() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 9, generator=generator) * 3
    points = centres[torch.randint(40, (4000,), generator=generator)] + 0.1 * torch.randn(4000, 9,
                                                                                         generator=generator)
    for k, batch in ((40, None), (1600, None), (1600, 2**26)):  # flat, two-level, two-level batched (CUDA's)
        result = kmeans(points, k, iterations=8, seed=1, cell_batch_elements=batch)
        assert result.labels.min() >= 0 and result.labels.max() < result.centroids.shape[0] <= k
        error = (points - result.centroids[result.labels]).pow(2).sum(1).mean()
        assert error < 0.1 * points.var(0).sum(), (k, error)
        again = kmeans(points, k, iterations=8, seed=1, cell_batch_elements=batch)
        assert torch.equal(result.labels, again.labels) and torch.equal(result.centroids, again.centroids)
    few = kmeans(points[:10], 16)
    assert torch.equal(few.centroids, points[:10])
    # very uneven cells: the palette must still fit the 16-bit labels it was sized for
    uneven = torch.cat([0.01 * torch.randn(6000, 9, generator=generator),
                        50 * torch.randn(300, 9, generator=generator)])
    for k in (1000, 4096):
        assert kmeans(uneven, k, iterations=2).centroids.shape[0] <= k


def test_kmeans_fitted_on_a_sample_labels_every_point_with_a_near_centroid() -> None:
    """The palette's centroids are fitted on a sample (FIT_POINTS_PER_CENTROID per entry); every point, sampled
    or not, must then take the nearest centroid of its cell, and the error stay close to a fit on all points."""
    generator = torch.Generator().manual_seed(3)
    centres = torch.randn(300, 12, generator=generator)
    points = centres[torch.randint(300, (60_000,), generator=generator)] + 0.05 * torch.randn(60_000, 12,
                                                                                             generator=generator)
    k = 1024  # ~59 points per centroid: a 16-per-centroid sample leaves most points out of the fit
    full = kmeans(points, k, iterations=6, seed=0, fit_points_per_centroid=None)
    sampled = kmeans(points, k, iterations=6, seed=0, fit_points_per_centroid=16)
    assert sampled.labels.shape == (60_000,) and sampled.centroids.shape[0] <= k

    def error(result) -> float:
        return float((points - result.centroids[result.labels]).pow(2).sum(1).mean())

    assert error(sampled) < 1.25 * error(full), (error(sampled), error(full))
    # a point's label is no worse than any other centroid of its cell: check against all centroids' distances
    distances = torch.cdist(points[:2000], sampled.centroids)
    own = distances.gather(1, sampled.labels[:2000, None])[:, 0]
    assert float((own - distances.min(1).values).mean()) < 0.05 * float(own.mean())


def test_batched_lloyd_keeps_sets_apart() -> None:
    """The CUDA path runs many cells' k-means in one padded batch; each set must only see its own points."""
    from spaceport.compress.kmeans import batched_lloyd

    generator = torch.Generator().manual_seed(1)
    groups = [torch.randn(n, 6, generator=generator) + 100 * index for index, n in enumerate((300, 57, 8, 120))]
    ks = [40, 9, 8, 1]
    results = batched_lloyd(groups, ks, iterations=6, generator=torch.Generator().manual_seed(2))
    for points, k, result in zip(groups, ks, results, strict=True):
        assert result.centroids.shape == (k, 6) and result.labels.shape == (len(points),)
        distances = torch.cdist(points, result.centroids)
        assert torch.equal(result.labels, distances.argmin(1))
        # each centroid is the mean of its points (or a point of the set when its cluster is empty)
        assert (result.centroids - points.mean(0)).abs().max() < 10
        error = distances.gather(1, result.labels[:, None]).pow(2).mean()
        assert error < points.var(0).sum()
    again = batched_lloyd(groups, ks, iterations=6, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(a.labels, b.labels) for a, b in zip(results, again, strict=True))


# -- the stage ---------------------------------------------------------------------------------------


def test_run_compress_from_the_input_ply(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "job")
    ws.input_dir.mkdir(parents=True)
    write_ply(ws.input_dir / "model.ply", random_gaussians(COUNT, sh_degree=3, seed=12))
    progress = NullProgress()
    result = run_compress(ws, CompressConfig(**FAST), progress)
    assert result.outputs == {"sog": "compress/scene.sog"}
    assert ws.sog_path.exists() and not (ws.compress_dir / "meta.json").exists()
    metrics = result.metrics
    assert metrics["num_gaussians"] == COUNT
    assert metrics["sog_bytes"] == ws.sog_path.stat().st_size
    assert metrics["ply_bytes"] == (ws.input_dir / "model.ply").stat().st_size
    assert metrics["size_ratio"] == pytest.approx(metrics["ply_bytes"] / metrics["sog_bytes"], rel=0.01)
    assert metrics["neighbour_distance_after"] < metrics["neighbour_distance_before"]
    assert any("neighbour distance" in line for line in progress.messages)
    assert len(read_sog(ws.sog_path)) == COUNT


def test_run_compress_prefers_the_trained_splat(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "job")
    ws.input_dir.mkdir(parents=True)
    write_ply(ws.input_dir / "model.ply", random_gaussians(100, sh_degree=0, seed=13))
    write_ply(ws.splat_ply, random_gaussians(120, sh_degree=0, seed=14))
    result = run_compress(ws, CompressConfig(unbundled=True, **FAST), NullProgress())
    assert result.metrics["num_gaussians"] == 120
    assert result.outputs["meta"] == "compress/meta.json"
    assert (ws.compress_dir / "quats.webp").exists()


def test_run_compress_without_a_ply(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "job")
    with pytest.raises(SpaceportError, match="train/splat.ply: missing"):
        run_compress(ws, CompressConfig(), NullProgress())
    ws.input_dir.mkdir(parents=True)
    for name in ("a.ply", "b.ply"):
        write_ply(ws.input_dir / name, random_gaussians(5, sh_degree=0))
    with pytest.raises(SpaceportError, match="several .ply files"):
        run_compress(ws, CompressConfig(), NullProgress())


def test_pipeline_steps_compress_from_a_ply(tmp_path: Path) -> None:
    """`spaceport run X.ply --steps compress`: the pipeline imports the PLY, runs the stage, marks it done."""
    from spaceport.pipeline import run_pipeline
    from spaceport.presets import resolve_config

    ply = tmp_path / "trained.ply"
    write_ply(ply, random_gaussians(COUNT, sh_degree=2, seed=17))
    ws = Workspace(tmp_path / "job")
    config = resolve_config("standard", {f"compress.{key}": value for key, value in {**FAST, "sh_bands": 1}.items()})
    (result,) = run_pipeline(ws, "compress", config, lambda stage, logger: NullProgress(logger), source=ply)
    assert result.stage == "compress" and ws.is_done("compress")
    assert read_sog(ws.sog_path).sh_degree == 1
    assert ws.stage_result("compress").metrics["num_gaussians"] == COUNT
    (again,) = run_pipeline(ws, "compress", config, lambda stage, logger: NullProgress(logger), source=ply)
    assert again.skipped


def test_config_rejects_bad_values() -> None:
    from pydantic import ValidationError

    for bad in ({"sh_bands": 4}, {"palette_size": 70000}, {"device": "tpu"}, {"sort": "random"},
                {"sort_weights": {"position": 0}}, {"sort_weights": {"colour": -1}}):
        with pytest.raises(ValidationError):
            CompressConfig(**bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_quality_and_is_deterministic(tmp_path: Path) -> None:
    splat = random_gaussians(20000, sh_degree=3, seed=15)
    sizes = {}
    for name, device in (("cpu", "cpu"), ("cuda", "cuda"), ("cuda_again", "cuda")):
        out = tmp_path / f"{name}.sog"
        outcome = compress_splat(splat, out, CompressConfig(device=device), NullProgress())
        assert outcome.neighbour_distance_after < outcome.neighbour_distance_before
        assert_within_quantization(read_sog(out), splat.subset(outcome.order), sog_meta(out),
                                   palette_is_exact=False)
        sizes[name] = out.read_bytes()
    assert sizes["cuda"] == sizes["cuda_again"]
    assert len(sizes["cuda"]) < 1.1 * len(sizes["cpu"])


# -- pruning and SH band dropping --------------------------------------------------------------------


def looking_down_z(width: int = 64, height: int = 48) -> Camera:
    """A camera at the origin looking along +z (OpenCV axes), 60 px focal length."""
    K = np.array([[60.0, 0, width / 2], [0, 60.0, height / 2], [0, 0, 1]])
    return Camera("front", np.eye(4), K, width, height)


def test_contribution_is_opacity_times_footprint() -> None:
    from spaceport.compress.reduce import EPS2D, contributions

    camera = looking_down_z()
    splat = random_gaussians(4, sh_degree=0, seed=30)
    splat.means[:] = [[0, 0, 2], [0, 0, -2], [50, 0, 2], [0, 0, 4]]  # in view, behind, off the image, farther
    splat.scales[:] = np.log(0.05)
    splat.quats[:] = [1, 0, 0, 0]
    splat.opacities[:] = 0.0  # sigmoid: 0.5
    scores = contributions(splat, [camera])
    sigma = 60 * 0.05 / 2  # pixels at depth 2
    expected = 0.5 * 2 * math.pi * (sigma**2 + EPS2D)  # pixels of full opacity
    assert scores[0] == pytest.approx(expected, rel=1e-6)
    assert scores[1] == 0 and scores[2] == 0
    assert scores[3] < scores[0]  # farther: a smaller footprint
    # the largest over cameras: a second camera that sees the one behind
    behind = looking_down_z()
    flipped = np.diag([-1.0, 1.0, -1.0, 1.0])  # turned 180 degrees about y
    both = contributions(splat, [camera, Camera("back", flipped, behind.K, 64, 48)])
    assert both[1] == pytest.approx(scores[0], rel=1e-6) and both[0] == pytest.approx(scores[0], rel=1e-6)


def test_pruning_removes_what_no_camera_sees_and_counts_it(tmp_path: Path) -> None:
    from spaceport.compress.reduce import reduce_splat

    splat = random_gaussians(1000, sh_degree=1, seed=31, extent=1.0)
    splat.means[:, 2] += 4  # in front of the camera
    splat.means[:100, 2] = -5  # behind it
    splat.opacities[100:200] = -9  # nearly transparent
    reduction = reduce_splat(splat, [looking_down_z()], prune_threshold=0.003, sh_threshold=0)
    assert reduction.num_input == 1000 and reduction.num_pruned == len(splat) - len(reduction.splat)
    assert reduction.num_pruned >= 200
    assert (reduction.splat.means[:, 2] > 0).all() and (reduction.splat.opacities > -9).all()
    assert reduce_splat(splat, None, 0.003, 0).num_pruned == 0  # no cameras: nothing to judge by
    outcome = compress_splat(splat, tmp_path / "p.sog", CompressConfig(**{**FAST, "prune_threshold": 0.003}),
                             NullProgress(), cameras=[looking_down_z()])
    assert outcome.num_gaussians == len(reduction.splat) == len(read_sog(tmp_path / "p.sog"))
    assert outcome.reduction.num_pruned == reduction.num_pruned


def test_sh_bands_dropped_by_their_largest_colour_change() -> None:
    from spaceport.compress.reduce import band_bounds, bands_to_keep, drop_bands
    from spaceport.splat.render.sh import sh_basis

    splat = random_gaussians(2000, sh_degree=3, seed=32)
    splat.shN *= np.geomspace(1e-4, 0.3, 2000)[:, None, None]  # from negligible to strong
    splat.opacities[:] = 5
    # the bound holds: no direction makes a band change the colour more than it says
    directions = torch.nn.functional.normalize(torch.randn(500, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    basis = sh_basis(3, directions).double().numpy()  # (500, 16)
    bounds = band_bounds(splat.shN)
    for band, columns in ((1, slice(1, 4)), (2, slice(4, 9)), (3, slice(9, 16))):
        change = np.einsum("dk,nkc->ndc", basis[:, columns], splat.shN[:, columns.start - 1:columns.stop - 1])
        assert (np.abs(change).max(1) <= bounds[:, band - 1] + 1e-9).all()
    keep = bands_to_keep(splat, threshold=2 / 255)
    assert set(np.unique(keep)) == {0, 1, 2, 3} and (np.diff(keep) >= 0).sum() > 0.95 * len(keep)
    reduced = drop_bands(splat, keep)
    sigmoid = 1 / (1 + np.exp(-5.0))
    for gaussian in np.nonzero(keep < 3)[0][:50]:
        dropped = bounds[gaussian, keep[gaussian]:].sum(0).max() * sigmoid
        assert dropped < 2 / 255
        assert not reduced.shN[gaussian, [0, 3, 8][keep[gaussian]]:].any()
    np.testing.assert_array_equal(reduced.shN[keep == 3], splat.shN[keep == 3])


def test_gaussians_without_sh_share_a_zero_palette_entry(tmp_path: Path) -> None:
    splat = random_gaussians(COUNT, sh_degree=2, seed=33)
    splat.shN[: COUNT // 2] = 0
    out = tmp_path / "scene.sog"
    stored = compress_in_order(splat, out, palette_size=256, **FAST)
    decoded = read_sog(out)
    silent = ~stored.shN.reshape(COUNT, -1).any(1)
    codebook = np.asarray(sog_meta(out)["shN"]["codebook"])
    assert np.abs(decoded.shN[silent]).max() <= np.abs(codebook).min() + 1e-7
    assert np.abs(decoded.shN[~silent]).max() > 0
    splat.shN[:] = 0  # nothing left: no palette at all
    compress_in_order(splat, out, **FAST)
    assert "shN" not in sog_meta(out) and read_sog(out).sh_degree == 0


def test_default_precision_stays_within_its_steps_and_shrinks_the_file(tmp_path: Path) -> None:
    """The defaults store values more coarsely than the format allows (measured on trained splats:
    bench/README.md); each attribute stays within the step its setting implies."""
    config = CompressConfig()
    splat = random_gaussians(COUNT, sh_degree=1, seed=34)
    coarse, exact = tmp_path / "coarse.sog", tmp_path / "exact.sog"
    common = dict(palette_size=COUNT, prune_threshold=0, sh_drop_threshold=0, sort="morton")
    stored = compress_in_order(splat, coarse, **common)
    compress_in_order(splat, exact, **{**EXACT, **common})
    assert coarse.stat().st_size < 0.9 * exact.stat().st_size
    decoded, meta = read_sog(coarse), sog_meta(coarse)
    steps = (np.asarray(meta["means"]["maxs"]) - np.asarray(meta["means"]["mins"])) / 65535
    bits = auto_position_bits(stored, meta["means"])
    assert config.position_bits is None and 8 <= bits < 16
    position_error = np.abs(log_transform(decoded.means.astype(np.float64)) - log_transform(stored.means))
    assert (position_error <= (2 ** (16 - bits) / 2 + 0.5) * steps * 1.001 + 1e-6).all()
    for name, levels in (("scales", config.scale_levels), ("sh0", config.colour_levels)):
        used = np.asarray(meta[name]["codebook"], np.float32)[:levels]
        assert np.isin(getattr(decoded, name), used).all(), name
    sigmoid = 1 / (1 + np.exp(-np.stack([decoded.opacities, stored.opacities]).astype(np.float64)))
    opacity_step = 1 / (2**config.opacity_bits - 1)
    assert np.abs(sigmoid[0] - sigmoid[1]).max() <= opacity_step / 2 + 0.5 / 255 + 1e-6
    unit = stored.quats / np.linalg.norm(stored.quats, axis=1, keepdims=True)
    aligned = np.where((unit * decoded.quats).sum(1, keepdims=True) < 0, -unit, unit)
    component_error = np.abs(decoded.quats - aligned)
    component_error[np.arange(COUNT), np.abs(unit).argmax(1)] = 0  # the largest is rebuilt from the others
    byte_error = 0.5 + 0.5 * 255 / (2**config.rotation_bits - 1)
    assert component_error.max() <= byte_error * math.sqrt(2) / 255 + 1e-6


def test_auto_position_bits_follow_the_size_of_the_gaussians() -> None:
    """Finer Gaussians (a splat trained at a higher resolution) keep more bits of their positions."""
    splat = random_gaussians(COUNT, sh_degree=0, seed=35)
    meta = pack_means(splat.means)[2]
    coarse = auto_position_bits(splat, meta)
    splat.scales -= math.log(8)  # Gaussians 8x smaller: three more bits
    assert auto_position_bits(splat, meta) == min(16, coarse + 3)
    splat.scales -= 20
    assert auto_position_bits(splat, meta) == 16

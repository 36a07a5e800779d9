"""bench/train_gpu.py end to end on the CPU with tiny settings, so that the GPU call does not fail on a typo: every
run trains, the plain recipe is the INRIA one, ratios and the profile land in the table and the JSON."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tests.test_train import synthetic_source  # noqa: F401 (fixture)

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_gpu_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_every_recipe_on_the_cpu(bench, synthetic_source, tmp_path, capsys):  # noqa: F811
    workspace = tmp_path / "ws"
    shutil.copytree(synthetic_source, workspace)
    json_path = tmp_path / "results.json"
    rows = bench.main(["--workspace", str(workspace), "--device", "cpu", "--steps", "20", "--plain-steps", "30",
                       "--max-width", "40", "--throughput-cap", "42", "--profile", "--profile-steps", "5",
                       "--set", "eval_every=10", "--work", str(tmp_path / "work"), "--json", str(json_path)])

    assert list(rows) == ["standard", "quality", "plain", "throughput"]
    saved = json.loads(json_path.read_text())
    assert list(saved) == list(rows)
    for label, row in saved.items():
        assert row["steps"] == (30 if label == "plain" else 20) and row["image_width"] == 40
        assert row["backend"] == "torch" and 0 < row["psnr"] < 60 and row["wall_s"] > 0
        assert row["profile"]["steps"] == 5 and row["profile"]["parts"]["render"]["host_ms"] > 0
    plain, standard = saved["plain"], saved["standard"]
    assert plain["config"]["strategy"] == "default" and plain["config"]["sh_degree"] == 3
    assert plain["config"]["background"] == "black" and plain["config"]["lr_means"] == 1.6e-4
    assert standard["config"]["strategy"] == "mcmc" and standard["config"]["eval_every"] == 10  # --set applied
    assert standard["psnr_gain_db"] == pytest.approx(standard["psnr"] - plain["psnr"], abs=1e-3)
    assert standard["time_share"] == pytest.approx(standard["wall_s"] / plain["wall_s"], rel=1e-2)
    throughput = saved["throughput"]
    assert throughput["cap_max"] == 42 and throughput["steps_per_second_at_cap"] > 0  # 40 Gaussians: at 95%
    out = capsys.readouterr().out
    assert "steps_per_second_at_cap" in out and "host syncs per step" in out and "wrote" in out


def test_bench_refuses_an_unknown_setting(bench, tmp_path):
    with pytest.raises(SystemExit, match="not a TrainConfig field"):
        bench.main(["--workspace", str(tmp_path), "--device", "cpu", "--set", "stpes=3"])

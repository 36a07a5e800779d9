"""Issue 5 on the CPU: the whole pipeline with preset preview, its report, and `spaceport validate`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spaceport.cli import app
from spaceport.report import quality_score

runner = CliRunner()


@pytest.fixture(scope="module")
def finished_workspace(monstree_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    workspace = tmp_path_factory.mktemp("e2e") / "W"
    result = runner.invoke(app, ["run", str(monstree_small), "-o", str(workspace), "--preset", "preview",
                                 "--max-size", "480", "--set", "sfm.max_image_size=480",
                                 "--train-steps", "300"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return workspace


def test_preview_pipeline_writes_every_artifact_and_a_report(finished_workspace: Path) -> None:
    w = finished_workspace
    for path in ("images/frames.json", "sfm/sparse/0/cameras.bin", "train/splat.ply", "train/eval.json",
                 "compress/scene.sog", "report/report.json", "report/index.html"):
        assert (w / path).exists(), path
    report = json.loads((w / "report" / "report.json").read_text())
    assert set(report["stages"]) == {"ingest", "sfm", "train", "compress"}
    assert all(stage["status"] == "done" and stage["seconds"] > 0 for stage in report["stages"].values())
    assert report["checks"]["sfm"]["registered"] == 10
    assert report["checks"]["compress"]["size_ratio"] > 1
    assert 0 < report["quality_score"] <= 100
    assert "quality score" in (w / "report" / "index.html").read_text()


def test_validate_passes_then_fails_on_a_broken_artifact(finished_workspace: Path, tmp_path: Path) -> None:
    ok = runner.invoke(app, ["validate", str(finished_workspace)])
    assert ok.exit_code == 0, ok.output
    broken = tmp_path / "W"
    shutil.copytree(finished_workspace, broken)
    sog = broken / "compress" / "scene.sog"
    sog.write_bytes(sog.read_bytes()[:100])  # truncated
    failed = runner.invoke(app, ["validate", str(broken)])
    assert failed.exit_code == 1
    assert "below" in failed.output


def test_validate_refuses_a_folder_that_is_not_a_workspace(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 2 and "not a spaceport workspace" in result.output


def test_quality_score_formula() -> None:
    stages = ["ingest", "sfm", "train", "compress"]
    perfect = {"ingest": {"ok": True}, "sfm": {"ok": True, "registered": 10, "total": 10},
               "train": {"ok": True, "psnr": 31.0, "ssim": 0.95}, "compress": {"ok": True, "size_ratio": 20}}
    assert quality_score(stages, perfect)[0] == 100.0
    half = {**perfect, "sfm": {"ok": True, "registered": 5, "total": 10},
            "train": {"ok": True, "psnr": 22.5, "ssim": 0.7}}
    score, parts = quality_score(stages, half)
    assert parts["registration"]["earned"] == 10 and parts["psnr"]["earned"] == 12.5
    assert parts["ssim"]["earned"] == 5
    assert score == pytest.approx(100 * (40 + 10 + 12.5 + 5 + 15) / 110, abs=0.1)
    assert quality_score(["compress"], {"compress": {"ok": False}})[0] == 0.0

"""Shared fixtures: small copies of the real photo sets and a real SfM result made from them."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI entry point does: the CPU renderer needs it

import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageOps

# real servers on 127.0.0.1 (moto S3, aiosmtpd SMTP, a webhook receiver): see tests/servers.py;
# headless Chromium (Debian's, through Playwright) and viewer helpers: see tests/browser.py;
# job store databases (database_url: a SQLite file or PostgreSQL, postgres_url): see tests/databases.py
pytest_plugins = ["tests.servers", "tests.browser", "tests.databases"]

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MONSTREE = DATA / "monstree" / "images"
LIBERTY = DATA / "liberty" / "images"


def downscale_copy(sources: list[Path], dest: Path, long_side: int) -> list[Path]:
    """Copies of real photos, EXIF orientation applied, at a small size so tests stay fast on 2 cores."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for source in sources:
        image = ImageOps.exif_transpose(Image.open(source))
        image.thumbnail((long_side, long_side))
        target = dest / (source.stem + ".jpg")
        image.convert("RGB").save(target, quality=92)
        out.append(target)
    return out


def monstree_photos() -> list[Path]:
    photos = sorted(MONSTREE.glob("*.JPG"))
    assert len(photos) == 23, f"expected the 23 monstree photos in {MONSTREE}"
    return photos


@pytest.fixture(scope="session")
def monstree_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 consecutive monstree photos at 480 px (they overlap: SfM registers them all)."""
    folder = tmp_path_factory.mktemp("monstree_small")
    downscale_copy(monstree_photos()[:10], folder, 480)
    return folder


@pytest.fixture(scope="session")
def sfm_workspace(tmp_path_factory: pytest.TempPathFactory, monstree_small: Path) -> Path:
    """A workspace whose ingest and sfm stages ran for real (pycolmap) on monstree_small; copy it before changing it."""
    from spaceport.ingest import IngestConfig, run_ingest
    from spaceport.progress import NullProgress
    from spaceport.sfm import SfmConfig, run_sfm
    from spaceport.workspace import Workspace

    root = tmp_path_factory.mktemp("sfm_ws")
    shutil.copytree(monstree_small, root / "input")
    ws = Workspace(root)
    ws.mark_done(run_ingest(ws, IngestConfig(), NullProgress()))
    ws.mark_done(run_sfm(ws, SfmConfig(max_image_size=480), NullProgress()))
    return root


PREVIEW_ARGS = ["--preset", "preview", "--max-size", "480", "--set", "sfm.max_image_size=480", "--train-steps", "300"]


@pytest.fixture(scope="session")
def preview_workspace(monstree_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real CPU run of the whole pipeline (preset preview, sized down) shared by the report, viewer and service
    tests; copy it before changing it."""
    from typer.testing import CliRunner

    from spaceport.cli import app

    workspace = tmp_path_factory.mktemp("preview") / "W"
    result = CliRunner().invoke(app, ["run", str(monstree_small), "-o", str(workspace), *PREVIEW_ARGS],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (workspace.parent / "run_output.txt").write_text(result.output)  # what the user saw, for the summary test
    return workspace

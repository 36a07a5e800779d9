"""Shared fixtures: small copies of the real photo sets and a real SfM result made from them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageOps

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
    """A workspace whose sfm stage ran for real (pycolmap) on monstree_small; copy it before changing it."""
    from spaceport.progress import NullProgress
    from spaceport.sfm import SfmConfig, run_sfm
    from spaceport.workspace import Workspace

    root = tmp_path_factory.mktemp("sfm_ws")
    shutil.copytree(monstree_small, root / "images")
    ws = Workspace(root)
    result = run_sfm(ws, SfmConfig(max_image_size=480), NullProgress())
    ws.mark_done(result)
    return root

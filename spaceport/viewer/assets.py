"""Where the built viewer script is (``web/`` bundled by ``npm run build``, run by scripts/setup.sh)."""

from __future__ import annotations

from pathlib import Path

from spaceport.errors import SpaceportError

STATIC_DIR = Path(__file__).resolve().parent / "static"
VIEWER_SCRIPT = STATIC_DIR / "spaceport-viewer.js"


def viewer_script_path() -> Path:
    """The bundled viewer script; raises SpaceportError saying how to build it when it is missing."""
    if not VIEWER_SCRIPT.is_file():
        raise SpaceportError(
            f"{VIEWER_SCRIPT}: the web viewer is not built; run `bash scripts/setup.sh` "
            "(or `npm ci --prefix web && npm run build --prefix web`)"
        )
    return VIEWER_SCRIPT


def viewer_script() -> str:
    """The bundled viewer script's text (for inlining into a self-contained page)."""
    return viewer_script_path().read_text(encoding="utf-8")

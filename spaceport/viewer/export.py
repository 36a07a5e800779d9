"""`spaceport export --format html`: one self-contained page with the viewer and the splat inlined."""

from __future__ import annotations

import base64
from pathlib import Path

from spaceport.errors import SpaceportError
from spaceport.formats.atomic import atomic_write_bytes
from spaceport.viewer.assets import viewer_script
from spaceport.viewer.page import viewer_page
from spaceport.viewer.target import resolve_target


def export_html(target: str | Path, out_html: str | Path) -> Path:
    """Write ``out_html``: the viewer script, the splat (base64) and its first camera in one file that
    opens from disk with no server. ``target``: a workspace (its compress/scene.sog) or a .sog/.ply file."""
    scene = resolve_target(target, prefer=(".sog",))
    out_html = Path(out_html)
    if out_html.suffix.lower() not in (".html", ".htm"):
        raise SpaceportError(f"{out_html}: the html export writes a .html file; name the output FILE.html")
    payload = base64.b64encode(scene.path.read_bytes()).decode("ascii")
    page = viewer_page(scene.viewer_config(), title=scene.title, script_text=viewer_script(), scene_base64=payload)
    atomic_write_bytes(out_html, page.encode("utf-8"))
    return out_html

"""The viewer in HTML: a whole page (served, or self-contained with everything inlined), or a fragment that
another page (the report, the service's job page) embeds in an element of its own."""

from __future__ import annotations

import html
import json
import re
from typing import Any

# the clear colour behind the splat (RGB 0-1): a neutral near-black, so dark scenes stay readable
BACKGROUND = (0.07, 0.07, 0.09)

# Runs after the viewer script: reads the config (and an inlined splat, if any) and mounts the viewer.
MOUNT = """(function () {{
  var config = JSON.parse(document.getElementById('{id}-config').textContent);
  var inline = document.getElementById('{id}-scene');
  if (inline) {{
    config.source = {{base64: inline.textContent.replace(/\\s+/g, ''), format: config.source.format}};
  }}
  SpaceportViewer.mountViewer(document.getElementById('{id}'), config);
}})();"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title} · Spaceport viewer</title>
<style>html, body {{ margin: 0; height: 100%; background: #121217; }} #viewer {{ position: fixed; inset: 0; }}</style>
</head>
<body>
<main id="viewer" aria-label="Splat viewer"></main>
{fragment}
</body>
</html>
"""


def _script_safe(text: str) -> str:
    # inside <script>, "</script" (any case) ends the element early and "<!--" changes how it is parsed;
    # "<\/" and "<\!" mean the same in a JS string or regular expression
    return re.sub(r"<(/script|!--)", lambda m: "<\\" + m.group(1), text, flags=re.IGNORECASE)


def _json_safe(value: Any) -> str:
    return json.dumps(value).replace("<", "\\u003c")


def viewer_fragment(config: dict[str, Any], *, element_id: str, script_url: str | None = None,
                    script_text: str | None = None, scene_base64: str | None = None) -> str:
    """The ``<script>`` elements that mount the viewer into the page's element ``element_id`` (give it a size;
    the viewer fills it): the config (see web/src/viewer.js), the viewer script loaded from ``script_url``
    or inlined from ``script_text``, and the splat inlined as base64 when ``scene_base64`` is given."""
    if (script_url is None) == (script_text is None):
        raise ValueError("viewer_fragment: pass exactly one of script_url and script_text")
    if not re.fullmatch(r"[A-Za-z][\w-]*", element_id):
        raise ValueError(f"viewer_fragment: element_id {element_id!r} must be a plain HTML id")
    parts = [f'<script type="application/json" id="{element_id}-config">{_json_safe(config)}</script>']
    if scene_base64 is not None:
        parts.append(f'<script type="text/plain" id="{element_id}-scene">{scene_base64}</script>')
    if script_url is not None:
        parts.append(f'<script src="{html.escape(script_url)}"></script>')
    else:
        parts.append(f"<script>{_script_safe(script_text)}</script>")
    parts.append(f"<script>{MOUNT.format(id=element_id)}</script>")
    return "\n".join(parts)


def viewer_page(config: dict[str, Any], *, title: str, script_url: str | None = None,
                script_text: str | None = None, scene_base64: str | None = None) -> str:
    """A whole page that is the viewer (see ``viewer_fragment`` for the arguments)."""
    fragment = viewer_fragment(config, element_id="viewer", script_url=script_url, script_text=script_text,
                               scene_base64=scene_base64)
    return PAGE.format(title=html.escape(title), fragment=fragment)

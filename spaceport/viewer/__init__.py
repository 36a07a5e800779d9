"""The web viewer of a splat: `spaceport view` (served) and `spaceport export --format html` (one file).

The viewer itself is JavaScript (``web/``, PlayCanvas' engine), bundled into ``static/`` by setup.
"""

from spaceport.viewer.assets import VIEWER_SCRIPT, viewer_script, viewer_script_path
from spaceport.viewer.camera import ViewerCamera, camera_from_workspace
from spaceport.viewer.export import export_html
from spaceport.viewer.page import BACKGROUND, viewer_fragment, viewer_page
from spaceport.viewer.server import create_viewer_app, serve_viewer
from spaceport.viewer.target import ViewerScene, resolve_target

__all__ = [
    "BACKGROUND", "VIEWER_SCRIPT", "ViewerCamera", "ViewerScene", "camera_from_workspace", "create_viewer_app",
    "export_html", "resolve_target", "serve_viewer", "viewer_fragment", "viewer_page", "viewer_script",
    "viewer_script_path",
]

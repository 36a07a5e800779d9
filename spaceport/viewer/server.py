"""`spaceport view`: a small FastAPI app serving the viewer page, its script, the splat and its camera.

Every URL is relative to the page, so the same app can be mounted under another path (a job's
``/jobs/{id}/view/``) by the service.
"""

from __future__ import annotations

import socket
import threading
import webbrowser
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from spaceport.viewer.assets import viewer_script_path
from spaceport.viewer.page import viewer_page
from spaceport.viewer.target import ViewerScene, resolve_target

MEDIA_TYPES = {"sog": "application/zip", "ply": "application/octet-stream"}


def create_viewer_app(scene: ViewerScene) -> FastAPI:
    """The viewer of one splat: ``/`` (page), ``/viewer.js``, ``/scene.sog|ply``, ``/cameras.json``."""
    script = viewer_script_path()
    scene_name = f"scene.{scene.format}"
    page = viewer_page(scene.viewer_config(url=scene_name, cameras_url="cameras.json"), title=scene.title,
                       script_url="viewer.js")
    app = FastAPI(title="Spaceport viewer", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/viewer.js")
    def viewer_js() -> FileResponse:
        return FileResponse(script, media_type="text/javascript")

    @app.get(f"/{scene_name}")
    def scene_file() -> FileResponse:
        return FileResponse(scene.path, media_type=MEDIA_TYPES[scene.format])

    @app.get("/cameras.json")
    def cameras() -> JSONResponse:
        return JSONResponse({"camera": scene.camera.model_dump()})

    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one), bound before the URL is announced."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


def serve_viewer(target: Path, host: str = "127.0.0.1", port: int = 8080, open_browser: bool = True,
                 announce: Callable[[str], None] = print) -> None:
    """Serve the viewer of ``target`` (a workspace or a .sog/.ply) until interrupted; ``announce`` gets the
    URL once the socket listens (so the URL works as soon as it is printed)."""
    app = create_viewer_app(resolve_target(target))
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    url = f"http://{url_host}:{bound_port}/"
    announce(url)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()

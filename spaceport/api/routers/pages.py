"""The service's web pages: ``/`` (upload), ``/jobs``, ``/jobs/{id}`` and ``/jobs/{id}/view`` (the viewer).

The pages hold no data and need no key: they are plain HTML, CSS and JavaScript from ``spaceport/api/web/`` that ask
for the API key once (kept in the tab's sessionStorage) and read everything through the authenticated API. Links
that cannot send a header (EventSource, downloads, the viewer's requests) carry a job's link token instead
(``POST /v1/jobs/{id}/link-token``). Also here: ``GET /v1/jobs/{id}/camera``, the viewer's first view of a job.
"""

from __future__ import annotations

import html
import tempfile
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse
from starlette.concurrency import run_in_threadpool

from spaceport.api.artifacts import workspace_storage
from spaceport.api.deps import job_by_key_or_link
from spaceport.api.schemas import Problem
from spaceport.jobs.models import Job
from spaceport.storage import Storage
from spaceport.workspace import SpaceportError, Workspace

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
DEFAULT_PRESET = "standard"
# what the viewer needs of a remote workspace to place its first camera (spaceport.viewer.camera)
CAMERA_FILES = ("sfm/undistorted/sparse", "sfm/sparse/0", "train/eval.json")

# The pages load only their own scripts and styles and talk only to this server. The viewer also needs blob:
# workers and WebAssembly (PlayCanvas decodes the splat's textures there) and sets inline styles on its panel.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
VIEWER_CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; "
              "img-src 'self' data: blob:; connect-src 'self' data: blob:; worker-src 'self' blob:; "
              "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

router = APIRouter()


@cache
def _web_file(name: str) -> str:
    return (WEB_DIR / name).read_text(encoding="utf-8")


def _preset_options() -> str:
    from spaceport.presets import PRESETS

    return "\n".join(f'          <option value="{html.escape(name)}"{" selected" if name == DEFAULT_PRESET else ""}>'
                     f"{html.escape(name)}</option>" for name in PRESETS)


@cache
def render_page(content_file: str, title: str, script: str, current: str = "", body_class: str = "") -> str:
    """``layout.html`` around ``content_file``, with the page's script and the current navigation entry."""
    content = _web_file(content_file)
    if "{{preset_options}}" in content:
        content = content.replace("{{preset_options}}", _preset_options())
    values = {"title": html.escape(title), "script": script, "body_class": body_class, "content": content,
              "current_upload": 'aria-current="page"' if current == "upload" else "",
              "current_jobs": 'aria-current="page"' if current == "jobs" else ""}
    page = _web_file("layout.html")
    for name, value in values.items():
        page = page.replace("{{" + name + "}}", value)
    return page


def _page(text: str, csp: str = PAGE_CSP) -> HTMLResponse:
    return HTMLResponse(text, headers={**SECURITY_HEADERS, "Content-Security-Policy": csp})


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def upload_page() -> HTMLResponse:
    return _page(render_page("upload.html", "New job", "upload.js", current="upload"))


@router.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
def jobs_page() -> HTMLResponse:
    return _page(render_page("jobs.html", "Jobs", "jobs.js", current="jobs"))


@router.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
def job_page(job_id: str) -> HTMLResponse:  # the page reads the id from its URL
    return _page(render_page("job.html", "Job", "job.js", current="jobs"))


@router.get("/jobs/{job_id}/view", response_class=HTMLResponse, include_in_schema=False)
def view_page(job_id: str) -> HTMLResponse:
    return _page(render_page("view.html", "Viewer", "view.js", current="jobs", body_class="viewer-page"),
                 csp=VIEWER_CSP)


@router.get("/web/viewer.js", include_in_schema=False)
def viewer_script() -> FileResponse:
    from spaceport.viewer import viewer_script_path

    try:
        path = viewer_script_path()
    except SpaceportError as exc:
        raise HTTPException(404, str(exc)) from None
    return FileResponse(path, media_type=STATIC_TYPES[".js"], headers=SECURITY_HEADERS)


@lru_cache(maxsize=1)
def _static_names() -> frozenset[str]:
    return frozenset(path.name for path in WEB_DIR.iterdir() if path.suffix in STATIC_TYPES)


@router.get("/web/{name}", include_in_schema=False)
def static_file(name: str) -> FileResponse:
    if name not in _static_names():  # a fixed list: no name from the request becomes a path
        raise HTTPException(404, f"/web/{name} does not exist")
    return FileResponse(WEB_DIR / name, media_type=STATIC_TYPES[Path(name).suffix], headers=SECURITY_HEADERS)


# -- the viewer's first view -------------------------------------------------------------------------------


@router.get("/v1/jobs/{job_id}/camera", tags=["viewer"], responses={401: {"model": Problem}, 404: {"model": Problem}},
            summary="The viewer's first view of a job: its first training camera (null: frame the whole splat)")
async def job_camera(request: Request, job: Job = Depends(job_by_key_or_link)) -> dict[str, Any]:
    storage = workspace_storage(job, request)
    camera = await run_in_threadpool(_camera_of, storage)
    return {"camera": camera.model_dump() if camera is not None else None}


def _camera_of(storage: Storage) -> Any:
    from spaceport.viewer import camera_from_workspace

    if storage.is_local:
        return camera_from_workspace(Workspace(Path(storage.root)))
    with tempfile.TemporaryDirectory(prefix="spaceport-camera-") as folder:
        for rel in CAMERA_FILES:
            if storage.exists(rel):
                if storage.list(rel) == [rel]:
                    storage.get_file(rel, Path(folder) / rel)
                else:
                    storage.get_dir(rel, Path(folder) / rel)
        return camera_from_workspace(Workspace(Path(folder)))

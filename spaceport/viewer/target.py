"""What to show: a workspace (its SOG, else its PLY, with its first training camera) or a splat file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spaceport.errors import SpaceportError
from spaceport.viewer.camera import ViewerCamera, camera_from_workspace, framing_camera
from spaceport.viewer.page import BACKGROUND
from spaceport.workspace import Workspace

SCENE_FORMATS = (".sog", ".ply")


@dataclass(frozen=True)
class ViewerScene:
    """A splat file to show and the view to open it at."""

    path: Path
    camera: ViewerCamera
    title: str

    @property
    def format(self) -> str:
        return self.path.suffix.lower().lstrip(".")

    def viewer_config(self, *, url: str | None = None, cameras_url: str | None = None) -> dict[str, Any]:
        """The web viewer's config for this scene: the splat at ``url`` (None: inlined by the page), the
        camera from ``cameras_url`` (None: inlined here)."""
        config: dict[str, Any] = {"source": {"format": self.format}, "title": self.title, "background": BACKGROUND}
        if url is not None:
            config["source"]["url"] = url
        if cameras_url is not None:
            config["camerasUrl"] = cameras_url
        else:
            config["camera"] = self.camera.model_dump()
        return config


def resolve_target(target: str | Path, *, prefer: tuple[str, ...] = SCENE_FORMATS) -> ViewerScene:
    """A workspace folder (its compress/scene.sog, else train/splat.ply, in ``prefer`` order) or a
    .sog/.ply file. A file inside a workspace opens at that workspace's first training camera."""
    target = Path(target)
    if target.is_dir():
        return _workspace_scene(Workspace(target), prefer)
    if not target.exists():
        raise SpaceportError(f"{target}: no such file or folder; pass a workspace folder or a .sog/.ply file")
    if target.suffix.lower() not in SCENE_FORMATS:
        raise SpaceportError(f"{target}: the viewer shows .sog and .ply splats; pass one, or a workspace folder")
    owner = _owning_workspace(target)
    camera = camera_from_workspace(owner) if owner is not None else None
    return ViewerScene(target.resolve(), camera or framing_camera(splat_means(target)), target.name)


def _workspace_scene(ws: Workspace, prefer: tuple[str, ...]) -> ViewerScene:
    files = {".sog": ws.sog_path, ".ply": ws.splat_ply}
    for suffix in prefer:
        if files[suffix].is_file():
            camera = camera_from_workspace(ws) or framing_camera(splat_means(files[suffix]))
            return ViewerScene(files[suffix], camera, ws.root.name)
    wanted = " or ".join(ws.rel(files[s]) for s in prefer)
    raise SpaceportError(
        f"{ws.root}: has no {wanted}; run `spaceport run` into this workspace first "
        "(or pass a .sog/.ply file)"
    )


def splat_means(path: Path) -> np.ndarray:
    """The centres of a .sog or .ply splat's Gaussians."""
    if path.suffix.lower() == ".sog":
        from spaceport.formats.sog import read_sog

        return read_sog(path).means
    from spaceport.formats.gaussians import read_ply

    return read_ply(path).means


def _owning_workspace(path: Path) -> Workspace | None:
    ws = Workspace(path.resolve().parent.parent)
    return ws if path.resolve() in (ws.sog_path, ws.splat_ply) else None

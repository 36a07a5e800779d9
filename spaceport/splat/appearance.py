"""Per-photo appearance: a small colour transform of the rendered image, learned per training photo.

Photos of one place taken with different cameras, exposures, white balances or at different times of day
disagree about the colour of the same surface. Without help the splat explains the disagreement with
view-dependent colour and floaters, which held-out photos punish. ``AppearanceModel`` gives every training
photo its own transform, applied to the render before the loss, so the splat keeps one shared appearance:

- ``affine``: a 3x3 colour matrix and a bias per photo (12 numbers), initialised to the identity.
- ``bilateral``: a bilateral grid per photo (Chen et al. 2016; Wang et al., "Bilateral Guided Radiance Field
  Processing", 2024, as in gsplat's examples): a 16x16 (x, y) by 8 (luminance) grid of such affine transforms,
  sliced trilinearly at each pixel, so vignetting and tone curves can vary across the image.

Each photo's transform is its own parameter, so the Adam step after a view only moves that view's transform
(with one shared tensor, Adam's momentum would keep moving every photo's transform after it was last seen).
A penalty towards the identity fixes the gauge (a colour change of every photo is otherwise
indistinguishable from the inverse change of the splat's colours), so the exported splat keeps the photos'
average look. The transforms exist only while training: the exported splat is untouched.

Held-out photos have no learned transform. ``fit_affine`` finds one on part of a photo (the NeRF-W protocol
fits on the left half and scores the right half; see ``spaceport.splat.evaluate``).

``decide_appearance`` is the rule for ``appearance: auto``: on when the photos come from several cameras or
their exposure varies (``EXPOSURE_SPREAD_STOPS``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pycolmap
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image

from spaceport.formats.frames import MANIFEST_NAME, FramesManifest, read_frames
from spaceport.splat.scene import Scene, View
from spaceport.workspace import SpaceportError

AppearanceKind = Literal["none", "affine", "bilateral"]
AppearanceSetting = Literal["auto", "off", "affine", "bilateral"]
APPEARANCE_VERSION = 1

DEFAULT_LR = 5e-3
DEFAULT_REG = 1e-2
DEFAULT_TV = 10.0  # gsplat's weight of the grids' total variation
GRID_SHAPE = (8, 16, 16)  # luminance, y, x: gsplat's default bilateral grid
# Standard deviation of the photos' exposure, in stops, above which 'auto' turns appearance on. Measured as
# log2 of each photo's mean linear luminance: monstree (23 photos, one phone walked around a tree) 0.15 stops,
# liberty (135 internet photos, 36 cameras) 0.59 stops; tests/test_appearance.py checks both.
EXPOSURE_SPREAD_STOPS = 0.3
# COLMAP cameras whose focal lengths differ by less than this factor count as one camera (per-image cameras
# of one phone get slightly different refined focals)
SAME_FOCAL_RATIO = 1.05
REC709_LUMA = (0.2126, 0.7152, 0.0722)
IDENTITY_3X4 = torch.eye(3, 4)


class AppearanceModel(torch.nn.Module):
    """One colour transform per training photo, its own Adam, and its penalty towards the identity.

    Use in a training step: ``colors = model(colors, i)``, add ``model.regularization(i)`` to the loss,
    backward, then ``model.step()``. ``checkpoint_state()`` / ``load_checkpoint_state()`` round-trip the
    transforms and the optimiser exactly.
    """

    def __init__(
        self,
        num_views: int,
        kind: AppearanceKind = "affine",
        device: torch.device | str = "cpu",
        *,
        lr: float = DEFAULT_LR,
        reg_weight: float = DEFAULT_REG,
        tv_weight: float = DEFAULT_TV,
        grid_shape: tuple[int, int, int] = GRID_SHAPE,
    ):
        super().__init__()
        if kind not in ("none", "affine", "bilateral"):
            raise SpaceportError(f"appearance kind '{kind}' is unknown; choose none, affine or bilateral")
        if num_views < 1 and kind != "none":
            raise SpaceportError("appearance: no training views to learn a transform for")
        self.kind, self.num_views = kind, num_views
        self.lr, self.reg_weight, self.tv_weight = lr, reg_weight, tv_weight
        self.grid_shape = tuple(grid_shape)
        # offsets from the identity, so zeros are the identity and the penalty is their square
        shape = (3, 4) if kind == "affine" else (12, *self.grid_shape)
        count = 0 if kind == "none" else num_views
        self.offsets = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(shape, device=device)) for _ in range(count)])
        self._optimizer: torch.optim.Adam | None = None
        # constants on the device, so that a step copies nothing from the host
        self.register_buffer("identity", IDENTITY_3X4.to(device), persistent=False)
        self.register_buffer("luma_weights", torch.tensor(REC709_LUMA, device=device), persistent=False)

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    def forward(self, image: torch.Tensor, view_index: int) -> torch.Tensor:
        """``image`` (H, W, 3) or (1, H, W, 3) in the same shape, transformed as photo ``view_index`` looks."""
        if not self.enabled:
            return image
        if not 0 <= view_index < self.num_views:
            raise IndexError(f"appearance: view {view_index} of {self.num_views}")
        offset = self.offsets[view_index]
        if self.kind == "affine":
            return apply_affine(image, offset + self.identity)
        return apply_bilateral_grid(image, offset, self.identity, self.luma_weights)

    def compensated(self, image: torch.Tensor, view_index: int) -> torch.Tensor:
        return self(image, view_index)

    def regularization(self, view_index: int) -> torch.Tensor:
        """The penalty of the transform of photo ``view_index`` (only that one, so the step stays per photo)."""
        if not self.enabled:
            return torch.zeros(())
        offset = self.offsets[view_index]
        penalty = self.reg_weight * offset.square().mean()
        if self.kind == "bilateral":
            penalty = penalty + self.tv_weight * grid_total_variation(offset)
        return penalty

    def optimizer(self) -> torch.optim.Adam | None:
        if self._optimizer is None and self.enabled:
            self._optimizer = torch.optim.Adam(self.offsets.parameters(), lr=self.lr, eps=1e-15)
        return self._optimizer

    def step(self) -> None:
        """Adam step on the transforms that got a gradient, then clear the gradients."""
        optimizer = self.optimizer()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def checkpoint_state(self) -> dict[str, Any]:
        optimizer = self.optimizer()
        return {
            "version": APPEARANCE_VERSION, "kind": self.kind, "num_views": self.num_views,
            "model": self.state_dict(), "optimizer": None if optimizer is None else optimizer.state_dict(),
        }

    def load_checkpoint_state(self, saved: dict[str, Any], *, source: str = "checkpoint") -> None:
        found = (saved.get("version"), saved.get("kind"), saved.get("num_views"))
        if found != (APPEARANCE_VERSION, self.kind, self.num_views):
            raise SpaceportError(
                f"{source}: its appearance transforms are (version, kind, views) {found}, this run needs "
                f"{(APPEARANCE_VERSION, self.kind, self.num_views)}; delete train/ckpt to start over")
        self.load_state_dict(saved["model"])
        optimizer = self.optimizer()
        if optimizer is not None:
            optimizer.load_state_dict(saved["optimizer"])


# -- the transforms --------------------------------------------------------------------------------


def apply_affine(image: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``image @ A.T + b`` for ``matrix`` = [A | b] (3, 4), over the last axis of any image shape."""
    return image @ matrix[:, :3].T + matrix[:, 3]


def apply_bilateral_grid(
    image: torch.Tensor, offset: torch.Tensor, identity: torch.Tensor, luma_weights: torch.Tensor
) -> torch.Tensor:
    """Slice a (12, L, Gy, Gx) grid of offsets from ``identity`` (3, 4) at each pixel (x, y, luminance) and
    apply the affine transform found there.

    The luminance that picks the grid cell is taken from the detached image: the render should change
    colour to match the photo, not to move into a cell with a kinder transform.
    """
    batched = image.dim() == 4
    pixels = image if batched else image[None]
    if pixels.shape[0] != 1:
        raise ValueError("appearance: one image at a time")
    _, height, width, _ = pixels.shape
    device, dtype = pixels.device, pixels.dtype
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width * 2 - 1
    luma = (pixels.detach()[0] @ luma_weights).clamp(0, 1) * 2 - 1
    coords = torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width), luma], dim=-1)
    sliced = F.grid_sample(offset[None], coords[None, None], mode="bilinear", padding_mode="border",
                           align_corners=True)  # (1, 12, 1, H, W)
    matrices = sliced[0, :, 0].permute(1, 2, 0).reshape(height, width, 3, 4) + identity
    out = (matrices[..., :3] @ pixels[0][..., None])[..., 0] + matrices[..., 3]
    return out[None] if batched else out


def grid_total_variation(grid: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring cells along each grid axis, summed over the axes."""
    return sum(grid.diff(dim=axis).square().mean() for axis in (1, 2, 3))


def fit_affine(rendered: torch.Tensor, truth: torch.Tensor, *, ridge: float = 1e-4) -> torch.Tensor:
    """The (3, 4) affine colour transform that maps ``rendered`` closest to ``truth`` (least squares).

    This is the exact minimiser that Adam steps on the squared error would approach. ``ridge`` pulls it
    weakly towards the identity, so a region of one flat colour still gives a sensible transform.
    """
    x = rendered.reshape(-1, 3).double()
    y = truth.reshape(-1, 3).double()
    design = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (P, 4)
    weight = ridge * len(design)
    identity = IDENTITY_3X4.T.to(design)  # (4, 3): the solution that changes nothing
    gram = design.T @ design + weight * torch.eye(4, dtype=design.dtype, device=design.device)
    solution = torch.linalg.solve(gram, design.T @ y + weight * identity)  # (4, 3)
    return solution.T.to(rendered.dtype)


# -- the rule for 'auto' ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AppearanceDecision:
    kind: AppearanceKind
    reason: str  # one line for the log and the report


def decide_appearance(
    setting: AppearanceSetting,
    camera_labels: Sequence[str | None],
    exposures_stops: Sequence[float],
) -> AppearanceDecision:
    """The kind of appearance model a run uses.

    ``auto`` turns ``affine`` on when the photos carry at least two distinct camera labels (EXIF make and
    model, or COLMAP cameras; photos without a label are not counted) or when the standard deviation of
    their exposures (``exposures_stops``, see ``exposure_stops``) exceeds ``EXPOSURE_SPREAD_STOPS``.
    """
    if setting == "off":
        return AppearanceDecision("none", "appearance off (train.appearance=off)")
    if setting in ("affine", "bilateral"):
        return AppearanceDecision(setting, f"appearance {setting} (train.appearance={setting})")
    cameras = sorted({label for label in camera_labels if label})
    spread = float(np.std(exposures_stops)) if len(exposures_stops) > 1 else 0.0
    facts = f"{len(cameras)} camera(s), exposure spread {spread:.2f} stops"
    if len(cameras) >= 2:
        return AppearanceDecision("affine", f"appearance affine: photos from {facts}")
    if spread > EXPOSURE_SPREAD_STOPS:
        return AppearanceDecision("affine", f"appearance affine: {facts} (> {EXPOSURE_SPREAD_STOPS})")
    return AppearanceDecision("none", f"appearance off: {facts}")


def should_enable(camera_labels: Sequence[str | None], exposures_stops: Sequence[float]) -> bool:
    return decide_appearance("auto", camera_labels, exposures_stops).kind != "none"


def exposure_stops(image: torch.Tensor | np.ndarray) -> float:
    """log2 of the mean linear (sRGB-decoded) Rec. 709 luminance of a uint8 (H, W, 3) image: its exposure
    in stops, up to what it shows."""
    pixels = (image if isinstance(image, torch.Tensor) else torch.tensor(image)).float() / 255.0
    linear = torch.where(pixels <= 0.04045, pixels / 12.92, ((pixels + 0.055) / 1.055) ** 2.4)
    luminance = linear @ torch.tensor(REC709_LUMA, device=linear.device)
    return math.log2(max(float(luminance.mean()), 1e-6))


def view_exposures(views: Iterable[View]) -> list[float]:
    return [exposure_stops(view.image) for view in views]


def camera_label(make: object, model: object) -> str | None:
    """'make model' in lower case; None when the photo says neither."""
    texts = [value.decode(errors="replace") if isinstance(value, bytes) else value for value in (make, model)]
    parts = [text.replace("\x00", "").strip().lower() for text in texts if isinstance(text, str)]
    parts = [part for part in parts if part]
    return " ".join(parts) or None


def frames_camera_labels(frames: FramesManifest) -> dict[str, str | None]:
    """Image name -> EXIF camera label, from the ingest stage's manifest."""
    return {f.file: camera_label(f.exif.make, f.exif.model) for f in frames.frames}


def photo_camera_labels(paths: Iterable[Path]) -> dict[str, str | None]:
    """Image name -> EXIF camera label, read from the photos themselves (Pillow)."""
    labels = {}
    for path in paths:
        with Image.open(path) as photo:
            exif = photo.getexif()
        labels[Path(path).name] = camera_label(exif.get(ExifTags.Base.Make), exif.get(ExifTags.Base.Model))
    return labels


def colmap_camera_labels(model_dir: Path) -> dict[str, str]:
    """Image name -> camera label from a COLMAP model, for models without a frames manifest (imported).

    Cameras of one size whose focal lengths lie within ``SAME_FOCAL_RATIO`` of the next count as one, since
    COLMAP gives each image its own camera by default and bundle adjustment refines their focals apart. A size and
    its transpose are one size: ingest turns portrait photos upright, so one phone gives W x H and H x W cameras.
    """
    reconstruction = pycolmap.Reconstruction(str(model_dir))
    by_size: dict[tuple[int, int], list[tuple[float, int]]] = {}
    for camera_id, camera in reconstruction.cameras.items():
        size = (max(camera.width, camera.height), min(camera.width, camera.height))
        by_size.setdefault(size, []).append((float(camera.mean_focal_length()), camera_id))
    group_of: dict[int, str] = {}
    for (width, height), cameras in by_size.items():
        group, previous = 0, None
        for focal, camera_id in sorted(cameras):
            if previous is not None and focal > previous * SAME_FOCAL_RATIO:
                group += 1
            group_of[camera_id], previous = f"colmap {width}x{height} #{group}", focal
    return {image.name: group_of[image.camera_id] for image in reconstruction.images.values()}


def workspace_camera_labels(images_dir: Path, model_dir: Path) -> dict[str, str | None]:
    """EXIF camera labels from the frames manifest in ``images_dir`` if there is one, else COLMAP's cameras."""
    if (images_dir / MANIFEST_NAME).is_file():
        return frames_camera_labels(read_frames(images_dir))
    return colmap_camera_labels(model_dir)


def decide_for_views(
    setting: AppearanceSetting, views: Sequence[View], labels: dict[str, str | None]
) -> AppearanceDecision:
    """``decide_appearance`` for a scene's views and a name -> camera label map."""
    if setting != "auto":
        return decide_appearance(setting, [], [])
    return decide_appearance(setting, [labels.get(view.name) for view in views], view_exposures(views))



def decide_for_scene(
    setting: AppearanceSetting, scene: Scene, images_dir: Path, model_dir: Path
) -> AppearanceDecision:
    """The appearance kind of a run on ``scene``, and why.

    'auto' looks at every photo of the scene, held-out ones included; ``images_dir`` is the ingest stage's
    folder (its frames.json carries the EXIF cameras), ``model_dir`` the COLMAP model read without one.
    """
    labels = workspace_camera_labels(images_dir, model_dir) if setting == "auto" else {}
    return decide_for_views(setting, [*scene.train_views, *scene.test_views], labels)

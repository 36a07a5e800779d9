"""bench/heldout_error.py's measurements on the CPU (its render needs gsplat on CUDA): how many training photos
see each pixel, the best whole-image shift, the colour-matched PSNR."""

from __future__ import annotations

import torch

from bench import heldout_error as bench
from spaceport.splat.scene import View

K = torch.tensor([[50.0, 0.0, 32.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]])


def camera_at(x: float) -> View:
    viewmat = torch.eye(4)
    viewmat[0, 3] = -x  # world to camera: the camera sits at (x, 0, 0), looking down +z
    return View(f"x{x}", torch.zeros(48, 64, 3, dtype=torch.uint8), K, viewmat)


def test_coverage_counts_the_training_frames_a_pixel_falls_in():
    held_out = camera_at(0.0)
    depth = torch.full((48, 64), 2.0)
    seen = bench.coverage(held_out, depth, [camera_at(0.0), camera_at(1.0), camera_at(-50.0)])
    # the camera 1 unit to the right sees the points 25 px (1 * 50 / 2) left of its centre column onwards
    assert seen.min() == 1 and seen.max() == 2
    assert torch.all(seen[:, 25:] == 2) and torch.all(seen[:, :25] == 1)
    behind = bench.coverage(held_out, torch.full((48, 64), -1.0), [camera_at(0.0)])
    assert torch.all(behind == 0)


def test_best_shift_and_colour_match_find_what_was_done_to_the_image():
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 100, 120, generator=generator), 3, 1, 1)[0]
    image = image.permute(1, 2, 0).contiguous()
    dx, dy, score = bench.best_shift(image, bench.shifted(image, 0.75, -0.5))
    assert (dx, dy) == (0.75, -0.5) and score > 60
    assert bench.colour_matched_psnr(image * 0.8 + 0.05, image) > 60
    assert bench.colour_matched_psnr(image.flip(0), image) < 30

"""Ingest of a video made with PyAV from the real monstree photos, a few of them blurred on purpose."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageOps

from spaceport.ingest import IngestConfig, run_ingest
from spaceport.progress import NullProgress
from spaceport.workspace import SpaceportError, Workspace
from tests.media import (
    blurred,
    make_video_from_photos,
    monstree_photos,
    small_photo_copies,
    truncated_copy,
    upright,
    workspace_with_input,
)

BLURRED_PHOTOS = (5, 12, 18)  # of the 23; each photo fills 2 frames
FRAMES_PER_PHOTO = 2


@pytest.fixture(scope="module")
def walk_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """46 frames at 240x320: the 23 monstree photos in order, each twice, 3 of them blurred."""
    folder = tmp_path_factory.mktemp("video")
    photos = small_photo_copies(monstree_photos(), folder / "photos", long_side=320)
    frames = [blurred(photo) if index in BLURRED_PHOTOS else upright(photo) for index, photo in enumerate(photos)]
    return make_video_from_photos(
        frames, folder / "walk.mp4", fps=10, size=(240, 320), frames_per_photo=FRAMES_PER_PHOTO
    )


def ingest_video(root: Path, video: Path, config: IngestConfig) -> tuple[Workspace, dict]:
    ws = Workspace(workspace_with_input(root, [video]))
    result = run_ingest(ws, config, NullProgress())
    manifest = json.loads((ws.images_dir / "frames.json").read_text())
    assert result.metrics["images"] == len(manifest["frames"])
    return ws, manifest


def test_the_sharpest_frames_are_kept_and_blurred_ones_dropped(walk_video: Path, tmp_path: Path) -> None:
    config = IngestConfig(target_frames=23, candidates_per_window=2)
    ws, manifest = ingest_video(tmp_path, walk_video, config)
    assert manifest["kind"] == "video" and manifest["input"] == "input/walk.mp4"
    video = manifest["video"]
    assert (video["frame_count"], video["windows"], video["width"], video["height"]) == (46, 23, 240, 320)

    # one window per photo here, so the windows holding a blurred photo yield only blurry frames
    kept_photos = sorted(frame["frame_index"] // FRAMES_PER_PHOTO for frame in manifest["frames"])
    assert kept_photos == [index for index in range(23) if index not in BLURRED_PHOTOS]
    dropped_photos = sorted(item["frame_index"] // FRAMES_PER_PHOTO for item in manifest["dropped"])
    assert dropped_photos == list(BLURRED_PHOTOS)
    assert all(item["reason"].startswith("blurry") for item in manifest["dropped"])

    for frame in manifest["frames"]:
        assert frame["file"] == f"frame_{frame['frame_index']:06d}.jpg"
        assert frame["source"] == "input/walk.mp4" and frame["time_s"] == pytest.approx(frame["frame_index"] / 10)
        assert Image.open(ws.images_dir / frame["file"]).size == (240, 320)
    assert {path.name for path in ws.images_dir.iterdir()} == {f["file"] for f in manifest["frames"]} | {
        "frames.json"
    }


def test_each_window_keeps_its_sharpest_candidate(walk_video: Path, tmp_path: Path) -> None:
    ws, manifest = ingest_video(tmp_path, walk_video, IngestConfig(target_frames=6, candidates_per_window=3))
    by_window = defaultdict(list)
    for candidate in manifest["video"]["candidates"]:
        by_window[candidate["window"]].append(candidate)
    assert sorted(by_window) == list(range(6))
    assert all(len(candidates) == 3 for candidates in by_window.values())
    chosen = []
    for candidates in by_window.values():
        (pick,) = [candidate for candidate in candidates if candidate["chosen"]]
        assert pick["sharpness"] == max(candidate["sharpness"] for candidate in candidates)
        chosen.append(pick["frame_index"])
    kept_or_dropped = [frame["frame_index"] for frame in manifest["frames"]] + [
        item["frame_index"] for item in manifest["dropped"]
    ]
    assert sorted(kept_or_dropped) == sorted(chosen)
    assert len(manifest["frames"]) >= 3


def test_frames_are_downscaled_and_a_container_without_a_frame_count_works(
    walk_video: Path, tmp_path: Path
) -> None:
    photos = [upright(path) for path in small_photo_copies(monstree_photos()[:6], tmp_path / "photos")]
    mkv = make_video_from_photos(photos, tmp_path / "walk.mkv", fps=5, size=(240, 320))
    with av.open(str(mkv)) as container:
        assert container.streams.video[0].frames == 0  # the count comes from reading the packets
    ws, manifest = ingest_video(tmp_path / "job", mkv, IngestConfig(max_size=160))
    assert manifest["video"]["frame_count"] == 6
    assert len(manifest["frames"]) == 6
    assert {(frame["width"], frame["height"]) for frame in manifest["frames"]} == {(120, 160)}


@pytest.mark.parametrize("display_rotation", [-90, 90, 180])
def test_a_phone_video_display_rotation_is_applied(display_rotation: int, tmp_path: Path) -> None:
    photos = [upright(path) for path in small_photo_copies(monstree_photos()[:3], tmp_path / "photos")]
    video = make_video_from_photos(
        photos, tmp_path / "phone.mov", fps=5, size=(240, 320), display_rotation=display_rotation
    )
    with av.open(str(video)) as container:
        stored = container.streams.video[0].codec_context
        assert (stored.width, stored.height) == ((320, 240) if display_rotation % 180 else (240, 320))
    ws, manifest = ingest_video(tmp_path / "job", video, IngestConfig())
    assert manifest["video"]["rotation"] == display_rotation % 360
    for frame, photo in zip(manifest["frames"], photos, strict=True):
        output = np.asarray(Image.open(ws.images_dir / frame["file"]).convert("RGB"), dtype=float)
        expected = np.asarray(ImageOps.fit(photo, (240, 320)), dtype=float)
        assert output.shape == expected.shape == (320, 240, 3)
        assert np.abs(output - expected).mean() < 6 < np.abs(output[::-1, ::-1] - expected).mean()


def test_a_standing_camera_gives_no_repeated_frames(tmp_path: Path) -> None:
    photos = [upright(path) for path in small_photo_copies(monstree_photos()[:4], tmp_path / "photos")]
    still = make_video_from_photos(photos, tmp_path / "still.mp4", fps=10, size=(240, 320), frames_per_photo=8)
    ws, manifest = ingest_video(tmp_path / "job", still, IngestConfig(target_frames=16, candidates_per_window=1))
    assert len(manifest["frames"]) == 4  # one per photo: the other windows repeat it
    assert sorted(frame["frame_index"] // 8 for frame in manifest["frames"]) == [0, 1, 2, 3]
    assert all(item["reason"].startswith("near-duplicate of frame") for item in manifest["dropped"])


def test_a_video_too_short_for_sfm_is_refused(tmp_path: Path) -> None:
    photos = [upright(path) for path in small_photo_copies(monstree_photos()[:2], tmp_path / "photos")]
    short = make_video_from_photos(photos, tmp_path / "short.mov", fps=2, size=(240, 320))
    workspace = workspace_with_input(tmp_path / "job", [short])
    with pytest.raises(SpaceportError, match=r"only 2 usable frames in input/short.mov"):
        run_ingest(Workspace(workspace), IngestConfig(), NullProgress())
    assert not (workspace / "images").exists()


@pytest.mark.parametrize("case", ["garbage", "truncated", "audio only"])
def test_an_unreadable_video_is_a_clear_error(case: str, walk_video: Path, tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    if case == "garbage":
        video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200)
    elif case == "truncated":
        truncated_copy(walk_video, video, keep_fraction=0.6)  # PyAV writes the mp4 index last: it is cut off
    else:
        with av.open(str(video), "w") as container:
            stream = container.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.rate, frame.pts = 8000, 0
            for packet in [*stream.encode(frame), *stream.encode()]:
                container.mux(packet)
    workspace = workspace_with_input(tmp_path / "job", [video])
    with pytest.raises(SpaceportError) as raised:
        run_ingest(Workspace(workspace), IngestConfig(), NullProgress())
    assert "input/clip.mp4" in str(raised.value) and "re-encode" in str(raised.value)
    assert not (workspace / "images").exists()
    assert not [path for path in workspace.iterdir() if path.name.startswith(".")]

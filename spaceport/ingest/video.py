"""A video -> about target_frames sharp, distinct JPEG frames, chosen and recorded.

The frame range is cut into target_frames equal windows; in each, a few evenly spaced candidates are measured
(variance of the Laplacian on a small grey copy) and the sharpest is written. Frames far blurrier than the
median of those kept, and frames that repeat the previous one (a camera standing still), are then dropped.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image

from spaceport.formats.frames import DroppedRecord, FrameRecord, VideoCandidate, VideoSummary
from spaceport.ingest.config import IngestConfig
from spaceport.ingest.photos import scaled_size
from spaceport.ingest.quality import blurry_indices, hash_distance, perceptual_hash, sharpness
from spaceport.progress import Progress, Task
from spaceport.workspace import SpaceportError

VIDEO_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError)
_FIX_VIDEO = "check that it plays, or re-encode it: `ffmpeg -i VIDEO -c:v libx264 -pix_fmt yuv420p video.mp4`"
# Rotation (degrees counter-clockwise, as PyAV reports the display matrix) -> the PIL transpose undoing it.
ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


@dataclass
class VideoSet:
    frames: list[FrameRecord]
    dropped: list[DroppedRecord]
    summary: VideoSummary


@dataclass
class _Pick:
    """The sharpest candidate of a window so far."""

    frame: av.VideoFrame
    index: int
    sharpness: float
    phash: np.ndarray


@dataclass
class _Written:
    record: FrameRecord
    phash: np.ndarray


@dataclass
class _Sampler:
    """Which frame indices are candidates, and in which window each falls."""

    window_of: dict[int, int]
    last_candidate: dict[int, int]  # window -> its last candidate index
    windows: int

    @classmethod
    def plan(cls, frame_count: int, target: int, per_window: int) -> _Sampler:
        windows = min(target, frame_count)
        bounds = np.linspace(0, frame_count, windows + 1).round().astype(int)
        window_of: dict[int, int] = {}
        last_candidate: dict[int, int] = {}
        for window, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            count = min(per_window, stop - start)
            for index in sorted({int(i) for i in np.linspace(start, stop - 1, count).round()}):
                window_of[index] = window
                last_candidate[window] = index
        return cls(window_of, last_candidate, windows)


@dataclass
class _Decoding:
    """State of one pass over the video."""

    sampler: _Sampler
    staging: Path
    label: str
    config: IngestConfig
    pool: ThreadPoolExecutor
    workers: int
    picks: dict[int, _Pick] = field(default_factory=dict)
    candidates: list[VideoCandidate] = field(default_factory=list)
    pending: deque[Future[_Written]] = field(default_factory=deque)
    written: list[_Written] = field(default_factory=list)
    rotation: int = 0


def ingest_video(video: Path, label: str, staging: Path, config: IngestConfig, progress: Progress) -> VideoSet:
    """Sample, choose and write frames of the video into staging/; label is its workspace-relative path."""
    frame_count = count_frames(video, label)
    sampler = _Sampler.plan(frame_count, config.target_frames, config.candidates_per_window)
    workers = config.workers or os.cpu_count() or 1
    with _open(video, label) as container, ThreadPoolExecutor(max_workers=workers) as pool:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        state = _Decoding(sampler, staging, label, config, pool, workers)
        with progress.task("ingest: video frames", sampler.windows) as task:
            _decode(container, stream, state, progress, task)
            for window in sorted(state.picks):
                _finish_window(state, window)
            _collect(state, keep=0)
        summary = VideoSummary(
            codec=stream.codec_context.name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(stream.average_rate) if stream.average_rate else None,
            frame_count=frame_count,
            windows=sampler.windows,
            rotation=state.rotation,
            candidates=state.candidates,
        )
    if not state.written:
        raise SpaceportError(f"{label}: no frame could be decoded; {_FIX_VIDEO}")
    frames, dropped = _filter(sorted(state.written, key=lambda w: w.record.frame_index or 0), state, progress)
    return VideoSet(frames=frames, dropped=dropped, summary=summary)


def count_frames(video: Path, label: str) -> int:
    """Frames in the first video stream: from the container header, else by reading every packet."""
    with _open(video, label) as container:
        stream = container.streams.video[0]
        if stream.frames > 0:
            return stream.frames
        try:
            count = sum(1 for packet in container.demux(stream) if packet.size > 0)
        except VIDEO_ERRORS as error:
            raise SpaceportError(f"{label} cannot be read to the end ({error}); {_FIX_VIDEO}") from error
    if count == 0:
        raise SpaceportError(f"{label} has no video frames; {_FIX_VIDEO}")
    return count



def _open(video: Path, label: str) -> av.container.InputContainer:
    try:
        container = av.open(str(video), mode="r")
    except VIDEO_ERRORS as error:
        raise SpaceportError(f"{label} cannot be read as a video ({error}); {_FIX_VIDEO}") from error
    if not container.streams.video:
        container.close()
        raise SpaceportError(f"{label} has no video stream; {_FIX_VIDEO}")
    return container


def _decode(
    container: av.container.InputContainer, stream: av.VideoStream, state: _Decoding, progress: Progress, task: Task
) -> None:
    last_index = max(state.sampler.window_of, default=-1)
    index = -1
    try:
        for index, frame in enumerate(container.decode(stream)):
            if index in state.sampler.window_of:
                window = _measure(frame, index, state)
                if index == state.sampler.last_candidate[window]:
                    _finish_window(state, window)
                    task.advance(1)
            if index >= last_index:
                break
    except VIDEO_ERRORS as error:
        if not state.candidates:
            raise SpaceportError(f"{state.label} cannot be decoded ({error}); {_FIX_VIDEO}") from error
        progress.log(f"warning: {state.label} stops decoding after frame {index} ({error})", logging.WARNING)


def _measure(frame: av.VideoFrame, index: int, state: _Decoding) -> int:
    window = state.sampler.window_of[index]
    width, height = scaled_size(frame.width, frame.height, state.config.analysis_size)
    grey = frame.reformat(width=width, height=height, format="gray", interpolation="AREA").to_ndarray()
    value = sharpness(grey)
    state.candidates.append(
        VideoCandidate(frame_index=index, time_s=frame.time, window=window, sharpness=value, chosen=False)
    )
    best = state.picks.get(window)
    if best is None or value > best.sharpness:
        state.picks[window] = _Pick(frame, index, value, perceptual_hash(Image.fromarray(grey)))
    return window


def _finish_window(state: _Decoding, window: int) -> None:
    pick = state.picks.pop(window)
    for candidate in reversed(state.candidates):
        if candidate.frame_index == pick.index:
            candidate.chosen = True
            break
    state.rotation = (pick.frame.rotation or 0) % 360
    state.pending.append(state.pool.submit(_write_frame, pick, state.staging, state.label, state.config))
    _collect(state, keep=2 * state.workers)  # bound the decoded frames waiting in memory


def _collect(state: _Decoding, keep: int) -> None:
    while len(state.pending) > keep:
        state.written.append(state.pending.popleft().result())


def _write_frame(pick: _Pick, staging: Path, label: str, config: IngestConfig) -> _Written:
    width, height = scaled_size(pick.frame.width, pick.frame.height, config.max_size)
    image = pick.frame.reformat(width=width, height=height, format="rgb24", interpolation="LANCZOS").to_image()
    rotation = (pick.frame.rotation or 0) % 360
    if rotation in ROTATIONS:
        image = image.transpose(ROTATIONS[rotation])
    name = f"frame_{pick.index:06d}.jpg"
    image.save(staging / name, "JPEG", quality=config.jpeg_quality)
    record = FrameRecord(
        file=name,
        source=label,
        width=image.width,
        height=image.height,
        sharpness=pick.sharpness,
        frame_index=pick.index,
        time_s=pick.frame.time,
    )
    return _Written(record, pick.phash)


def _filter(
    written: list[_Written], state: _Decoding, progress: Progress
) -> tuple[list[FrameRecord], list[DroppedRecord]]:
    """Drop frames far blurrier than the median, then frames that repeat the previous kept frame."""
    dropped: list[DroppedRecord] = []
    values = [item.record.sharpness for item in written]
    median = float(np.median(values))
    blurry = set(blurry_indices(values, state.config.blur_ratio))
    kept: list[_Written] = []
    for position, item in enumerate(written):
        if position in blurry:
            reason = f"blurry (sharpness {item.record.sharpness:.1f} < {state.config.blur_ratio} x median {median:.1f})"
            _drop_frame(item, reason, state, dropped, progress)
        elif state.config.dedupe and kept and _repeats(kept[-1], item, state.config.dedupe_distance):
            worse, better = sorted((kept[-1], item), key=lambda w: w.record.sharpness)
            distance = hash_distance(worse.phash, better.phash)
            reason = f"near-duplicate of frame {better.record.frame_index} (perceptual hash distance {distance})"
            _drop_frame(worse, reason, state, dropped, progress)
            kept[-1] = better
        else:
            kept.append(item)
    return [item.record for item in kept], dropped


def _repeats(previous: _Written, current: _Written, max_distance: int) -> bool:
    return hash_distance(previous.phash, current.phash) <= max_distance


def _drop_frame(
    item: _Written, reason: str, state: _Decoding, dropped: list[DroppedRecord], progress: Progress
) -> None:
    progress.log(f"{state.label} frame {item.record.frame_index}: {reason}; dropped")
    dropped.append(DroppedRecord(source=state.label, reason=reason, frame_index=item.record.frame_index))
    (state.staging / item.record.file).unlink(missing_ok=True)

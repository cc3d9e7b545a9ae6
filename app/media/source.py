"""Entry points: ``probe_media`` (cheap validation) and ``open_media`` (lazy frame source)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from app.media.errors import NoVideoStream, TooManyFrames
from app.media.frame import SampledFrame
from app.media.image import load_image
from app.media.limits import MediaLimits
from app.media.sniff import SniffResult, sniff_file
from app.media.video import FrameSampler, planned_count
from app.media.video_probe import VideoProbe, probe_video
from app.schemas import MediaInfo


class MediaSource:
    """Sampled frames of one file, decoded lazily on each iteration (bounded memory).

    ``warnings`` gathers what iteration found (e.g. a truncated video); read it after
    iterating. Iterating again decodes again.
    """

    def __init__(
        self,
        info: MediaInfo,
        planned: int,
        frames: Callable[[list[str]], Iterator[SampledFrame]],
    ) -> None:
        self.info = info
        self.warnings: list[str] = []
        self._planned = planned
        self._frames = frames

    def __iter__(self) -> Iterator[SampledFrame]:
        return self._frames(self.warnings)

    def __len__(self) -> int:
        """Frames planned; a damaged video may yield fewer (and says so in ``warnings``)."""
        return self._planned

    def __repr__(self) -> str:
        return f"MediaSource({self.info!r}, planned={self._planned})"


def probe_media(path: Path, limits: MediaLimits) -> MediaInfo:
    """Validate ``path`` without sampling it; raises a MediaError subclass when unusable.

    Images are decoded in full (bounded by ``max_image_pixels``, checked from the header
    first); videos are checked from the container header and one decoded frame.
    """
    found = _sniff_visual(path)
    if found.kind == "image":
        return load_image(path, found.format, limits)[1]
    probe = probe_video(path, found.format, limits)
    return _video_info(probe, planned_count(probe, limits.max_frames))


def open_media(path: Path, limits: MediaLimits, max_frames: int | None = None) -> MediaSource:
    """Validate like :func:`probe_media`, then return a lazy source of evenly sampled frames."""
    n = _frame_budget(limits, max_frames)
    found = _sniff_visual(path)
    if found.kind == "image":
        rgb, info = load_image(path, found.format, limits)
        return MediaSource(info, 1, lambda _warnings: iter([SampledFrame(0, 0, 0.0, rgb)]))
    probe = probe_video(path, found.format, limits)
    planned = planned_count(probe, n)

    def frames(warnings: list[str]) -> Iterator[SampledFrame]:
        return iter(FrameSampler(path, probe, planned, warnings, window=limits.sample_window))

    return MediaSource(_video_info(probe, planned), planned, frames)


def _frame_budget(limits: MediaLimits, max_frames: int | None) -> int:
    n = limits.max_frames if max_frames is None else max_frames
    if n < 1:
        raise ValueError(f"max_frames must be at least 1, got {n}")
    if n > limits.max_frames_cap:
        raise TooManyFrames(
            f"max_frames={n} is above the cap of {limits.max_frames_cap}; ask for fewer frames"
        )
    return n


def _sniff_visual(path: Path) -> SniffResult:
    found = sniff_file(path)
    if found.kind == "audio":
        raise NoVideoStream(
            f"this is an audio file ({found.format}); upload a video or an image with a face"
        )
    return found


def _video_info(probe: VideoProbe, planned: int) -> MediaInfo:
    return MediaInfo(
        kind="video",
        format=probe.format,
        width=probe.width,
        height=probe.height,
        duration_s=round(probe.duration, 3),
        fps=probe.fps,
        frames_sampled=planned,
        rotation=probe.rotation,
    )

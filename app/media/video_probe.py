"""Video container probe via PyAV, before anything decodes: the stream, codec (an allow-list),
coded size, duration, frame rate and rotation, each checked against the upload limits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av

from app.media.errors import (
    CorruptMedia,
    NoVideoStream,
    ResolutionTooLarge,
    UnsupportedMedia,
    VideoTooLong,
)
from app.media.limits import MediaLimits

# Decoders we expose to uploads: the common ones. Exotic FFmpeg decoders are attack surface.
SUPPORTED_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg"})


@dataclass(frozen=True)
class VideoProbe:
    """What the container says, validated against the limits. Sizes are as displayed."""

    format: str
    codec: str
    width: int
    height: int
    duration: float
    fps: float | None
    frame_count: int | None
    rotation: int
    start: float


@contextmanager
def av_errors(action: str) -> Iterator[None]:
    """Turn any FFmpeg error into CorruptMedia with a sentence a user can act on."""
    try:
        yield
    except av.FFmpegError as exc:
        msg = f"{action} failed; the video looks damaged or incomplete ({exc})"
        raise CorruptMedia(msg) from exc


def open_container(path: Path) -> av.container.InputContainer:
    with av_errors("reading the video container"):
        return av.open(str(path), mode="r", metadata_errors="ignore")


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video stream; cover art in audio files does not count."""
    if len(container.streams) == 0:
        raise CorruptMedia("the container holds no readable stream; the file looks damaged")
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise NoVideoStream("the file has no video stream (audio only?); upload a video or an image")


def probe_video(path: Path, fmt: str, limits: MediaLimits) -> VideoProbe:
    """Header checks first (cheap), then decode one frame for rotation and decodability."""
    with open_container(path) as container:
        stream = video_stream(container)
        codec = _codec_name(stream)
        _check_coded_size(stream.width, stream.height, limits)
        duration = _duration(container, stream)
        if duration > limits.max_video_seconds:
            raise VideoTooLong(
                f"video is {duration:.1f} s long; the limit is {limits.max_video_seconds:g} s"
            )
        first = _first_frame(container, stream)
        rotation = _rotation(first.rotation, stream.metadata.get("rotate"))
    w, h = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
    if w > limits.max_width or h > limits.max_height:
        raise ResolutionTooLarge(_size_message(w, h, limits))
    fps = _fps(stream)
    return VideoProbe(
        format=fmt,
        codec=codec,
        width=w,
        height=h,
        duration=duration,
        fps=fps,
        frame_count=_frame_count(stream, duration, fps),
        rotation=rotation,
        start=_start(stream),
    )


def _codec_name(stream: av.video.stream.VideoStream) -> str:
    ctx = stream.codec_context
    # The format's codec id, not the decoder's name: FFmpeg may decode AV1 with "libdav1d".
    name = ctx.codec.canonical_name if ctx is not None else "unknown"
    if name not in SUPPORTED_CODECS:
        raise UnsupportedMedia(
            f"video codec {name!r} is not supported; use H.264, HEVC, VP8, VP9, AV1, "
            "MPEG-4 or MJPEG"
        )
    return name


def _size_message(w: int, h: int, limits: MediaLimits) -> str:
    return f"video is {w}x{h}; the limit is {limits.max_width}x{limits.max_height}"


def _check_coded_size(w: int, h: int, limits: MediaLimits) -> None:
    if w <= 0 or h <= 0:
        raise CorruptMedia(f"the video stream reports an invalid size {w}x{h}")
    # Rotation is known only after decoding a frame: accept either orientation here.
    fits = (w <= limits.max_width and h <= limits.max_height) or (
        h <= limits.max_width and w <= limits.max_height
    )
    if not fits:
        raise ResolutionTooLarge(_size_message(w, h, limits))


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return _scan_duration(container, stream)


def _scan_duration(container: av.container.InputContainer, stream) -> float:
    """No duration in the header: read packet timestamps (demux only, no decoding)."""
    end = None
    with av_errors("reading the video packets"):
        for packet in container.demux(stream):
            if packet.pts is not None and packet.time_base is not None:
                t = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                end = t if end is None else max(end, t)
        container.seek(0)
    if end is None:
        raise CorruptMedia("the video has no timestamped packets")
    return max(end - _start(stream), 0.0)


def _fps(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return round(float(rate), 3) if rate else None


def _frame_count(stream, duration: float, fps: float | None) -> int | None:
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    if fps:
        return max(1, round(duration * fps))
    return None


def _start(stream: av.video.stream.VideoStream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _first_frame(container, stream) -> av.VideoFrame:
    with av_errors("decoding the first video frame"):
        for frame in container.decode(stream):
            return frame
    raise CorruptMedia("no frame of the video could be decoded")


def _rotation(display_ccw: float, legacy_tag: str | None) -> int:
    """Counter-clockwise degrees in {0, 90, 180, 270}, snapped to the nearest quarter turn."""
    degrees = float(display_ccw or 0)
    if degrees == 0 and legacy_tag:
        try:
            degrees = -float(legacy_tag)  # the old tag is clockwise
        except ValueError:
            degrees = 0.0
    return int(round(degrees / 90.0)) % 4 * 90

"""Videos via PyAV: container probe with caps, then lazy even sampling of frames.

Timestamps come from each frame's pts x time_base (correct on variable frame rate),
relative to the stream start. Rotation is the display matrix FFmpeg attaches to decoded
frames (``VideoFrame.rotation``, counter-clockwise degrees); the legacy ``rotate`` tag
(clockwise) is the fallback. Frames are rotated upright before they are returned.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from app.media.errors import (
    CorruptMedia,
    NoVideoStream,
    ResolutionTooLarge,
    UnsupportedMedia,
    VideoTooLong,
)
from app.media.frame import SampledFrame
from app.media.limits import MediaLimits

# Decoders we expose to uploads: the common ones. Exotic FFmpeg decoders are attack surface.
SUPPORTED_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg"})
# A frame counts for a target time if it starts no more than this before it (float slack).
_TOL_S = 1e-3
# Seek instead of decoding through when the next target is this far ahead.
SEEK_MIN_GAP_S = 2.0
# Consecutive undecodable packets after which the rest of the file is given up.
_MAX_BAD_PACKETS = 50
# Packets this far (seconds) or more before the next target are decoded with non-reference
# frames skipped: nothing before the target is shown, and reference frames (which later
# frames need) still decode. The margin covers B-frame reordering and decoder delay.
NONREF_MARGIN_S = 0.5


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
def _av_errors(action: str) -> Iterator[None]:
    """Turn any FFmpeg error into CorruptMedia with a sentence a user can act on."""
    try:
        yield
    except av.FFmpegError as exc:
        msg = f"{action} failed; the video looks damaged or incomplete ({exc})"
        raise CorruptMedia(msg) from exc


def open_container(path: Path) -> av.container.InputContainer:
    with _av_errors("reading the video container"):
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
    with _av_errors("reading the video packets"):
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
    with _av_errors("decoding the first video frame"):
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


def plan_targets(probe: VideoProbe, n: int) -> list[float]:
    """``n`` times evenly spread from the first to (about) the last frame's start."""
    if n <= 1:
        return [0.0]
    frame_dur = 1.0 / probe.fps if probe.fps else 0.0
    last = max(probe.duration - frame_dur, 0.0)
    return [last * k / (n - 1) for k in range(n)]


def planned_count(probe: VideoProbe, max_frames: int) -> int:
    if probe.frame_count is None:
        return max_frames
    return max(1, min(max_frames, probe.frame_count))


class FrameSampler:
    """Decode ``path`` once, lazily, yielding one frame per target time.

    Sequential decoding yields the first frame at/after each target. When the next target is
    far ahead (``seek_min_gap_s``) the sampler jumps instead, and then ``window`` (a fraction
    of the sampling interval, ``DFSHIELD_SAMPLE_WINDOW``) lets it take the cheapest frame
    within that distance of the target: the keyframe the seek lands on, else the keyframe
    after the target, else the first frame of the window — decoding a long GOP up to the
    exact target cost ~50 ms per sample on a 200 s clip, a keyframe ~2 ms. Each sample stays
    inside its own slice of the video, so the spread stays even; ``window=0`` keeps exact
    targets. A frame serves at most one target and timestamps strictly increase.
    """

    def __init__(
        self,
        path: Path,
        probe: VideoProbe,
        n: int,
        warnings: list[str],
        seek_min_gap_s: float = SEEK_MIN_GAP_S,
        window: float = 0.0,
    ) -> None:
        self.path, self.probe, self.warnings = path, probe, warnings
        self.targets = plan_targets(probe, n)
        self.seek_min_gap_s = seek_min_gap_s
        step = self.targets[1] - self.targets[0] if len(self.targets) > 1 else 0.0
        self.window_s = max(0.0, min(window, 0.5)) * step  # never into the next slice
        self.bad_packets = 0
        self.corrupt_frames = 0
        self.last_decoded_ts = -math.inf
        self.target = 0.0  # the time being looked for: packets well before it skip non-refs

    def __iter__(self) -> Iterator[SampledFrame]:
        container = open_container(self.path)
        try:
            yield from self._sample(container, video_stream(container))
        finally:
            container.close()

    def _sample(self, container, stream) -> Iterator[SampledFrame]:
        stream.thread_type = "AUTO"
        frames = self._decoded(container, stream, indexed=True)
        emitted, last_ts = 0, -math.inf
        pending = None  # newest decoded frame not yet emitted, kept for the end of stream
        for k, target in enumerate(self.targets):
            self.target = goal = target
            # The last sample stays exact: the samples must reach the end of the clip (a
            # header's frame rate can put the last target well before the last frame).
            window = self.window_s if k < len(self.targets) - 1 else 0.0
            if target - max(self.last_decoded_ts, 0.0) > self.seek_min_gap_s:
                hit, jumped = self._jump(container, stream, target, last_ts, window)
                frames = jumped or frames
                if hit is not None:
                    yield self._convert(emitted, *hit)
                    emitted, last_ts, pending = emitted + 1, hit[1], None
                    continue
                self.target = goal = target - window
            for item in frames:
                idx, ts, frame = item
                if ts >= goal - _TOL_S and ts > last_ts:
                    yield self._convert(emitted, idx, ts, frame)
                    emitted, last_ts, pending = emitted + 1, ts, None
                    break
                pending = item if ts > last_ts else pending
            else:
                # Stream ended before this target (long last frame on VFR, or truncation).
                if pending is not None:
                    yield self._convert(emitted, *pending)
                    emitted += 1
                break
        self._finish(emitted)

    def _jump(self, container, stream, target: float, last_ts: float, window: float):
        """Seek for ``target``: (a keyframe within ``window`` s to emit or None, the frames
        to decode on from)."""
        frames = self._seek(container, stream, target)
        if frames is None or window <= 0:
            return None, frames
        lo, hi = target - window - _TOL_S, target + window + _TOL_S
        before = next(frames, None)
        if before is not None and lo <= before[1] and before[1] > last_ts:
            return before, frames
        after = self._seek(container, stream, target, backward=False)
        if after is not None:
            first = next(after, None)
            if first is not None and target - _TOL_S <= first[1] <= hi and first[1] > last_ts:
                return first, after
        # Neither keyframe is in the window: decode on from the one before it.
        return None, self._seek(container, stream, target)

    def _seek(self, container, stream, target: float, backward: bool = True):
        """Jump to the keyframe at or before (or after) ``target``; None if that fails."""
        if stream.time_base is None:
            self.seek_min_gap_s = math.inf
            return None
        offset = int((target + self.probe.start) / stream.time_base)
        try:
            container.seek(offset, stream=stream, backward=backward)
        except av.FFmpegError:
            if backward:  # this file cannot seek: decode through instead
                self.seek_min_gap_s = math.inf
            return None  # no keyframe after the target (near the end): not an error
        return self._decoded(container, stream, indexed=False)

    def _decoded(self, container, stream, indexed: bool):
        """(source index or None, timestamp, frame) for each decodable frame, in order."""
        index = -1
        # Skipping frames would break the source index count: only after a seek (no index).
        for frame in self._raw_frames(container, stream, skip=not indexed):
            index += 1
            if frame.is_corrupt:
                self.corrupt_frames += 1
                continue
            ts = self._timestamp(frame, index)
            self.last_decoded_ts = ts
            yield (index if indexed else None), ts, frame

    def _raw_frames(self, container, stream, skip: bool) -> Iterator[av.VideoFrame]:
        packets = container.demux(stream)
        consecutive_bad = 0
        # The decoder outlives this generator (a seek starts a new one): start from DEFAULT.
        ctx, skipping = stream.codec_context, False
        ctx.skip_frame = "DEFAULT"
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as exc:
                self._warn(f"stopped reading at a damaged part of the file ({exc})")
                return
            early = skip and self._before_target(packet)
            if early != skipping:
                ctx.skip_frame, skipping = ("NONREF" if early else "DEFAULT"), early
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                self.bad_packets += 1
                consecutive_bad += 1
                if consecutive_bad > _MAX_BAD_PACKETS:
                    self._warn("gave up decoding after too many damaged packets in a row")
                    return
                continue
            consecutive_bad = 0
            yield from decoded

    def _before_target(self, packet: av.Packet) -> bool:
        """True when the packet shows well before the target (its frame is never emitted)."""
        if packet.pts is None or packet.time_base is None:
            return False
        shown = float(packet.pts * packet.time_base) - self.probe.start
        return shown < self.target - NONREF_MARGIN_S

    def _timestamp(self, frame: av.VideoFrame, index: int) -> float:
        if frame.pts is not None and frame.time_base is not None:
            return max(float(frame.pts * frame.time_base) - self.probe.start, 0.0)
        # No pts (rare AVI): assume a constant rate, and never seek, which would lose the count.
        self.seek_min_gap_s = math.inf
        return index / (self.probe.fps or 25.0)

    def _convert(
        self, position: int, idx: int | None, ts: float, frame: av.VideoFrame
    ) -> SampledFrame:
        with _av_errors("converting a video frame"):
            rgb = frame.to_ndarray(format="rgb24")
        k = self.probe.rotation // 90
        if k:
            rgb = np.rot90(rgb, k=k)
        # Row padding or rotation leave a strided view; consumers (cv2, torch) want C order.
        return SampledFrame(position, idx, ts, np.ascontiguousarray(rgb))

    def _finish(self, emitted: int) -> None:
        if self.bad_packets or self.corrupt_frames:
            self._warn(
                f"skipped {self.bad_packets} damaged packet(s) and "
                f"{self.corrupt_frames} corrupt frame(s) while decoding"
            )
        if emitted == 0:
            raise CorruptMedia("no frame of the video could be decoded")
        planned = len(self.targets)
        if emitted < planned:
            self._warn(
                f"the video ends early: frames decode only up to "
                f"{max(self.last_decoded_ts, 0.0):.2f} s of the declared "
                f"{self.probe.duration:.2f} s (truncated or damaged file); "
                f"analysed {emitted} of {planned} planned frames"
            )

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

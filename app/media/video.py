"""Videos via PyAV: lazy even sampling of frames (the capped probe is ``app.media.video_probe``).

Timestamps come from each frame's pts x time_base (correct on variable frame rate),
relative to the stream start. Rotation is the display matrix FFmpeg attaches to decoded
frames (``VideoFrame.rotation``, counter-clockwise degrees); the legacy ``rotate`` tag
(clockwise) is the fallback. Frames are rotated upright before they are returned.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from app.media.errors import CorruptMedia
from app.media.frame import SampledFrame
from app.media.video_probe import VideoProbe, av_errors, open_container, video_stream

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
        with av_errors("converting a video frame"):
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

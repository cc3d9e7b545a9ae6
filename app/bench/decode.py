"""Decode cost per sampled frame through the media layer's public functions (``open_media``,
as analyses decode, and ``probe_video`` + ``FrameSampler`` with the sampler's defaults), on
H.264 clips generated once into a cache folder.

The clips are 640x360, 25 fps, GOP ~250 frames (libx264 through PyAV), a textured pattern that
moves every frame so the encoder cannot skip frames; a short one (~10 s) and a long one (200 s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from app.bench.csvout import Figure, Target
from app.media import MediaLimits, open_media
from app.media.video import FrameSampler
from app.media.video_probe import probe_video

DECODE_TARGET = Target("<=", 10.0)  # ms per sampled frame, on the 200 s clip


@dataclass(frozen=True)
class Clip:
    label: str  # "short" or "long"
    seconds: float
    width: int = 640
    height: int = 360
    fps: int = 25
    gop: int = 250

    @property
    def filename(self) -> str:
        return (f"h264-{self.width}x{self.height}-{self.fps}fps-gop{self.gop}-"
                f"{self.seconds:g}s.mp4")


def clip_path(cache_dir: Path, clip: Clip) -> Path:
    """The clip in ``cache_dir``, encoded on first use (written to a temp name, then renamed)."""
    path = Path(cache_dir) / clip.filename
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.mp4")
        encode_clip(tmp, clip)
        tmp.replace(path)
    return path


def encode_clip(path: Path, clip: Clip) -> None:
    texture = _texture(clip.height, clip.width * 2)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=clip.fps)
        stream.width, stream.height, stream.pix_fmt = clip.width, clip.height, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(clip.gop),
                          "keyint_min": str(clip.gop), "sc_threshold": "0"}
        for i in range(round(clip.seconds * clip.fps)):
            frame = av.VideoFrame.from_ndarray(_frame(texture, i, clip.width), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour noise (block noise upsampled) plus fine grain: compresses like footage."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    smooth = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:h, :w].astype(np.int16)
    grain = rng.integers(-12, 13, size=(h, w, 3), dtype=np.int16)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def _frame(texture: np.ndarray, i: int, width: int) -> np.ndarray:
    x0 = (3 * i) % (texture.shape[1] - width)  # pans 3 px per frame, wraps
    return np.ascontiguousarray(texture[:, x0:x0 + width])


def decode_ms_per_frame(path: Path, n_frames: int, repeats: int,
                        service: bool) -> tuple[float, int]:
    """Median ms per sampled frame of probing + sampling ``n_frames``, and how many came out.

    ``service``: through ``open_media`` (sniff, probe, ``FrameSampler`` as analyses call it);
    else ``probe_video`` + ``FrameSampler`` with its own defaults.
    """
    limits = MediaLimits(max_frames=n_frames, max_frames_cap=max(n_frames, 256))
    times, count = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        if service:
            count = sum(1 for _ in open_media(path, limits, n_frames))
        else:
            probe = probe_video(path, "mp4", limits)
            count = sum(1 for _ in FrameSampler(path, probe, n_frames, []))
        times.append((time.perf_counter() - t0) / max(count, 1))
    return float(np.median(times)) * 1000, count


def decode_figures(cache_dir: Path, clips: tuple[Clip, ...], n_frames: int,
                   repeats: int) -> list[Figure]:
    """Per clip: ms per sampled frame as analyses decode (target on the long clip) and with
    the sampler's defaults."""
    out = []
    for clip in clips:
        path = clip_path(cache_dir, clip)
        what = (f"{clip.label} clip {clip.seconds:g} s {clip.width}x{clip.height} H.264 "
                f"GOP {clip.gop}")
        for service, how in ((True, "open_media"), (False, "probe_video + FrameSampler defaults")):
            ms, count = decode_ms_per_frame(path, n_frames, repeats, service)
            target = DECODE_TARGET if clip.label == "long" and service else None
            out.append(Figure("decode", f"{what}, {how}", "pyav", count, ms, "ms/frame", target))
    return out

"""Synthesise test media (videos, images, audio, broken files) with PyAV, OpenCV and Pillow.

Shared by every test suite: keep it general and free of assertions. Images are HxWx3
uint8 RGB arrays throughout. Import as ``from tests.mediagen import write_video``.
"""

from __future__ import annotations

import math
import os
import struct
import wave
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image, ImageOps

DATA_DIR = Path(__file__).resolve().parent / "data"
PEXELS_VIDEO = DATA_DIR / "pexels_woman_3063838.mp4"  # 640x360, 23.976 fps, 472 frames, 19.7 s

# Four-character codes go to OpenCV's writer (its wheel has mp4v and MJPG, not H.264).
_FOURCC_CODECS = {"mp4v", "MJPG", "XVID", "DIVX"}


def write_video(
    path: Path,
    frames_rgb: Iterable[np.ndarray],
    fps: float = 25.0,
    codec: str = "libx264",
    container: str | None = None,
    *,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int = 0,
    container_options: dict[str, str] | None = None,
    gop: int | None = None,
) -> Path:
    """Encode RGB frames into ``path``.

    ``codec`` is a PyAV encoder name (libx264, libx265, libvpx-vp9, mpeg4, mjpeg, ...) or an
    OpenCV fourcc (``mp4v``, ``MJPG``). ``container`` is an FFmpeg format name, default from
    the suffix. ``pts`` (in ``time_base`` units, default 1/1000 s) makes a variable frame
    rate video; ``rotation`` (counter-clockwise degrees) is written as a display matrix;
    ``container_options`` go to the muxer (e.g. ``{"live": "1"}``: WebM without duration);
    ``gop``: a keyframe exactly every ``gop`` frames (libx264 only; no scene-cut keyframes).
    """
    path = Path(path)
    if codec in _FOURCC_CODECS:
        if pts is not None or rotation or container or container_options:
            raise ValueError("OpenCV's writer takes no pts, rotation, container or options")
        return _write_cv2(path, frames_rgb, fps, codec)
    muxer = {"format": container, "options": container_options or {}}
    return _write_av(path, frames_rgb, fps, codec, muxer, pts, time_base, rotation, gop)


def _write_cv2(path: Path, frames: Iterable[np.ndarray], fps: float, fourcc: str) -> Path:
    writer = None
    try:
        for rgb in frames:
            if writer is None:
                h, w = rgb.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write {fourcc} to {path}")
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    finally:
        if writer is not None:
            writer.release()
    return path


def scheduling() -> tuple[int, os.sched_param]:
    """The calling thread's CPU scheduling policy and priority."""
    return os.sched_getscheduler(0), os.sched_getparam(0)


@contextmanager
def scheduling_kept() -> Iterator[None]:
    """Restore the calling thread's CPU scheduling policy on exit.

    SVT-AV1 (``libsvtav1``), when run as root, switches the thread that opens the encoder to
    SCHED_FIFO priority 99 and leaves it so. Every thread and process started afterwards
    inherits that, and a busy-waiting worker thread at that priority never yields its core:
    on a 2-core machine the suite hung with a redis-server child that was never scheduled.
    """
    before = scheduling()
    try:
        yield
    finally:
        if scheduling() != before:
            os.sched_setscheduler(0, *before)


def _write_av(path, frames, fps, codec, muxer, pts, time_base, rotation, gop=None) -> Path:
    tb = time_base or Fraction(1, 1000)
    with scheduling_kept(), av.open(str(path), mode="w", **muxer) as out:
        stream = None
        for i, rgb in enumerate(frames):
            if stream is None:
                stream = _add_video_stream(out, codec, fps, rgb.shape, pts is not None, tb)
                if gop is not None:
                    stream.codec_context.gop_size = gop
                    stream.codec_context.options = {
                        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
                if rotation:
                    stream.set_display_rotation(rotation)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = int(pts[i]), tb
            for packet in stream.encode(frame):
                out.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    return path


def _add_video_stream(out, codec: str, fps: float, shape, vfr: bool, tb: Fraction):
    stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    stream.height, stream.width = shape[:2]
    formats = [f.name for f in (av.codec.Codec(codec, "w").video_formats or [])]
    stream.pix_fmt = "yuv420p" if "yuv420p" in formats or not formats else formats[0]
    if codec == "mjpeg":
        stream.pix_fmt = "yuvj420p"
    if codec == "libx265":
        stream.codec_context.options = {"x265-params": "log-level=none"}
    if vfr:
        # B-frames make muxers derive durations from reordered dts: keep dts == pts.
        stream.codec_context.time_base = tb
        stream.time_base = tb
        stream.codec_context.max_b_frames = 0
    return stream


def coded_frame(i: int, size: tuple[int, int] = (64, 48), bits: int = 8) -> np.ndarray:
    """A frame whose number ``i`` is written as black/white vertical bars (robust to lossy codecs).

    ``size`` is (width, height); the width must be a multiple of ``bits`` x 8.
    """
    w, h = size
    bar = w // bits
    img = np.zeros((h, w, 3), np.uint8)
    for b in range(bits):
        if (i >> b) & 1:
            img[:, b * bar : (b + 1) * bar] = 255
    return img


def read_code(img: np.ndarray, bits: int = 8) -> int:
    """Inverse of :func:`coded_frame` on a decoded (possibly lossy) frame."""
    h, w = img.shape[:2]
    bar = w // bits
    centre = img[h // 4 : 3 * h // 4]
    return sum(
        1 << b
        for b in range(bits)
        if centre[:, b * bar + bar // 4 : (b + 1) * bar - bar // 4].mean() > 127
    )


def clip_from_image(
    image_path: Path,
    out: Path,
    seconds: float = 2.0,
    fps: float = 10.0,
    size: tuple[int, int] = (320, 240),
    codec: str = "libx264",
    motion: float = 0.02,
) -> Path:
    """Render a still portrait into a video with a slow pan and zoom (as a handheld camera).

    ``size`` is (width, height); ``motion`` is the pan amplitude as a fraction of the size.
    """
    with Image.open(image_path) as im:
        base = np.asarray(ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), size))
    w, h = size
    n = max(1, round(seconds * fps))

    def frames():
        for k in range(n):
            phase = 2 * math.pi * k / max(n, 2)
            zoom = 1.0 + motion * (1 - math.cos(phase)) / 2
            m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, zoom)
            m[0, 2] += motion * w * math.sin(phase)
            m[1, 2] += motion * h * math.sin(phase / 2)
            yield cv2.warpAffine(base, m, (w, h), borderMode=cv2.BORDER_REFLECT)

    return write_video(out, frames(), fps=fps, codec=codec)


def write_wav(path: Path, seconds: float = 1.0, rate: int = 8000, freq: float = 440.0) -> Path:
    """A mono 16-bit PCM sine tone (stdlib only)."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return path


def write_audio_only(
    path: Path, seconds: float = 1.0, codec: str = "aac", rate: int = 16000, container=None
) -> Path:
    """An audio-only file through PyAV (e.g. AAC in .m4a/.mp4, libmp3lame in .mp3)."""
    fmt = av.codec.Codec(codec, "w").audio_formats[0].name
    with av.open(str(path), mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        chunk = 1024
        for start in range(0, int(seconds * rate), chunk):
            t = (start + np.arange(chunk)) / rate
            wave_ = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            frame = _audio_frame(wave_, fmt)
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _audio_frame(samples: np.ndarray, fmt: str) -> av.AudioFrame:
    if fmt.startswith("s16"):
        data = (samples * 32767).astype(np.int16)
    elif fmt.startswith("s32"):
        data = (samples * 2**31 - 1).astype(np.int32)
    else:
        data = samples
    return av.AudioFrame.from_ndarray(data.reshape(1, -1), format=fmt, layout="mono")


def write_image(
    path: Path, rgb: np.ndarray, fmt: str | None = None, exif_orientation: int | None = None
) -> Path:
    """Save an RGB array with Pillow (format from the suffix unless ``fmt``), optional EXIF."""
    im = Image.fromarray(rgb)
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    im.save(path, format=fmt, **kwargs)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A syntactically valid PNG claiming ``width`` x ``height`` with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 4)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def truncated_copy(
    src: Path, dst: Path, fraction: float | None = None, nbytes: int | None = None
) -> Path:
    """Copy the first ``fraction`` of ``src`` (or its first ``nbytes``) to ``dst``."""
    data = Path(src).read_bytes()
    keep = nbytes if nbytes is not None else int(len(data) * (fraction or 0.0))
    dst.write_bytes(data[:keep])
    return dst

"""Byte-level builders for the hostile corpus: files no ordinary encoder call produces."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

SVG = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
       b'<svg xmlns="http://www.w3.org/2000/svg" width="640" height="360">'
       b'<rect width="640" height="360" fill="#345"/><circle cx="320" cy="180" r="90"/></svg>\n')

PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
       b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
       b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]>>endobj\n"
       b"trailer<</Root 1 0 R>>\n%%EOF\n")

# Presentation times (ms) that go back and forth; each is >= its decode index, as muxers need.
NONMONOTONIC_MS = [0, 300, 100, 400, 200, 600, 500, 700]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def jpeg_bomb(side: int) -> bytes:
    """A real 16x16 baseline JPEG whose SOF0 frame header claims ``side`` x ``side``."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 150)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")  # marker, length(2), precision(1), height(2), width(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def webp_bomb(side: int = 16383) -> bytes:
    """A real 16x16 lossy WebP whose VP8 frame header claims ``side`` x ``side`` (14-bit max)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 150)).save(buf, format="WEBP", lossless=False)
    data = bytearray(buf.getvalue())
    start = data.index(b"\x9d\x01\x2a") + 3  # VP8 key-frame start code, then w, h (LE)
    data[start : start + 4] = struct.pack("<HH", side & 0x3FFF, side & 0x3FFF)
    return bytes(data)


def bmp_bomb(side: int) -> bytes:
    """A BMP header (24-bit, uncompressed) claiming ``side`` x ``side`` with 1 kB of pixels."""
    pixels = b"\x00" * 1024
    dib = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 0, 2835, 2835, 0, 0)
    head = struct.pack("<2sIHHI", b"BM", 14 + len(dib) + len(pixels), 0, 0, 14 + len(dib))
    return head + dib + pixels


def mux(
    path: Path,
    frames: Sequence[np.ndarray],
    pts: Sequence[int] | None = None,
    time_base: Fraction = Fraction(1, 1000),
    codec: str = "mjpeg",
    fmt: str = "matroska",
    gop: int = 12,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode ``frames`` (no B-frames, a keyframe every ``gop``) and mux them into ``fmt``.

    With ``pts`` (in ``time_base``), each packet's presentation time is rewritten to it
    after encoding, whatever its order: encoders insist on sane timestamps, muxers only on
    dts <= pts and non-decreasing dts, so dts is kept at the smallest legal value.
    """
    fps = 8
    with av.open(str(path), mode="w", format=fmt, container_options=options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        h, w = frames[0].shape[:2]
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.gop_size, stream.codec_context.max_b_frames = gop, 0
        if pts is not None:
            stream.time_base = time_base
        state = {"k": 0, "dts": min(pts) if pts else 0}

        def put(packets: list[av.Packet]) -> None:
            for packet in packets:
                if pts is not None:
                    k = state["k"]
                    state["dts"] = max(state["dts"], min(pts[k:]))
                    packet.pts, packet.dts, packet.time_base = pts[k], state["dts"], time_base
                state["k"] += 1
                out.mux(packet)

        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            put(stream.encode(frame))
        put(stream.encode())
    return path


def avi_with_rate(src: Path, dst: Path, rate: int, scale: int = 1) -> Path:
    """Copy an AVI with its declared frame rate (strh dwRate/dwScale, avih µs per frame)
    patched: e.g. 0 fps, which FFmpeg calls broken, or 1e9 fps."""
    data = bytearray(src.read_bytes())
    strh = data.index(b"strh") + 8  # fccType, fccHandler, flags, priority+language, initial
    data[strh + 20 : strh + 28] = struct.pack("<II", scale, rate)
    avih = data.index(b"avih") + 8
    per_frame_us = round(1e6 * scale / rate) if rate else 0
    data[avih : avih + 4] = struct.pack("<I", min(per_frame_us, 0xFFFFFFFF))
    dst.write_bytes(bytes(data))
    return dst

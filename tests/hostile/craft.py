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

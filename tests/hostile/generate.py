"""Write the hostile-input corpus and its manifest: ``python -m tests.hostile.generate OUTDIR``.

Every case is a real file plus the outcome the service must give when it is POSTed to
``/v1/analyze``: a 4xx problem with a specific ``code``, or 202 and a job that ends ``done``
with a checkable result (or ``failed`` with a typed code). Nothing here is committed: the
corpus is rebuilt when this file or ``tests/mediagen.py`` changes (their hash is the
manifest's ``version``). A case whose encoder the installed PyAV lacks is kept in the
manifest with ``unavailable`` set, never dropped silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from tests.hostile import craft
from tests.mediagen import (
    DATA_DIR,
    png_header_only,
    truncated_copy,
    write_audio_only,
    write_video,
)

DEFAULT_OUT = DATA_DIR / "bad"
MANIFEST = "manifest.json"
FACE = DATA_DIR / "obama.jpg"  # one clear frontal face


@dataclass(frozen=True)
class Expect:
    """What ``POST /v1/analyze`` must give. ``status`` 202 means a job: then ``job`` is its
    final status and the other fields are checks on its result."""

    status: int
    code: str | None = None  # problem code of a 4xx
    job: str | None = None  # "done" | "failed"
    job_code: str | None = None  # error code of a failed job
    min_frames: int = 0
    min_faces: int = 0  # faces over all frames
    verdict: str | None = None  # summary verdict, e.g. "no_face"
    rotation: int | None = None
    size: tuple[int, int] | None = None  # (width, height) as displayed
    max_duration_s: float | None = None
    min_span_s: float | None = None  # last sampled timestamp at least this
    warning: str | None = None  # a result warning must contain this


@dataclass(frozen=True)
class Case:
    name: str
    filename: str
    what: str
    expect: Expect
    make: Callable[[Path], object] = field(repr=False)
    encoders: tuple[str, ...] = ()  # PyAV encoders the generator needs


def _refused(status: int, code: str) -> Expect:
    return Expect(status, code=code)


def _done(**checks: object) -> Expect:
    return Expect(202, job="done", **checks)  # type: ignore[arg-type]


def _face_clip(codec: str, **kw: object) -> Callable[[Path], object]:
    """8 frames (1 s) of the portrait, shifting a little each frame."""
    return lambda p: write_video(p, _face_frames(8), fps=8, codec=codec, **kw)  # type: ignore[arg-type]


def _bytes(data: bytes) -> Callable[[Path], object]:
    return lambda p: p.write_bytes(data)


def _random(p: Path) -> None:
    # Seeded so the first bytes match no signature the sniffer knows (checked by the test).
    p.write_bytes(np.random.default_rng(14).integers(0, 256, 1 << 20, np.uint8).tobytes())


def _zip(p: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # an archive holding a real video
        z.writestr("clip.mp4", (DATA_DIR / "no_face_cartoon.mp4").read_bytes())
    p.write_bytes(buf.getvalue())


def _gif(p: Path) -> None:
    frames = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(4)]
    frames[0].save(p, format="GIF", save_all=True, append_images=frames[1:], duration=100)


def _png_bomb(p: Path, side: int = 8000) -> None:
    """A real PNG of side x side black pixels: ~190 kB on disk, 192 MB once decoded."""
    row = b"\x00" + b"\x00" * (side * 3)  # filter byte + one RGB row
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + craft.png_chunk(b"IHDR", ihdr)
                  + craft.png_chunk(b"IDAT", idat) + craft.png_chunk(b"IEND", b""))


def _flat(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    w, h = size
    return [np.full((h, w, 3), 40 + 20 * i, np.uint8) for i in range(n)]


_FASTSTART = {"movflags": "faststart"}  # moov before mdat


def _gops(p: Path, options: dict[str, str] | None = None) -> Path:
    """32 H.264 face frames, a keyframe every 8: damage to one GOP spares the others."""
    return craft.mux(p, _face_frames(32), codec="libx264", fmt="mp4", gop=8, options=options)


def _mp4_cut(p: Path, options: dict[str, str] | None = None) -> None:
    src = _gops(p.with_name(p.name + ".full"), options)
    truncated_copy(src, p, fraction=0.6)
    src.unlink()


def _mp4_damaged(p: Path, start: float, end: float) -> None:
    """Overwrite bytes ``start``..``end`` (fractions of the file) with seeded noise."""
    _gops(p, _FASTSTART)
    data = bytearray(p.read_bytes())
    a, b = int(len(data) * start), int(len(data) * end)
    data[a:b] = np.random.default_rng(7).integers(0, 256, b - a, np.uint8).tobytes()
    p.write_bytes(bytes(data))


def _sparse(p: Path, **kw: object) -> None:
    """Three real frames whose timestamps span 20 hours (the rest of the time is empty)."""
    hours = [0, 10 * 3600_000, 20 * 3600_000]  # ms
    write_video(p, _flat(3, (64, 48)), pts=hours, time_base=Fraction(1, 1000),
                codec=kw.pop("codec", "libx264"), **kw)  # type: ignore[arg-type]


_NS = Fraction(1, 10**9)


def _ns_gaps(p: Path) -> None:
    """time_base 1/1e9 and 2.1e9 ticks between frames (FFmpeg's mp4 muxer caps a sample
    delta at INT32_MAX): 5 keyframes over 8.4 s, sampled by seeking."""
    pts = [k * 2_100_000_000 for k in range(5)]
    craft.mux(p, _face_frames(5), pts, _NS, codec="libx264", fmt="mp4", gop=1)


def _ns_burst(p: Path) -> None:
    """10 frames 1 ns apart: a claimed rate of 1e9 fps, a duration of nanoseconds."""
    craft.mux(p, _face_frames(10), list(range(10)), _NS, codec="libx264", fmt="mp4")


def _face_frames(n: int) -> list[np.ndarray]:
    with Image.open(FACE) as im:
        base = np.asarray(im.convert("RGB").resize((320, 240)))
    return [np.ascontiguousarray(np.roll(base, 2 * i, axis=1)) for i in range(n)]


def _avi(rate: int, scale: int) -> Callable[[Path], object]:
    """6 MJPEG face frames in AVI, then the declared rate patched to ``rate / scale`` fps."""
    def make(p: Path) -> None:
        src = craft.mux(p.with_name(p.name + ".src"), _face_frames(6), fmt="avi")
        craft.avi_with_rate(src, p, rate, scale)
        src.unlink()
    return make


def _rotated(p: Path) -> None:
    sideways = [np.ascontiguousarray(np.rot90(f, k=-1)) for f in _face_frames(8)]
    write_video(p, sideways, fps=8, rotation=90)  # the player turns it 90 degrees CCW


CASES: list[Case] = [
    Case("zero_bytes", "zero_bytes.mp4", "0 bytes named .mp4", _refused(400, "empty_file"),
         _bytes(b"")),
    Case("text", "text.mp4", "plain text named .mp4", _refused(415, "unsupported_media"),
         _bytes(b"this is not a video, just some words\n" * 40)),
    Case("random_bytes", "random.mp4", "1 MiB of seeded random bytes named .mp4",
         _refused(415, "unsupported_media"), _random),
    Case("zip_as_mp4", "archive.mp4", "a zip archive (holding an mp4) named .mp4",
         _refused(415, "unsupported_media"), _zip),
    Case("svg_as_mp4", "drawing.mp4", "an SVG image named .mp4",
         _refused(415, "unsupported_media"), _bytes(craft.SVG)),
    Case("pdf_as_mp4", "document.mp4", "a minimal PDF named .mp4",
         _refused(415, "unsupported_media"), _bytes(craft.PDF)),
    Case("gif_as_mp4", "animation.mp4", "an animated GIF named .mp4",
         _refused(415, "unsupported_media"), _gif),
    Case("mp4_no_moov", "no_moov.mp4", "H.264 mp4 cut at 60 %: the moov index (last) is gone",
         _refused(422, "corrupt_media"), _mp4_cut),
    Case("mp4_ftyp_then_garbage", "ftyp_garbage.mp4", "a valid ftyp box, then random bytes",
         _refused(422, "corrupt_media"),
         _bytes(b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
                + np.random.default_rng(3).integers(0, 256, 50_000, np.uint8).tobytes())),
    Case("mp4_cut_tail", "cut_tail.mp4", "faststart H.264 mp4 cut at 60 % (index intact)",
         _done(min_frames=1, min_faces=1, warning="ends early"),
         lambda p: _mp4_cut(p, _FASTSTART)),
    Case("mp4_corrupt_middle", "corrupt_middle.mp4",
         "faststart H.264 mp4 with 45-70 % of its bytes overwritten by random data",
         _done(min_frames=1, min_faces=1, warning="skipped"),
         lambda p: _mp4_damaged(p, 0.45, 0.7)),
    Case("mp4_corrupt_first_gop", "corrupt_start.mp4",
         "faststart H.264 mp4 whose first keyframe is overwritten by random data",
         _done(min_frames=1, min_faces=1, warning="skipped"),
         lambda p: _mp4_damaged(p, 0.06, 0.12)),
    Case("audio_only_mp4", "audio.mp4", "AAC audio in an isom mp4, no video stream",
         _refused(422, "no_video_stream"), lambda p: write_audio_only(p, seconds=1.0)),
    Case("audio_only_m4a", "audio_m4a.mp4", "AAC audio in an M4A-branded file named .mp4",
         _refused(422, "no_video_stream"),
         lambda p: write_audio_only(p, seconds=1.0, container="ipod")),
    Case("png_bomb_header", "bomb_header.png", "PNG header claiming 100000x100000, no pixels",
         _refused(413, "image_too_large"), lambda p: png_header_only(p, 100_000, 100_000)),
    Case("png_bomb_deflate", "bomb_deflate.png",
         "real 8000x8000 PNG of zeros: 190 kB deflated, 192 MB decoded (64 MP > 40 MP cap)",
         _refused(413, "image_too_large"), _png_bomb),
    Case("jpeg_bomb_header", "bomb.jpg", "16x16 JPEG whose SOF0 is patched to 65500x65500",
         _refused(413, "image_too_large"), lambda p: p.write_bytes(craft.jpeg_bomb(65500))),
    Case("webp_bomb_header", "bomb.webp", "16x16 lossy WebP whose VP8 header claims "
         "16383x16383", _refused(413, "image_too_large"),
         lambda p: p.write_bytes(craft.webp_bomb())),
    Case("bmp_bomb_header", "bomb.bmp", "BMP header claiming 50000x50000 with 1 kB of pixels",
         _refused(413, "image_too_large"), lambda p: p.write_bytes(craft.bmp_bomb(50_000))),
    Case("png_1x1", "one_pixel.png", "a 1x1 PNG", _done(min_frames=1, verdict="no_face"),
         lambda p: Image.new("RGB", (1, 1), (128, 64, 32)).save(p)),
    Case("video_1x1", "one_pixel.mkv", "1x1 MJPEG video, 5 frames",
         _done(min_frames=1, verdict="no_face", size=(1, 1)),
         lambda p: write_video(p, _flat(5, (1, 1)), fps=5, codec="mjpeg")),
    Case("video_8x8", "eight.mp4", "8x8 H.264 video, 5 frames",
         _done(min_frames=1, verdict="no_face", size=(8, 8)),
         lambda p: write_video(p, _flat(5, (8, 8)), fps=5)),
    Case("wide_5000x16", "wide.mkv", "5000x16 MJPEG video (over MAX_WIDTH 4096)",
         _refused(413, "resolution_too_large"),
         lambda p: write_video(p, _flat(2, (5000, 16)), fps=5, codec="mjpeg")),
    Case("sparse_20h_mp4", "sparse_20h.mp4", "3 H.264 frames at 0, 10 h and 20 h (mp4 header "
         "duration 20 h)", _refused(413, "video_too_long"), _sparse),
    Case("sparse_20h_live_webm", "sparse_20h.webm", "3 VP9 frames at 0, 10 h, 20 h in a live "
         "WebM (no header duration: found from packet timestamps)",
         _refused(413, "video_too_long"),
         lambda p: _sparse(p, codec="libvpx-vp9", container_options={"live": "1"})),
    Case("ns_timebase_gaps", "ns_gaps.mp4", "time_base 1/1e9, 5 face frames 2.1e9 ticks (2.1 s) "
         "apart, sampled by seeking", _done(min_frames=4, min_faces=4, min_span_s=8.0),
         _ns_gaps),
    Case("ns_burst_1e9fps", "ns_burst.mp4", "10 face frames 1 ns apart (claimed ~1e9 fps)",
         _done(min_frames=1, min_faces=1, max_duration_s=1.0), _ns_burst),
    Case("avi_zero_fps", "zero_fps.avi", "MJPEG AVI declaring 0 fps (dwRate 0, 0 us/frame); "
         "FFmpeg falls back to 25 fps", _done(min_frames=4, min_faces=4), _avi(0, 1)),
    Case("avi_1e9_fps", "giga_fps.avi", "MJPEG AVI declaring 1e9 fps: 6 frames in 6 ns",
         _done(min_frames=4, min_faces=4, max_duration_s=1.0), _avi(10**9, 1)),
    Case("avi_1e-9_fps", "nano_fps.avi", "MJPEG AVI declaring one frame per 1e9 s (6 frames "
         "= 190 years)", _refused(413, "video_too_long"), _avi(1, 10**9)),
    Case("nonmonotonic_pts", "nonmonotonic.mkv", "MJPEG face frames whose pts go back and "
         "forth (0, 300, 100, 400, 200 ... ms)", _done(min_frames=1, min_faces=1),
         lambda p: craft.mux(p, _face_frames(8), craft.NONMONOTONIC_MS)),
    Case("all_same_pts", "same_pts.mkv",
         "5 MJPEG face frames all at pts 0 (one instant: one frame is analysed)",
         _done(min_frames=1, min_faces=1),
         lambda p: craft.mux(p, _face_frames(5), [0] * 5)),
    # FFmpeg's Matroska muxer writes Duration as the end timestamp, so the header says the
    # video lasts 1e9 s: refused from the header, nothing decoded (the limit does its job).
    Case("huge_start_pts", "huge_start.mkv", "5 MJPEG face frames starting at pts 1e12 ms "
         "(31.7 years), 100 ms apart", _refused(413, "video_too_long"),
         lambda p: craft.mux(p, _face_frames(5),
                                   [10**12 + 100 * k for k in range(5)])),
    Case("rotated_90", "rotated.mp4", "H.264 clip stored sideways (240x320) with a 90 degree "
         "display matrix: faces are found only if the rotation is applied",
         _done(min_frames=4, min_faces=4, rotation=90, size=(320, 240)), _rotated),
    Case("hevc", "hevc.mp4", "HEVC (libx265) face clip", _done(min_frames=4, min_faces=4),
         _face_clip("libx265"), encoders=("libx265",)),
    Case("vp9", "vp9.webm", "VP9 (libvpx-vp9) face clip in WebM",
         _done(min_frames=4, min_faces=4), _face_clip("libvpx-vp9"), encoders=("libvpx-vp9",)),
    Case("av1", "av1.mp4", "AV1 (libsvtav1) face clip in mp4", _done(min_frames=4, min_faces=4),
         _face_clip("libsvtav1"), encoders=("libsvtav1",)),
]


def missing_encoders(case: Case) -> list[str]:
    """Encoders ``case`` needs that this PyAV build cannot open for writing."""
    missing = []
    for name in case.encoders:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - PyAV raises several types for unknown codecs
            missing.append(name)
    return missing


def corpus_version() -> str:
    """Hash of the code that makes the corpus: a change rebuilds it."""
    h = hashlib.sha256()
    for src in (Path(__file__), Path(craft.__file__), DATA_DIR.parent / "mediagen.py"):
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def manifest_entry(case: Case, out: Path) -> dict[str, object]:
    """Write ``case`` into ``out`` (unless its encoder is missing) and describe it."""
    entry: dict[str, object] = {
        "name": case.name, "file": case.filename, "what": case.what,
        "expect": {k: v for k, v in asdict(case.expect).items() if v not in (None, 0)},
        "unavailable": None,
    }
    if missing := missing_encoders(case):
        entry["unavailable"] = f"PyAV's wheel has no {', '.join(missing)} encoder"
        return entry
    path = out / case.filename
    case.make(path)
    entry["bytes"] = path.stat().st_size
    return entry


def generate(out: Path = DEFAULT_OUT, force: bool = False) -> list[dict[str, object]]:
    """Write every case into ``out`` (reused when the manifest's version matches)."""
    manifest_path = out / MANIFEST
    version = corpus_version()
    if not force and manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("version") == version and all(
            e["unavailable"] or (out / e["file"]).exists() for e in old["cases"]
        ):
            return old["cases"]
    out.mkdir(parents=True, exist_ok=True)
    cases = [manifest_entry(c, out) for c in CASES]
    text = json.dumps({"version": version, "cases": cases}, indent=2) + "\n"
    manifest_path.write_text(text)
    return json.loads(text)["cases"]  # JSON types (lists, not tuples), as a reused one has


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    cases = generate(out, force=True)
    for e in cases:
        expect = e["expect"]
        status = e["unavailable"] or f"{e['bytes']:>10,} B"
        print(f"{e['name']:<24} {status:<14} expect {json.dumps(expect)}")
    print(f"{len(cases)} cases in {out} (manifest {out / MANIFEST})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

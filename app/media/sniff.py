"""Media type from magic bytes. The extension and the client's Content-Type are never trusted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.media.errors import EmptyFile, UnsupportedMedia

# Enough for every signature below, Matroska's DocType included.
SNIFF_BYTES = 512

SUPPORTED_HINT = (
    "supported: images JPEG, PNG, WebP, BMP; videos MP4, MOV, WebM, MKV, AVI "
    "(H.264, HEVC, VP8, VP9, AV1, MPEG-4, MJPEG)"
)

# ISO-BMFF major brands that are not video containers we accept.
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
_STILL_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1", b"avif", b"avis"}
# QuickTime files written before `ftyp` existed start straight with one of these atoms.
_QT_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
_BMP_DIB_SIZES = {12, 40, 52, 56, 64, 108, 124}


@dataclass(frozen=True)
class SniffResult:
    kind: Literal["image", "video", "audio"]
    format: str


def sniff_file(path: Path) -> SniffResult:
    """Sniff the first bytes of ``path`` (a missing file is the caller's bug: OSError)."""
    with open(path, "rb") as fh:
        return sniff_bytes(fh.read(SNIFF_BYTES))


def sniff_bytes(head: bytes) -> SniffResult:
    """Classify a file from its first bytes; raises EmptyFile or UnsupportedMedia."""
    if not head:
        raise EmptyFile("the file is empty (0 bytes)")
    for check in (_image, _riff, _iso_bmff, _matroska, _audio):
        found = check(head)
        if found is not None:
            return found
    raise UnsupportedMedia(f"unrecognised file type ({_describe(head)}); {SUPPORTED_HINT}")


def _image(h: bytes) -> SniffResult | None:
    if h.startswith(b"\xff\xd8\xff"):
        return SniffResult("image", "jpeg")
    if h.startswith(b"\x89PNG\r\n\x1a\n"):
        return SniffResult("image", "png")
    if _is_bmp(h):
        return SniffResult("image", "bmp")
    if h[:6] in (b"GIF87a", b"GIF89a"):
        raise UnsupportedMedia(f"GIF images are not supported; {SUPPORTED_HINT}")
    if h[:4] in (b"II*\x00", b"MM\x00*"):
        raise UnsupportedMedia(f"TIFF images are not supported; {SUPPORTED_HINT}")
    return None


def _is_bmp(h: bytes) -> bool:
    # "BM" alone is too weak (plain text can start with it): also require the
    # reserved words to be zero and a known DIB header size.
    if len(h) < 18 or not h.startswith(b"BM") or h[6:10] != b"\x00\x00\x00\x00":
        return False
    return int.from_bytes(h[14:18], "little") in _BMP_DIB_SIZES


def _riff(h: bytes) -> SniffResult | None:
    if h[:4] != b"RIFF" or len(h) < 12:
        return None
    form = h[8:12]
    if form == b"WEBP":
        return SniffResult("image", "webp")
    if form == b"AVI ":
        return SniffResult("video", "avi")
    if form == b"WAVE":
        return SniffResult("audio", "wav")
    return None


def _iso_bmff(h: bytes) -> SniffResult | None:
    if len(h) < 12:
        return None
    atom = h[4:8]
    if atom in _QT_ATOMS:
        return SniffResult("video", "mov")
    if atom != b"ftyp":
        return None
    brand = h[8:12]
    if brand == b"qt  ":
        return SniffResult("video", "mov")
    if brand in _AUDIO_BRANDS:
        return SniffResult("audio", "m4a")
    if brand in _STILL_BRANDS:
        raise UnsupportedMedia(f"HEIF/AVIF images are not supported; {SUPPORTED_HINT}")
    # isom, iso2..9, mp41, mp42, avc1, M4V, dash, 3gp*: all MP4 family; an
    # audio-only one is found later by the container probe (no video stream).
    return SniffResult("video", "mp4")


def _matroska(h: bytes) -> SniffResult | None:
    if not h.startswith(b"\x1a\x45\xdf\xa3"):
        return None
    # The EBML header carries the DocType string within its first few dozen bytes.
    return SniffResult("video", "webm" if b"webm" in h[:64] else "mkv")


def _audio(h: bytes) -> SniffResult | None:
    if h.startswith(b"ID3"):
        return SniffResult("audio", "mp3")
    if h.startswith(b"fLaC"):
        return SniffResult("audio", "flac")
    if h.startswith(b"#!AMR"):
        return SniffResult("audio", "amr")
    if h[:4] == b"FORM" and h[8:12] in (b"AIFF", b"AIFC"):
        return SniffResult("audio", "aiff")
    if h.startswith(b"OggS"):
        if b"theora" in h:
            raise UnsupportedMedia(f"Ogg/Theora video is not supported; {SUPPORTED_HINT}")
        return SniffResult("audio", "ogg")
    if len(h) >= 2 and h[0] == 0xFF and (h[1] & 0xF6) == 0xF0:
        return SniffResult("audio", "aac")  # ADTS frame header
    if len(h) >= 2 and h[0] == 0xFF and (h[1] & 0xE0) == 0xE0:
        return SniffResult("audio", "mp3")  # MPEG audio frame sync
    return None


def _describe(h: bytes) -> str:
    """A short, safe hint of what the bytes look like, for the error message."""
    sample = h[:256]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in sample)
    if printable == len(sample):
        return "looks like text"
    return f"starts with bytes {h[:8].hex(' ')}"

"""Type detection from magic bytes, on real files written by the test (never by extension)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.media import EmptyFile, SniffResult, UnsupportedMedia, sniff_bytes, sniff_file
from tests.mediagen import (
    DATA_DIR,
    coded_frame,
    write_audio_only,
    write_image,
    write_video,
    write_wav,
)

FRAMES = [coded_frame(i) for i in range(4)]

# (file name, writer codec, expected format): OpenCV fourccs and PyAV encoders.
VIDEOS = [
    ("cv_mp4v.mp4", "mp4v", "mp4"),
    ("cv_mjpg.avi", "MJPG", "avi"),
    ("vp9.webm", "libvpx-vp9", "webm"),
    ("mpeg4.mkv", "mpeg4", "mkv"),
    ("h264.mov", "libx264", "mov"),
    ("h264.mp4", "libx264", "mp4"),
    ("hevc.mp4", "libx265", "mp4"),
]


@pytest.mark.parametrize(("name", "codec", "expected"), VIDEOS)
def test_video_containers(tmp_path: Path, name: str, codec: str, expected: str) -> None:
    path = write_video(tmp_path / name, FRAMES, fps=10, codec=codec)
    assert sniff_file(path) == SniffResult("video", expected)


@pytest.mark.parametrize(
    ("suffix", "expected"), [("jpg", "jpeg"), ("png", "png"), ("webp", "webp"), ("bmp", "bmp")]
)
def test_image_formats(tmp_path: Path, suffix: str, expected: str) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    path = write_image(tmp_path / f"img.{suffix}", rgb)
    assert sniff_file(path) == SniffResult("image", expected)


def test_shared_media() -> None:
    assert sniff_file(DATA_DIR / "pexels_woman_3063838.mp4") == SniffResult("video", "mp4")
    assert sniff_file(DATA_DIR / "no_face_cartoon.mp4") == SniffResult("video", "mp4")
    assert sniff_file(DATA_DIR / "obama.jpg") == SniffResult("image", "jpeg")


def test_extension_is_ignored(tmp_path: Path) -> None:
    png_named_mp4 = write_image(tmp_path / "clip.mp4", FRAMES[1], fmt="PNG")
    assert sniff_file(png_named_mp4) == SniffResult("image", "png")
    mkv_named_jpg = write_video(tmp_path / "photo.jpg", FRAMES, codec="mpeg4", container="matroska")
    assert sniff_file(mkv_named_jpg) == SniffResult("video", "mkv")


def test_audio_files(tmp_path: Path) -> None:
    assert sniff_file(write_wav(tmp_path / "a.wav")) == SniffResult("audio", "wav")
    assert sniff_file(write_audio_only(tmp_path / "a.m4a")) == SniffResult("audio", "m4a")
    mp3 = write_audio_only(tmp_path / "a.mp3", codec="libmp3lame")
    assert sniff_file(mp3) == SniffResult("audio", "mp3")
    # An audio-only .mp4 carries a generic brand: it sniffs as mp4, the probe rejects it.
    assert sniff_file(write_audio_only(tmp_path / "a.mp4")) == SniffResult("video", "mp4")


def test_empty_and_text(tmp_path: Path) -> None:
    with pytest.raises(EmptyFile) as empty:
        sniff_bytes(b"")
    assert empty.value.code == "empty_file"
    with pytest.raises(UnsupportedMedia, match="text") as text:
        sniff_bytes(b"BMW is a car brand, not a bitmap.\n" * 4)
    assert text.value.code == "unsupported_media"
    (tmp_path / "x.mp4").write_text("hello")
    with pytest.raises(UnsupportedMedia):
        sniff_file(tmp_path / "x.mp4")


@pytest.mark.parametrize(
    "head",
    [
        b"GIF89a\x01\x00\x01\x00",
        b"II*\x00\x08\x00\x00\x00",
        b"\x00\x00\x00\x18ftypheic\x00\x00",
        b"FLV\x01\x05\x00\x00\x00\x09",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3",
    ],
)
def test_other_formats_are_refused(head: bytes) -> None:
    with pytest.raises(UnsupportedMedia, match="supported"):
        sniff_bytes(head + bytes(64))

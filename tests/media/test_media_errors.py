"""Every error code from a crafted bad file; nothing raw from av/cv2/PIL escapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.media import (
    CorruptMedia,
    EmptyFile,
    MediaError,
    MediaLimits,
    NoVideoStream,
    ResolutionTooLarge,
    UnsupportedMedia,
    VideoTooLong,
    open_media,
    probe_media,
)
from tests.mediagen import (
    PEXELS_VIDEO,
    coded_frame,
    truncated_copy,
    write_audio_only,
    write_video,
    write_wav,
)

LIMITS = MediaLimits()


def _refused(path: Path, error: type[MediaError], limits: MediaLimits = LIMITS) -> MediaError:
    """Both entry points refuse the file with the same typed error; returns it."""
    with pytest.raises(error) as probed:
        probe_media(path, limits)
    with pytest.raises(error):
        open_media(path, limits)
    return probed.value


def test_zero_bytes(tmp_path: Path) -> None:
    (tmp_path / "e.mp4").write_bytes(b"")
    err = _refused(tmp_path / "e.mp4", EmptyFile)
    assert (err.code, err.http_status) == ("empty_file", 400)


def test_text_file(tmp_path: Path) -> None:
    (tmp_path / "t.jpg").write_text("id,name\n1,not a picture\n")
    err = _refused(tmp_path / "t.jpg", UnsupportedMedia)
    assert (err.code, err.http_status) == ("unsupported_media", 415)


def test_unsupported_codec(tmp_path: Path) -> None:
    path = write_video(tmp_path / "lossless.mkv", [coded_frame(0)] * 2, codec="ffv1")
    assert "ffv1" in _refused(path, UnsupportedMedia).message


def test_truncated_video_yields_decodable_part_with_warning(tmp_path: Path) -> None:
    cut = truncated_copy(PEXELS_VIDEO, tmp_path / "cut.mp4", fraction=0.4)
    info = probe_media(cut, LIMITS)  # the header (moov first) is intact
    assert info.duration_s == pytest.approx(19.7, abs=0.05)
    source = open_media(cut, LIMITS)
    frames = list(source)
    assert 5 <= len(frames) < len(source) == 32
    assert frames[-1].timestamp < 10.0
    assert len(source.warnings) == 1 and "ends early" in source.warnings[0]


def test_damaged_middle_is_skipped_with_a_warning(tmp_path: Path) -> None:
    data = bytearray(PEXELS_VIDEO.read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, 60_000, dtype=np.uint8)
    data[400_000:460_000] = noise.tobytes()  # a burst of garbage inside the media data
    path = tmp_path / "damaged.mp4"
    path.write_bytes(bytes(data))
    source = open_media(path, LIMITS)
    ts = [f.timestamp for f in source]
    assert len(ts) == 32 and all(b > a for a, b in zip(ts, ts[1:], strict=False))
    assert any("damaged packet" in w for w in source.warnings)


def test_video_cut_to_a_few_kb_is_corrupt(tmp_path: Path) -> None:
    cut = truncated_copy(PEXELS_VIDEO, tmp_path / "head.mp4", nbytes=4096)
    err = _refused(cut, CorruptMedia)
    assert (err.code, err.http_status) == ("corrupt_media", 422)


def test_header_without_frames_is_corrupt(tmp_path: Path) -> None:
    # moov intact, media data gone: the probe must notice nothing decodes.
    cut = truncated_copy(PEXELS_VIDEO, tmp_path / "moov_only.mp4", nbytes=11_400)
    _refused(cut, CorruptMedia)


def test_wav_has_no_video_stream(tmp_path: Path) -> None:
    err = _refused(write_wav(tmp_path / "a.wav"), NoVideoStream)
    assert (err.code, err.http_status) == ("no_video_stream", 422)


@pytest.mark.parametrize("name", ["a.mp4", "a.m4a", "a.mkv"])
def test_audio_only_container_has_no_video_stream(tmp_path: Path, name: str) -> None:
    _refused(write_audio_only(tmp_path / name), NoVideoStream)


def test_too_long(tmp_path: Path) -> None:
    err = _refused(PEXELS_VIDEO, VideoTooLong, MediaLimits(max_video_seconds=10))
    assert (err.code, err.http_status) == ("video_too_long", 413)
    assert "19.7 s" in err.message and "10 s" in err.message


def test_too_large_resolution(tmp_path: Path) -> None:
    err = _refused(PEXELS_VIDEO, ResolutionTooLarge, MediaLimits(max_width=320, max_height=320))
    assert (err.code, err.http_status) == ("resolution_too_large", 413)
    assert "640x360" in err.message


@pytest.mark.parametrize(
    "magic",
    [
        b"\xff\xd8\xff\xe0",
        b"\x89PNG\r\n\x1a\n",
        b"RIFF\x00\x01\x00\x00WEBP",
        b"RIFF\x00\x01\x00\x00AVI ",
        b"\x00\x00\x00\x20ftypisom",
        b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm",
        b"BM\x00\x10\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00",
    ],
)
def test_garbage_after_magic_is_a_media_error(tmp_path: Path, magic: bytes) -> None:
    noise = np.random.default_rng(len(magic)).integers(0, 256, 20_000, dtype=np.uint8)
    path = tmp_path / "junk.bin"
    path.write_bytes(magic + noise.tobytes())
    with pytest.raises(MediaError) as err:
        list(open_media(path, LIMITS))
    assert err.value.code in {"corrupt_media", "unsupported_media", "image_too_large"}
    assert err.value.message  # a sentence, not an empty wrapper

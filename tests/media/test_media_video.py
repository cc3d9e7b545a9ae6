"""Video sampling: even spread, true timestamps (VFR), rotation, codecs, lazy memory use."""

from __future__ import annotations

import math
import weakref
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.config import Settings
from app.media import MediaLimits, TooManyFrames, open_media, probe_media
from app.media.video import FrameSampler, plan_targets
from app.media.video_probe import probe_video
from tests.mediagen import (
    DATA_DIR,
    PEXELS_VIDEO,
    clip_from_image,
    coded_frame,
    read_code,
    write_video,
)

LIMITS = MediaLimits()


def test_pexels_sampled_evenly() -> None:
    source = open_media(PEXELS_VIDEO, LIMITS)
    info = source.info
    assert (info.kind, info.format, info.width, info.height) == ("video", "mp4", 640, 360)
    assert info.duration_s == pytest.approx(19.7, abs=0.05)
    assert info.fps == pytest.approx(23.976, abs=0.01)
    assert len(source) == info.frames_sampled == 32
    frames = list(source)
    assert [f.index for f in frames] == list(range(32))
    ts = [f.timestamp for f in frames]
    assert all(b > a for a, b in zip(ts, ts[1:], strict=False))
    assert ts[0] == 0.0 and ts[-1] > 19.0  # spans the whole clip
    gaps = np.diff(ts)
    assert gaps.max() - gaps.min() < 0.1  # even, to within a frame (~42 ms) or so
    # Constant frame rate here, so the frame number and its time must agree.
    for f in frames:
        assert f.timestamp == pytest.approx(f.source_index / (24000 / 1001), abs=1e-3)
        assert f.image.shape == (360, 640, 3) and f.image.dtype == np.uint8
    assert source.warnings == []


def test_seeking_picks_the_same_frames_as_decoding_through() -> None:
    probe = probe_video(PEXELS_VIDEO, "mp4", LIMITS)
    seeking = list(FrameSampler(PEXELS_VIDEO, probe, 5, [], seek_min_gap_s=0.0))
    through = list(FrameSampler(PEXELS_VIDEO, probe, 5, [], seek_min_gap_s=float("inf")))
    assert [f.timestamp for f in seeking] == [f.timestamp for f in through]
    for a, b in zip(seeking[1:], through[1:], strict=True):
        assert a.source_index is None  # unknown after a seek, never guessed
        assert np.array_equal(a.image, b.image)


@pytest.fixture(scope="module")
def long_gop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 s at 10 fps, a keyframe every 10 s: 8 samples are ~8.4 s apart, so the sampler seeks."""
    path = tmp_path_factory.mktemp("gop") / "gop.mp4"
    return write_video(path, (coded_frame(i) for i in range(600)), fps=10, gop=100)


def test_long_gop_window_takes_keyframes_inside_each_slice(long_gop: Path) -> None:
    probe = probe_video(long_gop, "mp4", LIMITS)
    targets = plan_targets(probe, 8)
    step = targets[1] - targets[0]
    windowed = list(FrameSampler(long_gop, probe, 8, [], window=0.5))
    exact = list(FrameSampler(long_gop, probe, 8, [], window=0.0))
    ts = [f.timestamp for f in windowed]
    assert len(windowed) == 8 and all(b > a for a, b in zip(ts, ts[1:], strict=False))
    for t, f in zip(targets, windowed, strict=True):
        assert abs(f.timestamp - t) <= step / 2 + 1e-3  # inside its own slice
        assert read_code(f.image) == round(f.timestamp * 10) % 256  # 8-bit code of that time
    keyframes = [t for t in ts if round(t * 10) % 100 == 0]
    assert len(keyframes) >= 4  # most slices hold a keyframe: taken instead of decoding a GOP
    for t, f in zip(targets, exact, strict=True):  # window 0: the first frame at/after target
        assert f.timestamp == pytest.approx(math.ceil(t * 10 - 1e-6) / 10, abs=1e-3)
        assert read_code(f.image) == round(f.timestamp * 10) % 256


def test_sample_window_is_a_setting_and_reaches_the_sampler(long_gop: Path) -> None:
    exact = MediaLimits.from_settings(Settings(sample_window=0.0))
    assert [round(f.timestamp, 1) for f in open_media(long_gop, exact, max_frames=8)] == [
        math.ceil(t * 10 - 1e-6) / 10
        for t in plan_targets(probe_video(long_gop, "mp4", exact), 8)]
    default = list(open_media(long_gop, MediaLimits.from_settings(Settings()), max_frames=8))
    assert sum(round(f.timestamp * 10) % 100 == 0 for f in default) >= 4
    with pytest.raises(ValueError):
        Settings(sample_window=0.7)  # past half an interval a sample leaves its slice


def test_fewer_frames_than_asked_and_custom_count(tmp_path: Path) -> None:
    path = write_video(tmp_path / "short.mp4", [coded_frame(i) for i in range(7)], fps=10)
    source = open_media(path, LIMITS)
    assert len(source) == 7
    assert [read_code(f.image) for f in source] == list(range(7))  # each frame exactly once
    two = open_media(PEXELS_VIDEO, LIMITS, max_frames=2)
    assert len(two) == 2 and two.info.frames_sampled == 2


def test_frame_cap() -> None:
    with pytest.raises(TooManyFrames) as err:
        open_media(PEXELS_VIDEO, LIMITS, max_frames=LIMITS.max_frames_cap + 1)
    assert err.value.code == "too_many_frames" and "256" in err.value.message


@pytest.mark.parametrize(("suffix", "codec"), [("mp4", "libx264"), ("mkv", "mpeg4")])
def test_variable_frame_rate_timestamps(tmp_path: Path, suffix: str, codec: str) -> None:
    # Bursts and pauses: index / fps would put frame 9 at 0.36 s, not 1.5 s.
    pts_ms = [0, 40, 80, 300, 340, 380, 900, 940, 980, 1500, 1540, 1580]
    frames = [coded_frame(i) for i in range(len(pts_ms))]
    path = write_video(
        tmp_path / f"vfr.{suffix}",
        frames,
        fps=25,
        codec=codec,
        pts=pts_ms,
        time_base=Fraction(1, 1000),
    )
    source = open_media(path, LIMITS, max_frames=6)
    sampled = list(source)
    for f in sampled:
        code = read_code(f.image)
        assert f.source_index == code
        assert f.timestamp == pytest.approx(pts_ms[code] / 1000, abs=1e-6)
    # Each pick is the first unused frame at or after its target time.
    targets = plan_targets(probe_video(path, suffix, LIMITS), len(source))
    expected, last = [], -1
    for t in targets:
        nxt = next(i for i, p in enumerate(pts_ms) if p / 1000 >= t - 1e-3 and i > last)
        expected.append(nxt)
        last = nxt
    assert [f.source_index for f in sampled] == expected
    assert [f.source_index for f in sampled] != [round(t * 25) for t in targets]


@pytest.mark.parametrize("rotation", [90, 180, 270])
@pytest.mark.parametrize(("suffix", "codec"), [("mp4", "libx264"), ("webm", "libvpx-vp9")])
def test_rotation_metadata_is_applied(
    tmp_path: Path, rotation: int, suffix: str, codec: str
) -> None:
    img = np.zeros((48, 64, 3), np.uint8)
    img[:16, :16] = 255  # marker in the stored top-left corner
    path = write_video(tmp_path / f"r.{suffix}", [img] * 3, fps=10, codec=codec, rotation=rotation)
    source = open_media(path, LIMITS)
    frame = next(iter(source)).image
    expected = np.rot90(img, k=rotation // 90)  # display matrix angle is counter-clockwise
    assert source.info.rotation == rotation
    assert (source.info.height, source.info.width) == expected.shape[:2]
    assert frame.shape == expected.shape
    assert np.abs(frame.astype(int) - expected).mean() < 8
    # OpenCV's FFmpeg reader auto-rotates independently: both must show the same picture.
    ok, bgr = cv2.VideoCapture(str(path)).read()
    assert ok and np.abs(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(int) - frame).mean() < 8


def test_rotated_size_checked_as_displayed(tmp_path: Path) -> None:
    path = write_video(tmp_path / "r.mp4", [coded_frame(0)] * 2, codec="libx264", rotation=90)
    info = probe_media(path, MediaLimits(max_width=48, max_height=64))  # stored 64x48
    assert (info.width, info.height) == (48, 64)


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("a.mp4", "mp4v"),
        ("a.avi", "MJPG"),
        ("a.webm", "libvpx-vp9"),
        ("a.mkv", "mpeg4"),
        ("a.mov", "libx264"),
        ("h.mp4", "libx265"),
        ("v8.webm", "libvpx"),
        ("av1.mp4", "libsvtav1"),  # decoded by libdav1d: the stream's codec id is what counts
    ],
)
def test_codecs_and_containers_decode(tmp_path: Path, name: str, codec: str) -> None:
    path = write_video(tmp_path / name, [coded_frame(i) for i in range(12)], fps=10, codec=codec)
    source = open_media(path, LIMITS, max_frames=4)
    frames = list(source)
    codes = [read_code(f.image) for f in frames]
    assert codes == [f.source_index for f in frames] == [0, 4, 8, 11]
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.4, 0.8, 1.1], abs=1e-6)
    assert source.info.duration_s == pytest.approx(1.2) and source.info.fps == 10.0


def test_duration_from_packets_when_the_header_has_none(tmp_path: Path) -> None:
    frames = [coded_frame(i) for i in range(20)]
    path = write_video(
        tmp_path / "live.webm", frames, fps=10, codec="libvpx-vp9", container_options={"live": "1"}
    )
    source = open_media(path, LIMITS, max_frames=5)
    assert source.info.duration_s == pytest.approx(2.0)
    assert [f.source_index for f in source] == [0, 5, 10, 15, 19]


def test_clip_from_image(tmp_path: Path) -> None:
    out = clip_from_image(
        DATA_DIR / "grace_hopper.jpg", tmp_path / "c.mp4", seconds=1.0, fps=8, size=(96, 64)
    )
    frames = list(open_media(out, LIMITS))
    assert len(frames) == 8 and frames[0].image.shape == (64, 96, 3)
    assert np.abs(frames[0].image.astype(int) - frames[4].image).mean() > 1  # it moves


def test_iteration_is_lazy_and_bounded() -> None:
    # Frame pixels live in FFmpeg buffers (invisible to tracemalloc): check instead that
    # neither the source nor its iterator keeps a frame once the caller drops it.
    source = open_media(PEXELS_VIDEO, LIMITS)
    it = iter(source)
    assert not isinstance(it, list | tuple)
    alive = []
    for frame in it:
        alive.append((weakref.ref(frame), weakref.ref(frame.image)))
        del frame  # plain refcounting frees it unless something else holds it
        assert all(r() is None for pair in alive for r in pair)
    assert len(alive) == 32


def test_odd_width_frames_are_contiguous(tmp_path: Path) -> None:
    frames = [np.full((30, 50, 3), 40 * i, np.uint8) for i in range(3)]
    path = write_video(tmp_path / "odd.mkv", frames, fps=5, codec="mpeg4")
    for f in open_media(path, LIMITS):
        assert f.image.shape == (30, 50, 3) and f.image.flags["C_CONTIGUOUS"]


def test_limits_from_settings() -> None:
    s = Settings(
        max_video_seconds=5,
        max_frames=8,
        max_frames_cap=16,
        max_width=100,
        max_height=200,
        max_image_pixels=300,
    )
    assert MediaLimits.from_settings(s) == MediaLimits(5, 8, 16, 100, 200, 300)

"""Images: one upright RGB frame, size refused from the header before any decoding."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.media import (
    CorruptMedia,
    ImageTooLarge,
    MediaLimits,
    open_media,
    probe_media,
)
from tests.mediagen import DATA_DIR, png_header_only, truncated_copy, write_image

LIMITS = MediaLimits()


def _marker_image() -> np.ndarray:
    """48 high x 64 wide, a white block in the top-left corner, to check orientation."""
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:16, :16] = 255
    return rgb


@pytest.mark.parametrize("name", ["obama.jpg", "biden.jpg", "grace_hopper.jpg"])
def test_shared_portraits(name: str) -> None:
    path = DATA_DIR / name
    source = open_media(path, LIMITS)
    frames = list(source)
    with Image.open(path) as im:
        w, h = im.size
    assert len(source) == 1 and len(frames) == 1
    frame = frames[0]
    assert (frame.index, frame.source_index, frame.timestamp) == (0, 0, 0.0)
    assert frame.image.shape == (h, w, 3) and frame.image.dtype == np.uint8
    assert source.info.kind == "image" and source.info.format == "jpeg"
    assert (source.info.width, source.info.height) == (w, h)
    assert probe_media(path, LIMITS) == source.info


@pytest.mark.parametrize("suffix", ["png", "webp", "bmp", "jpg"])
def test_formats_decode_to_rgb(tmp_path: Path, suffix: str) -> None:
    rgb = _marker_image()
    path = write_image(tmp_path / f"m.{suffix}", rgb)
    (frame,) = list(open_media(path, LIMITS))
    assert frame.image.shape == rgb.shape
    # Lossless formats round-trip exactly; JPEG and WebP (lossy by default) closely.
    assert np.abs(frame.image.astype(int) - rgb).mean() < 6


@pytest.mark.parametrize(
    ("orientation", "rotation", "corner"),
    [
        (6, 270, (0, -1)),  # display = rotate 90 clockwise: top-left goes top-right
        (8, 90, (-1, 0)),  # 90 counter-clockwise: top-left goes bottom-left
        (3, 180, (-1, -1)),
    ],
)
def test_exif_orientation_is_applied(
    tmp_path: Path, orientation: int, rotation: int, corner: tuple[int, int]
) -> None:
    path = write_image(tmp_path / "o.jpg", _marker_image(), exif_orientation=orientation)
    source = open_media(path, LIMITS)
    (frame,) = list(source)
    expected_shape = (48, 64, 3) if rotation == 180 else (64, 48, 3)
    assert frame.image.shape == expected_shape
    assert source.info.rotation == rotation
    assert (source.info.height, source.info.width) == expected_shape[:2]
    r, c = corner
    assert frame.image[r, c].min() > 200  # the white marker moved to the displayed corner
    assert frame.image[0, 0].max() < 60


def test_transparent_png_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, 3] = 255  # top half opaque black, bottom half fully transparent
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    (frame,) = list(open_media(path, LIMITS))
    assert frame.image[:4].max() == 0 and frame.image[4:].min() == 255


def test_truncated_jpeg_is_corrupt(tmp_path: Path) -> None:
    bad = truncated_copy(DATA_DIR / "obama.jpg", tmp_path / "t.jpg", fraction=0.3)
    with pytest.raises(CorruptMedia) as err:
        probe_media(bad, LIMITS)
    assert err.value.code == "corrupt_media" and "truncated" in err.value.message
    with pytest.raises(CorruptMedia):
        open_media(bad, LIMITS)


@pytest.mark.parametrize("side", [100_000, 7_000])  # above Pillow's own guard, and below it
def test_pixel_bomb_refused_from_header(tmp_path: Path, side: int) -> None:
    bomb = png_header_only(tmp_path / "bomb.png", side, side)
    assert bomb.stat().st_size < 100
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ImageTooLarge) as err:
            probe_media(bomb, LIMITS)
        with pytest.raises(ImageTooLarge):
            open_media(bomb, LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 2_000_000  # a decode would need side*side*3 bytes (>= 147 MB)
    assert err.value.code == "image_too_large" and err.value.http_status == 413


def test_pixel_limit_is_configurable() -> None:
    with pytest.raises(ImageTooLarge, match="limit is 10,000"):
        probe_media(DATA_DIR / "grace_hopper.jpg", MediaLimits(max_image_pixels=10_000))

"""Frames with several real faces, built from the bundled portraits (tests/data, skimage).

Each portrait is cut once around its largest MTCNN face (a square twice the face box), so a
tile of side ``s`` holds a face of about ``s / 2`` px; tiles are pasted onto a grey canvas.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

import av
import cv2
import numpy as np
from skimage import data as skdata

from app.pipeline.faces import FaceDetector

DATA = Path(__file__).resolve().parents[1] / "data"
PORTRAITS = ("grace_hopper.jpg", "biden.jpg", "obama.jpg", "astronaut", "pexels", "obama3.jpg")
TILE_SOURCE = 256  # side the tiles are cut at (then resized)
GREY = 96


def read_rgb(name: str) -> np.ndarray:
    if name == "astronaut":
        return np.ascontiguousarray(skdata.astronaut())
    if name == "pexels":  # the first frame of the bundled video
        with av.open(str(DATA / "pexels_woman_3063838.mp4")) as container:
            return next(container.decode(video=0)).to_ndarray(format="rgb24")
    bgr = cv2.imread(str(DATA / name), cv2.IMREAD_COLOR)
    assert bgr is not None, f"missing test image {DATA / name}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@cache
def _tile(name: str) -> np.ndarray:
    cutter = FaceDetector(max_faces=1, scale=2.0, crop_size=TILE_SOURCE)
    faces = cutter.detect([read_rgb(name)])[0]
    assert faces, f"no face in {name}"
    return faces[0].crop


def tile(name: str, side: int) -> np.ndarray:
    """``name``'s face, centred in a ``side`` x ``side`` square (face about side / 2 px)."""
    interp = cv2.INTER_AREA if side < TILE_SOURCE else cv2.INTER_CUBIC
    return cv2.resize(_tile(name), (side, side), interpolation=interp)


def paste(canvas: np.ndarray, img: np.ndarray, x: int, y: int) -> np.ndarray:
    h, w = img.shape[:2]
    canvas[y : y + h, x : x + w] = img
    return canvas


def canvas(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), GREY, np.uint8)


def group_photo(names: Sequence[str] = PORTRAITS, side: int = 160, cols: int = 3) -> np.ndarray:
    """Distinct faces in a grid (``side`` px tiles, faces about side / 2 px)."""
    rows = -(-len(names) // cols)
    out = canvas(cols * side, rows * side)
    for k, name in enumerate(names):
        paste(out, tile(name, side), (k % cols) * side, (k // cols) * side)
    return out


def two_person_frames(
    n: int = 8, side: int = 200, width: int = 640, height: int = 360, blur_right: float = 0.0
) -> Iterator[np.ndarray]:
    """Grace Hopper (left) and Biden (right) drifting a few px per frame, like a handheld
    two-shot; ``blur_right`` Gaussian sigma (px) softens the right face only."""
    left, right = tile("grace_hopper.jpg", side), tile("biden.jpg", side)
    if blur_right:
        right = cv2.GaussianBlur(right, (0, 0), blur_right)
    y0 = (height - side) // 2
    for k in range(n):
        dx, dy = round(14 * np.sin(k / 2)), round(8 * np.cos(k / 3))
        frame = canvas(width, height)
        paste(frame, left, 40 + dx, y0 + dy)
        paste(frame, right, width - 40 - side - dx, y0 - dy)
        yield frame

"""Short real and pseudo-fake demo videos for end-to-end tests (H.264 through PyAV's FFmpeg).

``real_<id>.mp4``: the Pexels clip's first frames, or a still portrait rendered with a slow pan
and zoom. ``fake_<id>.mp4``: the same frames with the face self-blended in every full frame.
Each fake video draws its blend parameters from one fixed seed, re-used on every frame, so the
blend stays put from frame to frame (as a face swap does) instead of flickering.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from app.pipeline.faces import square_crop_box
from app.training.augment import to_grey
from app.training.sbi import self_blend_frame

if TYPE_CHECKING:
    from app.training.demo import Bases, Still

VIDEO_SIDE = 320
FPS = 12.0
CRF = 23  # x264's own default quality
SPLIT_ORDER = {"test": 0, "val": 1, "train": 2}


def write_mp4(path: Path, frames: list[np.ndarray], fps: float = FPS, crf: int = CRF) -> None:
    """H.264 (yuv420p) at constant quality ``crf``: what platforms receive from phones and
    editors, unlike OpenCV's legacy MPEG-4 part 2 ``mp4v``."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        stream.options = {"crf": str(crf)}
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: h - h % 2, : w - w % 2]),
                                               format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _pexels_frames(path: Path, n: int, detector) -> list[tuple[np.ndarray, Any]]:
    """The first ``n`` consecutive frames with their detected face (None where MTCNN missed)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < n:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    found = detector.detect(frames) if frames else []
    out = []
    for img, faces in zip(frames, found, strict=True):
        face = (faces[0].crop_box, np.asarray(faces[0].landmarks)) if faces else None
        out.append((img, face))
    return out


def _still_frames(still: Still, n: int) -> list[tuple[np.ndarray, Any]]:
    """A face-centred square of the still, panned and zoomed slowly (a handheld camera)."""
    x1, y1, x2, y2 = still.box
    h, w = still.image.shape[:2]
    side = int(min(2.5 * max(x2 - x1, y2 - y1), w, h))
    left = int(min(max((x1 + x2) / 2 - side / 2, 0), w - side))
    top = int(min(max((y1 + y2) / 2 - side / 2, 0), h - side))
    s = VIDEO_SIDE / side
    base = cv2.resize(still.image[top : top + side, left : left + side], (VIDEO_SIDE, VIDEO_SIDE),
                      interpolation=cv2.INTER_AREA)
    corners = (np.array([[x1, y1], [x2, y2]]) - [left, top]) * s
    lms = (still.lms - [left, top]) * s
    out = []
    for k in range(n):
        phase = 2 * math.pi * k / max(n, 2)
        m = cv2.getRotationMatrix2D((VIDEO_SIDE / 2, VIDEO_SIDE / 2), 2 * math.sin(phase),
                                    1.0 + 0.03 * (1 - math.cos(phase)) / 2)
        m[:, 2] += 0.03 * VIDEO_SIDE * np.array([math.sin(phase), math.sin(phase / 2)])
        img = cv2.warpAffine(base, m, (VIDEO_SIDE, VIDEO_SIDE), borderMode=cv2.BORDER_REFLECT)
        box = corners @ m[:, :2].T + m[:, 2]
        crop_box = square_crop_box(box.ravel(), VIDEO_SIDE, VIDEO_SIDE, 1.3)
        out.append((img, (crop_box, lms @ m[:, :2].T + m[:, 2])))
    return out


def _fake(frames: list[tuple[np.ndarray, Any]], seed: list[int], grey: bool) -> list[np.ndarray]:
    fakes = []
    for img, face in frames:
        if face is None:  # no face found: the frame stays as it is
            fakes.append(img)
            continue
        fake = self_blend_frame(img, face[0], face[1], np.random.default_rng(seed))
        fakes.append(to_grey(fake) if grey else fake)
    return fakes


def render_videos(
    folder: Path,
    bases: Bases,
    splits: dict[str, str],
    media_dir: Path,
    n_videos: int,
    n_frames: int,
    seed: int,
    detector,
    tick: Callable[[], None],
) -> list[dict[str, Any]]:
    """Up to ``n_videos`` identities (held-out splits first) → a real and a fake video each."""
    from app.training.demo import PEXELS

    folder.mkdir(parents=True, exist_ok=True)
    # Held-out identities first; then the one genuine video (real motion and H.264 history).
    order = sorted(bases.stills, key=lambda i: (SPLIT_ORDER[splits[i]], i != "pexels_woman", i))
    names = order[: max(n_videos, 0)]
    made = []
    for no, ident in enumerate(names):
        still = bases.stills[ident]
        pexels = media_dir / PEXELS
        if ident == "pexels_woman" and pexels.is_file():
            frames = _pexels_frames(pexels, n_frames, detector)
        else:
            frames = _still_frames(still, n_frames)
        if not frames:
            continue
        for label, clip in ((0, [f[0] for f in frames]),
                            (1, _fake(frames, [seed, 99, no], still.grey))):
            rel = f"videos/{'real' if label == 0 else 'fake'}_{ident}.mp4"
            write_mp4(folder.parent / rel, clip)
            made.append({"path": rel, "identity": ident, "split": splits[ident], "label": label,
                         "frames": len(clip), "fps": FPS})
            tick()
    return made

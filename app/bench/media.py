"""Sample media for benchmarks and load tests, generated from the repository's test data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.config import REPO_ROOT

SAMPLE_VIDEO = REPO_ROOT / "tests" / "data" / "pexels_woman_3063838.mp4"
SAMPLE_IMAGE = REPO_ROOT / "tests" / "data" / "obama.jpg"


def make_sample_media(out_dir: Path, seconds: float = 2.0) -> Path:
    """A short mp4 with one real face in every frame, written with OpenCV into ``out_dir``.

    The bundled Pexels clip trimmed to ``seconds``; without it, a slow pan over the Obama
    portrait. Both ship in tests/data (a repository checkout, not the Docker image).
    """
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"sample_{seconds:g}s.mp4"
    if SAMPLE_VIDEO.is_file():
        frames, fps = _read_frames(SAMPLE_VIDEO, seconds)
    elif SAMPLE_IMAGE.is_file():
        frames, fps = _pan_frames(cv2.imread(str(SAMPLE_IMAGE)), seconds), 24.0
    else:
        raise FileNotFoundError(
            f"no sample media ({SAMPLE_VIDEO} or {SAMPLE_IMAGE}); pass a file with --media"
        )
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    try:
        for f in frames:
            writer.write(f)
    finally:
        writer.release()
    return out


def _read_frames(path: Path, seconds: float) -> tuple[list[np.ndarray], float]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 24.0
    frames = []
    while len(frames) < max(int(seconds * fps), 1):
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        raise ValueError(f"could not decode {path}")
    return frames, fps


def _pan_frames(img: np.ndarray, seconds: float) -> list[np.ndarray]:
    h, w = img.shape[:2]
    side = min(h, w) * 9 // 10
    n = max(int(seconds * 24), 1)
    return [img[(h - side) // 2:(h - side) // 2 + side,
                (w - side) * i // n:(w - side) * i // n + side].copy() for i in range(n)]

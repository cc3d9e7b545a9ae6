"""Faces to attack and benign uploads for ``dfshield bench guard``.

Attack faces: one crop per identity from a crops folder (default: the training data's
``crops/{test,val,train}/fake`` under ``runs/data``), resized to g's input size, the ones g
calls most fake first (an attack on a face g already calls real ends at its first query).
Without such a folder, faces are cut from tests/data (photos and frames of the video).

Benign traffic, each file uploaded as a client would:
- *variants*: per key one photo sent 5 ways (as is, JPEG 90 and 70, resized to 3/4, centre crop
  90 %), the near-duplicate traffic a stateful detector must tolerate;
- *stills*: frames of the bundled video taken seconds apart (two keys, interleaved);
- *clip*: the locust scenario's 2 s clip uploaded again and again (byte-identical);
- *distinct*: one real crop per identity, each sent once.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app.bench.media import SAMPLE_VIDEO
from app.config import REPO_ROOT

DEFAULT_CROPS = REPO_ROOT / "runs" / "data" / "crops"
PHOTOS = sorted((REPO_ROOT / "tests" / "data").glob("*.jpg"))


@dataclass(frozen=True)
class Upload:
    """One benign upload: who sends which bytes, and why."""

    key: int  # index of the benign key
    kind: str  # variants | stills | clip | distinct
    name: str
    data: bytes
    form: tuple[tuple[str, str], ...] = ()


def identity(path: Path) -> str:
    """Crop files are ``<identity>_<frame>_<face>.png``."""
    return path.stem.rsplit("_", 2)[0]


def one_per_identity(paths: list[Path]) -> list[Path]:
    seen: dict[str, Path] = {}
    for p in paths:
        seen.setdefault(identity(p), p)
    return list(seen.values())


def read_rgb(path: Path, side: int | None = None) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if side is not None and rgb.shape[:2] != (side, side):
        rgb = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    return rgb


def crop_files(root: Path, label: str) -> list[Path]:
    files: list[Path] = []
    for split in ("test", "val", "train"):
        files += sorted(Path(p) for p in glob.glob(str(root / split / label / "*.png")))
    return one_per_identity(files)


def encode(rgb: np.ndarray, ext: str = ".jpg", quality: int = 95) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"encoding {ext} failed")
    return buf.tobytes()


def variants(rgb: np.ndarray) -> list[tuple[str, bytes]]:
    """Five near-duplicates of one photo, as a user re-checking it would send them."""
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (w * 3 // 4, h * 3 // 4), interpolation=cv2.INTER_AREA)
    mh, mw = h // 20, w // 20
    centre = rgb[mh : h - mh, mw : w - mw]
    return [("png", encode(rgb, ".png")), ("jpeg90", encode(rgb, ".jpg", 90)),
            ("jpeg70", encode(rgb, ".jpg", 70)), ("resize75", encode(small, ".png")),
            ("crop90", encode(centre, ".png"))]


def video_stills(every_s: float, count: int) -> list[tuple[float, np.ndarray]]:
    """``count`` frames of the bundled video, ``every_s`` seconds apart (RGB)."""
    cap = cv2.VideoCapture(str(SAMPLE_VIDEO))
    out = []
    for i in range(count):
        cap.set(cv2.CAP_PROP_POS_MSEC, i * every_s * 1000.0)
        ok, frame = cap.read()
        if not ok:
            break
        out.append((i * every_s, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    cap.release()
    return out

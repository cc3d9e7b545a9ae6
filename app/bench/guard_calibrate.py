"""``dfshield bench guard --calibrate``: how often two face crops count as near-duplicates
(share more than T hashes in one view), per kind of pair, with the guard's fingerprints.

Pairs: unrelated faces (one crop per identity and label of the crops folder, different
identities), a real face and the self-blended fake made from it (truly near-duplicates), a
crop and its re-encodings / resizes / small shifts, attack-like changes (NES noise, Square's
column stripes and +-eps squares), and stills of the bundled video by time apart.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from app.bench.guard_data import DEFAULT_CROPS, crop_files, identity, read_rgb
from app.bench.media import SAMPLE_VIDEO
from app.config import Settings
from app.guard.fingerprints import Fingerprint, FingerprintKey, fingerprint, shared

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass
class PairRow:
    kind: str
    pairs: int
    matched: int
    max_shared: int


def _jpeg(q: int) -> Transform:
    def f(a: np.ndarray, _: np.random.Generator) -> np.ndarray:
        ok, buf = cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, q])
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return f


def _resize(a: np.ndarray, _: np.random.Generator) -> np.ndarray:
    h, w = a.shape[:2]
    small = cv2.resize(a, (w * 3 // 4, h * 3 // 4), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _shift2(a: np.ndarray, _: np.random.Generator) -> np.ndarray:
    h, w = a.shape[:2]
    return cv2.resize(a[2:, 2:], (w, h), interpolation=cv2.INTER_LINEAR)


def _nes(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.round(a + rng.normal(0, 0.255, a.shape)), 0, 255).astype(np.uint8)


def _stripes(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(a.astype(int) + rng.choice([-16, 16], (1, a.shape[1], 3)), 0, 255).astype(
        np.uint8)


def _square(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Square's 2nd step: stripes, then a block covering 40 % reset to +-eps per channel."""
    b = _stripes(a, rng).astype(int)
    side = round((0.4 * a.shape[0] * a.shape[1]) ** 0.5)
    t, left = rng.integers(0, a.shape[0] - side + 1), rng.integers(0, a.shape[1] - side + 1)
    block = a[t : t + side, left : left + side].astype(int) + rng.choice([-16, 16], 3)
    b[t : t + side, left : left + side] = np.clip(block, 0, 255)
    return b.astype(np.uint8)


TRANSFORMS: dict[str, Transform] = {
    "JPEG 90": _jpeg(90), "JPEG 70": _jpeg(70), "resize 3/4 and back": _resize,
    "shift 2 px + rescale": _shift2, "NES query (sigma 0.001)": _nes,
    "Square: column stripes": _stripes, "Square: stripes + 40 % block": _square,
}


def _row(kind: str, values: list[int], t: int) -> PairRow:
    return PairRow(kind, len(values), sum(v > t for v in values), max(values, default=0))


def _video_crops(side: int, step_s: float = 0.25) -> list[tuple[float, np.ndarray]]:
    from app.pipeline.faces import FaceDetector

    det = FaceDetector.from_settings(Settings(_env_file=None, device="cpu"), "cpu", side)
    cap = cv2.VideoCapture(str(SAMPLE_VIDEO))
    fps = cap.get(cv2.CAP_PROP_FPS) or 24.0
    out, i = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % max(round(fps * step_s), 1) == 0:
            faces = det.detect([cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)])[0]
            if faces:
                out.append((i / fps, faces[0].crop))
        i += 1
    cap.release()
    return out


def calibrate(crops_root: Path = DEFAULT_CROPS, settings: Settings | None = None) -> list[PairRow]:
    s = settings or Settings(_env_file=None)
    key, n, t = FingerprintKey.from_salt("calibration"), s.guard_hashes, s.guard_match_threshold
    rng = np.random.default_rng(0)
    files = crop_files(crops_root, "real") + crop_files(crops_root, "fake")
    crops = [(identity(p), read_rgb(p, 128)) for p in files]
    prints: list[tuple[str, Fingerprint]] = [(i, fingerprint(c, key, n)) for i, c in crops]
    unrelated = [shared(a, b) for (i, a), (j, b) in itertools.combinations(prints, 2) if i != j]
    same = [shared(a, b) for (i, a), (j, b) in itertools.combinations(prints, 2) if i == j]
    rows = [_row("unrelated faces", unrelated, t), _row("real face vs its SBI fake", same, t)]
    for name, f in TRANSFORMS.items():
        rows.append(_row(name, [shared(fingerprint(c, key, n), fingerprint(f(c, rng), key, n))
                                for _, c in crops], t))
    video = [(ts, fingerprint(c, key, n)) for ts, c in _video_crops(128)]
    for lo, hi, label in ((0.9, 1.1, "1 s"), (1.9, 2.1, "2 s"), (2.9, 1e9, ">= 3 s")):
        gaps = [shared(a, b) for (x, a), (y, b) in itertools.combinations(video, 2)
                if lo <= abs(x - y) <= hi]
        rows.append(_row(f"video stills {label} apart", gaps, t))
    return rows


def print_calibration(rows: list[PairRow], threshold: int, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"Near-duplicate pairs (> {threshold} shared hashes in one view)")
    for col in ("pair", "pairs", "near-duplicate", "rate", "max shared"):
        table.add_column(col, justify="right")
    for r in rows:
        rate = f"{100 * r.matched / r.pairs:.3g} %" if r.pairs else "-"
        table.add_row(r.kind, str(r.pairs), str(r.matched), rate, str(r.max_shared))
    console.print(table)

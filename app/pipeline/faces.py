"""Stage f: find faces in frames with MTCNN and cut FaceForensics++-style square crops.

facenet-pytorch's ``MTCNN.detect`` takes a 4-D ``[N,H,W,3]`` uint8 array of same-size images and
returns, per image, an array of boxes (``None`` when no face), probabilities and 5 landmarks.
Frames of different sizes are therefore grouped by shape and run in batches per group.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from facenet_pytorch import MTCNN

from app.config import Settings
from app.pipeline.quality import QualityFlag, QualityRule, box_side, sharpness

Box = tuple[float, float, float, float]
CropBox = tuple[int, int, int, int]
_MTCNN_MIN_WINDOW = 12.0  # P-Net's window: asking for smaller faces only upsamples the frame


@dataclass
class DetectedFace:
    index: int  # 0 = largest in the frame
    box: Box  # MTCNN box x1,y1,x2,y2 in full-resolution frame coordinates
    crop_box: CropBox  # square scale x box, clamped into the frame; x2/y2 exclusive
    prob: float
    landmarks: list[tuple[float, float]]  # 5 points: eyes, nose, mouth corners
    crop: np.ndarray  # uint8 RGB, crop_box region resized to crop_size x crop_size
    sharpness: float = 0.0  # app.pipeline.quality.sharpness of the crop region
    quality: tuple[QualityFlag, ...] = ()  # empty: usable; else reported, not judged


def square_crop_box(box: Sequence[float], width: int, height: int, scale: float = 1.3) -> CropBox:
    """Square of side ``scale * max(w, h)`` centred on ``box``, kept inside the frame.

    The square is *shifted* (not cut) to fit, so it stays square; a side larger than the frame's
    short side is shrunk to it. Integer pixel coordinates, x2/y2 exclusive.
    """
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    x1, y1, x2, y2 = (float(v) for v in box)
    side = min(max(_round(scale * max(x2 - x1, y2 - y1)), 1), width, height)
    left = _clamp(_round((x1 + x2 - side) / 2), 0, width - side)
    top = _clamp(_round((y1 + y2 - side) / 2), 0, height - side)
    return left, top, left + side, top + side


def _round(v: float) -> int:
    # Half up, not Python's half-to-even: a box's crop must not depend on its parity.
    return math.floor(v + 0.5)


def _clamp(v: int, lo: int, hi: int) -> int:
    return int(min(max(v, lo), hi))


def crop_face(frame: np.ndarray, crop_box: CropBox, crop_size: int) -> np.ndarray:
    """The crop_box region of ``frame`` resized to ``crop_size`` (area filter when shrinking)."""
    x1, y1, x2, y2 = crop_box
    region = frame[y1:y2, x1:x2]
    interp = cv2.INTER_AREA if region.shape[0] > crop_size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(region, (crop_size, crop_size), interpolation=interp))


class FaceDetector:
    """MTCNN over batches of RGB frames → per frame, up to ``max_faces`` faces, largest first.

    Frames whose long side exceeds ``detect_max_side`` are downscaled for detection only (MTCNN's
    cost grows with pixels); boxes and landmarks are mapped back and crops cut from full res.
    Each face gets the ``quality`` flags of ``quality`` (a ``QualityRule``).
    Not thread-safe: one detector per worker thread.
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        min_face_size: int = 40,
        max_faces: int = 16,
        prob_min: float = 0.9,
        scale: float = 1.3,
        crop_size: int = 224,
        batch_size: int = 8,
        detect_max_side: int = 1280,
        quality: QualityRule | None = None,
        pyramid_factor: float = 0.709,
    ) -> None:
        if max_faces < 1 or batch_size < 1 or crop_size < 1:
            raise ValueError("max_faces, batch_size and crop_size must be >= 1")
        if detect_max_side < 2 * _MTCNN_MIN_WINDOW:
            raise ValueError(f"detect_max_side must be >= 24, got {detect_max_side}")
        if not 0.3 <= pyramid_factor < 0.95:
            raise ValueError(f"pyramid_factor must be in [0.3, 0.95), got {pyramid_factor}")
        self.device = torch.device(device)
        self.min_face_size = min_face_size
        self.max_faces = max_faces
        self.prob_min = prob_min
        self.scale = scale
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.detect_max_side = detect_max_side
        self.quality = quality or QualityRule()
        # keep_all: we rank and cut ourselves; the weights ship inside the wheel (no download).
        # pyramid_factor: scale step between MTCNN's image pyramid levels (its cost lever).
        self.mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, factor=pyramid_factor,
                           device=self.device).eval()

    @classmethod
    def from_settings(cls, s: Settings, device: torch.device | str, crop_size: int) -> FaceDetector:
        return cls(
            device=device,
            min_face_size=s.min_face_size,
            max_faces=s.max_faces,
            prob_min=s.face_prob_min,
            scale=s.face_scale,
            crop_size=crop_size,
            batch_size=s.face_batch_size,
            detect_max_side=s.face_detect_max_side,
            quality=QualityRule(s.quality_min_face_px, s.quality_min_sharpness),
            pyramid_factor=s.face_pyramid_factor,
        )

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        """Faces of every frame (HxWx3 uint8 RGB, sizes may differ), in input order."""
        for i, frame in enumerate(frames):
            _check_frame(i, frame)
        results: list[list[DetectedFace]] = [[] for _ in frames]
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, frame in enumerate(frames):
            groups[frame.shape].append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                found = self._detect_same_size([frames[i] for i in chunk])
                for i, faces in zip(chunk, found, strict=True):
                    results[i] = faces
        return results

    def _detect_same_size(self, frames: list[np.ndarray]) -> list[list[DetectedFace]]:
        # OpenCV rejects negative strides (e.g. a BGR->RGB view made with [..., ::-1]).
        frames = [np.ascontiguousarray(f) for f in frames]
        height, width = frames[0].shape[:2]
        factor = min(1.0, self.detect_max_side / max(height, width))
        small = [_resize(f, factor) for f in frames]
        det_h, det_w = small[0].shape[:2]
        # Faces of min_face_size at full res are min_face_size * factor px in the small frame.
        min_size = max(_MTCNN_MIN_WINDOW, self.min_face_size * factor)
        if min(det_h, det_w) < min_size:  # MTCNN's scale pyramid would be empty
            return [[] for _ in frames]
        self.mtcnn.min_face_size = min_size
        boxes, probs, points = self.mtcnn.detect(np.stack(small), landmarks=True)
        to_full = np.array([width / det_w, height / det_h])
        return [
            self._faces(frame, b, p, lm, to_full)
            for frame, b, p, lm in zip(frames, boxes, probs, points, strict=True)
        ]

    def _faces(
        self,
        frame: np.ndarray,
        boxes: np.ndarray | None,
        probs: np.ndarray,
        points: np.ndarray | None,
        to_full: np.ndarray,
    ) -> list[DetectedFace]:
        if boxes is None or points is None:
            return []
        boxes = np.asarray(boxes, dtype=np.float64) * np.tile(to_full, 2)
        points = np.asarray(points, dtype=np.float64) * to_full
        probs = np.asarray(probs, dtype=np.float64)
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = (probs >= self.prob_min) & (sides >= self.min_face_size)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = [int(k) for k in np.argsort(-areas, kind="stable") if keep[k]][: self.max_faces]
        return [self._face(frame, rank, boxes[k], float(probs[k]), points[k])
                for rank, k in enumerate(order)]

    def _face(
        self, frame: np.ndarray, rank: int, box_arr: np.ndarray, prob: float, points: np.ndarray
    ) -> DetectedFace:
        """One face: its square crop (cut from full resolution) and its quality flags."""
        box: Box = tuple(float(v) for v in box_arr)  # type: ignore[assignment]
        height, width = frame.shape[:2]
        crop_box = square_crop_box(box, width, height, self.scale)
        sharp = sharpness(frame, crop_box)
        return DetectedFace(
            index=rank,
            box=box,
            crop_box=crop_box,
            prob=prob,
            landmarks=[(float(x), float(y)) for x, y in points],
            crop=crop_face(frame, crop_box, self.crop_size),
            sharpness=sharp,
            quality=self.quality.flags(box_side(box), sharp),
        )


def _check_frame(i: int, frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3:
        raise ValueError(f"frame {i}: expected an HxWx3 uint8 RGB array")
    if frame.shape[2] != 3 or min(frame.shape[:2]) < 1:
        raise ValueError(f"frame {i}: expected HxWx3 with H, W >= 1, got {frame.shape}")


def _resize(frame: np.ndarray, factor: float) -> np.ndarray:
    if factor >= 1.0:
        return frame
    height, width = frame.shape[:2]
    size = (max(1, math.floor(width * factor)), max(1, math.floor(height * factor)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)

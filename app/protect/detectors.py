"""The attacker's face detectors as they would run on a protected photo (no gradients).

MTCNN is the white-box target of stage 2 (run exactly as the project's ``FaceDetector`` runs
it). The black-box transfer check is a classic boosted cascade: the opencv 5 wheel no longer
ships ``cv2.CascadeClassifier`` nor its Haar files, so OpenCV's *LBP* frontal-face cascade
(``lbpcascade_frontalface_opencv.xml``, bundled with scikit-image and run by its ``Cascade``)
stands in for the Haar cascade: same detector family (Viola-Jones boosting over local
features), never optimised against.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import cv2
import numpy as np
from skimage.feature import Cascade

from app.pipeline.faces import FaceDetector

Box = tuple[float, float, float, float]


def mtcnn_boxes(detector: FaceDetector, rgb: np.ndarray) -> list[tuple[Box, float]]:
    """(box, probability) of every face MTCNN keeps (the detector's ``prob_min``)."""
    return [(f.box, f.prob) for f in detector.detect([rgb])[0]]


@lru_cache(maxsize=1)
def _cascade() -> Cascade:
    from skimage.data import lbp_frontal_face_cascade_filename

    return Cascade(lbp_frontal_face_cascade_filename())


_CACHE: dict[tuple[bytes, tuple[int, ...], int, int], list[Box]] = {}
_CACHE_MAX = 64


def cascade_boxes(rgb: np.ndarray, min_size: int = 40, max_side: int = 1280) -> list[Box]:
    """OpenCV's LBP frontal-face cascade (via scikit-image) → boxes (x1,y1,x2,y2), run on a
    copy shrunk like MTCNN's input. Results are cached by image content: the exhaustive
    sliding window takes seconds per photo and evaluations ask about the same original often."""
    key = (hashlib.sha1(np.ascontiguousarray(rgb).data).digest(), rgb.shape, min_size, max_side)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _cascade_uncached(rgb, min_size, max_side)
    return list(_CACHE[key])


def _cascade_uncached(rgb: np.ndarray, min_size: int, max_side: int) -> list[Box]:
    h, w = rgb.shape[:2]
    f = min(1.0, max_side / max(h, w))
    small = cv2.resize(rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA) \
        if f < 1.0 else rgb
    side = max(24, round(min_size * f))
    found = _cascade().detect_multi_scale(img=small, scale_factor=1.2, step_ratio=1,
                                          min_size=(side, side),
                                          max_size=(min(small.shape[:2]),) * 2)
    return [(d["c"] / f, d["r"] / f, (d["c"] + d["width"]) / f, (d["r"] + d["height"]) / f)
            for d in found]

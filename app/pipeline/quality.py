"""Face quality: is a detected face usable evidence for g, or too small / too blurry to judge?

Small, upscaled or blurred faces are the most common cause of false alarms: g learned blending
artefacts at a given resolution, and interpolation or blur looks like them. A face with a flag is
still scored (p_fake, p_attacked are reported) but its verdict is ``uncertain`` and it does not
vote (see ``app.pipeline.verdicts``).

Measures, both on the original frame:

* **size**: the detector box's longer side in original pixels (``face_too_small`` below
  ``min_face_px``).
* **sharpness**: the crop region shrunk to 128 x 128 grey (regions smaller than that are kept
  at their own size: enlarging would blur them, and smallness has its own flag), its centre 3/4
  (about the face box inside the 1.3x crop) in [0, 1]; ``var(Laplacian 3x3) / var(grey)``.
  Dividing by the grey variance makes it contrast-invariant (a dim face is not a blurry one);
  it is the share of the face's signal at the finest scale. A large face that was upscaled
  from a small one keeps its blur at 128 px, so it is caught here even when its box is big.
  ``face_too_blurry`` below ``min_sharpness``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from app.schemas import QualityFlag, QualityThresholds

FACE_TOO_SMALL: QualityFlag = "face_too_small"
FACE_TOO_BLURRY: QualityFlag = "face_too_blurry"
SHARPNESS_SIZE = 128  # the fixed size sharpness is measured at
_MARGIN = 0.125  # cut on each side: the centre 3/4 ~ 1 / 1.3, the face box inside its crop
_MIN_VARIANCE = 1e-6  # a flat grey patch: sharpness 0 (nothing to judge)


@dataclass(frozen=True)
class QualityRule:
    """Thresholds of the two flags; 0 turns a flag off.

    ``min_face_px`` 64: the bundled g sees 128 px crops, so a 64 px face's 1.3x crop (83 px) is
    already enlarged 1.5x (3.6x for a 299 px Xception); below that, interpolation dominates
    what g sees. ``min_sharpness`` 0.6, calibrated on tests/data: the unblurred faces score
    1.0-6.0 at every size tried (the softest is skimage's astronaut), the same faces under a
    Gaussian blur of sigma 1.5 px at the 128 px crop scale score 0.12-0.48.
    """

    min_face_px: float = 64.0
    min_sharpness: float = 0.6

    def flags(self, side_px: float, sharpness_value: float) -> tuple[QualityFlag, ...]:
        """The flags a face of this size and sharpness gets (empty: judgeable)."""
        out: list[QualityFlag] = []
        if side_px < self.min_face_px:
            out.append(FACE_TOO_SMALL)
        if sharpness_value < self.min_sharpness:
            out.append(FACE_TOO_BLURRY)
        return tuple(out)

    def public(self) -> QualityThresholds:
        """The thresholds as every result reports them."""
        return QualityThresholds(min_face_px=self.min_face_px, min_sharpness=self.min_sharpness)


def box_side(box: tuple[float, float, float, float]) -> float:
    """The longer side of an ``x1, y1, x2, y2`` box."""
    x1, y1, x2, y2 = box
    return float(max(x2 - x1, y2 - y1))


def sharpness(frame: np.ndarray, crop_box: tuple[int, int, int, int]) -> float:
    """Contrast-normalised variance of the Laplacian of the face region (see module doc)."""
    x1, y1, x2, y2 = crop_box
    region = np.ascontiguousarray(frame[y1:y2, x1:x2])
    if min(region.shape[:2]) < 8:
        return 0.0
    side = min(SHARPNESS_SIZE, *region.shape[:2])  # shrink, never enlarge (that blurs)
    small = cv2.resize(region, (side, side), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float64) / 255.0
    margin = round(side * _MARGIN)
    inner = grey[margin : side - margin, margin : side - margin]
    variance = float(inner.var())
    if variance < _MIN_VARIANCE:
        return 0.0
    return float(cv2.Laplacian(inner, cv2.CV_64F, ksize=3).var() / variance)

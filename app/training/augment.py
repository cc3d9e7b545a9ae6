"""Image augmentations for the demo corpus, applied alike to real and fake samples.

Geometry moves the 5 landmarks with the image (SBI needs them afterwards). The quality stage
(blur, noise, resampling, JPEG 40-95) runs on reals and fakes with the same distribution, so a
detector cannot separate them by compression or sharpness alone.
"""

from __future__ import annotations

import cv2
import numpy as np

from app.training.sbi import FLIP_ORDER


def geometry(
    img: np.ndarray, lms: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random flip, rotation ±10°, scale 0.9-1.1, shift ±5% → (image, landmarks)."""
    h, w = img.shape[:2]
    pts = np.asarray(lms, np.float64).copy()
    if rng.random() < 0.5:
        img = np.ascontiguousarray(img[:, ::-1])
        pts[:, 0] = w - 1 - pts[:, 0]
        pts = pts[FLIP_ORDER]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-10, 10), rng.uniform(0.9, 1.1))
    m[:, 2] += rng.uniform(-0.05, 0.05, size=2) * np.array([w, h])
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    pts = pts @ m[:, :2].T + m[:, 2]
    return out, pts


def colour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild global brightness, contrast, saturation and hue changes."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-4, 4)) % 180
    hsv[..., 1] *= rng.uniform(0.75, 1.25)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    out = (out - out.mean()) * rng.uniform(0.8, 1.2) + out.mean() + rng.uniform(-20, 20)
    return np.clip(out, 0, 255).astype(np.uint8)


def quality(img: np.ndarray, rng: np.random.Generator, p_jpeg: float = 0.9) -> np.ndarray:
    """Blur, resampling, noise (each sometimes), then JPEG at quality 40-95 (``p_jpeg``)."""
    h, w = img.shape[:2]
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
    if rng.random() < 0.2:
        f = rng.uniform(0.5, 0.9)
        small = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.25:
        noise = rng.normal(0.0, rng.uniform(1.0, 6.0), size=img.shape)
        img = np.clip(img + noise, 0, 255).astype(np.uint8)
    if rng.random() < p_jpeg:
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY,
                                                        int(rng.integers(40, 96))])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(img)


def to_grey(img: np.ndarray) -> np.ndarray:
    """Grey replicated to 3 channels (grey identities must stay grey in reals and fakes)."""
    return np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)

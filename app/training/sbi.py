"""Pseudo-fakes from real faces: self-blended images and cross-identity blends.

Self-blended images (SBI) follow the description in Shiohara & Yamasaki, "Detecting Deepfakes
with Self-Blended Images" (CVPR 2022): one real face gives both the target (the image as is) and
the source (a copy with colour, frequency and small geometric jitter); the source is pasted over
the target's face through a deformed, blurred face mask. The result carries the blending
boundary and statistics mismatch of face swaps without any identity change, so a detector that
learns it must look at blending artefacts rather than at who is in the picture.

Mask from 5 MTCNN points: SBI uses the convex hull of 68/81 dlib landmarks (jaw + brows, or
forehead). Five points say where eyes, nose and mouth are but not where the jaw is, so the hull
here is an ellipse in the face's own frame (axis = eye midpoint -> mouth midpoint), reaching
~0.7 eye-mouth distances above the eyes (brows/lower forehead) and ~0.8 below the mouth (chin),
~1.05 inter-ocular distances either side of the centre (cheeks), joined with the 5 points. It is
an approximation of the face oval for roughly frontal faces; random deformation covers the rest.

Every random choice comes from the caller's ``numpy.random.Generator`` (same seed, same output).
Images are HxWx3 uint8 RGB; landmarks are 5 (x, y) pixel points in image coordinates, ordered
left eye, right eye, nose, mouth left, mouth right (MTCNN's order).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Landmarks = Sequence[Sequence[float]] | np.ndarray
FLIP_ORDER = [1, 0, 2, 4, 3]  # landmark order after a horizontal flip (left <-> right)
# MTCNN's 5 points in a 1.3x square face crop, as fractions of the crop side (typical frontal).
CANONICAL_5 = np.array(
    [[0.346, 0.408], [0.654, 0.408], [0.5, 0.538], [0.385, 0.69], [0.615, 0.69]], np.float64
)
# SBI's blend ratios: a full paste half of the time, partial blends otherwise.
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
MIN_CHANGE = 3.0  # grey levels a self-blend must change the face by, on average (see self_blend)
MAX_TRIES = 8


def canonical_landmarks(size: int) -> np.ndarray:
    """Typical 5-point landmarks of a frontal face in a ``size``² 1.3x crop (fallback)."""
    return CANONICAL_5 * size


def _lms(landmarks: Landmarks) -> np.ndarray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"expected 5 (x, y) landmarks, got shape {pts.shape}")
    return pts


def face_hull(landmarks: Landmarks, shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """Binary face-oval mask (float32 HxW in {0,1}) from 5 landmarks; see module docstring."""
    pts = _lms(landmarks)
    eyes, mouth = pts[:2].mean(0), pts[3:].mean(0)
    down = mouth - eyes
    length = max(float(np.linalg.norm(down)), 1.0)
    u = down / length  # the face's vertical axis, pointing to the chin
    v = np.array([-u[1], u[0]])  # horizontal axis
    width = max(float(np.linalg.norm(pts[1] - pts[0])), 1.0)
    a, b = 1.25 * length * scale, 1.05 * width * scale  # semi-axes: (0.7 + 1 + 0.8) / 2 = 1.25
    centre = eyes + (1.25 - 0.7) * length * u
    theta = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    oval = centre + np.outer(a * np.sin(theta), u) + np.outer(b * np.cos(theta), v)
    hull = cv2.convexHull(np.round(np.vstack([oval, pts])).astype(np.int32))
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(np.float32)


def _elastic(mask: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Warp ``mask`` with a smooth random displacement field (coarse noise, upsampled)."""
    h, w = mask.shape
    grid = rng.normal(size=(2, 5, 5)).astype(np.float32) * amount * max(h, w)
    dx = cv2.resize(grid[0], (w, h), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(grid[1], (w, h), interpolation=cv2.INTER_CUBIC)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(mask, xs + dx, ys + dy, cv2.INTER_LINEAR, borderValue=0)


def random_mask(
    landmarks: Landmarks, shape: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Face hull, randomly scaled, elastically deformed, dilated or eroded, blurred, then scaled
    by one of SBI's blend ratios. Float32 HxW in [0, 1]; exactly 0 far from the face."""
    side = max(shape)
    mask = face_hull(landmarks, shape, scale=rng.uniform(0.85, 1.1))
    mask = _elastic(mask, rng, rng.uniform(0.005, 0.02))
    k = int(rng.integers(1, max(2, round(0.05 * side))))
    if k > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        mask = (cv2.dilate if rng.random() < 0.5 else cv2.erode)(mask, kernel)
    sigma = rng.uniform(0.01, 0.04) * side
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    peak = float(mask.max())
    if peak <= 0:
        return mask
    mask = mask / peak * float(rng.choice(BLEND_RATIOS))
    mask[mask < 1.0 / 255] = 0.0  # blur tails: keep "far outside" exactly untouched
    return mask.astype(np.float32)


def colour_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HSV shift + brightness/contrast + per-channel shift; magnitudes bounded away from 0 so the
    source always differs from the target."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6)) % 180
    hsv[..., 1] *= rng.uniform(0.8, 1.2)
    hsv[..., 2] *= rng.uniform(0.85, 1.15)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    out = out.astype(np.float32)
    contrast = rng.uniform(0.85, 1.15)
    signs = rng.choice([-1.0, 1.0], size=3)
    shift = rng.uniform(-12, 12) + signs * rng.uniform(4, 14, size=3)
    out = (out - out.mean()) * contrast + out.mean() + shift
    return np.clip(out, 0, 255).astype(np.uint8)


def frequency_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Down-then-up resampling by 2 or 4, or unsharp-mask sharpening (SBI always applies one:
    the source's frequency content must differ from the target's, as after a face swap)."""
    if rng.random() < 0.5:
        blurred = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 2.0)).astype(np.float32)
        amount = rng.uniform(0.5, 1.5)
        return np.clip(img + amount * (img - blurred), 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    f = 0.5 if rng.random() < 0.5 else 0.25
    small = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def geometric_jitter(
    img: np.ndarray, centre: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Scale 0.95-1.05 about ``centre`` and translate up to 3% of the side (SBI's mismatch)."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), 0.0, rng.uniform(0.95, 1.05))
    m[:, 2] += rng.uniform(-0.03, 0.03, size=2) * np.array([w, h])
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def _blend(src: np.ndarray, tgt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    t = tgt.astype(np.float32)
    out = t + mask[..., None] * (src.astype(np.float32) - t)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _check_img(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError("expected an HxWx3 uint8 RGB image")


def _grey(img: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def is_grey(img: np.ndarray) -> bool:
    """True when all three channels are equal (a grey picture stored as RGB)."""
    return bool(np.ptp(img.astype(np.int16), axis=2).max() == 0)


def visible_change(fake: np.ndarray, img: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute change (grey levels, averaged over channels) where the mask is at least
    half its peak (the blended face, whatever the blend ratio)."""
    peak = float(mask.max())
    if peak <= 0:
        return 0.0
    inside = mask >= 0.5 * peak
    return float(np.abs(fake.astype(np.float32) - img.astype(np.float32)).mean(2)[inside].mean())


def self_blend(
    img: np.ndarray, landmarks: Landmarks, rng: np.random.Generator,
    min_change: float = MIN_CHANGE,
) -> tuple[np.ndarray, np.ndarray]:
    """A self-blended fake of ``img`` → (fake uint8 HxWx3, mask float32 HxW in [0, 1]).

    A grey ``img`` gets a grey fake. Mask and source jitter are redrawn (up to ``MAX_TRIES``
    times, the largest change kept) while the face changes by less than ``min_change`` levels:
    on a blurry grey face, colour shifts can cancel in luminance and resampling changes nothing,
    and a "fake" identical to its real is label noise for training and evaluation alike.
    """
    _check_img(img)
    pts = _lms(landmarks)
    grey = is_grey(img)
    best, best_mask, best_change = img, np.zeros(img.shape[:2], np.float32), -1.0
    for _ in range(MAX_TRIES):
        mask = random_mask(pts, img.shape[:2], rng)
        src = geometric_jitter(frequency_jitter(colour_jitter(img, rng), rng), pts.mean(0), rng)
        fake = _blend(_grey(src) if grey else src, img, mask)
        change = visible_change(fake, img, mask)
        if change > best_change:
            best, best_mask, best_change = fake, mask, change
        if change >= min_change:
            break
    return best, best_mask


def align_to(
    source_img: np.ndarray, source_lms: Landmarks, target_lms: Landmarks, shape: tuple[int, int]
) -> np.ndarray:
    """``source_img`` warped by the similarity that maps its landmarks onto the target's."""
    src_pts, tgt_pts = _lms(source_lms), _lms(target_lms)
    # A generous RANSAC threshold: 5 exact points, we want a least-squares fit over all of them.
    thresh = 0.05 * max(shape)
    m, _ = cv2.estimateAffinePartial2D(
        src_pts.astype(np.float32), tgt_pts.astype(np.float32), ransacReprojThreshold=thresh
    )
    h, w = shape
    if m is None:  # degenerate points: fall back to a plain resize
        return cv2.resize(source_img, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.warpAffine(
        source_img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
    )


def match_colour(src: np.ndarray, tgt: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Shift ``src``'s per-channel LAB mean/std inside ``region`` to the target's (as face-swap
    pipelines do before blending, so the fake is not trivially a colour patch)."""
    sel = region > 0.5
    if sel.sum() < 16:
        return src
    s = cv2.cvtColor(src, cv2.COLOR_RGB2LAB).astype(np.float32)
    t = cv2.cvtColor(tgt, cv2.COLOR_RGB2LAB).astype(np.float32)
    s_mu, s_sd = s[sel].mean(0), s[sel].std(0) + 1e-3
    t_mu, t_sd = t[sel].mean(0), t[sel].std(0) + 1e-3
    out = (s - s_mu) * (t_sd / s_sd) + t_mu
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def cross_blend(
    target_img: np.ndarray,
    target_lms: Landmarks,
    source_img: np.ndarray,
    source_lms: Landmarks,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Another identity's face (``source_img``) aligned onto the target by a landmark similarity
    and blended through the same random mask → (fake uint8 HxWx3, mask float32 HxW)."""
    _check_img(target_img)
    _check_img(source_img)
    tgt_pts = _lms(target_lms)
    shape = target_img.shape[:2]
    src = align_to(source_img, source_lms, tgt_pts, shape)
    if rng.random() < 0.7:
        src = match_colour(src, target_img, face_hull(tgt_pts, shape))
    src = frequency_jitter(src, rng)
    mask = random_mask(tgt_pts, shape, rng)
    return _blend(src, target_img, mask), mask


def self_blend_frame(
    frame: np.ndarray,
    crop_box: Sequence[int],
    landmarks: Landmarks,
    rng: np.random.Generator,
) -> np.ndarray:
    """Self-blend the face inside ``crop_box`` (x1, y1, x2, y2) of a full frame; landmarks are in
    frame coordinates. Only the box region changes."""
    x1, y1, x2, y2 = (int(v) for v in crop_box)
    region = np.ascontiguousarray(frame[y1:y2, x1:x2])
    fake, _ = self_blend(region, _lms(landmarks) - [x1, y1], rng)
    out = frame.copy()
    out[y1:y2, x1:x2] = fake
    return out

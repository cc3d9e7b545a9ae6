"""Face quality flags on real faces: sharp portraits pass, tiny or blurred faces are flagged,
and a flagged face is scored but judged ``uncertain`` (real MTCNN, real bundled models)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from app.config import Settings
from app.media import MediaLimits
from app.pipeline.analyze import Analyzer
from app.pipeline.faces import FaceDetector
from app.pipeline.quality import QualityRule, box_side, sharpness
from app.pipeline.run import analyze_path
from app.schemas import Verdict
from tests.mediagen import write_image
from tests.pipeline.facemedia import PORTRAITS, canvas, paste, read_rgb, tile

RULE = QualityRule()  # the defaults under test: 64 px, sharpness 0.6


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(crop_size=128)


def _largest(detector: FaceDetector, image: np.ndarray):  # noqa: ANN202
    faces = detector.detect([image])[0]
    assert faces, "MTCNN found no face"
    return faces[0]


def _blur_at_crop_scale(image: np.ndarray, crop_side: int, sigma: float) -> np.ndarray:
    """Gaussian blur of ``sigma`` px as seen at the 128 px scale sharpness is measured at."""
    return cv2.GaussianBlur(image, (0, 0), sigma * crop_side / 128)


@pytest.mark.parametrize("name", PORTRAITS)
def test_sharp_portraits_pass_and_their_heavily_blurred_copies_are_flagged(
    detector: FaceDetector, name: str
) -> None:
    image = read_rgb(name)
    sharp = _largest(detector, image)
    assert sharp.quality == () and sharp.sharpness >= 1.0
    side = sharp.crop_box[2] - sharp.crop_box[0]
    blurred = _largest(detector, _blur_at_crop_scale(image, side, 2.0))
    assert blurred.quality == ("face_too_blurry",)  # large enough: only the blur flag
    assert blurred.sharpness < RULE.min_sharpness < sharp.sharpness / 1.6


def test_sharpness_ignores_contrast_but_not_upscaling(detector: FaceDetector) -> None:
    image = read_rgb("obama.jpg")
    face = _largest(detector, image)
    dim = (image * 0.4 + 60).astype(np.uint8)  # a dim, flat exposure of the same face
    assert sharpness(dim, face.crop_box) == pytest.approx(face.sharpness, rel=0.15)
    # A face enlarged 16x from a ~21 px original: big box, but the blur of the enlargement stays.
    h, w = image.shape[:2]
    small = cv2.resize(image, (w // 16, h // 16), interpolation=cv2.INTER_AREA)
    upscaled = _largest(detector, cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
    assert box_side(upscaled.box) > 300 and upscaled.quality == ("face_too_blurry",)


def test_tiny_face_is_found_and_flagged_too_small(detector: FaceDetector) -> None:
    frame = paste(canvas(320, 240), tile("grace_hopper.jpg", 96), 100, 60)
    face = _largest(detector, frame)
    assert detector.min_face_size <= box_side(face.box) < RULE.min_face_px
    assert "face_too_small" in face.quality


def test_settings_set_the_thresholds_and_zero_turns_flags_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DFSHIELD_QUALITY_MIN_FACE_PX", "0")
    monkeypatch.setenv("DFSHIELD_QUALITY_MIN_SHARPNESS", "0")
    s = Settings(_env_file=None)
    assert s.max_faces == 16  # default: group photos get every face
    off = FaceDetector.from_settings(s, "cpu", 128)
    assert off.quality == QualityRule(0.0, 0.0)
    frame = paste(canvas(320, 240), cv2.GaussianBlur(tile("biden.jpg", 96), (0, 0), 3), 100, 60)
    assert _largest(off, frame).quality == ()
    assert QualityRule().flags(40.0, 0.1) == ("face_too_small", "face_too_blurry")


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.from_settings(Settings(_env_file=None, device="cpu"))


def test_flagged_face_keeps_its_scores_but_does_not_judge(
    analyzer: Analyzer, tmp_path: Path
) -> None:
    """A sharp face beside a tiny one: both scored; the tiny one is uncertain and does not vote."""
    frame = canvas(520, 320)
    paste(frame, tile("obama.jpg", 256), 20, 32)
    paste(frame, tile("biden.jpg", 96), 380, 120)
    path = write_image(tmp_path / "pair.png", frame)
    s = Settings(_env_file=None, device="cpu")
    faces = FaceDetector.from_settings(s, analyzer.device, analyzer.crop_size)
    result = analyze_path(path, analyzer, faces, MediaLimits.from_settings(s))
    big, tiny = result.frames[0].faces
    assert big.quality == [] and big.verdict in (Verdict.REAL, Verdict.FAKE, Verdict.ATTACKED)
    assert "face_too_small" in tiny.quality and tiny.verdict is Verdict.UNCERTAIN
    assert 0.0 <= tiny.p_fake <= 1.0  # scored and reported all the same
    assert result.frames[0].verdict is big.verdict  # the frame is its judgeable face's
    assert result.summary.faces.uncertain == 1 and result.summary.verdict is big.verdict
    assert result.rules is not None and result.rules.quality.min_face_px == 64.0
    assert "quality flag" in result.rules.face

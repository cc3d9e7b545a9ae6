"""A whole photo: budget, untouched background, report, and a bit-exact PNG round trip."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.pipeline.faces import FaceDetector
from app.protect.generators import FaceGenerator
from app.protect.protector import NoFaceFound, ProtectOptions, Protector
from app.protect.service import png_bytes


@pytest.mark.parametrize("mode", ["interrupt", "tsdf"])
def test_protect_stays_in_budget_and_reports(photo: np.ndarray, faces_detector: FaceDetector,
                                             tiny_gen: FaceGenerator, mode: str) -> None:
    protector = Protector([tiny_gen], faces_detector)
    opts = ProtectOptions(mode=mode, eps=0.025, steps=4, poison_steps=4)  # type: ignore[arg-type]
    result = protector.protect(photo, opts)
    diff = np.abs(result.protected.astype(int) - photo.astype(int))
    assert diff.max() <= 0.025 * 255
    assert diff.max() > 0
    report = result.report
    assert report.mode == mode and report.linf <= 0.025
    assert report.steps_done == report.steps == (4 if mode == "interrupt" else 8)
    (face,) = report.faces
    x1, y1, x2, y2 = face.crop_box
    outside = diff.copy()
    outside[y1:y2, x1:x2] = 0
    assert outside.max() == 0  # the background is bit-identical
    assert face.generators[0].name == tiny_gen.name
    assert report.measured_against.generators == [tiny_gen.name]
    assert any("JPEG" in c for c in report.caveats)
    assert 25 < face.psnr_db < 60 and 0.8 < face.ssim <= 1.0


def test_protected_png_round_trips_bit_exactly(photo: np.ndarray, faces_detector: FaceDetector,
                                               tiny_gen: FaceGenerator) -> None:
    result = Protector([tiny_gen], faces_detector).protect(
        photo, ProtectOptions(mode="interrupt", steps=2))
    data = png_bytes(result.protected)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert decoded.dtype == np.uint8
    assert np.array_equal(decoded, result.protected)
    assert png_bytes(decoded) == data


def test_a_photo_without_a_face_is_refused(faces_detector: FaceDetector,
                                           tiny_gen: FaceGenerator) -> None:
    blank = np.full((200, 300, 3), 127, np.uint8)
    with pytest.raises(NoFaceFound):
        Protector([tiny_gen], faces_detector).protect(blank, ProtectOptions(steps=1))

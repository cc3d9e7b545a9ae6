"""Stage f: real MTCNN on real media (tests/data), crop geometry, batching and ranking."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from app.config import Settings
from app.pipeline.faces import FaceDetector, crop_face, square_crop_box

DATA = Path(__file__).resolve().parents[1] / "data"
CROP = 64


def read_rgb(name: str) -> np.ndarray:
    bgr = cv2.imread(str(DATA / name), cv2.IMREAD_COLOR)
    assert bgr is not None, f"missing test image {DATA / name}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def sample_video(name: str, n: int) -> list[np.ndarray]:
    """``n`` evenly spaced frames, decoded with PyAV (RGB)."""
    # Count by decoding: header frame counts and packet counts overstate (98 vs 95 decodable
    # frames in the cartoon).
    with av.open(str(DATA / name)) as container:
        total = sum(1 for _ in container.decode(video=0))
    assert total > n
    wanted = set(np.linspace(0, total - 1, n).round().astype(int).tolist())
    with av.open(str(DATA / name)) as container:
        decoded = enumerate(container.decode(video=0))
        frames = [f.to_ndarray(format="rgb24") for i, f in decoded if i in wanted]
    assert len(frames) == n
    return frames


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(crop_size=CROP, batch_size=8)


@pytest.fixture(scope="module")
def pexels() -> list[np.ndarray]:
    return sample_video("pexels_woman_3063838.mp4", 32)


@pytest.fixture(scope="module")
def two_faces() -> np.ndarray:
    """Grace Hopper (face ~175 px) beside a half-size Obama (face ~110 px), same height."""
    grace = read_rgb("grace_hopper.jpg")
    obama = cv2.resize(read_rgb("obama.jpg"), (410, 512), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(np.concatenate([grace, obama], axis=1))


def assert_face_geometry(face, frame: np.ndarray) -> None:  # noqa: ANN001
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = face.crop_box
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and x2 - x1 == y2 - y1
    assert face.crop.shape == (CROP, CROP, 3) and face.crop.dtype == np.uint8
    assert face.prob >= 0.9 and len(face.landmarks) == 5
    bx1, by1, bx2, by2 = face.box
    for x, y in face.landmarks:  # eyes, nose and mouth lie inside the face box
        assert bx1 <= x <= bx2 and by1 <= y <= by2


def test_face_in_almost_every_frame_of_the_pexels_video(
    detector: FaceDetector, pexels: list[np.ndarray]
) -> None:
    frames = pexels
    results = detector.detect(frames)
    assert len(results) == 32
    found = [faces for faces in results if faces]
    assert len(found) >= 0.95 * 32
    for frame, faces in zip(frames, results, strict=True):
        assert len(faces) <= 1  # one person in the clip
        for face in faces:
            assert_face_geometry(face, frame)
            # data README: the face is 190-235 px wide; MTCNN boxes run forehead to chin
            assert 150 <= face.box[2] - face.box[0] <= 280
            assert 150 <= face.box[3] - face.box[1] <= 360


@pytest.mark.parametrize("name", ["obama.jpg", "biden.jpg", "grace_hopper.jpg"])
def test_face_in_still_portraits(detector: FaceDetector, name: str) -> None:
    image = read_rgb(name)
    (faces,) = detector.detect([image])
    assert len(faces) == 1
    assert faces[0].index == 0
    assert_face_geometry(faces[0], image)


def test_no_face_in_cartoon(detector: FaceDetector) -> None:
    results = detector.detect(sample_video("no_face_cartoon.mp4", 16))
    assert results == [[] for _ in range(16)]


def test_crops_are_cut_at_full_resolution_after_downscaled_detection() -> None:
    image = read_rgb("grace_hopper.jpg")  # 512x512, detected at full size and at half size
    (full,) = FaceDetector(crop_size=CROP, detect_max_side=512).detect([image])
    (small,) = FaceDetector(crop_size=CROP, detect_max_side=256).detect([image])
    assert len(full) == len(small) == 1
    side = full[0].box[2] - full[0].box[0]
    np.testing.assert_allclose(small[0].box, full[0].box, atol=0.06 * side)
    np.testing.assert_allclose(small[0].landmarks, full[0].landmarks, atol=0.06 * side)
    np.testing.assert_array_equal(small[0].crop, crop_face(image, small[0].crop_box, CROP))


def test_batch_of_mixed_sizes_keeps_order_and_matches_single_frames(
    pexels: list[np.ndarray],
    two_faces: np.ndarray,
) -> None:
    grace = read_rgb("grace_hopper.jpg")
    blank = np.full((120, 100, 3), 128, np.uint8)
    tiny = np.zeros((8, 9, 3), np.uint8)  # smaller than MTCNN's window: no face, no crash
    flipped = pexels[1][:, ::-1]  # a negative-stride view
    frames = [pexels[0], grace, two_faces, flipped, blank, tiny, pexels[2]]
    detector = FaceDetector(crop_size=CROP, batch_size=2)
    batched = detector.detect(frames)
    assert [len(f) for f in batched] == [1, 1, 2, 1, 0, 0, 1]
    for frame, faces in zip(frames, batched, strict=True):
        (alone,) = detector.detect([frame])
        assert len(alone) == len(faces)
        for a, b in zip(faces, alone, strict=True):
            assert a.index == b.index and a.crop_box == b.crop_box
            np.testing.assert_allclose(a.box, b.box, atol=0.01)
            np.testing.assert_allclose(a.prob, b.prob, atol=1e-4)
    assert detector.detect([]) == []


def test_faces_sorted_by_area_and_capped(two_faces: np.ndarray) -> None:
    (faces,) = FaceDetector(crop_size=CROP).detect([two_faces])
    assert [f.index for f in faces] == [0, 1]
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
    assert areas[0] > areas[1]
    assert faces[0].box[2] < 512 < faces[1].box[0]  # Grace (left) is the larger face
    (capped,) = FaceDetector(crop_size=CROP, max_faces=1).detect([two_faces])
    assert len(capped) == 1 and capped[0].box == faces[0].box
    # A larger min_face_size changes MTCNN's pyramid, so the box moves a little.
    (big_only,) = FaceDetector(crop_size=CROP, min_face_size=150).detect([two_faces])
    assert len(big_only) == 1
    np.testing.assert_allclose(big_only[0].box, faces[0].box, atol=15)


def test_from_settings_and_bad_frames() -> None:
    s = Settings(max_faces=2, min_face_size=30, face_scale=1.5, face_prob_min=0.8)
    d = FaceDetector.from_settings(s, "cpu", crop_size=CROP)
    assert (d.max_faces, d.min_face_size, d.scale, d.prob_min, d.crop_size) == (
        2,
        30,
        1.5,
        0.8,
        CROP,
    )
    with pytest.raises(ValueError, match="frame 1"):
        d.detect([np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        d.detect([np.zeros((20, 20, 3), np.float32)])


# --- crop geometry ---------------------------------------------------------------------------

W, H = 400, 300


def assert_square_inside(cb: tuple[int, int, int, int], side: int) -> None:
    x1, y1, x2, y2 = cb
    assert all(isinstance(v, int) for v in cb)
    assert x2 - x1 == y2 - y1 == side
    assert x1 >= 0 and y1 >= 0 and x2 <= W and y2 <= H


def test_square_crop_box_free_case_is_exactly_1_3_times_the_long_side() -> None:
    assert square_crop_box((100, 100, 200, 180), 1000, 1000) == (85, 75, 215, 205)
    assert square_crop_box((100, 100, 180, 200), 1000, 1000, scale=1.5) == (65, 75, 215, 225)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((0, 100, 50, 150), (0, 93, 65, 158)),  # left edge
        ((350, 100, 400, 150), (335, 93, 400, 158)),  # right edge
        ((150, 0, 200, 50), (143, 0, 208, 65)),  # top edge
        ((150, 250, 200, 300), (143, 235, 208, 300)),  # bottom edge
        ((-10, -10, 40, 40), (0, 0, 65, 65)),  # top-left corner, box partly outside
        ((370, -5, 420, 45), (335, 0, 400, 65)),  # top-right corner
        ((-5, 260, 45, 310), (0, 235, 65, 300)),  # bottom-left corner
        ((360, 260, 410, 310), (335, 235, 400, 300)),  # bottom-right corner
    ],
)
def test_square_crop_box_is_shifted_into_the_frame(box, expected) -> None:  # noqa: ANN001
    cb = square_crop_box(box, W, H)
    assert cb == expected
    assert_square_inside(cb, 65)


def test_square_crop_box_larger_than_frame_is_shrunk_to_the_short_side() -> None:
    cb = square_crop_box((-50, -50, 500, 400), W, H)
    assert_square_inside(cb, H)
    assert square_crop_box((150, 50, 250, 290), W, H) == (50, 0, 350, 300)  # 1.3*240 > 300


def test_square_crop_box_rejects_an_empty_frame() -> None:
    with pytest.raises(ValueError):
        square_crop_box((0, 0, 10, 10), 0, 10)

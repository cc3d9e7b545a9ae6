"""Self-blended images, cross-identity blends, augmentations and the demo corpus builder, on real
faces (tests/data portraits, scikit-image's astronaut) found by the real MTCNN."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from app.media import MediaLimits, open_media
from app.pipeline.faces import FaceDetector
from app.training import augment
from app.training.data import CropDataset, read_index, read_meta
from app.training.demo import assign_splits, build_demo
from app.training.sbi import (
    MIN_CHANGE,
    align_to,
    cross_blend,
    face_hull,
    is_grey,
    self_blend,
    self_blend_frame,
    visible_change,
)
from tests.mediagen import DATA_DIR

SIDE = 128


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """MTCNN on small frames is overhead-bound: one thread is faster on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def faces() -> dict[str, tuple[np.ndarray, np.ndarray, object, np.ndarray]]:
    """name -> (crop, landmarks in crop pixels, detected face, full frame)."""
    det = FaceDetector(max_faces=1, crop_size=SIDE)
    frames = {
        "astronaut": skdata.astronaut(),
        "grace": cv2.cvtColor(cv2.imread(str(DATA_DIR / "grace_hopper.jpg")), cv2.COLOR_BGR2RGB),
    }
    out = {}
    for name, frame in frames.items():
        f = det.detect([frame])[0][0]
        x1, y1, x2, _ = f.crop_box
        lms = (np.asarray(f.landmarks) - [x1, y1]) * SIDE / (x2 - x1)
        out[name] = (f.crop, lms, f, frame)
    return out


def _check_fake(img: np.ndarray, fake: np.ndarray, mask: np.ndarray) -> None:
    assert fake.shape == img.shape and fake.dtype == np.uint8
    assert mask.shape == img.shape[:2] and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert mask.max() >= 0.25 - 1e-6  # blend ratio >= 0.25 at the peak
    area = float((mask > 0).mean())
    assert 0.10 <= area <= 0.80, area
    inside = mask >= 0.5 * mask.max()
    diff = np.abs(fake.astype(int) - img.astype(int)).sum(axis=2)
    assert diff[inside].mean() > 2.0
    assert np.array_equal(fake[mask == 0], img[mask == 0])  # untouched outside the mask
    assert mask[:8, :8].max() == 0 and mask[-8:, -8:].max() == 0  # corners are far outside


@pytest.mark.parametrize("seed", range(12))
def test_self_blend_changes_only_the_face(faces, seed: int) -> None:
    img, lms, _, _ = faces["astronaut"]
    fake, mask = self_blend(img, lms, np.random.default_rng(seed))
    _check_fake(img, fake, mask)
    # The mask sits on the face: every landmark is well inside it.
    assert all(mask[int(y), int(x)] > 0.1 * mask.max() for x, y in lms)


@pytest.mark.parametrize("seed", range(16))
def test_self_blend_of_a_blurry_grey_face_is_grey_and_visible(faces, seed: int) -> None:
    """The LFW case: a 25 px grey face scaled up. Colour shifts can cancel in luminance and
    resampling changes nothing there, so the jitter is redrawn until the face visibly changes."""
    img, lms, _, _ = faces["grace"]
    grey = augment.to_grey(img)
    blurry = cv2.resize(cv2.resize(grey, (25, 25), interpolation=cv2.INTER_AREA), (SIDE, SIDE),
                        interpolation=cv2.INTER_CUBIC)
    fake, mask = self_blend(blurry, lms, np.random.default_rng(seed))
    _check_fake(blurry, fake, mask)
    assert is_grey(fake)
    assert visible_change(fake, blurry, mask) >= MIN_CHANGE


def test_self_blend_is_deterministic(faces) -> None:
    img, lms, _, _ = faces["grace"]
    a = self_blend(img, lms, np.random.default_rng(3))
    b = self_blend(img, lms, np.random.default_rng(3))
    c = self_blend(img, lms, np.random.default_rng(4))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("seed", range(6))
def test_cross_blend(faces, seed: int) -> None:
    tgt, tgt_lms, _, _ = faces["astronaut"]
    src, src_lms, _, _ = faces["grace"]
    fake, mask = cross_blend(tgt, tgt_lms, src, src_lms, np.random.default_rng(seed))
    _check_fake(tgt, fake, mask)
    again = cross_blend(tgt, tgt_lms, src, src_lms, np.random.default_rng(seed))
    assert np.array_equal(fake, again[0])


def test_align_maps_source_landmarks_onto_target() -> None:
    src_lms = np.array([[40, 50], [80, 48], [60, 70], [45, 90], [78, 88]], np.float64)
    angle, scale, shift = np.deg2rad(12), 0.8, np.array([14.0, -6.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    tgt_lms = src_lms @ rot.T + shift
    src = np.zeros((SIDE, SIDE, 3), np.uint8)
    for x, y in src_lms:
        cv2.circle(src, (int(x), int(y)), 2, (255, 255, 255), -1)
    warped = align_to(src, src_lms, tgt_lms, (SIDE, SIDE))
    for x, y in tgt_lms:
        assert warped[int(round(y)), int(round(x))].max() > 128


def test_face_hull_covers_the_face_not_the_frame(faces) -> None:
    _, lms, _, _ = faces["astronaut"]
    hull = face_hull(lms, (SIDE, SIDE))
    assert set(np.unique(hull)) == {0.0, 1.0}
    assert 0.15 < hull.mean() < 0.6
    assert all(hull[int(y), int(x)] == 1 for x, y in lms)


def test_self_blend_frame_touches_only_the_face_box(faces) -> None:
    _, _, face, frame = faces["astronaut"]
    out = self_blend_frame(frame, face.crop_box, face.landmarks, np.random.default_rng(0))
    x1, y1, x2, y2 = face.crop_box
    outside = np.ones(frame.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(out[outside], frame[outside])
    assert not np.array_equal(out[y1:y2, x1:x2], frame[y1:y2, x1:x2])


def test_geometry_moves_landmarks_with_the_image(faces) -> None:
    _, lms, _, _ = faces["grace"]
    dots = np.zeros((SIDE, SIDE, 3), np.uint8)
    for x, y in lms:
        cv2.circle(dots, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1)
    for seed in range(8):
        moved, pts = augment.geometry(dots, lms, np.random.default_rng(seed))
        for x, y in pts:
            assert moved[int(round(y)), int(round(x))].max() > 100
        assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0]  # left stays left after a flip


def test_quality_keeps_shape_and_grey() -> None:
    img = skdata.astronaut()[:96, :96]
    out = augment.quality(img, np.random.default_rng(1))
    assert out.shape == img.shape and out.dtype == np.uint8
    grey = augment.to_grey(out)
    assert np.array_equal(grey[..., 0], grey[..., 2])


def test_assign_splits_holds_out_identities() -> None:
    ids = [f"p{i}" for i in range(50)]
    split = assign_splits(ids, seed=1)
    got = list(split.values())
    assert (got.count("test"), got.count("val"), got.count("train")) == (10, 5, 35)
    assert split == assign_splits(ids, seed=1) and split != assign_splits(ids, seed=2)
    with pytest.raises(ValueError):
        assign_splits(["a", "b"], 0)


def test_tiny_demo_build(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    out = tmp_path / "demo"
    summary = build_demo(out, DATA_DIR, seed=0, crop_size=48, per_identity=2, lfw_people=6,
                         pexels_frames=2, n_videos=2, video_frames=4,
                         progress=lambda d, t: calls.append((d, t)))
    rows = read_index(out)
    assert summary["media_missing"] == [] and summary["crops"] == len(rows)
    assert calls[-1][0] == calls[-1][1] == len(rows) + 4
    split_of: dict[str, str] = {}
    for r in rows:
        for ident in r["identities"]:  # blend sources included
            assert split_of.setdefault(ident, r["split"]) == r["split"], ident
    for split in ("train", "val", "test"):
        labels = [r["label"] for r in rows if r["split"] == split]
        assert labels.count(0) == labels.count(1) > 0, split
    assert {r["method"] for r in rows} == {"original", "sbi", "blend"}
    assert len({r["identity"] for r in rows}) == 6 + 6  # 6 named people + 6 LFW
    assert sum(r["identity"] == "obama" and r["label"] == 0 for r in rows) == 2 * 3
    x, _ = CropDataset(out, "test")[0]
    assert x.shape == (3, 48, 48)
    meta = read_meta(out)
    assert meta["kind"] == "demo" and meta["identity_split"] == split_of
    videos = meta["videos"]
    assert len(videos) == 4 and {v["label"] for v in videos} == {0, 1}
    for v in videos:
        src = open_media(out / v["path"], MediaLimits(), max_frames=8)
        assert len(list(src)) == v["frames"] == 4
        with av.open(str(out / v["path"])) as container:  # H.264, as platforms receive video
            assert container.streams.video[0].codec_context.name == "h264"
    with pytest.raises(FileExistsError):
        build_demo(out, DATA_DIR, crop_size=48, per_identity=2, lfw_people=6)

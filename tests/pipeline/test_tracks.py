"""Persons: faces linked across sampled frames (real MTCNN, real bundled g/d, generated clips)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from app.config import Settings
from app.media import MediaLimits, open_media
from app.pipeline.analyze import Analyzer
from app.pipeline.faces import DetectedFace, FaceDetector
from app.pipeline.run import analyze_path
from app.pipeline.tracks import FaceTracker, iou
from app.schemas import AnalysisResult, PersonPublic, Verdict
from tests.mediagen import PEXELS_VIDEO, write_image, write_video
from tests.pipeline.facemedia import PORTRAITS, group_photo, two_person_frames

JUDGED = (Verdict.REAL, Verdict.FAKE, Verdict.ATTACKED)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(_env_file=None, device="cpu")  # MAX_FACES and quality bars at defaults


@pytest.fixture(scope="module")
def analyzer(settings: Settings) -> Analyzer:
    return Analyzer.from_settings(settings)


def _analyze(path: Path, analyzer: Analyzer, settings: Settings, frames: int) -> AnalysisResult:
    faces = FaceDetector.from_settings(settings, analyzer.device, analyzer.crop_size)
    return analyze_path(path, analyzer, faces, MediaLimits.from_settings(settings), frames)


def _majority(p: PersonPublic) -> Verdict:
    """The paper's vote, spelled out over the person's own face counts."""
    c = p.faces
    n = c.real + c.fake + c.attacked
    if n == 0:
        return Verdict.UNCERTAIN
    if 2 * c.fake > n:
        return Verdict.FAKE
    return Verdict.ATTACKED if 2 * (c.fake + c.attacked) > n else Verdict.REAL


def _centre_x(result: AnalysisResult, person: int) -> list[float]:
    return [(face.box[0] + face.box[2]) / 2 for f in result.frames for face in f.faces
            if face.person == person]


def test_two_face_clip_yields_two_tracks_with_their_own_verdicts(
    analyzer: Analyzer, settings: Settings, tmp_path: Path
) -> None:
    clip = write_video(tmp_path / "two.mp4", two_person_frames(n=12), fps=6)
    result = _analyze(clip, analyzer, settings, 6)
    assert all(len(f.faces) == 2 for f in result.frames)
    assert [p.id for p in result.persons] == [0, 1]
    for p in result.persons:
        assert p.frames == [0, 1, 2, 3, 4, 5]  # each person in every frame, once
        assert p.faces.real + p.faces.fake + p.faces.attacked == 6
        assert p.verdict in JUDGED and p.verdict is _majority(p)
        assert p.max_p_fake >= p.mean_p_fake and 0.0 <= p.mean_p_fake <= 1.0
        xs = _centre_x(result, p.id)
        assert max(xs) - min(xs) < 60  # one side of the frame: never swapped with the other
        ref = result.frames[p.representative.frame].faces[p.representative.face]
        assert ref.person == p.id
    assert abs(_centre_x(result, 0)[0] - _centre_x(result, 1)[0]) > 300
    assert result.summary.verdict_rule == "frame_majority"
    assert sum(result.summary.persons.model_dump().values()) == 2
    assert result.rules is not None and "person" in result.rules.person


def test_blurred_person_is_uncertain_while_the_other_is_judged(
    analyzer: Analyzer, settings: Settings, tmp_path: Path
) -> None:
    clip = write_video(tmp_path / "blur.mp4", two_person_frames(n=12, blur_right=5.0), fps=6)
    result = _analyze(clip, analyzer, settings, 4)
    by_side = sorted(result.persons, key=lambda p: _centre_x(result, p.id)[0])
    left, right = by_side
    assert left.verdict in JUDGED and left.faces.uncertain == 0
    assert right.verdict is Verdict.UNCERTAIN and right.faces.uncertain == len(right.frames) == 4
    flagged = [face for f in result.frames for face in f.faces if face.person == right.id]
    assert all(face.quality == ["face_too_blurry"] for face in flagged)
    # Frames keep a judgeable face, so the video verdict is the left person's frame majority.
    assert result.summary.verdict in JUDGED and result.summary.frames.uncertain == 0


def test_group_photo_every_face_analysed_each_its_own_person(
    analyzer: Analyzer, settings: Settings, tmp_path: Path
) -> None:
    photo = write_image(tmp_path / "group.png", group_photo())
    result = _analyze(photo, analyzer, settings, 1)
    faces = result.frames[0].faces
    assert len(faces) == len(PORTRAITS) == 6 and settings.max_faces >= 6
    assert sorted(face.person for face in faces) == list(range(6))
    assert all(face.quality == [] for face in faces)  # 160 px tiles: usable faces
    assert [p.frames for p in result.persons] == [[0]] * 6
    assert result.summary.faces.model_dump() == {
        **{v.value: 0 for v in Verdict}, **Counter(face.verdict.value for face in faces)}


def test_one_person_walking_through_a_real_video_is_one_track() -> None:
    """32 frames sampled over the bundled 20 s clip (head moves, turns): one person."""
    source = open_media(PEXELS_VIDEO, MediaLimits(max_frames=32, max_frames_cap=32), 32)
    frames = list(source)
    detected = FaceDetector(crop_size=64).detect([f.image for f in frames])
    tracker = FaceTracker()
    ids = [tracker.assign(f.index, faces) for f, faces in zip(frames, detected, strict=True)]
    seen = [i for per in ids for i in per]
    assert len(seen) >= 30 and set(seen) == {0}


# ---------------------------------------------------------------- the association rule


def _face(x: float, y: float, side: float = 100.0) -> DetectedFace:
    box = (x, y, x + side, y + side)
    s = side / 100.0
    points = [(x + 30 * s, y + 40 * s), (x + 70 * s, y + 40 * s), (x + 50 * s, y + 60 * s),
              (x + 35 * s, y + 80 * s), (x + 65 * s, y + 80 * s)]
    return DetectedFace(index=0, box=box, crop_box=(0, 0, 1, 1), prob=1.0, landmarks=points,
                        crop=np.zeros((1, 1, 3), np.uint8))


def test_ids_follow_the_faces_not_the_detection_order() -> None:
    t = FaceTracker()
    assert t.assign(0, [_face(0, 0), _face(400, 0)]) == [0, 1]
    # Sizes change, so the detector lists the right face first now; ids stay with the faces.
    assert t.assign(1, [_face(420, 10, 130), _face(30, 5, 90)]) == [1, 0]


def test_a_face_moving_more_than_a_face_side_is_a_new_person_not_a_merge() -> None:
    t = FaceTracker()
    assert t.assign(0, [_face(0, 0)]) == [0]
    assert t.assign(1, [_face(60, 0)]) == [0]  # moved 0.6 face sides, no IoU needed
    assert t.assign(2, [_face(400, 0)]) == [1]  # jumped 3.4 sides: someone else
    assert t.assign(3, [_face(60, 0, 260)]) == [2]  # same place, 2.6x the size: someone else


def test_a_person_missed_for_a_few_frames_keeps_the_id_within_the_gap() -> None:
    t = FaceTracker(max_gap=3)
    assert t.assign(0, [_face(0, 0)]) == [0]
    assert t.assign(3, [_face(20, 0)]) == [0]  # unseen in frames 1-2
    assert t.assign(7, [_face(20, 0)]) == [1]  # unseen for 4 frames: a new track


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0

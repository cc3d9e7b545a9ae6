"""Verdict rules: DESIGN §2 truth tables."""

import pytest

from app.pipeline.verdicts import face_verdict, frame_verdict, summarize, video_verdict
from app.schemas import FacePublic, FramePublic, Thresholds, Verdict

R, F, A, N, U = Verdict.REAL, Verdict.FAKE, Verdict.ATTACKED, Verdict.NO_FACE, Verdict.UNCERTAIN
TH = Thresholds(tau_fake=0.5, tau_attacked=0.7)


@pytest.mark.parametrize(
    ("p_fake", "p_att", "expected"),
    [
        (0.9, None, F),
        (0.5, None, F),  # threshold is inclusive
        (0.49, None, R),
        (0.2, 0.69, R),
        (0.2, 0.7, A),
        (0.9, 0.99, F),  # g's fake call wins over d
    ],
)
def test_face_verdict(p_fake: float, p_att: float | None, expected: Verdict) -> None:
    assert face_verdict(p_fake, p_att, TH) is expected


@pytest.mark.parametrize(("p_fake", "p_att"), [(0.99, None), (0.1, 0.99), (0.1, 0.1)])
def test_flagged_face_is_uncertain_whatever_its_scores(p_fake: float, p_att: float | None) -> None:
    assert face_verdict(p_fake, p_att, TH, ("face_too_small",)) is U


@pytest.mark.parametrize(
    ("faces", "expected"),
    [([], N), ([R], R), ([R, A], A), ([A, F, R], F), ([R, R], R), ([A, A], A),
     ([U], U), ([U, U], U), ([U, R], R), ([F, U], F)],  # uncertain faces never make it worse
)
def test_frame_verdict_is_worst_face(faces: list[Verdict], expected: Verdict) -> None:
    assert frame_verdict(faces) is expected


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([], N),
        ([N, N], N),
        ([F, F, R], F),
        ([F, R], R),  # exactly half is not more than half
        ([F, A, R], A),  # fake + attacked > half: a fake disguised as real
        ([A, A, R, R], R),
        ([A, A, A, R], A),
        ([F, F, N, N, N, R], F),  # frames without faces do not vote
        ([R, R, R, F], R),
        ([U, U, N], U),  # faces found, none judgeable
        ([F, F, U, U, U, R], F),  # uncertain frames do not vote
        ([F, U, R], R),
    ],
)
def test_video_majority_vote(frames: list[Verdict], expected: Verdict) -> None:
    assert video_verdict(frames) is expected


def _face(v: Verdict) -> FacePublic:
    return FacePublic(index=0, box=[0, 0, 1, 1], crop_box=[0, 0, 1, 1], detection_prob=1.0,
                      p_fake=0.9 if v is F else 0.1, verdict=v)


def test_summary_counts_frames_and_faces() -> None:
    frames = [
        FramePublic(index=0, timestamp=0.0, verdict=F, faces=[_face(F), _face(R)]),
        FramePublic(index=1, timestamp=0.5, verdict=N, faces=[]),
        FramePublic(index=2, timestamp=1.0, verdict=A, faces=[_face(A)]),
    ]
    s = summarize(frames, [F, R, R])
    assert s.verdict is A and s.verdict_rule == "frame_majority"
    assert (s.frames.fake, s.frames.attacked, s.frames.no_face, s.frames.real) == (1, 1, 1, 0)
    assert (s.faces.fake, s.faces.real, s.faces.attacked) == (1, 1, 1)
    assert (s.persons.fake, s.persons.real) == (1, 2)

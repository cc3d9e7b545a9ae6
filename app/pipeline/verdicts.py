"""Face, frame and video verdicts (DESIGN §2; the paper's majority vote for videos)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from app.schemas import FramePublic, Summary, Thresholds, Verdict, VerdictCounts

# Worst first: a frame is as bad as its worst face.
_SEVERITY = {Verdict.FAKE: 3, Verdict.ATTACKED: 2, Verdict.REAL: 1, Verdict.NO_FACE: 0}


def face_verdict(p_fake: float, p_attacked: float | None, th: Thresholds) -> Verdict:
    """``fake`` if g says so; else ``attacked`` if d says so; else ``real``."""
    if p_fake >= th.tau_fake:
        return Verdict.FAKE
    if p_attacked is not None and p_attacked >= th.tau_attacked:
        return Verdict.ATTACKED
    return Verdict.REAL


def frame_verdict(faces: Sequence[Verdict]) -> Verdict:
    """The worst of the frame's faces (fake > attacked > real); ``no_face`` when empty."""
    if not faces:
        return Verdict.NO_FACE
    return max(faces, key=_SEVERITY.__getitem__)


def video_verdict(frames: Sequence[Verdict]) -> Verdict:
    """Majority vote over the frames that have faces.

    ``fake`` when more than half are fake; ``attacked`` when fake + attacked frames are more
    than half (a fake disguised as real); else ``real``; ``no_face`` when no frame has a face.
    """
    counts = Counter(v for v in frames if v != Verdict.NO_FACE)
    n = sum(counts.values())
    if n == 0:
        return Verdict.NO_FACE
    if 2 * counts[Verdict.FAKE] > n:
        return Verdict.FAKE
    if 2 * (counts[Verdict.FAKE] + counts[Verdict.ATTACKED]) > n:
        return Verdict.ATTACKED
    return Verdict.REAL


def count_verdicts(verdicts: Sequence[Verdict]) -> VerdictCounts:
    c = Counter(verdicts)
    return VerdictCounts(**{v.value: c[v] for v in Verdict})


def summarize(frames: Sequence[FramePublic]) -> Summary:
    frame_vs = [f.verdict for f in frames]
    face_vs = [face.verdict for f in frames for face in f.faces]
    return Summary(
        verdict=video_verdict(frame_vs),
        frames=count_verdicts(frame_vs),
        faces=count_verdicts(face_vs),
    )

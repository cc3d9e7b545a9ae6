"""Face, frame and video verdicts (DESIGN §2; the paper's majority vote for videos).

Faces with a quality flag (too small, too blurry: ``app.pipeline.quality``) keep their scores
but are ``uncertain``: not fake, not attacked, not real. They never make a frame worse, and a
frame whose faces are all uncertain is ``uncertain`` and does not vote, like ``no_face``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from app.schemas import (
    FramePublic,
    QualityThresholds,
    Rules,
    Summary,
    Thresholds,
    Verdict,
    VerdictCounts,
)

# Worst first: a frame is as bad as its worst face; an uncertain face only beats no face.
_SEVERITY = {Verdict.FAKE: 4, Verdict.ATTACKED: 3, Verdict.REAL: 2, Verdict.UNCERTAIN: 1,
             Verdict.NO_FACE: 0}
_NOT_VOTING = (Verdict.NO_FACE, Verdict.UNCERTAIN)

FACE_RULE = ("uncertain if the face has a quality flag (its scores are kept, it is not judged); "
             "else fake if p_fake >= tau_fake; else attacked if p_attacked >= tau_attacked; "
             "else real")
FRAME_RULE = ("the worst of its faces (fake > attacked > real > uncertain); uncertain when every "
              "face has a quality flag; no_face when it has none")
VIDEO_RULE = ("the paper's frame majority vote over the frames with a judgeable face (fake, "
              "attacked or real): fake if more than half are fake; else attacked if fake + "
              "attacked are more than half; else real; uncertain when faces were found but "
              "none was judgeable; no_face when no frame has a face")
PERSON_RULE = ("the video rule applied to one person's own face verdicts, over the frames "
               "that person appears in")


def face_verdict(
    p_fake: float, p_attacked: float | None, th: Thresholds, quality: Sequence[str] = ()
) -> Verdict:
    """``uncertain`` if flagged; else ``fake`` if g says so; else ``attacked`` if d says so."""
    if quality:
        return Verdict.UNCERTAIN
    if p_fake >= th.tau_fake:
        return Verdict.FAKE
    if p_attacked is not None and p_attacked >= th.tau_attacked:
        return Verdict.ATTACKED
    return Verdict.REAL


def frame_verdict(faces: Sequence[Verdict]) -> Verdict:
    """The worst of the frame's faces (fake > attacked > real > uncertain); ``no_face``: none."""
    if not faces:
        return Verdict.NO_FACE
    return max(faces, key=_SEVERITY.__getitem__)


def video_verdict(frames: Sequence[Verdict]) -> Verdict:
    """Majority vote over the frames with a judgeable face.

    ``fake`` when more than half are fake; ``attacked`` when fake + attacked frames are more
    than half (a fake disguised as real); else ``real``. With no voting frame: ``uncertain``
    if some frame had (only unjudgeable) faces, else ``no_face``.
    """
    counts = Counter(v for v in frames if v not in _NOT_VOTING)
    n = sum(counts.values())
    if n == 0:
        return Verdict.UNCERTAIN if Verdict.UNCERTAIN in frames else Verdict.NO_FACE
    if 2 * counts[Verdict.FAKE] > n:
        return Verdict.FAKE
    if 2 * (counts[Verdict.FAKE] + counts[Verdict.ATTACKED]) > n:
        return Verdict.ATTACKED
    return Verdict.REAL


def count_verdicts(verdicts: Sequence[Verdict]) -> VerdictCounts:
    c = Counter(verdicts)
    return VerdictCounts(**{v.value: c[v] for v in Verdict})


def summarize(
    frames: Sequence[FramePublic], persons: Sequence[Verdict] = ()
) -> Summary:
    """Counts of frames, faces and persons by verdict; the verdict is the frame majority."""
    frame_vs = [f.verdict for f in frames]
    face_vs = [face.verdict for f in frames for face in f.faces]
    return Summary(
        verdict=video_verdict(frame_vs),
        frames=count_verdicts(frame_vs),
        faces=count_verdicts(face_vs),
        persons=count_verdicts(list(persons)),
    )


def rules(quality: QualityThresholds) -> Rules:
    """The rules every result states, with the quality bars that were applied."""
    return Rules(face=FACE_RULE, frame=FRAME_RULE, video=VIDEO_RULE, person=PERSON_RULE,
                 quality=quality)

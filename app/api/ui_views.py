"""What the moderator pages show, as plain data for the Jinja2 templates (no markup here).

URLs are built from validated job ids and integers, query strings with ``urlencode``; every
client string (file names, errors, callback URLs) reaches the page only through the templates'
autoescaping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode

from app.schemas import FacePublic, FramePublic, JobStatus, PersonPublic, Thresholds, Verdict
from app.store.results import JobRecord

VERDICTS = (Verdict.FAKE, Verdict.ATTACKED, Verdict.REAL, Verdict.UNCERTAIN, Verdict.NO_FACE)
STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DONE, JobStatus.FAILED)
# One letter per verdict, so the timeline never relies on colour alone.
LETTER = {Verdict.FAKE: "F", Verdict.ATTACKED: "A", Verdict.REAL: "R", Verdict.UNCERTAIN: "U",
          Verdict.NO_FACE: "–"}
FRAMES_PER_PAGE = 24


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def score_text(value: float | None) -> str:
    """3 decimals, 1 when the exposure policy rounded the score, – when it is withheld."""
    if value is None:
        return "–"
    return f"{value:.3f}" if round(value, 1) != value else f"{value:.1f}"


def duration_text(job: JobRecord) -> str:
    media = job.media
    if media is None:
        return ""
    if media.kind == "image" or media.duration_s is None:
        return "image"
    return f"{media.duration_s:.1f} s"


# ---------------------------------------------------------------- list


@dataclass(frozen=True)
class ListView:
    rows: Sequence[JobRecord]
    verdict: Verdict | None
    status: JobStatus | None
    page: int
    pages: int
    total: int  # analyses matching the filters (among the newest ``scanned``)
    scanned: int

    def url(self, *, verdict: str | None = "keep", status: str | None = "keep",
            page: int = 1) -> str:
        """This list with one thing changed (``"keep"`` keeps the current filter)."""
        v = (self.verdict.value if self.verdict else None) if verdict == "keep" else verdict
        s = (self.status.value if self.status else None) if status == "keep" else status
        query = {k: val for k, val in (("verdict", v), ("status", s)) if val}
        if page > 1:
            query["page"] = str(page)
        return "/ui" + (f"?{urlencode(query)}" if query else "")


def list_view(jobs: Sequence[JobRecord], verdict: Verdict | None, status: JobStatus | None,
              page: int, page_size: int) -> ListView:
    chosen = [j for j in jobs if (verdict is None or j.verdict == verdict)
              and (status is None or j.status == status)]
    pages = max(1, math.ceil(len(chosen) / page_size))
    page = min(page, pages)
    start = (page - 1) * page_size
    return ListView(chosen[start:start + page_size], verdict, status, page, pages,
                    len(chosen), len(jobs))


# ---------------------------------------------------------------- one analysis


def analysis_url(job_id: str, verdicts: Iterable[Verdict] = (), page_no: int = 1,
                 person: int | None = None) -> str:
    query: dict[str, str] = {}
    if names := ",".join(v.value for v in verdicts):
        query["verdict"] = names
    if person is not None:
        query["person"] = str(person)
    if page_no > 1:
        query["page"] = str(page_no)
    return f"/ui/analyses/{job_id}" + (f"?{urlencode(query)}" if query else "")


def image_url(job_id: str, frame: int, face: int, kind: str) -> str:
    return f"/ui/analyses/{job_id}/frames/{frame}/faces/{face}/{kind}.png"


@dataclass(frozen=True)
class Bar:
    """A score against its threshold; ``pct``/``tick`` are CSS class suffixes (0–100)."""

    label: str
    text: str
    pct: int
    tick: int
    threshold: str
    over: bool

    @classmethod
    def of(cls, label: str, value: float | None, threshold: float) -> Bar | None:
        if value is None:
            return None
        return cls(label, score_text(value), _pct(value), _pct(threshold),
                   f"{threshold:.3f}", value >= threshold)


def _pct(value: float) -> int:
    return max(0, min(100, round(100 * value)))


@dataclass(frozen=True)
class FaceCard:
    """One face (or a frame with none) in the grid."""

    frame: FramePublic
    face: FacePublic | None
    first_of_frame: bool  # carries the frame's anchor
    crop_url: str | None = None
    heat_url: str | None = None
    heat_caption: str = ""
    no_heat_reason: str = ""
    bars: Sequence[Bar] = ()

    @property
    def alt(self) -> str:
        assert self.face is not None
        return f"frame {self.frame.index}, face {self.face.index}"


def _heat(face: FacePublic) -> tuple[str, str]:
    """(caption, reason there is none)."""
    if face.explanation_url is not None:
        if face.explanation_of == "fake":
            return "heatmap: why g called it fake (fake logit)", ""
        return "heatmap d judged (g's real logit)", ""
    if face.p_fake is None:
        return "", "no heatmap: scores are not shown to this key"
    if face.p_attacked is None:
        return "", "no heatmap: none was computed for this face"
    return "", "no heatmap stored"


def face_card(job_id: str, frame: FramePublic, face: FacePublic, first: bool,
              th: Thresholds | None) -> FaceCard:
    caption, reason = _heat(face)
    bars: list[Bar] = []
    if th is not None:
        bars = [b for b in (Bar.of("p_fake", face.p_fake, th.tau_fake),
                            Bar.of("p_attacked", face.p_attacked, th.tau_attacked)) if b]
    heat = image_url(job_id, frame.index, face.index, "explanation") if caption else None
    return FaceCard(frame, face, first, image_url(job_id, frame.index, face.index, "crop"),
                    heat, caption, reason, bars)


def face_cards(job_id: str, frames: Sequence[FramePublic], th: Thresholds | None,
               verdicts: Sequence[Verdict] = (), person: int | None = None) -> list[FaceCard]:
    """Cards for the faces of ``frames`` that match the face-level filters."""
    cards: list[FaceCard] = []
    for frame in frames:
        faces = [f for f in frame.faces if (person is None or f.person == person)
                 and (not verdicts or f.verdict in verdicts)]
        if not faces:  # a frame with no face (the only way a matching frame has none here)
            cards.append(FaceCard(frame, None, True))
        for n, face in enumerate(faces):
            cards.append(face_card(job_id, frame, face, n == 0, th))
    return cards


@dataclass(frozen=True)
class TimelineCell:
    index: int
    timestamp: float
    verdict: Verdict
    letter: str
    url: str  # the page holding this frame, unfiltered, with its anchor


def timeline(job_id: str, frames: Sequence[FramePublic]) -> list[TimelineCell]:
    return [TimelineCell(f.index, f.timestamp, f.verdict, LETTER[f.verdict],
                         analysis_url(job_id, (), n // FRAMES_PER_PAGE + 1) + f"#frame-{f.index}")
            for n, f in enumerate(frames)]


@dataclass(frozen=True)
class FrameView:
    """The analysis page's filter, one page of frames, counts and everything drawn from them."""

    verdicts: tuple[Verdict, ...]  # empty: all
    frames: Sequence[FramePublic]
    counts: dict[Verdict, int]
    total: int  # frames matching the filter
    page: int
    pages: int
    person: int | None = None  # only frames where this person appears
    persons: Sequence[PersonPublic] = ()
    timeline: Sequence[TimelineCell] = field(default_factory=list)

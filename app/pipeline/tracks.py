"""Persons: faces linked across sampled frames into tracks, and a verdict per track.

Why not a tracker library (norfair, supervision/trackers' ByteTrack, motpy, BoxMOT): they are
built for consecutive frames at video rate: a Kalman constant-velocity prediction, IoU gates and
"lost track" buffers counted in 30 fps frames, tracks that only get an id after a few
consecutive hits. Here a video is 32 samples spread over up to 10 minutes (0.6 s apart for a
20 s clip), so a moving head often has IoU 0 with its previous box and a velocity estimate from
two samples is noise; every detection must get an id at once (a face seen once is still a
person) and the ids must be deterministic. The problem is tiny (at most ``max_faces`` faces
against a few live tracks), so a Hungarian assignment (scipy's ``linear_sum_assignment``) on a
cost of box IoU, landmark displacement and size change, normalised by face size, does it in a
few dozen lines without a new dependency.

Rule: a detection may continue a track last seen at most ``max_gap`` sampled frames ago when
its 5 landmarks moved on average at most ``max_shift`` face sides and its size changed at most
``max_scale`` times; among allowed pairs, the assignment minimising
``shift + (1 - IoU) + ln(scale)`` wins; every other detection starts a new person. Failing
gates split a person in two (each keeps its own verdict) rather than merging two people.
The tracker runs online, in frame order, so the worker stores each frame with its person ids
as it goes; both the CLI and the worker run it the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.pipeline.verdicts import count_verdicts, video_verdict
from app.schemas import FacePublic, FaceRef, FramePublic, PersonPublic

if TYPE_CHECKING:  # the API imports the person summaries: no torch/MTCNN there
    from app.pipeline.faces import DetectedFace

MAX_GAP = 8  # sampled frames a person may go unseen (missed detection, turned head)
MAX_SHIFT = 1.0  # mean landmark displacement, in face sides, between two sightings
MAX_SCALE = 2.0  # face side ratio between two sightings
_FORBIDDEN = 1e6  # cost of a gated pair inside the assignment (never kept)


@dataclass
class _Track:
    id: int
    box: tuple[float, float, float, float]
    points: np.ndarray  # 5 x 2 landmarks at the last sighting
    last: int  # sampled-frame index of the last sighting


def _sides(boxes: np.ndarray) -> np.ndarray:
    """Longer side of each ``x1, y1, x2, y2`` box (last axis), never 0."""
    return np.maximum(np.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]),
                      1e-6)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of broadcast ``x1, y1, x2, y2`` boxes (last axis)."""
    w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.clip(w, 0.0, None) * np.clip(h, 0.0, None)
    area = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (
        b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area - inter
    return np.divide(inter, union, out=np.zeros_like(union), where=union > 0)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``x1, y1, x2, y2`` boxes."""
    return float(_iou(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)))


def _assignment(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost (row, column) pairs (Hungarian; scipy comes with scikit-learn/-image)."""
    from scipy.optimize import linear_sum_assignment  # only the worker/CLI path needs it

    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


class FaceTracker:
    """Online association of each frame's faces with the persons seen before (module doc)."""

    def __init__(
        self, max_gap: int = MAX_GAP, max_shift: float = MAX_SHIFT, max_scale: float = MAX_SCALE
    ) -> None:
        if max_gap < 1 or max_shift <= 0 or max_scale < 1:
            raise ValueError("need max_gap >= 1, max_shift > 0 and max_scale >= 1")
        self.max_gap = max_gap
        self.max_shift = max_shift
        self.max_scale = max_scale
        self._tracks: list[_Track] = []

    def assign(self, frame_index: int, faces: Sequence[DetectedFace]) -> list[int]:
        """Person id of each face of sampled frame ``frame_index`` (frames in order)."""
        live = [t for t in self._tracks if 0 < frame_index - t.last <= self.max_gap]
        ids: list[int | None] = [None] * len(faces)
        if live and faces:
            cost = self.costs(live, faces)
            for r, c in _assignment(cost):
                if cost[r, c] < _FORBIDDEN:
                    ids[c] = live[r].id
                    self._update(live[r], faces[c], frame_index)
        for j, face in enumerate(faces):
            if ids[j] is None:
                ids[j] = self._start(face, frame_index)
        return [int(i) for i in ids if i is not None]

    def costs(self, tracks: Sequence[_Track], faces: Sequence[DetectedFace]) -> np.ndarray:
        """``[track, face]`` association costs; ``_FORBIDDEN`` where the gates say no."""
        t_box = np.array([t.box for t in tracks], dtype=np.float64)[:, None]  # T x 1 x 4
        f_box = np.array([f.box for f in faces], dtype=np.float64)[None]  # 1 x F x 4
        t_pts = np.stack([t.points for t in tracks])[:, None]  # T x 1 x 5 x 2
        f_pts = np.array([f.landmarks for f in faces], dtype=np.float64)[None]  # 1 x F x 5 x 2
        side_t, side_f = _sides(t_box), _sides(f_box)
        scale = np.maximum(side_t, side_f) / np.minimum(side_t, side_f)
        shift = np.linalg.norm(f_pts - t_pts, axis=-1).mean(-1) / ((side_t + side_f) / 2)
        cost = shift + (1.0 - _iou(t_box, f_box)) + np.log(scale)
        gated = (scale > self.max_scale) | (shift > self.max_shift)
        return np.where(gated, _FORBIDDEN, cost)

    def _update(self, track: _Track, face: DetectedFace, frame_index: int) -> None:
        track.box = face.box
        track.points = np.asarray(face.landmarks, dtype=np.float64)
        track.last = frame_index

    def _start(self, face: DetectedFace, frame_index: int) -> int:
        track = _Track(len(self._tracks), face.box,
                       np.asarray(face.landmarks, dtype=np.float64), frame_index)
        self._tracks.append(track)
        return track.id


# ---------------------------------------------------------------- per-person summaries


def summarize_persons(frames: Sequence[FramePublic]) -> list[PersonPublic]:
    """One entry per person id found on the frames' faces, in id order."""
    sightings: dict[int, list[tuple[FramePublic, FacePublic]]] = defaultdict(list)
    for frame in frames:
        for face in frame.faces:
            if face.person is not None:
                sightings[face.person].append((frame, face))
    return [_person(pid, seen) for pid, seen in sorted(sightings.items())]


def _area(face: FacePublic) -> float:
    x1, y1, x2, y2 = face.box
    return (x2 - x1) * (y2 - y1)


def _person(pid: int, seen: list[tuple[FramePublic, FacePublic]]) -> PersonPublic:
    seen = sorted(seen, key=lambda s: s[0].index)
    faces = [face for _, face in seen]
    verdicts = [face.verdict for face in faces]
    p_fake = [face.p_fake for face in faces]
    p_att = [face.p_attacked for face in faces if face.p_attacked is not None]
    best = max(seen, key=lambda s: (not s[1].quality, _area(s[1])))  # first of equals
    return PersonPublic(
        id=pid,
        verdict=video_verdict(verdicts),
        frames=[frame.index for frame, _ in seen],
        start_s=seen[0][0].timestamp,
        end_s=seen[-1][0].timestamp,
        faces=count_verdicts(verdicts),
        mean_p_fake=float(np.mean(p_fake)),
        max_p_fake=max(p_fake),
        max_p_attacked=max(p_att) if p_att else None,
        representative=FaceRef(frame=best[0].index, face=best[1].index),
    )

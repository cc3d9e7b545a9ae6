"""How much of g's and d's scores a caller sees (``DFSHIELD_SCORE_EXPOSURE``).

Continuous scores are exactly what a score-based attack (NES, Square) climbs, one query at a
time; a verdict alone, or a score rounded to one decimal, leaves it almost nothing to follow.

- ``full``: scores as computed (the default; what every admin and moderator key always gets).
- ``rounded``: every score to 1 decimal.
- ``verdict``: scores are null and XAI heatmaps are withheld (a saliency map is a picture of
  g's gradient, which a white-box attack would love); verdicts, counts and boxes stay.

The policy applies to every key that is neither ``admin`` nor ``moderate`` (a ``submit``-only
key reads scores through ``wait`` answers, a ``submit+read`` key through GET as well); open mode
gets ``full``. A key the guard suspects gets ``verdict`` when ``guard_action=verdict_only``.
"""

from __future__ import annotations

from typing import Any

from app.api.auth import Principal
from app.config import ScoreExposure, Settings
from app.schemas import FacePublic, FramePublic, PersonPublic

SCORE_FIELDS = frozenset({"p_fake", "p_attacked", "mean_p_fake", "max_p_fake", "max_p_attacked"})
_PERSON_SCORES = ("mean_p_fake", "max_p_fake", "max_p_attacked")


def exposure_for(
    principal: Principal, settings: Settings, suspected: bool = False
) -> ScoreExposure:
    """The exposure level of ``principal``; ``suspected``: the guard suspects its key."""
    if principal.anonymous or principal.reviews:
        return "full"
    if suspected and settings.guard_action == "verdict_only":
        return "verdict"
    return settings.score_exposure


def _score(value: Any, level: ScoreExposure) -> Any:
    if value is None or level == "full":
        return value
    return round(float(value), 1) if level == "rounded" else None


def expose_json(body: Any, level: ScoreExposure) -> Any:
    """A copy of a JSON-ready body (dicts and lists) with every score field exposed at
    ``level``; under ``verdict`` explanation links are dropped too."""
    if level == "full":
        return body
    if isinstance(body, list):
        return [expose_json(v, level) for v in body]
    if not isinstance(body, dict):
        return body
    out = {}
    for k, v in body.items():
        if k in SCORE_FIELDS:
            out[k] = _score(v, level)
        elif k in ("explanation_url", "explanation_of") and level == "verdict":
            out[k] = None
        else:
            out[k] = expose_json(v, level)
    return out


def expose_face(face: FacePublic, level: ScoreExposure) -> FacePublic:
    if level == "full":
        return face
    update: dict[str, Any] = {"p_fake": _score(face.p_fake, level),
                              "p_attacked": _score(face.p_attacked, level)}
    if level == "verdict":
        update["explanation_url"] = update["explanation_of"] = None
    return face.model_copy(update=update)


def expose_frames(frames: list[FramePublic], level: ScoreExposure) -> list[FramePublic]:
    """Frames for the UI (model objects; scores may become None under ``verdict``)."""
    if level == "full":
        return frames
    return [f.model_copy(update={"faces": [expose_face(x, level) for x in f.faces]})
            for f in frames]


def expose_persons(persons: list[PersonPublic], level: ScoreExposure) -> list[PersonPublic]:
    if level == "full":
        return persons
    return [p.model_copy(update={k: _score(getattr(p, k), level) for k in _PERSON_SCORES})
            for p in persons]

"""Reading and deleting analyses: status, frames (filtered, paged), face images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import StringConstraints

from app.api.auth import Principal
from app.api.deps import (
    DeletableJobDep,
    ExposureDep,
    GuardDep,
    JobDep,
    QueueDep,
    ReadPrincipal,
    StoreDep,
)
from app.api.errors import ApiError, not_found
from app.api.exposure import expose_json
from app.api.models import AnalysisPublic, AnalysisReviewed, FramePage, GuardReview
from app.guard.memory import GuardMemory
from app.guard.policy import flag_of
from app.schemas import FramePublic, JobStatus, Problem, Verdict
from app.store.results import JobRecord, PngKind

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])
# 401 no/unknown key, 403 role missing, 404 absent or not the caller's, 429 rate limited.
_404 = {code: {"model": Problem, "content": {"application/problem+json": {}}}
        for code in (401, 403, 404, 429)}
MAX_LIMIT = 500
_V = "(" + "|".join(v.value for v in Verdict) + ")"
# In the schema, so clients and fuzzers know the accepted values: `fake` or `fake,attacked`.
VerdictList = Annotated[str, StringConstraints(pattern=f"^ *{_V}( *, *{_V})* *$")]


def reviewed(job: JobRecord, viewer: Principal, guard: GuardMemory) -> dict[str, object] | None:
    """The guard fields an admin/moderate key sees on *another* key's analysis, else None:
    the submitting key never learns that it is suspected."""
    if not viewer.reviews or viewer.key_id == job.owner:
        return None
    flag = flag_of(guard, job.id, job.owner)
    review = GuardReview.model_validate(flag.record) if flag.record else None
    return {"query_attack_suspected": flag.suspected, "query_attack_reason": flag.reason,
            "guard": review}


@router.get("/{job_id}", response_model=AnalysisPublic, responses=_404,
            summary="Status, progress and (once done) the summary of an analysis",
            description="Admin and moderate keys reading another key's analysis also get "
                        "`query_attack_suspected`, `query_attack_reason` and `guard` "
                        "(AnalysisReviewed); nobody else ever does.")
def get_analysis(job: JobDep, store: StoreDep, viewer: ReadPrincipal, exposure: ExposureDep,
                 guard: GuardDep) -> JSONResponse:
    result = store.get_result(job.id) if job.status == JobStatus.DONE else None
    extra = reviewed(job, viewer, guard)
    body = (AnalysisReviewed.build(job, result, **extra) if extra is not None
            else AnalysisPublic.build(job, result))
    return JSONResponse(expose_json(body.model_dump(mode="json"), exposure))


def _verdicts(raw: list[str] | None) -> list[Verdict] | None:
    """``?verdict=fake&verdict=attacked`` or ``?verdict=fake,attacked``."""
    if not raw:
        return None
    names = [v.strip() for item in raw for v in item.split(",") if v.strip()]
    try:
        return [Verdict(v) for v in names] or None
    except ValueError:
        allowed = ", ".join(v.value for v in Verdict)
        raise ApiError(422, "validation_error",
                       f"verdict must be among {allowed}; got {names}") from None


def filter_frames(
    frames: list[FramePublic], wanted: list[Verdict] | None, person: int | None
) -> list[FramePublic]:
    """Frames by verdict; with ``person``, frames where that person's face has the verdict."""
    if person is None:
        return [f for f in frames if not wanted or f.verdict in wanted]
    return [f for f in frames
            if any(x.person == person and (not wanted or x.verdict in wanted) for x in f.faces)]


@router.get("/{job_id}/frames", response_model=FramePage, responses=_404,
            summary="Per-frame results so far, filtered by verdict and person, paginated")
def list_frames(
    job: JobDep,
    store: StoreDep,
    exposure: ExposureDep,
    verdict: Annotated[list[VerdictList] | None,
                       Query(description="real, fake, attacked, no_face, uncertain; repeat "
                                         "or comma-separate")] = None,
    person: Annotated[int | None, Query(ge=0, description="only frames where this person "
                                        "(persons[].id) appears; `verdict` then filters "
                                        "that person's face verdict")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> JSONResponse:
    wanted = _verdicts(verdict)
    frames = filter_frames(store.get_frames(job.id), wanted, person)
    page = FramePage(total=len(frames), offset=offset, limit=limit, verdict=wanted,
                     person=person, items=frames[offset : offset + limit])
    return JSONResponse(expose_json(page.model_dump(mode="json"), exposure))


def _png(store: StoreDep, job_id: str, frame: int, face: int, kind: PngKind) -> Response:
    data = store.get_png(job_id, frame, face, kind)
    if data is None:
        what = "explanation" if kind == "explanation" else "crop"
        raise not_found(f"{what} image of face {face} in frame {frame}")
    return Response(data, media_type="image/png",
                    headers={"Cache-Control": "private, max-age=3600"})


# Binary, so generated clients return the bytes (``File``) instead of warning about no schema.
_PNG = {200: {"description": "PNG image",
              "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **_404}


@router.get("/{job_id}/frames/{frame}/faces/{face}/explanation.png", response_class=Response,
            responses=_PNG, summary="XAI heatmap over the face crop (faces g called real)")
def get_face_explanation(job: JobDep, store: StoreDep, frame: int, face: int,
                         exposure: ExposureDep) -> Response:
    if exposure == "verdict":  # a saliency map is a picture of g's gradient
        raise not_found(f"explanation image of face {face} in frame {frame}")
    return _png(store, job.id, frame, face, "explanation")


@router.get("/{job_id}/frames/{frame}/faces/{face}/crop.png", response_class=Response,
            responses=_PNG, summary="The face crop the detectors saw")
def get_face_crop(job: JobDep, store: StoreDep, frame: int, face: int) -> Response:
    return _png(store, job.id, frame, face, "crop")


@router.delete("/{job_id}", status_code=204, response_class=Response, responses=_404,
               summary="Purge an analysis: results, images and media")
def delete_analysis(job: DeletableJobDep, store: StoreDep, queue: QueueDep) -> Response:
    store.delete(job.id)
    if job.entry_id and job.status == JobStatus.QUEUED:
        queue.ack(job.entry_id)  # not started: take it off the queue now
    return Response(status_code=204)

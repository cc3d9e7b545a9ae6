"""Reading and deleting analyses: status, frames (filtered, paged), face images."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import DeletableJobDep, JobDep, QueueDep, StoreDep
from app.api.errors import ApiError, not_found
from app.api.models import AnalysisPublic, FramePage
from app.schemas import FramePublic, JobStatus, Problem, Verdict
from app.store.results import PngKind

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])
# 401 no/unknown key, 403 role missing, 404 absent or not the caller's, 429 rate limited.
_404 = {code: {"model": Problem, "content": {"application/problem+json": {}}}
        for code in (401, 403, 404, 429)}
MAX_LIMIT = 500


@router.get("/{job_id}", response_model=AnalysisPublic, responses=_404,
            summary="Status, progress and (once done) the summary of an analysis")
def get_analysis(job: JobDep, store: StoreDep) -> AnalysisPublic:
    result = store.get_result(job.id) if job.status == JobStatus.DONE else None
    return AnalysisPublic.build(job, result)


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
    verdict: Annotated[list[str] | None, Query(description="real, fake, attacked, no_face, "
                                               "uncertain; repeat or comma-separate")] = None,
    person: Annotated[int | None, Query(ge=0, description="only frames where this person "
                                        "(persons[].id) appears; `verdict` then filters "
                                        "that person's face verdict")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> FramePage:
    wanted = _verdicts(verdict)
    frames = filter_frames(store.get_frames(job.id), wanted, person)
    return FramePage(total=len(frames), offset=offset, limit=limit, verdict=wanted,
                     person=person, items=frames[offset : offset + limit])


def _png(store: StoreDep, job_id: str, frame: int, face: int, kind: PngKind) -> Response:
    data = store.get_png(job_id, frame, face, kind)
    if data is None:
        what = "explanation" if kind == "explanation" else "crop"
        raise not_found(f"{what} image of face {face} in frame {frame}")
    return Response(data, media_type="image/png",
                    headers={"Cache-Control": "private, max-age=3600"})


_PNG = {200: {"content": {"image/png": {}}}, **_404}


@router.get("/{job_id}/frames/{frame}/faces/{face}/explanation.png", response_class=Response,
            responses=_PNG, summary="XAI heatmap over the face crop (faces g called real)")
def explanation_png(job: JobDep, store: StoreDep, frame: int, face: int) -> Response:
    return _png(store, job.id, frame, face, "explanation")


@router.get("/{job_id}/frames/{frame}/faces/{face}/crop.png", response_class=Response,
            responses=_PNG, summary="The face crop the detectors saw")
def crop_png(job: JobDep, store: StoreDep, frame: int, face: int) -> Response:
    return _png(store, job.id, frame, face, "crop")


@router.delete("/{job_id}", status_code=204, response_class=Response, responses=_404,
               summary="Purge an analysis: results, images and media")
def delete_analysis(job: DeletableJobDep, store: StoreDep, queue: QueueDep) -> Response:
    store.delete(job.id)
    if job.entry_id and job.status == JobStatus.QUEUED:
        queue.ack(job.entry_id)  # not started: take it off the queue now
    return Response(status_code=204)

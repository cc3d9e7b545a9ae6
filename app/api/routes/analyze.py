"""``POST /v1/analyze``: accept the upload (app.api.submit), answer 202, or 200 within ``wait``."""

from __future__ import annotations

import asyncio
import time
from http import HTTPStatus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import QueueDep, SettingsDep, StoreDep, SubmitPrincipal
from app.api.exposure import expose_json, exposure_for
from app.api.models import AnalysisAccepted, AnalysisWithFrames, links_for
from app.api.submit import accept_upload
from app.media.errors import MediaError
from app.schemas import JobStatus, Problem
from app.store.results import TERMINAL, JobRecord, ResultStore

router = APIRouter(tags=["analyses"])
POLL_S = 0.1

_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "title": "AnalysisCreate",  # becomes components/schemas/AnalysisCreate (openapi.py)
            "type": "object", "required": ["file"],
            "additionalProperties": False,  # AnalyzeForm forbids extra fields (422)
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "video (mp4, mov, webm, mkv, avi) or image"},
                "xai_method": {"type": "string", "enum": ["saliency", "guided_backprop",
                                                          "input_x_gradient",
                                                          "integrated_gradients"]},
                "max_frames": {"type": "integer", "minimum": 1},
                "callback_url": {"type": "string", "format": "uri", "pattern": "^https?://",
                                 "maxLength": 2083, "description": "webhook (http or https)"},
                "wait": {"type": "number", "minimum": 0,
                         "description": "seconds to wait for a synchronous 200"},
            },
        }}},
    }
}


def _media_codes(status: int) -> list[str]:
    """The media error codes answered with ``status`` (read from the error classes)."""
    classes, seen = [MediaError], []
    while classes:
        cls = classes.pop(0)
        classes.extend(cls.__subclasses__())
        if cls is not MediaError and cls.http_status == status and cls.code not in seen:
            seen.append(cls.code)
    return seen


def _described(status: int, *codes: str) -> dict[str, object]:
    names = ", ".join(f"`{c}`" for c in [*codes, *_media_codes(status)])
    return {"model": Problem, "content": {"application/problem+json": {}},
            "description": f"{HTTPStatus(status).phrase}: {names}"}


# The operations a submitted analysis leads to; `schemathesis` follows them in stateful runs.
_BY_ID = {"job_id": "$response.body#/id"}
_FIRST_FACE = {**_BY_ID, "frame": 0, "face": 0}
_LINKS = {
    "GetAnalysis": {"operationId": "get_analysis", "parameters": _BY_ID},
    "ListFrames": {"operationId": "list_frames", "parameters": _BY_ID},
    "GetFaceCrop": {"operationId": "get_face_crop", "parameters": _FIRST_FACE},
    "GetFaceExplanation": {"operationId": "get_face_explanation", "parameters": _FIRST_FACE},
    "DeleteAnalysis": {"operationId": "delete_analysis", "parameters": _BY_ID},
}
_LOCATION = {"Location": {"description": "the analysis to poll (`links.analysis`)",
                          "required": True, "schema": {"type": "string"}}}
_RESPONSES: dict[int | str, dict[str, object]] = {
    202: {"description": "queued: poll `Location`", "links": _LINKS, "headers": _LOCATION},
    200: {"model": AnalysisWithFrames, "description": "finished within `wait`",
          "links": _LINKS},
    400: _described(400, "bad_request"),
    401: _described(401, "unauthorized"),
    403: _described(403, "forbidden", "query_attack_suspected"),
    413: _described(413),
    415: _described(415, "unsupported_content_type"),
    422: _described(422, "validation_error", "callback_url_rejected"),
    429: _described(429, "rate_limited"),
    503: _described(503, "queue_full", "unavailable"),
    507: _described(507, "insufficient_storage"),
}
_DESCRIPTION = (
    "Scores in the synchronous answer follow `DFSHIELD_SCORE_EXPOSURE` for keys without "
    "admin/moderate. With `DFSHIELD_GUARD_ACTION=reject` a key suspected of a query-based "
    "attack campaign gets 403 `query_attack_suspected`; with `throttle`, 429 `rate_limited` "
    "sooner than other keys."
)


async def _wait_for(store: ResultStore, job_id: str, seconds: float) -> JobRecord | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = await run_in_threadpool(store.get, job_id)
        if job is None or job.status in TERMINAL:
            return job
        await asyncio.sleep(POLL_S)
    return None


@router.post(
    "/v1/analyze", status_code=202, response_model=AnalysisAccepted,
    responses=_RESPONSES,
    openapi_extra=_FORM_SCHEMA,
    summary="Submit a video or image for analysis",
    description=_DESCRIPTION,
)
async def analyze(
    request: Request,
    principal: SubmitPrincipal,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
) -> JSONResponse:
    accepted = await accept_upload(request, principal, settings, store, queue)
    job_id, form = accepted.job.id, accepted.form

    wait = min(form.wait, settings.sync_wait_max_s)
    if wait > 0 and (done := await _wait_for(store, job_id, wait)) is not None:
        result = await run_in_threadpool(store.get_result, job_id)
        body = AnalysisWithFrames.build(done, result, frames=result.frames if result else [])
        exposure = exposure_for(principal, settings, accepted.restricted)
        return JSONResponse(expose_json(body.model_dump(mode="json"), exposure), status_code=200)
    body = AnalysisAccepted(id=job_id, status=JobStatus.QUEUED, links=links_for(job_id))
    return JSONResponse(body.model_dump(mode="json"), status_code=202,
                        headers={"Location": body.links.analysis})

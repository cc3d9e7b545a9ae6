"""``POST /v1/analyze``: stream the upload to disk, validate it, enqueue, answer 202 (or 200)."""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from dataclasses import replace
from http import HTTPStatus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.deps import QueueDep, SettingsDep, StoreDep, SubmitPrincipal, guard_gate
from app.api.errors import ApiError
from app.api.exposure import expose_json, exposure_for
from app.api.metrics import JOBS
from app.api.models import AnalysisAccepted, AnalysisWithFrames, AnalyzeForm, links_for
from app.api.upload import SpooledUpload, spool_multipart
from app.config import Settings
from app.media import MediaLimits, probe_media
from app.media.errors import EmptyFile, FileTooLarge, MediaError, TooManyFrames
from app.queue.streams import JobQueue
from app.schemas import JobStatus, MediaInfo, Problem
from app.store.results import TERMINAL, JobRecord, ResultStore, new_job_id
from app.webhooks import WebhookRejected, validate_callback_url

router = APIRouter(tags=["analyses"])
log = logging.getLogger(__name__)
MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and small fields around the file
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
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_RETRY_AFTER_S = 30
_DESCRIPTION = (
    "Scores in the synchronous answer follow `DFSHIELD_SCORE_EXPOSURE` for keys without "
    "admin/moderate. With `DFSHIELD_GUARD_ACTION=reject` a key suspected of a query-based "
    "attack campaign gets 403 `query_attack_suspected`; with `throttle`, 429 `rate_limited` "
    "sooner than other keys."
)


def _form(fields: dict[str, str], settings: Settings) -> AnalyzeForm:
    try:
        # An empty field is a value, not an absent one: "" is no URI, integer or method.
        form = AnalyzeForm.model_validate(fields)
    except ValidationError as e:
        msg = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ApiError(422, "validation_error", msg) from None
    if form.max_frames is not None and form.max_frames > settings.max_frames_cap:
        raise TooManyFrames(f"max_frames={form.max_frames} is above the cap of "
                            f"{settings.max_frames_cap}; ask for fewer frames")
    return form


def _callback(form: AnalyzeForm, settings: Settings) -> str | None:
    """The callback URL if it may be called (public address unless allowed); DNS: blocking."""
    if form.callback_url is None:
        return None
    try:
        return validate_callback_url(str(form.callback_url), settings.webhook_allow_private)
    except WebhookRejected as e:
        raise ApiError(422, e.code, e.message) from None


def _check_capacity(queue: JobQueue, settings: Settings) -> None:
    depth = queue.depth()
    if depth >= settings.queue_max:
        raise ApiError(
            503, "queue_full",
            f"{depth} analyses are queued or running (limit {settings.queue_max}); "
            f"retry after {settings.queue_retry_after_s} s",
            headers={"Retry-After": str(settings.queue_retry_after_s)},
        )


def _validate_media(up: SpooledUpload, form: AnalyzeForm, settings: Settings) -> MediaInfo:
    if up.path is None:
        raise ApiError(422, "validation_error", "missing the 'file' part (the media to analyse)")
    if up.size == 0:
        raise EmptyFile("the uploaded file is empty (0 bytes)")
    limits = MediaLimits.from_settings(settings)
    limits = replace(limits, max_frames=form.max_frames or limits.max_frames)
    return probe_media(up.path, limits)  # sniffs from bytes, checks duration/resolution


def _enqueue(store: ResultStore, queue: JobQueue, job: JobRecord) -> None:
    store.create(job)
    job.entry_id = queue.enqueue(job.id)
    store.update(job.id, entry_id=job.entry_id)


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
    cap = int(settings.max_upload_mb * 1024 * 1024)
    cap_text = f"{settings.max_upload_mb:g} MB"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap + MULTIPART_SLACK:  # refuse before reading
        raise FileTooLarge(f"upload of {int(length)} bytes is larger than the {cap_text} limit")
    restricted = await guard_gate(request, principal)  # reject / throttle suspected keys
    await run_in_threadpool(_check_capacity, queue, settings)

    job_id = new_job_id()
    try:
        up = await spool_multipart(request, store.media_dir(job_id), cap, cap_text)
        form = _form(up.fields, settings)
        callback_url = await run_in_threadpool(_callback, form, settings)
        info = await run_in_threadpool(_validate_media, up, form, settings)
    except FileTooLarge as e:
        store.remove_media(job_id)
        # Answer now, unread body and all; closing tells the client to stop sending.
        raise ApiError(413, e.code, e.message, headers={"Connection": "close"}) from None
    except OSError as e:
        store.remove_media(job_id)  # nothing half-written is left behind
        if e.errno not in _NO_SPACE:
            raise
        log.error("upload refused: DATA_DIR is full", extra={"error": str(e)})
        raise ApiError(507, "insufficient_storage",
                       "the server has no space left to store this upload; retry later",
                       headers={"Retry-After": str(DISK_FULL_RETRY_AFTER_S),
                                "Connection": "close"}) from None
    except BaseException:
        store.remove_media(job_id)
        raise
    assert up.path is not None
    job = JobRecord(
        id=job_id, xai_method=form.xai_method or settings.xai_method,
        max_frames=form.max_frames, callback_url=callback_url,
        owner=principal.key_id, filename=up.filename, size_bytes=up.size,
        media_path=str(up.path), media=info, frames_total=info.frames_sampled,
    )
    await run_in_threadpool(_enqueue, store, queue, job)
    JOBS.labels(JobStatus.QUEUED.value).inc()
    log.info("analysis accepted", extra={"job_id": job_id, "kind": info.kind,
                                         "size_bytes": up.size, "owner": job.owner})

    wait = min(form.wait, settings.sync_wait_max_s)
    if wait > 0 and (done := await _wait_for(store, job_id, wait)) is not None:
        result = await run_in_threadpool(store.get_result, job_id)
        body = AnalysisWithFrames.build(done, result, frames=result.frames if result else [])
        exposure = exposure_for(principal, settings, restricted)
        return JSONResponse(expose_json(body.model_dump(mode="json"), exposure), status_code=200)
    accepted = AnalysisAccepted(id=job_id, status=JobStatus.QUEUED, links=links_for(job_id))
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202,
                        headers={"Location": accepted.links.analysis})

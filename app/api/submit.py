"""Accepting one upload: stream it to disk, validate it, enqueue the job.

Shared by ``POST /v1/analyze`` and the moderator UI's upload form, so both apply the same
limits, the same typed errors (problem+json via :class:`ApiError`) and leave nothing behind
when they refuse.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.auth import Principal
from app.api.deps import guard_gate
from app.api.errors import ApiError
from app.api.metrics import JOBS
from app.api.models import AnalyzeForm
from app.api.upload import SpooledUpload, spool_multipart
from app.config import Settings
from app.media import MediaLimits, probe_media
from app.media.errors import EmptyFile, FileTooLarge, TooManyFrames
from app.queue.streams import JobQueue
from app.schemas import JobStatus, MediaInfo
from app.store.results import JobRecord, ResultStore, new_job_id
from app.webhooks import WebhookRejected, validate_callback_url

log = logging.getLogger(__name__)
MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and small fields around the file
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_RETRY_AFTER_S = 30
FieldCheck = Callable[[dict[str, str]], None]


@dataclass(frozen=True)
class Accepted:
    job: JobRecord
    form: AnalyzeForm
    restricted: bool  # the guard restricts this key (scores exposed accordingly)


def parse_form(fields: dict[str, str], settings: Settings) -> AnalyzeForm:
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


def upload_cap(request: Request, settings: Settings) -> tuple[int, str]:
    """(cap in bytes, cap as text); a declared Content-Length over it is refused before
    reading, closing the connection (else uvicorn reads and drops the whole body)."""
    cap = int(settings.max_upload_mb * 1024 * 1024)
    cap_text = f"{settings.max_upload_mb:g} MB"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap + MULTIPART_SLACK:  # refuse before reading
        raise ApiError(413, FileTooLarge.code,
                       f"upload of {int(length)} bytes is larger than the {cap_text} limit",
                       headers={"Connection": "close"})
    return cap, cap_text


def _storage_error(e: OSError) -> ApiError:
    log.error("upload refused: DATA_DIR is full", extra={"error": str(e)})
    return ApiError(507, "insufficient_storage",
                    "the server has no space left to store this upload; retry later",
                    headers={"Retry-After": str(DISK_FULL_RETRY_AFTER_S), "Connection": "close"})


async def _receive(request: Request, job_id: str, settings: Settings, store: ResultStore,
                   check: FieldCheck | None) -> tuple[SpooledUpload, AnalyzeForm, str | None,
                                                       MediaInfo]:
    cap, cap_text = upload_cap(request, settings)
    try:
        up = await spool_multipart(request, store.media_dir(job_id), cap, cap_text)
        if check is not None:
            check(up.fields)
        form = parse_form(up.fields, settings)
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
        raise _storage_error(e) from None
    except BaseException:
        store.remove_media(job_id)
        raise
    return up, form, callback_url, info


async def accept_upload(request: Request, principal: Principal, settings: Settings,
                        store: ResultStore, queue: JobQueue,
                        check: FieldCheck | None = None) -> Accepted:
    """Spool, validate and enqueue one multipart upload. ``check`` vets the form fields before
    anything else does (the UI's CSRF token), raising to refuse; it removes fields it consumed
    (the API's form model forbids unknown ones)."""
    restricted = await guard_gate(request, principal)  # reject / throttle suspected keys
    await run_in_threadpool(_check_capacity, queue, settings)
    job_id = new_job_id()
    up, form, callback_url, info = await _receive(request, job_id, settings, store, check)
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
    return Accepted(job, form, restricted)

"""``POST /v1/protect``: a photo in, the protected lossless PNG and its report out (synchronous).

Unlike analyses this runs in the API process (a client waits for its image), so it is bounded:
the optimisation stops at ``DFSHIELD_PROTECT_DEADLINE_S`` (the report then says so), at most
``DFSHIELD_PROTECT_CONCURRENCY`` protections run at once (503 ``busy`` beyond), and uploads
meet the same byte cap and media checks as ``/v1/analyze``.
"""

from __future__ import annotations

import base64
import shutil
import threading
import uuid
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.deps import SettingsDep, SubmitPrincipal
from app.api.errors import ApiError
from app.api.submit import upload_cap
from app.api.upload import SpooledUpload, spool_multipart
from app.config import Settings
from app.media.errors import EmptyFile, FileTooLarge
from app.protect.report import ProtectReport
from app.protect.settings import ProtectSettings, get_protect_settings
from app.schemas import Problem

router = APIRouter(tags=["protect"])
BUSY_RETRY_AFTER_S = 10
_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()

_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "photo (JPEG, PNG, WebP, BMP)"},
                "mode": {"type": "string", "enum": ["interrupt", "tsdf"]},
                "eps": {"type": "number", "exclusiveMinimum": 0,
                        "description": "L-inf budget on [0,1] (default 0.025)"},
                "format": {"type": "string", "enum": ["json", "png"],
                           "description": "json: report + base64 PNG; png: the PNG only"},
            },
        }}},
    }
}
_ERRORS = {code: {"model": Problem, "content": {"application/problem+json": {}}}
           for code in (400, 401, 403, 413, 415, 422, 429, 503)}


class ProtectForm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["interrupt", "tsdf"] | None = None
    eps: float | None = Field(None, gt=0)
    format: Literal["json", "png"] = "json"


class ProtectPublic(BaseModel):
    report: ProtectReport
    png_base64: str = Field(description="the protected image, lossless PNG, base64")


def _slot(ps: ProtectSettings) -> threading.BoundedSemaphore:
    with _slots_lock:
        return _slots.setdefault(ps.concurrency, threading.BoundedSemaphore(ps.concurrency))


def _form(fields: dict[str, str]) -> ProtectForm:
    try:
        return ProtectForm.model_validate({k: v for k, v in fields.items() if v != ""})
    except ValidationError as e:
        msg = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ApiError(422, "validation_error", msg) from None


def _checked(up: SpooledUpload) -> None:
    if up.path is None:
        raise ApiError(422, "validation_error", "missing the 'file' part (the photo to protect)")
    if up.size == 0:
        raise EmptyFile("the uploaded file is empty (0 bytes)")


def _protect(up: SpooledUpload, form: ProtectForm, settings: Settings,
             ps: ProtectSettings) -> tuple[bytes, ProtectReport]:
    # Imported here: torch and the models load on the first protection, not with the API.
    from app.protect.service import ProtectError

    try:
        return _protect_checked(up, form, settings, ps)
    except ProtectError as e:
        raise ApiError(e.http_status, e.code, e.message) from None


def _protect_checked(up: SpooledUpload, form: ProtectForm, settings: Settings,
                     ps: ProtectSettings) -> tuple[bytes, ProtectReport]:
    from app.protect.service import load_photo, options_from, png_bytes, protector_for, run_protect

    assert up.path is not None
    opts = options_from(mode=form.mode, eps=form.eps, ps=ps, deadline_s=ps.deadline_s)
    rgb = load_photo(up.path, settings, ps.max_pixels)
    slot = _slot(ps)
    if not slot.acquire(blocking=False):
        raise ApiError(503, "busy", f"{ps.concurrency} protection(s) already running; retry "
                       f"after {BUSY_RETRY_AFTER_S} s",
                       headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
    try:
        result = run_protect(protector_for(settings.models_dir, settings), rgb, opts)
    finally:
        slot.release()
    return png_bytes(result.protected), result.report


@router.post(
    "/v1/protect", response_model=ProtectPublic,
    responses={200: {"content": {"image/png": {}},
                     "description": "report + PNG (format=json) or the PNG (format=png)"},
               **_ERRORS},
    openapi_extra=_FORM_SCHEMA,
    summary="Protect a face photo before sharing it (active defence)",
    description="Stage 1 distorts the bundled face-swap generators' output; in `tsdf` mode "
                "stage 2 also targets MTCNN. The report says what it was measured against; "
                "JPEG, heavy resizing or another detector may remove the protection.",
)
async def protect(request: Request, principal: SubmitPrincipal,
                  settings: SettingsDep) -> Response:
    ps = get_protect_settings()
    cap, cap_text = upload_cap(request, settings)  # the same cap as /v1/analyze
    spool = settings.data_dir / "protect" / uuid.uuid4().hex
    try:
        up = await spool_multipart(request, spool, cap, cap_text)
        form = _form(up.fields)
        _checked(up)
        png, report = await run_in_threadpool(_protect, up, form, settings, ps)
    except FileTooLarge as e:
        raise ApiError(413, e.code, e.message, headers={"Connection": "close"}) from None
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    if form.format == "png":
        return Response(png, media_type="image/png",
                        headers={"X-Protect-Mode": report.mode,
                                 "X-Protect-Deadline-Hit": str(report.deadline_hit).lower()})
    body = ProtectPublic(report=report, png_base64=base64.b64encode(png).decode("ascii"))
    return JSONResponse(body.model_dump(mode="json"))

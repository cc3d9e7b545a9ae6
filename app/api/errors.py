"""Every error is ``application/problem+json`` (RFC 9457) with a stable machine ``code``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.logs import request_id_var
from app.media.errors import MediaError
from app.schemas import Problem

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"

# Codes for errors raised without one (framework 404/405, plain HTTPException).
_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "file_too_large",
    415: "unsupported_media", 422: "validation_error", 429: "rate_limited",
    500: "internal_error", 503: "unavailable", 507: "insufficient_storage",
}


_PROBED = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


class ApiError(Exception):
    """Raise from routes/deps for a problem response: ``ApiError(404, "not_found", "...")``."""

    def __init__(
        self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found (it may have expired or been deleted)")


def problem(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The problem+json response; carries the current request id."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = Problem(title=title, status=status, detail=detail, code=code,
                   request_id=request_id_var.get())
    return JSONResponse(body.model_dump(), status_code=status, headers=dict(headers or {}),
                        media_type=PROBLEM_JSON)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return problem(exc.status, exc.code, exc.detail, exc.headers)


async def _media_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MediaError)
    return problem(exc.http_status, exc.code, exc.message)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first
    route that matched the path, e.g. GET where GET and DELETE share it)."""
    allowed = []
    for method in _PROBED:  # ask the router itself: included routers hide their routes
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    detail = exc.detail
    headers = dict(getattr(exc, "headers", None) or {})
    if isinstance(detail, Mapping):  # {"code": ..., "detail": ...} from the auth layer
        code = str(detail.get("code", code))
        detail = detail.get("detail", "")
    if exc.status_code == 405 and (methods := allowed_methods(request)):
        headers["Allow"] = ", ".join(methods)
        detail = f"{request.method} is not allowed here; allowed: {headers['Allow']}"
    return problem(exc.status_code, code, str(detail), headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem(422, "validation_error", _validation_detail(exc))


def internal_error() -> JSONResponse:
    """500 without internals; the request id lets ops find the traceback in the logs."""
    return problem(500, "internal_error",
                   "unexpected server error; quote the request id when reporting it")


async def _store_error(_: Request, exc: Exception) -> JSONResponse:
    log.error("redis error: %s", exc)
    return problem(503, "unavailable", "the result store is unreachable; retry shortly",
                   {"Retry-After": "5"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(MediaError, _media_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(redis.RedisError, _store_error)
    # Unknown exceptions are answered by RequestContextMiddleware (app.api.main), which sits
    # inside Starlette's ServerErrorMiddleware and so can still add X-Request-ID to the 500.

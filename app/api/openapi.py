"""The OpenAPI document declares every error an operation can answer, as problem+json.

FastAPI documents only what each route lists in ``responses=`` (and a JSON 422 that is not what
the API sends). :func:`install_problem_responses` post-processes the generated document once:
each operation gets every status it can answer, by what it depends on, each with the
``application/problem+json`` ``Problem`` schema and the codes it may carry:

- every operation: 500 ``internal_error``;
- with an API key (``security``): 401 ``unauthorized``, 403 ``forbidden``, 429 ``rate_limited``;
- with parameters or a body: 422 ``validation_error``;
- under ``/v1`` (Redis-backed): 503 ``unavailable``; with an ``{job_id}``: 404 ``not_found``;
- what a route declares itself (``POST /v1/analyze``: 400, 413, 415, 503 ``queue_full``, 507).

A non-problem response a route declares (``/readyz``'s 503 ``ReadinessReport``) is kept.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# FastAPI's own 422 body; the API answers validation errors as problem+json instead.
_FASTAPI_422 = {"$ref": "#/components/schemas/HTTPValidationError"}
_CODES = {
    400: "`bad_request` (malformed multipart), `empty_file`",
    401: "`unauthorized`: missing or unknown API key",
    403: "`forbidden`: the key lacks the role; `query_attack_suspected` (guard action reject)",
    404: "`not_found`: no such analysis for this key (another key's analysis is absent too)",
    413: "`file_too_large`",
    415: "`unsupported_media`, `unsupported_content_type`",
    422: "`validation_error`, `too_many_frames`, `video_too_long`, `corrupt_media`, "
         "`no_video_stream`, `resolution_too_large`, `image_too_large`, `callback_url_rejected`",
    429: "`rate_limited` (with `Retry-After`)",
    500: "`internal_error`: quote the request id",
    503: "`unavailable` (result store unreachable) or `queue_full`, with `Retry-After`",
    507: "`insufficient_storage`: no space left for the upload (with `Retry-After`)",
}
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _statuses(path: str, op: dict[str, Any]) -> set[int]:
    out = {500}
    declared = {int(s) for s in op.get("responses", {}) if s.isdigit() and int(s) >= 400}
    out |= declared
    if op.get("security"):
        out |= {401, 403, 429}
    if op.get("parameters") or op.get("requestBody"):
        out.add(422)
    if path.startswith("/v1/"):
        out.add(503)
    if "{job_id}" in path:
        out.add(404)
    return out


def _problem(status: int) -> dict[str, Any]:
    phrase = HTTPStatus(status).phrase
    codes = _CODES.get(status)
    return {"description": f"{phrase}: {codes}" if codes else phrase,
            "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}}}


def _is_problem(response: dict[str, Any]) -> bool:
    content = response.get("content") or {}
    schemas = [c.get("schema") for c in content.values()]
    return (not content or all(not s for s in schemas)
            or any(s in (PROBLEM_REF, _FASTAPI_422) for s in schemas))


def document_problems(spec: dict[str, Any]) -> dict[str, Any]:
    """Add/replace the error responses of every operation in ``spec`` (in place)."""
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            if method not in _METHODS:
                continue
            responses = op.setdefault("responses", {})
            for status in sorted(_statuses(path, op)):
                current = responses.get(str(status))
                if current is None or _is_problem(current):
                    responses[str(status)] = _problem(status)
    schemas = spec.get("components", {}).get("schemas", {})
    if '"#/components/schemas/HTTPValidationError"' not in json.dumps(spec.get("paths", {})):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return spec



def install_problem_responses(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``) return the documented-errors version."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

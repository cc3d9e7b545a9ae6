"""The OpenAPI document: clean operation ids, and every error an operation can answer.

Operation ids are the route's function name (:func:`operation_id`): ``analyze``,
``get_analysis``, ``list_frames``, ``get_face_crop``… Generated clients name their functions
and models after them (``openapi-python-client`` would otherwise produce
``analyze_v1_analyze_post`` and ``AnalyzeV1AnalyzePostBody``). Unlike full-stack-fastapi-template's
``custom_generate_unique_id`` the tag is not prefixed: clients already group operations by tag
(``api/analyses/get_analysis.py``), and the names are unique without it (FastAPI warns on a
duplicate).

FastAPI documents only what each route lists in ``responses=`` (and a JSON 422 that is not what
the API sends). :func:`install_problem_responses` post-processes the generated document once:
each operation gets every status it can answer, by what it depends on, each with the
``application/problem+json`` ``Problem`` schema and the codes it may carry:

- every operation: 500 ``internal_error``;
- with an API key (``security``): 401 ``unauthorized``, 403 ``forbidden``, 429 ``rate_limited``;
- with parameters or a body: 422 ``validation_error``;
- with a multipart upload (streamed to disk): 408 ``upload_timeout``, 413 ``file_too_large``;
- under ``/v1`` (Redis-backed): 503 ``unavailable``; with an ``{job_id}``: 404 ``not_found``;
- what a route declares itself (``POST /v1/analyze``: 400, 413, 415, 503 ``queue_full``, 507),
  keeping the route's own description (its codes) when it gives one.

429, 503 and 507 declare their ``Retry-After`` header. A non-problem response a route declares
(``/readyz``'s 503 ``ReadinessReport``) is kept. An inline request-body schema with a ``title``
becomes a named component (``AnalysisCreate``), so clients get a model of that name; its
``max_frames`` carries this deployment's ``max_frames_cap``.
"""

from __future__ import annotations

import http.client
import json
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.config import Settings

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# FastAPI's own 422 body; the API answers validation errors as problem+json instead.
_FASTAPI_422 = {"$ref": "#/components/schemas/HTTPValidationError"}
_CODES = {
    400: "`bad_request`",
    401: "`unauthorized`: missing or unknown API key",
    403: "`forbidden`: the key lacks the role",
    404: "`not_found`: no such analysis for this key (another key's analysis is absent too)",
    408: "`upload_timeout`: the client stopped sending its body",
    413: "`file_too_large`",
    422: "`validation_error`",
    429: "`rate_limited` (with `Retry-After`)",
    500: "`internal_error`: quote the request id",
    503: "`unavailable`: the result store is unreachable (with `Retry-After`)",
    507: "`insufficient_storage`: no space left for the upload (with `Retry-After`)",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "required": True, "schema": {"type": "integer", "minimum": 0}}}
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def operation_id(route: APIRoute) -> str:
    """``generate_unique_id_function``: the route's name (its function name unless ``name=``)."""
    return route.name


def _statuses(path: str, op: dict[str, Any]) -> set[int]:
    out = {500}
    declared = {int(s) for s in op.get("responses", {}) if s.isdigit() and int(s) >= 400}
    out |= declared
    if op.get("security"):
        out |= {401, 403, 429}
    if op.get("parameters") or op.get("requestBody"):
        out.add(422)
    if "multipart/form-data" in op.get("requestBody", {}).get("content", {}):
        out |= {408, 413}  # streamed to disk (app.api.upload): stalled or too large
    if path.startswith("/v1/"):
        out.add(503)
    if "{job_id}" in path:
        out.add(404)
    return out


def _default_descriptions(status: int) -> set[str | None]:
    """What FastAPI writes when a route gives no description."""
    return {None, "", HTTPStatus(status).phrase, http.client.responses.get(status)}


def _problem(status: int, given: dict[str, Any] | None) -> dict[str, Any]:
    phrase = HTTPStatus(status).phrase
    description = (given or {}).get("description")
    if description in _default_descriptions(status):
        codes = _CODES.get(status)
        description = f"{phrase}: {codes}" if codes else phrase
    out: dict[str, Any] = {"description": description,
                           "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}}}
    if status in (429, 503, 507):
        out["headers"] = _RETRY_AFTER
    return out


def _is_problem(response: dict[str, Any]) -> bool:
    content = response.get("content") or {}
    schemas = [c.get("schema") for c in content.values()]
    return (not content or all(not s for s in schemas)
            or any(s in (PROBLEM_REF, _FASTAPI_422) for s in schemas))


def _hoist_bodies(spec: dict[str, Any], op: dict[str, Any]) -> None:
    """Move titled inline request-body schemas to ``components/schemas/<title>``."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for media in op.get("requestBody", {}).get("content", {}).values():
        schema = media.get("schema") or {}
        if "$ref" not in schema and (title := schema.get("title")):
            schemas[title] = schema
            media["schema"] = {"$ref": f"#/components/schemas/{title}"}


def document_problems(spec: dict[str, Any]) -> dict[str, Any]:
    """Add/replace the error responses of every operation in ``spec`` (in place)."""
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            if method not in _METHODS:
                continue
            _hoist_bodies(spec, op)
            responses = op.setdefault("responses", {})
            for status in sorted(_statuses(path, op)):
                current = responses.get(str(status))
                if current is None or _is_problem(current):
                    responses[str(status)] = _problem(status, current)
    schemas = spec.get("components", {}).get("schemas", {})
    if '"#/components/schemas/HTTPValidationError"' not in json.dumps(spec.get("paths", {})):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return spec


def document_limits(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """This deployment's caps in the schema (``max_frames`` above ``max_frames_cap`` is 422)."""
    form = spec.get("components", {}).get("schemas", {}).get("AnalysisCreate")
    if form is not None:
        form["properties"]["max_frames"]["maximum"] = settings.max_frames_cap
    return spec


def install_problem_responses(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and ``/openapi.json``) return the documented-errors version."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = document_problems(generate())
            settings = getattr(app.state, "settings", None)
            app.openapi_schema = document_limits(spec, settings) if settings else spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

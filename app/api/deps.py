"""FastAPI dependencies as ``Annotated`` aliases: settings, Redis, store, queue, principal, job.

Auth: :func:`get_principal` authenticates the API key (``Authorization: Bearer`` or
``X-API-Key``) against ``app.state.keyring`` (401 ``unauthorized``), then counts the request
against the key's rate limit (429 ``rate_limited`` with ``Retry-After``); :func:`require` adds
the role check (403 ``forbidden``). Open mode (no keys configured) answers the anonymous
principal with every role and does not rate limit: limits are per key, and a per-address limit
behind a proxy would throttle every client together. The UI uses :func:`get_ui_principal`,
which also accepts the key from its login cookie.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import redis
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.api.auth import Principal, can_delete, can_read, get_keyring, presented_key
from app.api.errors import ApiError, not_found
from app.api.ratelimit import check_rate_limit
from app.config import Settings
from app.queue.streams import JobQueue
from app.store.results import JobRecord, ResultStore, valid_job_id

__all__ = [
    "UI_COOKIE", "AdminPrincipal", "DeletableJobDep", "JobDep", "PrincipalDep", "QueueDep",
    "ReadPrincipal", "RedisDep", "SettingsDep", "StoreDep", "SubmitPrincipal", "authenticate",
    "get_principal", "get_ui_principal", "require",
]

UI_COOKIE = "dfshield_key"
# Declared for the OpenAPI page (/docs shows an "Authorize" button); the key itself is read by
# app.api.auth.presented_key, so auto_error stays off and the 401 is ours (problem+json).
_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer <key>`")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key (alternative)")


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


def get_store(request: Request) -> ResultStore:
    return request.app.state.store


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
StoreDep = Annotated[ResultStore, Depends(get_store)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def authenticate(request: Request, fallback_key: str | None = None) -> Principal:
    """The caller's principal from its header key (else ``fallback_key``); 401 when unknown."""
    key = presented_key(request) or fallback_key
    principal = get_keyring(request).authenticate(key)
    if principal is None:
        raise unauthorized(
            "unknown API key" if key else
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
    return principal


async def limit(request: Request, principal: Principal) -> None:
    """Count one request for a key (429 when over); sets X-RateLimit-* via request.state."""
    if principal.anonymous:
        return
    decision = await check_rate_limit(request, principal)
    if decision.remaining >= 0:  # RequestContextMiddleware copies this onto the response
        request.state.rate_limit = (request.app.state.rate_limiter.per_minute,
                                    decision.remaining)


async def get_principal(
    request: Request,
    _bearer_doc: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _key_doc: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    """Who is calling (401), rate limited per key (429)."""
    principal = authenticate(request)
    await limit(request, principal)
    return principal


async def get_ui_principal(request: Request) -> Principal:
    """Like :func:`get_principal`, also accepting the UI's login cookie (page views only)."""
    principal = authenticate(request, request.cookies.get(UI_COOKIE))
    await limit(request, principal)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(role: str) -> Callable[[Principal], Principal]:
    """Dependency factory: the caller's principal, 403 ``forbidden`` without ``role``."""

    def dependency(principal: PrincipalDep) -> Principal:
        if not principal.has_role(role):
            raise ApiError(403, "forbidden", f"this API key lacks the '{role}' role")
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency


SubmitPrincipal = Annotated[Principal, Depends(require("submit"))]
ReadPrincipal = Annotated[Principal, Depends(require("read"))]
AdminPrincipal = Annotated[Principal, Depends(require("admin"))]


def load_job(store: ResultStore, job_id: str, principal: Principal) -> JobRecord:
    """The analysis if ``principal`` may read it; someone else's is a 404 (no existence leak)."""
    job = store.get(job_id) if valid_job_id(job_id) else None
    if job is None or not can_read(principal, job.owner):
        raise not_found(f"analysis {job_id}")
    return job


def get_job(job_id: str, store: StoreDep, principal: ReadPrincipal) -> JobRecord:
    return load_job(store, job_id, principal)


def get_deletable_job(job_id: str, store: StoreDep, principal: PrincipalDep) -> JobRecord:
    """The owner (any role) or an admin may purge; anyone else gets a 404."""
    job = store.get(job_id) if valid_job_id(job_id) else None
    if job is None or not can_delete(principal, job.owner):
        raise not_found(f"analysis {job_id}")
    return job


JobDep = Annotated[JobRecord, Depends(get_job)]
DeletableJobDep = Annotated[JobRecord, Depends(get_deletable_job)]

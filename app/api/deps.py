"""FastAPI dependencies as ``Annotated`` aliases: settings, Redis, store, queue, principal, job.

Auth: :func:`get_principal` authenticates the API key (``Authorization: Bearer`` or
``X-API-Key``) against ``app.state.keyring`` (401 ``unauthorized``), then counts the request
against the key's rate limit (429 ``rate_limited`` with ``Retry-After``); :func:`require` adds
the role check (403 ``forbidden``). Open mode (no keys configured) answers the anonymous
principal with every role and does not rate limit: limits are per key, and a per-address limit
behind a proxy would throttle every client together. The UI uses :func:`get_ui_principal`,
which also accepts the session cookie its login form sets (the cookie names a server-side
session; it never holds the key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import redis
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from app.api.auth import Principal, can_delete, can_read, get_keyring, presented_key
from app.api.errors import ApiError, not_found
from app.api.exposure import exposure_for
from app.api.ratelimit import check_rate_limit, rate_limit_exceeded
from app.api.ui_session import UiSession, UiSessions, session_principal
from app.config import ScoreExposure, Settings
from app.guard.memory import GuardMemory
from app.queue.streams import JobQueue
from app.store.results import JobRecord, ResultStore, valid_job_id

__all__ = [
    "UI_COOKIE", "AdminPrincipal", "DeletableJobDep", "ExposureDep", "GuardDep", "JobDep",
    "ModeratePrincipal", "PrincipalDep", "QueueDep", "ReadPrincipal", "RedisDep", "SettingsDep",
    "StoreDep", "SubmitPrincipal", "authenticate", "authenticate_ui", "get_principal",
    "get_ui_principal", "ui_session", "ui_sessions",
    "guard_gate", "guard_restricted", "require",
]

UI_COOKIE = "dfshield_session"  # a UI session id (app.api.ui_session), never an API key
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


def get_guard(request: Request) -> GuardMemory:
    return request.app.state.guard


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
GuardDep = Annotated[GuardMemory, Depends(get_guard)]
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


def ui_sessions(request: Request) -> UiSessions:
    return UiSessions(request.app.state.redis, request.app.state.settings.ui_session_ttl_s)


def ui_session(request: Request) -> UiSession | None:
    """The UI session the cookie names, if it is live."""
    return ui_sessions(request).get(request.cookies.get(UI_COOKIE))


def authenticate_ui(request: Request) -> Principal:
    """A header key first (API clients, proxies), else the UI session cookie; 401 when neither."""
    keyring = get_keyring(request)
    if keyring.open or presented_key(request):
        return authenticate(request)
    session = ui_session(request)
    principal = session_principal(keyring, session) if session is not None else None
    if principal is None:
        raise unauthorized("not logged in (or the session expired): log in with an API key")
    return principal


async def get_ui_principal(request: Request) -> Principal:
    """Like :func:`get_principal`, also accepting the UI's session cookie (page views only)."""
    principal = await run_in_threadpool(authenticate_ui, request)
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
ModeratePrincipal = Annotated[Principal, Depends(require("moderate"))]
AdminPrincipal = Annotated[Principal, Depends(require("admin"))]


def guard_restricted(request: Request, principal: Principal) -> bool:
    """Whether the guard's action applies to this caller: its key is suspected, the action is
    not ``flag``, and the key is a plain client (not open mode, admin or moderate).

    With ``guard_action=flag`` nothing is looked up, so a suspected key's requests take the
    same path, and the same time, as anyone else's.
    """
    settings: Settings = request.app.state.settings
    if (settings.guard_action == "flag" or not settings.guard_enabled
            or principal.anonymous or principal.reviews):
        return False
    return get_guard(request).is_suspected(principal.key_id)


async def guard_gate(request: Request, principal: Principal) -> bool:
    """Apply ``reject`` (403) and ``throttle`` (429) to a suspected submitter; True when the
    guard restricts this caller (``verdict_only`` then hides its scores)."""
    if not await run_in_threadpool(guard_restricted, request, principal):
        return False
    settings: Settings = request.app.state.settings
    if settings.guard_action == "reject":
        raise ApiError(403, "query_attack_suspected",
                       "this API key is suspended: its uploads look like a query-based attack "
                       "on the detector; contact the operator of this service")
    if settings.guard_action == "throttle":
        limiter = request.app.state.guard_throttle
        decision = await limiter.acheck(principal.key_id)
        if not decision.allowed:
            raise rate_limit_exceeded(decision, limiter.per_minute)
    return True


def get_exposure(request: Request, principal: ReadPrincipal) -> ScoreExposure:
    """The caller's score exposure (``app.api.exposure``) for reading routes."""
    restricted = guard_restricted(request, principal)
    return exposure_for(principal, request.app.state.settings, restricted)


ExposureDep = Annotated[ScoreExposure, Depends(get_exposure)]


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

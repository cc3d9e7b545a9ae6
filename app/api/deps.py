"""FastAPI dependencies as ``Annotated`` aliases: settings, Redis, store, queue, principal, job.

Auth seam: :func:`get_principal` returns the anonymous principal with every role. The auth
layer replaces its body (e.g. with ``app.api.auth.authorize``) and :func:`require` keeps
working unchanged; routes only ever see a ``Principal``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import redis
from fastapi import Depends, Request

from app.api.auth import ANONYMOUS, Principal, can_delete, can_read
from app.api.errors import ApiError, not_found
from app.config import Settings
from app.queue.streams import JobQueue
from app.store.results import JobRecord, ResultStore, valid_job_id

__all__ = [
    "AdminPrincipal", "DeletableJobDep", "JobDep", "PrincipalDep", "QueueDep", "ReadPrincipal",
    "RedisDep", "SettingsDep", "StoreDep", "SubmitPrincipal", "get_principal", "require",
]


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


def get_principal(request: Request) -> Principal:
    """Who is calling. Open service for now: anonymous, all roles (auth plugs in here)."""
    return ANONYMOUS


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


def _load(store: ResultStore, job_id: str) -> JobRecord:
    job = store.get(job_id) if valid_job_id(job_id) else None
    if job is None:
        raise not_found(f"analysis {job_id}")
    return job


def get_job(job_id: str, store: StoreDep, principal: ReadPrincipal) -> JobRecord:
    """The analysis in the path; someone else's is reported as 404 (no existence leak)."""
    job = _load(store, job_id)
    if not can_read(principal, job.owner):
        raise not_found(f"analysis {job_id}")
    return job


def get_deletable_job(job_id: str, store: StoreDep, principal: PrincipalDep) -> JobRecord:
    job = _load(store, job_id)
    if not can_delete(principal, job.owner):
        raise not_found(f"analysis {job_id}")
    return job


JobDep = Annotated[JobRecord, Depends(get_job)]
DeletableJobDep = Annotated[JobRecord, Depends(get_deletable_job)]

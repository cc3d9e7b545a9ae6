"""The FastAPI application: ``create_app(settings, redis)``. It never runs models."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import redis
from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import build_keyring, open_mode_warning
from app.api.errors import install_error_handlers, internal_error
from app.api.metrics import HTTP_REQUESTS, HTTP_SECONDS
from app.api.openapi import install_problem_responses, operation_id
from app.api.ratelimit import RateLimiter
from app.api.routes import analyses, analyze, guard, health, protect, ui
from app.config import Settings, get_settings
from app.guard.memory import GuardMemory
from app.logs import request_id_var
from app.queue.streams import JobQueue
from app.redis_conn import client_from_url
from app.store.results import ResultStore
from app.webhooks import check_secret

if TYPE_CHECKING:
    from app.worker.main import Worker

log = logging.getLogger("app.api")
_RID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestContextMiddleware:
    """X-Request-ID on every response (the client's if sane), one JSON access-log line per
    request, HTTP metrics, and a problem+json 500 for anything that escaped the routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1").strip()
        rid = given if _RID.fullmatch(given) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        state: dict[str, Any] = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = rid
                if quota := scope.get("state", {}).get("rate_limit"):  # set by deps.limit
                    headers.setdefault("X-RateLimit-Limit", str(quota[0]))
                    headers.setdefault("X-RateLimit-Remaining", str(quota[1]))
                state["status"], state["started"] = message["status"], True
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error")
            if not state["started"]:
                await internal_error()(scope, receive, send_with_id)
        finally:
            self._record(scope, state["status"], time.perf_counter() - t0)
            request_id_var.reset(token)

    @staticmethod
    def _record(scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"]
        HTTP_REQUESTS.labels(method, route, str(status)).inc()
        HTTP_SECONDS.labels(method, route).observe(seconds)
        if route not in ("/healthz", "/readyz", "/metrics"):
            log.info("request", extra={"method": method, "path": scope["path"],
                                       "status": status, "ms": round(seconds * 1000, 2)})


def create_app(
    settings: Settings | None = None,
    redis_client: redis.Redis | None = None,
    *,
    local_worker: Worker | None = None,
) -> FastAPI:
    """The API. ``redis_client`` defaults to ``settings.redis_url``; ``local_worker`` is the
    in-process worker of ``dfshield serve`` (readiness then also waits for its models).

    Refuses (``AuthConfigError`` / ``ValueError``) bad key specs, an open API in production and
    the development webhook secret in production. ``/healthz``, ``/readyz``, ``/metrics`` and
    ``/docs`` are unauthenticated (probes and scrapers carry no key; keep ``/metrics`` on the
    internal network); everything under ``/v1`` and ``/ui`` needs a key unless open.
    """
    settings = settings or get_settings()
    keyring = build_keyring(settings)
    check_secret(settings)
    if keyring.open:
        log.warning(open_mode_warning())
    else:
        log.info("API keys required", extra={"api_keys": len(keyring),
                                             "rate_limit_per_min": settings.rate_limit_per_min})
    if redis_client is None:
        if not settings.redis_url:
            raise RuntimeError("the API needs DFSHIELD_REDIS_URL (or use `dfshield serve`)")
        redis_client = client_from_url(settings.redis_url)
    client = redis_client

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            app.state.queue.ensure_group()
        except redis.RedisError as e:  # readiness reports it; no crash loop while Redis boots
            log.warning("redis not reachable at startup: %s", e)
        yield

    app = FastAPI(
        title="dfshield",
        version="1",
        summary="Deepfake detection that also flags faces adversarially attacked to fool it.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,  # `analyze`, not `analyze_v1_analyze_post`
    )
    app.state.settings = settings
    app.state.redis = client
    app.state.store = ResultStore(client, settings.result_ttl_s, settings.data_dir)
    app.state.queue = JobQueue(client)
    app.state.keyring = keyring
    app.state.rate_limiter = RateLimiter.from_settings(client, settings)
    app.state.guard = GuardMemory(client, settings.guard_ttl_s, settings.guard_bucket_cap)
    app.state.guard_throttle = RateLimiter(client, settings.guard_throttle_per_min,
                                           prefix="dfshield:guard:throttle:")
    app.state.local_worker = local_worker
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(analyze.router)
    app.include_router(analyses.router)
    app.include_router(guard.router)
    app.include_router(health.router)
    app.include_router(protect.router)
    ui.install(app)
    install_problem_responses(app)
    return app

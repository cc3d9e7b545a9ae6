"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.api.deps import GuardDep, QueueDep, RedisDep, SettingsDep
from app.api.metrics import (
    QUEUE_DEPTH,
    QUEUE_PENDING,
    SUSPECTED_KEYS,
    WORKERS_LIVE,
    render_latest,
)
from app.api.models import ReadinessReport
from app.worker import heartbeat

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _checks(request: Request, r: RedisDep) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        r.ping()
        checks["redis"] = "ok"
    except Exception as e:  # noqa: BLE001 - any failure means not ready; say which
        checks["redis"] = f"unreachable: {type(e).__name__}: {e}"
        checks["worker"] = "unknown (redis unreachable)"
    if checks["redis"] == "ok":
        live = heartbeat.live_workers(r)
        checks["worker"] = "ok" if live else "no worker heartbeat in the last heartbeat_ttl_s"
        if not live and (failed := heartbeat.failed_workers(r)):  # say why none is alive
            checks["worker"] += "; " + "; ".join(
                f"worker {f['name']} failed to start: {f['error']}" for f in failed[:3])
    local = getattr(request.app.state, "local_worker", None)
    if local is not None:  # `dfshield serve`: the in-process worker must have loaded its models
        if local.boot_error is not None:
            checks["models"] = f"failed to load: {local.boot_error}"
        else:
            checks["models"] = "ok" if local.models_loaded else "loading"
    return checks


@router.get("/readyz", response_model=ReadinessReport,
            responses={503: {"model": ReadinessReport}},
            summary="Readiness: Redis answers, a worker is alive, models are loaded")
def readyz(request: Request, r: RedisDep) -> JSONResponse:
    checks = _checks(request, r)
    ok = all(v == "ok" for v in checks.values())
    body = ReadinessReport(status="ready" if ok else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"description": "Prometheus text exposition format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(r: RedisDep, queue: QueueDep, guard: GuardDep, settings: SettingsDep) -> Response:
    try:  # gauges read from Redis at scrape time, so every API replica reports the same
        QUEUE_DEPTH.set(queue.depth())
        QUEUE_PENDING.set(queue.pending())
        WORKERS_LIVE.set(len(heartbeat.live_workers(r)))
        SUSPECTED_KEYS.set(len(guard.suspected(settings.guard_suspect_ttl_s)))
    except Exception:  # noqa: BLE001, S110 - a scrape must still answer while Redis is down
        pass
    data, ctype = render_latest()
    return Response(data, media_type=ctype)

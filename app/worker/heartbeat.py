"""Worker heartbeats: one key per worker with a TTL; readiness looks for a fresh one."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

PREFIX = "dfshield:heartbeat:"
FAILED_PREFIX = "dfshield:worker-failed:"
FAILED_TTL_S = 300.0


def beat(r: redis.Redis, name: str, info: dict[str, Any], ttl_s: float) -> None:
    """Refresh ``name``'s heartbeat; it vanishes ``ttl_s`` after the last beat."""
    payload = json.dumps({**info, "name": name, "ts": time.time()}, default=str)
    r.set(PREFIX + name, payload, px=max(int(ttl_s * 1000), 1))


def forget(r: redis.Redis, name: str) -> None:
    """A worker that stops cleanly takes its heartbeat with it."""
    r.delete(PREFIX + name)


def report_failure(r: redis.Redis, name: str, error: str, ttl_s: float = FAILED_TTL_S) -> None:
    """A worker that could not start (e.g. its models failed to load) says so for readiness."""
    payload = json.dumps({"name": name, "error": error[:500], "ts": time.time()})
    r.set(FAILED_PREFIX + name, payload, px=max(int(ttl_s * 1000), 1))


def failed_workers(r: redis.Redis) -> list[dict[str, Any]]:
    """Workers that reported a start failure in the last ``FAILED_TTL_S`` seconds."""
    keys = list(r.scan_iter(match=FAILED_PREFIX + "*", count=100))
    return [json.loads(v) for v in r.mget(keys) if v is not None] if keys else []


def live_workers(r: redis.Redis) -> list[dict[str, Any]]:
    """Every worker whose heartbeat has not expired (key TTL = freshness)."""
    keys = list(r.scan_iter(match=PREFIX + "*", count=100))
    if not keys:
        return []
    return [json.loads(v) for v in r.mget(keys) if v is not None]

"""Worker heartbeats: one key per worker with a TTL; readiness looks for a fresh one."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

PREFIX = "dfshield:heartbeat:"


def beat(r: redis.Redis, name: str, info: dict[str, Any], ttl_s: float) -> None:
    """Refresh ``name``'s heartbeat; it vanishes ``ttl_s`` after the last beat."""
    payload = json.dumps({**info, "name": name, "ts": time.time()}, default=str)
    r.set(PREFIX + name, payload, px=max(int(ttl_s * 1000), 1))


def forget(r: redis.Redis, name: str) -> None:
    """A worker that stops cleanly takes its heartbeat with it."""
    r.delete(PREFIX + name)


def live_workers(r: redis.Redis) -> list[dict[str, Any]]:
    """Every worker whose heartbeat has not expired (key TTL = freshness)."""
    keys = list(r.scan_iter(match=PREFIX + "*", count=100))
    if not keys:
        return []
    return [json.loads(v) for v in r.mget(keys) if v is not None]

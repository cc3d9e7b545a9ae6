"""Per-key rate limit shared by every API replica: GCRA in one atomic Redis Lua script.

GCRA (generic cell rate algorithm) keeps one number per key, the *theoretical arrival time*
(TAT): a key may send ``per_minute`` requests at once, then one every ``60 / per_minute`` s.
It is a token bucket without a refill job, and the script makes read-check-write atomic, so
concurrent replicas can never let more through than the limit. The clock is Redis' ``TIME``
(one clock for all replicas) unless a ``clock`` is injected (tests).

Wiring: at startup set ``app.state.rate_limiter = RateLimiter.from_settings(redis, settings)``
(sync ``redis.Redis`` or ``redis.asyncio.Redis``). Routes use ``Depends(rate_limited("submit"))``
(auth + limit, returns the Principal) or call :func:`check_rate_limit` after their own auth.
No ``app.state.rate_limiter`` means no limiting (logged once).
"""

# No ``from __future__ import annotations``: FastAPI must see the real ``Annotated`` object of
# the closure dependency in ``rate_limited`` (a string would name a local it cannot resolve).
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Self

from fastapi import Depends, HTTPException, Request, Response, status
from redis.asyncio import Redis as AsyncRedis
from starlette.concurrency import run_in_threadpool

from app.api.auth import Principal, require_role
from app.config import Settings

log = logging.getLogger(__name__)

# KEYS[1] = bucket; ARGV = interval_ms, burst_ms, now_ms (< 0: use Redis TIME).
# Returns {allowed, retry_after_ms, remaining}.
_GCRA_LUA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst
if now < allow_at then
  return {0, math.ceil(allow_at - now), 0}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now))
return {1, 0, math.floor((now - allow_at) / interval + 1e-9)}
"""


@dataclass(frozen=True)
class RateDecision:
    """``remaining`` is -1 when the limiter is unlimited (``per_minute == 0``)."""

    allowed: bool
    retry_after_s: int
    remaining: int


UNLIMITED = RateDecision(True, 0, -1)


class RateLimiter:
    """``per_minute`` requests per key per ``period_s`` (60 s); 0 = unlimited."""

    def __init__(
        self,
        redis: Any,
        per_minute: int,
        *,
        period_s: float = 60.0,
        prefix: str = "dfshield:ratelimit:",
        clock: Callable[[], float] | None = None,
    ) -> None:
        if per_minute < 0 or period_s <= 0:
            raise ValueError("per_minute must be >= 0 and period_s > 0")
        self.redis = redis
        self.per_minute = per_minute
        self.prefix = prefix
        self.is_async = isinstance(redis, AsyncRedis)
        self._interval_ms = period_s * 1000.0 / per_minute if per_minute else 0.0
        self._burst_ms = period_s * 1000.0
        self._clock = clock
        self._script = redis.register_script(_GCRA_LUA)

    @classmethod
    def from_settings(cls, redis: Any, settings: Settings) -> Self:
        return cls(redis, settings.rate_limit_per_min)

    def _args(self, key_id: str) -> tuple[list[str], list[str]]:
        now_ms = self._clock() * 1000.0 if self._clock else -1.0
        args = [f"{self._interval_ms:.6f}", f"{self._burst_ms:.3f}", f"{now_ms:.3f}"]
        return [self.prefix + key_id], args

    @staticmethod
    def _decision(raw: list[Any]) -> RateDecision:
        allowed, retry_ms, remaining = (int(v) for v in raw)
        return RateDecision(bool(allowed), math.ceil(retry_ms / 1000), remaining)

    def check(self, key_id: str) -> RateDecision:
        """Count one request for ``key_id`` (sync Redis client)."""
        if not self.per_minute:
            return UNLIMITED
        if self.is_async:
            raise TypeError("this limiter wraps redis.asyncio; use `await acheck(...)`")
        keys, args = self._args(key_id)
        return self._decision(self._script(keys=keys, args=args))

    async def acheck(self, key_id: str) -> RateDecision:
        """Count one request; works with either client (a sync one runs in the threadpool)."""
        if not self.per_minute:
            return UNLIMITED
        if not self.is_async:
            return await run_in_threadpool(self.check, key_id)
        keys, args = self._args(key_id)
        return self._decision(await self._script(keys=keys, args=args))


def bucket_for(principal: Principal, request: Request) -> str:
    """Keys are limited per key id; open mode (anonymous) per client address."""
    if principal.anonymous:
        host = request.client.host if request.client else "unknown"
        return f"ip:{host}"
    return principal.key_id


def rate_limit_exceeded(decision: RateDecision, limit: int) -> HTTPException:
    retry = max(1, decision.retry_after_s)
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail={
            "code": "rate_limited",
            "detail": f"rate limit of {limit} requests per minute exceeded; retry in {retry} s",
            "retry_after_s": retry,
        },
        headers={
            "Retry-After": str(retry),
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": "0",
        },
    )


_warned_missing = False


async def check_rate_limit(
    request: Request, principal: Principal, response: Response | None = None
) -> RateDecision:
    """Count the request against ``app.state.rate_limiter``; raise 429 when over the limit."""
    global _warned_missing
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        if not _warned_missing:
            log.warning("app.state.rate_limiter is not set: requests are not rate limited")
            _warned_missing = True
        return UNLIMITED
    decision = await limiter.acheck(bucket_for(principal, request))
    if not decision.allowed:
        raise rate_limit_exceeded(decision, limiter.per_minute)
    if response is not None and decision.remaining >= 0:
        response.headers["X-RateLimit-Limit"] = str(limiter.per_minute)
        response.headers["X-RateLimit-Remaining"] = str(decision.remaining)
    return decision


def rate_limited(role: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency: authenticate with ``role`` (401/403), then rate limit (429)."""
    auth = require_role(role)

    async def dependency(
        request: Request, response: Response, principal: Annotated[Principal, Depends(auth)]
    ) -> Principal:
        await check_rate_limit(request, principal, response)
        return principal

    dependency.__name__ = f"rate_limited_{role}"
    return dependency

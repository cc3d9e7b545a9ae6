"""Redis SIGKILLed with jobs in flight, restarted from its AOF: every job finishes, the API
answers 503 + Retry-After while it is down and recovers without being restarted."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from app.redis_conn import client_from_url
from app.worker.main import Worker
from tests.faults.conftest import RedisProcess
from tests.service.live import IMAGE, LiveApi, make_settings, submit

JOBS = 20
PROBLEM = "application/problem+json"


def _statuses(c: httpx.Client, ids: list[str]) -> list[str]:
    return [c.get(f"/v1/analyses/{i}").json()["status"] for i in ids]


def _unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"] == PROBLEM
    assert resp.json()["code"] == "unavailable"
    assert int(resp.headers["retry-after"]) > 0


def test_redis_killed_and_restarted_loses_no_job(
    tmp_path: Path, redis_process: RedisProcess,
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
) -> None:
    r = client_from_url(redis_process.url)
    s = make_settings(tmp_path / "data", redis_process.url, worker_concurrency=2,
                      visibility_timeout_s=2, heartbeat_ttl_s=3, queue_max=1000)
    worker_factory(s, r)
    api = api_factory(s, r)  # API and worker share nothing but Redis and DATA_DIR
    c = api.client
    ids = []
    for _ in range(JOBS):
        resp = submit(c, IMAGE, max_frames=1)
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])

    before = _statuses(c, ids)
    in_flight = sum(st in ("queued", "running") for st in before)
    assert in_flight > 0, "the kill must land with jobs still queued or running"
    redis_process.kill()
    t_down = time.monotonic()

    # While Redis is down: liveness holds, readiness and every store-backed route say 503.
    assert c.get("/healthz").status_code == 200
    ready = c.get("/readyz")
    assert ready.status_code == 503 and "unreachable" in ready.json()["checks"]["redis"]
    _unavailable(c.get(f"/v1/analyses/{ids[0]}"))
    media = s.data_dir / "media"
    spooled = set(media.iterdir())
    _unavailable(submit(c, IMAGE))
    assert set(media.iterdir()) <= spooled  # the refused upload left nothing on disk
    time.sleep(1.0)  # workers see the outage too (claims and writes fail, then retry)

    redis_process.start()  # same socket and AOF: no API or worker restart
    down_s = time.monotonic() - t_down
    deadline = time.monotonic() + 60
    while (ready := c.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, ready.json()
        time.sleep(0.1)
    recovered_s = time.monotonic() - t_down

    deadline = time.monotonic() + 60
    while (now := _statuses(c, ids)).count("done") < JOBS:
        assert "failed" not in now, [c.get(f"/v1/analyses/{i}").json() for i in ids]
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
    finished_s = time.monotonic() - t_down
    for i in ids:
        frames = c.get(f"/v1/analyses/{i}/frames").json()["items"]
        assert [f["index"] for f in frames] == [0]
    assert r.xlen("dfshield:jobs") == 0 and r.xpending("dfshield:jobs", "dfshield-workers")[
        "pending"] == 0
    after = submit(c, IMAGE, wait=30)  # a new analysis goes through end to end
    assert after.status_code == 200 and after.json()["status"] == "done", after.text
    print(f"\nredis kill: {in_flight}/{JOBS} jobs in flight, 0 lost; down {down_s:.1f} s, "
          f"ready again {recovered_s:.1f} s after the kill, all done {finished_s:.1f} s after")

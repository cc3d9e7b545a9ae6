"""A worker process SIGKILLed with many jobs in flight: the second worker finishes them all.

tests/service/test_service_crash.py kills one worker mid-way through one job; this one kills it
with 20 jobs queued or running across its job threads and checks none is lost or doubled.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from app.store.results import ResultStore
from app.worker import heartbeat
from tests.service.live import VIDEO, LiveApi, make_settings, spawn_worker, submit

JOBS = 20
FRAMES = 2


def _wait(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def _bodies(c: httpx.Client, ids: list[str]) -> list[dict]:
    return [c.get(f"/v1/analyses/{i}").json() for i in ids]


def test_killed_worker_with_20_jobs_in_flight_loses_none(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi],
) -> None:
    s = make_settings(tmp_path / "data", redis_server.url, worker_concurrency=2,
                      worker_frame_chunk=1, max_frames=FRAMES, visibility_timeout_s=2,
                      queue_max=1000)
    api = api_factory(s, redis_client)
    store = ResultStore(redis_client, s.result_ttl_s, s.data_dir)
    logs = tmp_path / "workers.log"
    procs = [spawn_worker(s, logs), spawn_worker(s, logs)]  # boot together: the slow part
    try:
        _wait(lambda: len(heartbeat.live_workers(redis_client)) == 2, 180, "workers to boot",
              0.2)
        ids = []
        for _ in range(JOBS):
            resp = submit(api.client, VIDEO)
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
        # Kill the first worker seen with a job running, once it has frames to lose.
        def running_on() -> str | None:
            for i in ids:
                j = store.get(i)
                if j is not None and j.status == "running" and j.frames_done >= 1:
                    return j.worker
            return None
        _wait(lambda: running_on() is not None, 60, "a job part-way through")
        owner = running_on()
        pid = next(w["pid"] for w in heartbeat.live_workers(redis_client) if w["name"] == owner)
        victim = next(p for p in procs if p.pid == pid)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        at_kill = [store.get(i) for i in ids]
        held = [j.id for j in at_kill if j.status == "running" and j.worker == owner]
        in_flight = sum(j.status in ("queued", "running") for j in at_kill)
        assert held, "the victim must die holding jobs"

        _wait(lambda: all(b["status"] in ("done", "failed")
                          for b in _bodies(api.client, ids)), 120, "every job to finish", 0.2)
        final = _bodies(api.client, ids)
        assert [b["status"] for b in final] == ["done"] * JOBS, final
        for i in ids:
            frames = api.client.get(f"/v1/analyses/{i}/frames").json()["items"]
            assert [f["index"] for f in frames] == list(range(FRAMES))  # all frames, no dupes
        for i in held:  # the survivor took over every job the victim held
            job = store.get(i)
            assert job.worker != owner and job.attempts == 2, job
        assert redis_client.xlen("dfshield:jobs") == 0
        print(f"\nworker kill: {in_flight}/{JOBS} jobs in flight ({len(held)} running on the "
              "killed worker), 0 lost, 0 duplicated frames")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

"""A worker process SIGKILLed with many jobs in flight: the second worker finishes them all.

tests/service/test_service_crash.py kills one worker process mid-way through one job (and
checks the survivor process's clean SIGTERM exit); this one kills a worker process with 20 jobs
queued or running and checks none is lost or doubled. The survivor runs in the test process
(sharing the session's loaded models) to spare a second model load.
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
from app.worker.main import Worker
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
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
) -> None:
    s = make_settings(tmp_path / "data", redis_server.url, worker_concurrency=2,
                      worker_frame_chunk=1, max_frames=FRAMES, visibility_timeout_s=2,
                      queue_max=1000)
    api = api_factory(s, redis_client)
    store = ResultStore(redis_client, s.result_ttl_s, s.data_dir)
    logs = tmp_path / "workers.log"
    victim = spawn_worker(s, logs)
    try:
        _wait(lambda: len(heartbeat.live_workers(redis_client)) == 1, 180, "the worker to boot",
              0.2)
        owner = heartbeat.live_workers(redis_client)[0]["name"]
        survivor = worker_factory(s, redis_client)
        ids = []
        for _ in range(JOBS):
            resp = submit(api.client, VIDEO)
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])

        def part_way() -> bool:  # the process holds a job with frames already written
            return any(j is not None and j.status == "running" and j.worker == owner
                       and j.frames_done >= 1 for j in map(store.get, ids))

        _wait(part_way, 60, "a job part-way through on the worker process")
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
            assert job.worker == survivor.name and job.attempts == 2, job
        assert redis_client.xlen("dfshield:jobs") == 0
        print(f"\nworker kill: {in_flight}/{JOBS} jobs in flight ({len(held)} running on the "
              "killed worker), 0 lost, 0 duplicated frames")
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)

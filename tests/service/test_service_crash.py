"""No lost jobs: a worker process SIGKILLed mid-job; another process finishes every frame."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import redis

from app.store.results import ResultStore
from app.worker import heartbeat
from tests.service.live import VIDEO, LiveApi, make_settings, spawn_worker, submit, wait_for

FRAMES = 16


def _wait(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def test_killed_worker_job_is_reclaimed_and_finished(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi],
) -> None:
    # One frame per chunk so progress is visible frame by frame; a 2 s visibility timeout.
    s = make_settings(tmp_path / "data", redis_server.url, worker_concurrency=1,
                      worker_frame_chunk=1, max_frames=FRAMES, visibility_timeout_s=2)
    api = api_factory(s, redis_client)  # API only: work goes to the worker processes
    store = ResultStore(redis_client, s.result_ttl_s, s.data_dir)
    logs = tmp_path / "workers.log"

    # Both processes boot together (the slow part); whichever claims the job gets killed.
    procs = [spawn_worker(s, logs), spawn_worker(s, logs)]
    try:
        _wait(lambda: len(heartbeat.live_workers(redis_client)) == 2, 120, "workers to boot",
              0.1)
        job_id = submit(api.client, VIDEO).json()["id"]
        _wait(lambda: (j := store.get(job_id)) is not None and j.frames_done >= 2, 60,
              "the first frames")
        owner = store.get(job_id).worker
        pid = next(w["pid"] for w in heartbeat.live_workers(redis_client) if w["name"] == owner)
        victim = next(p for p in procs if p.pid == pid)
        survivor = next(p for p in procs if p is not victim)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        killed_at = store.get(job_id)
        assert killed_at is not None and killed_at.status == "running"
        assert 2 <= killed_at.frames_done < FRAMES, "the kill must land mid-job"
        assert killed_at.attempts == 1

        done = wait_for(api.client, job_id, timeout=120)
        assert done["status"] == "done", done
        assert done["attempts"] == 2  # the reclaim counted as a second attempt
        assert store.get(job_id).worker != owner
        assert done["progress"] == {"frames_done": FRAMES, "frames_total": FRAMES}
        frames = api.client.get(f"/v1/analyses/{job_id}/frames", params={"limit": 100}).json()
        assert [f["index"] for f in frames["items"]] == list(range(FRAMES))  # all, no dupes
        assert len(store.get_result(job_id).frames) == FRAMES
        assert redis_client.xlen("dfshield:jobs") == 0  # acknowledged and removed

        # SIGTERM: the survivor exits cleanly and takes its heartbeat with it.
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(30) == 0
        _wait(lambda: heartbeat.live_workers(redis_client) == [], 5, "heartbeats to go")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

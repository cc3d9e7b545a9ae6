"""A job that hangs past its deadline is failed with ``timeout``; the worker keeps serving.

The hang is real: after the upload was accepted, its spooled file is swapped for a FIFO that
nobody writes to (a stalled network mount looks the same), so the decoder blocks in ``open``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import redis

from app.store.results import ResultStore
from app.worker.main import Worker
from tests.service.live import IMAGE, LiveApi, make_settings, submit, wait_for

DEADLINE_S = 1.5


def test_hung_job_times_out_and_the_worker_keeps_serving(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
) -> None:
    s = make_settings(tmp_path / "data", redis_server.url, worker_concurrency=1,
                      job_timeout_s=DEADLINE_S, keep_media=True)
    api = api_factory(s, redis_client)  # no worker yet: the job waits in the queue
    hung_id = submit(api.client, IMAGE).json()["id"]
    job = ResultStore(redis_client, s.result_ttl_s, s.data_dir).get(hung_id)
    source = Path(job.media_path)
    source.unlink()
    os.mkfifo(source)

    t0 = time.monotonic()
    worker = worker_factory(s, redis_client)  # one job thread, and it will block on the FIFO
    failed = wait_for(api.client, hung_id, timeout=30)
    took = time.monotonic() - t0
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "timeout", failed
    assert "JOB_TIMEOUT_S" in failed["error"]["message"]
    assert DEADLINE_S <= took < DEADLINE_S + 10

    # The only job thread is still stuck, yet the next analysis is served (its replacement).
    nxt = submit(api.client, IMAGE, wait=30)
    assert nxt.status_code == 200 and nxt.json()["status"] == "done", nxt.text

    # The stuck read finally returns (garbage): its late outcome must not replace `timeout`.
    with open(source, "wb") as fifo:  # noqa: PTH123 - the blocked reader is on the other end
        fifo.write(b"not an image at all")
    time.sleep(1.0)
    after = api.client.get(f"/v1/analyses/{hung_id}").json()
    assert after["status"] == "failed" and after["error"]["code"] == "timeout", after
    assert after["attempts"] == 1
    job_threads = [t for t in worker._threads if t.name.startswith("worker-job") and t.is_alive()]
    assert len(job_threads) == 1  # the stuck thread retired; concurrency is back to 1
    assert redis_client.xpending("dfshield:jobs", "dfshield-workers")["pending"] == 0
    last = submit(api.client, IMAGE, wait=30)
    assert last.status_code == 200 and last.json()["status"] == "done", last.text
    print(f"\njob timeout: failed `timeout` {took:.1f} s after the worker started "
          f"(deadline {DEADLINE_S} s); 2 jobs served after it")

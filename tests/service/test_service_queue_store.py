"""Queue, store and worker failure policy against a real Redis (no HTTP)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from app.config import Settings
from app.queue.streams import JobQueue
from app.schemas import FramePublic, JobStatus, Verdict
from app.store.results import JobRecord, ResultStore, new_job_id
from app.worker.main import Worker
from tests.service.live import VIDEO


@pytest.fixture
def queue(redis_client: redis.Redis) -> JobQueue:
    q = JobQueue(redis_client)
    q.ensure_group()
    return q


@pytest.fixture
def store(redis_client: redis.Redis, settings: Settings) -> ResultStore:
    return ResultStore(redis_client, settings.result_ttl_s, settings.data_dir)


def _job(store: ResultStore, src: Path | None = None, **kw: object) -> JobRecord:
    job_id = new_job_id()
    path = store.media_dir(job_id) / "source.mp4"
    if src is not None:
        path.parent.mkdir(parents=True)
        shutil.copy(src, path)
    job = JobRecord(id=job_id, xai_method="saliency", media_path=str(path), **kw)
    store.create(job)
    return job


def _until(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_depth_claim_ack_and_requeue(queue: JobQueue) -> None:
    ids = [queue.enqueue(f"job{i}") for i in range(3)]
    assert (queue.depth(), queue.pending(), queue.waiting()) == (3, 0, 3)
    got = queue.claim("w1", count=2, block_ms=10)
    assert [c.job_id for c in got] == ["job0", "job1"] and not got[0].reclaimed
    assert (queue.depth(), queue.pending(), queue.waiting()) == (3, 2, 1)
    queue.ack(got[0].entry_id)
    assert (queue.depth(), queue.pending()) == (2, 1)
    new_entry = queue.requeue(got[1].entry_id, "job1")
    assert new_entry not in ids and (queue.depth(), queue.pending()) == (2, 0)
    assert [c.job_id for c in queue.claim("w1", count=5, block_ms=10)] == ["job2", "job1"]
    assert queue.claim("w1", count=1, block_ms=10) == []


def test_reclaim_only_after_idle_and_touch_keeps_alive(queue: JobQueue) -> None:
    queue.enqueue("a")
    queue.enqueue("b")
    a, b = queue.claim("dead", count=2, block_ms=10)
    assert queue.reclaim_stale("other", min_idle_ms=300) == []  # still fresh
    time.sleep(0.2)
    queue.touch("dead", [b.entry_id])  # "dead" is alive for b only
    time.sleep(0.2)
    taken = queue.reclaim_stale("other", min_idle_ms=300, count=10)
    assert [c.job_id for c in taken] == ["a"] and taken[0].reclaimed


def test_queue_recovers_after_redis_was_emptied(queue: JobQueue,
                                                redis_client: redis.Redis) -> None:
    redis_client.flushall()
    assert queue.claim("w", block_ms=10) == []  # NOGROUP handled: group recreated
    queue.enqueue("x")
    assert [c.job_id for c in queue.claim("w", block_ms=10)] == ["x"]


def _frame(i: int, verdict: Verdict = Verdict.NO_FACE) -> FramePublic:
    return FramePublic(index=i, timestamp=i / 10, verdict=verdict)


def test_store_frames_are_idempotent_and_every_key_has_a_ttl(
    store: ResultStore, redis_client: redis.Redis
) -> None:
    job = _job(store, max_frames=3, owner="anonymous")
    assert store.get(job.id) == job.model_copy(update={"updated_at": store.get(job.id).updated_at})
    store.put_frames(job.id, [_frame(0), _frame(1)], {(0, 0, "crop"): b"png0"}, 3)
    # A retry re-processes frame 1 (new verdict) and adds frame 2: overwrite, never duplicate.
    n = store.put_frames(job.id, [_frame(1, Verdict.REAL), _frame(2)], None, 3)
    assert n == 3
    frames = store.get_frames(job.id)
    assert [f.index for f in frames] == [0, 1, 2] and frames[1].verdict == Verdict.REAL
    got = store.get(job.id)
    assert (got.frames_done, got.frames_total) == (3, 3)
    assert store.get_png(job.id, 0, 0, "crop") == b"png0"
    for key in store.keys_of(job.id)[:3]:
        ttl = redis_client.ttl(key)
        assert 0 < ttl <= store.ttl_s, (key, ttl)


def test_delete_purges_and_a_late_worker_write_does_not_resurrect(
    store: ResultStore, redis_client: redis.Redis
) -> None:
    job = _job(store, src=VIDEO)
    store.put_frames(job.id, [_frame(0)], {(0, 0, "crop"): b"x"}, 1)
    assert store.media_dir(job.id).exists()
    assert store.delete(job.id) is True
    assert store.get(job.id) is None and store.get_frames(job.id) == []
    assert not store.media_dir(job.id).exists()
    store.put_frames(job.id, [_frame(1)], None, 2)  # a worker that had not noticed yet
    store.update(job.id, status=JobStatus.RUNNING)
    assert [k for k in store.keys_of(job.id) if redis_client.exists(k)] == [
        f"dfshield:job:{job.id}:gone"
    ]
    assert store.delete(job.id) is False


def test_bad_media_fails_at_once_with_its_code(
    settings: Settings, redis_client: redis.Redis, store: ResultStore, queue: JobQueue,
    worker_factory: Callable[..., Worker], tmp_path: Path,
) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 4000)  # mp4 magic, no movie
    job = _job(store, src=garbage)
    queue.enqueue(job.id)
    worker_factory(settings, redis_client)
    _until(lambda: store.get(job.id).status == JobStatus.FAILED)
    failed = store.get(job.id)
    assert failed.error_code == "corrupt_media" and failed.attempts == 1  # no retry
    assert queue.depth() == 0 and not store.media_dir(job.id).exists()


def test_crashing_job_is_retried_then_failed_never_dropped(
    settings: Settings, redis_client: redis.Redis, store: ResultStore, queue: JobQueue,
    worker_factory: Callable[..., Worker],
) -> None:
    finished: list[JobRecord] = []
    s = settings.model_copy(update={"max_attempts": 2})
    job = _job(store)  # its media file does not exist: an unexpected (non-media) error
    queue.enqueue(job.id)
    worker_factory(s, redis_client, on_finished=finished.append)
    _until(lambda: store.get(job.id).status == JobStatus.FAILED)
    failed = store.get(job.id)
    assert failed.attempts == 2 and failed.error_code == "processing_error"
    assert "FileNotFoundError" in failed.error_message
    # the record turns FAILED just before the worker acks the queue entry: wait for the ack
    _until(lambda: queue.depth() == 0)
    _until(lambda: len(finished) == 1)
    assert finished[0].id == job.id and finished[0].status == JobStatus.FAILED  # hook called


def test_exhausted_attempts_after_crashes_mark_failed(
    settings: Settings, redis_client: redis.Redis, store: ResultStore, queue: JobQueue,
    worker_factory: Callable[..., Worker],
) -> None:
    # Three workers already died on this job (each start counted) and one left an error.
    job = _job(store, src=VIDEO, attempts=settings.max_attempts,
               last_error="worker lost during processing")
    queue.enqueue(job.id)
    worker_factory(settings, redis_client)
    _until(lambda: store.get(job.id).status == JobStatus.FAILED)
    failed = store.get(job.id)
    assert failed.error_code == "attempts_exhausted"
    assert "worker lost during processing" in failed.error_message
    assert queue.depth() == 0


def test_job_deleted_while_running_is_dropped(
    settings: Settings, redis_client: redis.Redis, store: ResultStore, queue: JobQueue,
    worker_factory: Callable[..., Worker],
) -> None:
    finished: list[JobRecord] = []
    s = settings.model_copy(update={"worker_frame_chunk": 1, "max_frames": 24})
    job = _job(store, src=VIDEO, max_frames=24)
    queue.enqueue(job.id)
    worker_factory(s, redis_client, on_finished=finished.append)
    _until(lambda: (j := store.get(job.id)) is not None and j.frames_done >= 1)
    store.delete(job.id)
    _until(lambda: queue.depth() == 0)  # the worker noticed and acknowledged
    assert finished == []  # dropped, not finished
    assert [k for k in store.keys_of(job.id) if redis_client.exists(k)] == [
        f"dfshield:job:{job.id}:gone"
    ]


def test_graceful_stop_gives_the_job_back_without_spending_an_attempt(
    settings: Settings, redis_client: redis.Redis, store: ResultStore, queue: JobQueue,
    worker_factory: Callable[..., Worker],
) -> None:
    s = settings.model_copy(update={"worker_frame_chunk": 1, "max_frames": 24})
    job = _job(store, src=VIDEO, max_frames=24)
    queue.enqueue(job.id)
    worker = worker_factory(s, redis_client)
    _until(lambda: (j := store.get(job.id)) is not None and j.frames_done >= 1)
    worker.stop(timeout=30)
    back = store.get(job.id)
    assert back.status == JobStatus.QUEUED and back.attempts == 0
    assert "stopped" in back.last_error
    assert (queue.depth(), queue.pending()) == (1, 0)  # waiting for the next worker
    assert store.media_dir(job.id).exists()  # media kept for the retry

"""The worker process: N job threads + one model batcher + a heartbeat.

Each job thread claims one job at a time (stale entries of dead workers first), decodes and
runs MTCNN itself (CPU stages, parallel across jobs) and hands its face crops to the shared
batcher, so crops of different concurrent jobs share one g → XAI → d batch.

Failure policy: bad media → ``failed`` with its code, no retry. Any other exception → the job
goes back to the queue (``last_error`` kept) until ``max_attempts`` starts, then ``failed``.
A worker killed mid-job leaves its entry pending; another worker reclaims it after
``visibility_timeout_s``. SIGTERM finishes the current frame chunk, then gives jobs back.

Deadline: an attempt running longer than ``job_timeout_s`` is failed with ``timeout`` by the
heartbeat thread's watchdog, whatever its job thread is doing (a decoder blocked forever
included). That thread is told to stop at its next chunk, and to retire after it returns; a
fresh job thread takes its place at once, so the worker keeps serving at full concurrency. A
late result of a timed-out attempt is dropped, never written over the ``timeout``.

Run alone with ``python -m app.worker.main`` (needs ``DFSHIELD_REDIS_URL``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import redis

from app.api.metrics import JOB_SECONDS, JOBS, VERDICTS
from app.config import Settings
from app.guard.policy import Guard
from app.logs import bind_job
from app.media import MediaError
from app.pipeline.analyze import Analyzer
from app.pipeline.faces import FaceDetector
from app.queue.batcher import Batcher, BatcherClosed, BatchExpired
from app.queue.streams import Claimed, JobQueue
from app.schemas import AnalysisResult, JobStatus
from app.store.results import TERMINAL, JobRecord, ResultStore
from app.worker import heartbeat
from app.worker.job import JobCancelled, JobRunner, WorkerStopping
from app.worker.scoring import CropItem, ScoredCrop, build_batcher
from app.worker.webhook import WebhookNotifier

log = logging.getLogger(__name__)
JobHook = Callable[[JobRecord], None]
CLAIM_BLOCK_MS = 500


def on_job_finished(job: JobRecord) -> None:
    """Default extra hook after a job reaches done/failed (webhooks are always sent first)."""


@dataclass
class _InFlight:
    """One running attempt, as the watchdog sees it."""

    claimed: Claimed
    job: JobRecord
    thread: str
    deadline: float | None  # monotonic; None = no deadline
    started: float = field(default_factory=time.monotonic)


class Worker:
    """``Worker(settings, redis).start()``; ``stop()`` to end; ``run_forever()`` for a process."""

    def __init__(
        self,
        settings: Settings,
        r: redis.Redis,
        *,
        analyzer: Analyzer | None = None,
        name: str | None = None,
        on_finished: JobHook = on_job_finished,
    ) -> None:
        self.settings = settings
        self.r = r
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.queue = JobQueue(r)
        self.store = ResultStore(r, settings.result_ttl_s, settings.data_dir)
        self.analyzer = analyzer
        self.on_finished = on_finished
        self.webhooks = WebhookNotifier(settings, self.store)
        self.guard = Guard.from_settings(settings, r) if settings.guard_enabled else None
        self.batcher: Batcher[CropItem, ScoredCrop] | None = None
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.boot_error: BaseException | None = None
        self.started_at = time.time()
        self._inflight: dict[str, _InFlight] = {}  # entry id -> running attempt
        self._timed_out: set[str] = set()  # entry ids the watchdog failed (owned by it)
        self._retire: set[str] = set()  # job threads to end after their current job
        self._spawned = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    @property
    def models_loaded(self) -> bool:
        return self.ready.is_set()

    # ---- lifecycle ----
    def start(self, background: bool = False) -> Worker:
        """Load models (unless given) and start the threads; ``background`` returns at once."""
        if background:
            t = threading.Thread(target=self._boot_logged, name="worker-boot", daemon=True)
            t.start()
        else:
            self._boot()
        return self

    def _boot_logged(self) -> None:
        try:
            self._boot()
        except BaseException as e:  # noqa: BLE001 - surfaced through /readyz and the log
            self.boot_error = e
            log.exception("worker failed to start")

    def _boot(self) -> None:
        self.queue.ensure_group()
        if self.analyzer is None:
            try:
                self.analyzer = Analyzer.from_settings(self.settings)
            except Exception as e:  # /readyz names this worker and the cause
                with contextlib.suppress(redis.RedisError):
                    heartbeat.report_failure(self.r, self.name, f"{type(e).__name__}: {e}")
                raise
        if self.stopping.is_set():  # stopped while the models were loading
            return
        self.batcher = build_batcher(self.analyzer, self.settings).start()
        self._spawn(self._heartbeat_loop, "worker-heartbeat")
        for _ in range(self.settings.worker_concurrency):
            self._spawn_job_thread()
        self.ready.set()
        a = self.analyzer
        log.info(
            "worker ready",
            extra={"worker": self.name, "device": str(a.device),
                   "concurrency": self.settings.worker_concurrency,
                   "models": [f"{m.name}@{m.version}{'' if m.trained else ' (UNTRAINED)'}"
                              for m in a.models]},
        )

    def _spawn_job_thread(self) -> None:
        self._spawned += 1
        self._spawn(self._job_loop, f"worker-job-{self._spawned - 1}")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; jobs in progress go back to the queue at their next frame chunk."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.1))
        if self.batcher is not None:
            self.batcher.stop()
        self.webhooks.stop()
        with contextlib.suppress(redis.RedisError):
            heartbeat.forget(self.r, self.name)
        log.info("worker stopped", extra={"worker": self.name})

    def run_forever(self) -> None:
        """Run until SIGTERM/SIGINT (main thread only). A start failure (models that do not
        load) is reported to readiness through Redis, then raised: the process exits."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        self.start()
        while not self.stopping.wait(1.0):
            pass
        self.stop()

    # ---- loops ----
    def _heartbeat_loop(self) -> None:
        interval = min(self.settings.heartbeat_ttl_s, self.settings.visibility_timeout_s) / 3
        while True:
            try:
                self._watchdog()
                with self._lock:
                    inflight = list(self._inflight)
                self.queue.touch(self.name, inflight)  # keep live jobs from being reclaimed
                heartbeat.beat(self.r, self.name, self._info(len(inflight)),
                               self.settings.heartbeat_ttl_s)
            except Exception as e:  # noqa: BLE001 - never let the heartbeat thread die
                log.warning("heartbeat failed: %s", e)
            if self.stopping.wait(interval):
                return

    def _watchdog(self) -> None:
        """Fail every attempt past its deadline with ``timeout`` and replace its thread."""
        now = time.monotonic()
        with self._lock:
            late = [(e, f) for e, f in self._inflight.items()
                    if f.deadline is not None and now > f.deadline]
            for entry, f in late:
                del self._inflight[entry]
                self._timed_out.add(entry)
                self._retire.add(f.thread)
        for _, f in late:
            secs = self.settings.job_timeout_s
            with bind_job(f.job.id):
                log.warning("job timed out", extra={"seconds": round(now - f.started, 3),
                                                    "job_thread": f.thread})
                self._finish_failed(f.claimed, f.job, "timeout",
                                    f"processing took longer than the {secs:g} s deadline "
                                    "(DFSHIELD_JOB_TIMEOUT_S); the media may be pathological")
            if not self.stopping.is_set():
                self._spawn_job_thread()  # the stuck thread may never come back

    def _owns(self, entry_id: str) -> bool:
        """Whether the job thread may settle this attempt (False: the watchdog already did)."""
        with self._lock:
            self._inflight.pop(entry_id, None)
            if entry_id in self._timed_out:
                self._timed_out.discard(entry_id)
                return False
            return True

    def _info(self, inflight: int) -> dict[str, object]:
        a = self.analyzer
        return {"pid": os.getpid(), "host": socket.gethostname(), "in_flight": inflight,
                "concurrency": self.settings.worker_concurrency, "started_at": self.started_at,
                "device": str(a.device) if a else None,
                "models": [m.model_dump() for m in a.models] if a else []}

    def _job_loop(self) -> None:
        assert self.analyzer is not None and self.batcher is not None
        faces = FaceDetector.from_settings(self.settings, self.analyzer.device,
                                           self.analyzer.crop_size)
        runner = JobRunner(self.settings, self.store, self.batcher, self.analyzer, faces,
                           self.guard)
        min_idle_ms = int(self.settings.visibility_timeout_s * 1000)
        me = threading.current_thread().name
        while not self.stopping.is_set() and me not in self._retire:
            try:
                claimed = self.queue.reclaim_stale(self.name, min_idle_ms) or self.queue.claim(
                    self.name, count=1, block_ms=CLAIM_BLOCK_MS
                )
            except redis.RedisError as e:
                log.warning("claim failed: %s", e)
                self.stopping.wait(1.0)
                continue
            for c in claimed:
                with bind_job(c.job_id):
                    try:
                        self._handle(c, runner)
                    except Exception:  # noqa: BLE001 - e.g. Redis lost mid-bookkeeping
                        # The entry stays pending and is reclaimed after the visibility timeout.
                        log.exception("job bookkeeping failed; leaving it for reclaim")

    # ---- one job ----
    def _handle(self, c: Claimed, runner: JobRunner) -> None:
        job = self.store.get(c.job_id)
        if job is None or self.store.is_deleted(c.job_id) or job.status in TERMINAL:
            self.queue.ack(c.entry_id)  # deleted, expired, or finished before a crash-ack
            return
        attempt = self.store.begin_attempt(job.id, self.name)
        if attempt > self.settings.max_attempts:
            cause = job.last_error or "the worker processing it stopped responding"
            self._finish_failed(c, job, "attempts_exhausted",
                                f"gave up after {attempt - 1} attempts; last error: {cause}")
            return
        log.info("job started", extra={"attempt": attempt, "reclaimed": c.reclaimed})
        timeout = self.settings.job_timeout_s
        with self._lock:
            self._inflight[c.entry_id] = _InFlight(
                c, job, threading.current_thread().name,
                time.monotonic() + timeout if timeout > 0 else None)
        t0 = time.perf_counter()
        settle: Callable[[], None]
        try:
            result = runner.run(job, self.stopping,
                                abandoned=lambda: c.entry_id in self._timed_out)
        except MediaError as e:
            settle = partial(self._finish_failed, c, job, e.code, e.message)
        except (JobCancelled, BatchExpired):
            settle = partial(self._drop, c)
        except (WorkerStopping, BatcherClosed):
            settle = partial(self._give_back, c, job)
        except Exception as e:  # noqa: BLE001 - any other error: retry, never fail neighbours
            if c.entry_id not in self._timed_out:
                log.exception("job attempt failed", extra={"attempt": attempt})
            error = f"{type(e).__name__}: {e}"
            if attempt >= self.settings.max_attempts:
                settle = partial(self._finish_failed, c, job, "processing_error",
                                 f"failed {attempt} times; last error: {error}")
            else:
                settle = partial(self._requeue, c, job, error)
        else:
            settle = partial(self._finish_done, c, job, result, time.perf_counter() - t0)
        if not self._owns(c.entry_id):
            log.info("late outcome of a timed-out attempt dropped")
            return
        settle()

    def _drop(self, c: Claimed) -> None:
        log.info("job deleted while running; dropped")
        self.queue.ack(c.entry_id)

    def _give_back(self, c: Claimed, job: JobRecord) -> None:
        self.store.undo_attempt(job.id)  # shutdown is not the job's fault
        self._requeue(c, job, "worker stopped during processing")

    def _requeue(self, c: Claimed, job: JobRecord, error: str) -> None:
        # Status first: once re-added, another thread may claim it and mark it running.
        self.store.mark_retry(job.id, error)
        entry = self.queue.requeue(c.entry_id, job.id)
        self.store.update(job.id, entry_id=entry)
        JOBS.labels("retried").inc()

    def _finish_done(self, c: Claimed, job: JobRecord, result: AnalysisResult, secs: float) -> None:
        self.store.mark_done(job.id, result)
        self.queue.ack(c.entry_id)
        JOBS.labels(JobStatus.DONE.value).inc()
        JOB_SECONDS.observe(secs)
        VERDICTS.labels("video", result.summary.verdict.value).inc()
        for f in result.frames:
            VERDICTS.labels("frame", f.verdict.value).inc()
            for face in f.faces:
                VERDICTS.labels("face", face.verdict.value).inc()
        log.info("job done", extra={"verdict": result.summary.verdict.value,
                                    "frames": len(result.frames), "seconds": round(secs, 3)})
        self._after(job)

    def _finish_failed(self, c: Claimed, job: JobRecord, code: str, message: str) -> None:
        self.store.mark_failed(job.id, code, message)
        self.queue.ack(c.entry_id)
        JOBS.labels(JobStatus.FAILED.value).inc()
        log.warning("job failed", extra={"code": code, "error": message})
        self._after(job)

    def _after(self, job: JobRecord) -> None:
        if not self.settings.keep_media:
            self.store.remove_media(job.id)
        final = job
        with contextlib.suppress(redis.RedisError):
            final = self.store.get(job.id) or job
        for hook in (self.webhooks, self.on_finished):  # the webhook only schedules: no wait
            try:
                hook(final)
            except Exception:  # noqa: BLE001 - a hook must not break the worker
                log.exception("job-finished hook failed")


def main() -> None:
    """``python -m app.worker.main``: a worker-only process (see ``app.service.run_worker``)."""
    from app.config import get_settings
    from app.service import run_worker

    run_worker(get_settings())


if __name__ == "__main__":
    main()

"""Cross-request dynamic batching on one thread (the GPU loop).

Any number of threads ``submit`` items and get a ``concurrent.futures.Future`` each. The loop
collects items until ``max_batch`` are waiting (fires at once) or ``max_wait_ms`` has passed
since the oldest waiting item arrived (deadline on ``time.monotonic``), then calls ``fn`` on
the batch. Guarantees:

- items are validated *before* they join a batch: a malformed one fails only its own future;
- ``fn`` must return exactly one result per input, in order (checked);
- items whose ``expired()`` says so (job cancelled or deleted) are dropped before ``fn`` runs;
- if ``fn`` raises on a batch, every item is retried alone, so a poisoned item fails only itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


class BatchExpired(Exception):
    """The item's request went away (cancelled or deleted) before it was processed."""


class BatcherClosed(RuntimeError):
    """The batcher stopped before processing the item."""


class BatchSizeMismatch(RuntimeError):
    """The batch function broke the N in -> N out contract."""


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    expired: int = 0
    rejected: int = 0  # failed validation, never joined a batch
    failed: int = 0  # failed inside fn, after isolation
    isolated_batches: int = 0  # batches that raised and were retried item by item
    sizes: Counter[int] = field(default_factory=Counter)

    @property
    def mean_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: Future[R]
    t_submit: float
    expired: Callable[[], bool] | None


class Batcher(Generic[T, R]):
    """Deadline batching: ``Batcher(fn, max_batch=16, max_wait_ms=20).start()``."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int,
        max_wait_ms: float,
        validate: Callable[[T], None] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.validate = validate
        self.on_batch = on_batch  # (batch size, seconds in fn): metrics hook
        self.name = name
        self.stats = BatchStats()
        self._queue: list[_Pending[T, R]] = []
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----
    def start(self) -> Batcher[T, R]:
        with self._cond:
            if self._running:
                return self
            self._running = True
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in progress; fail what is still waiting with ``BatcherClosed``."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            left, self._queue = self._queue, []
        for p in left:
            if p.future.set_running_or_notify_cancel():
                p.future.set_exception(BatcherClosed(f"{self.name} stopped"))

    def __enter__(self) -> Batcher[T, R]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._running

    # ---- submitting ----
    def submit(self, item: T, expired: Callable[[], bool] | None = None) -> Future[R]:
        """Queue one item; the future holds its result or its own error."""
        fut: Future[R] = Future()
        if self.validate is not None:
            try:
                self.validate(item)
            except Exception as e:  # noqa: BLE001 - reported through the item's own future
                self.stats.rejected += 1
                fut.set_running_or_notify_cancel()
                fut.set_exception(e)
                return fut
        with self._cond:
            if not self._running:
                raise BatcherClosed(f"{self.name} is not running; call start() first")
            self._queue.append(_Pending(item, fut, time.monotonic(), expired))
            if len(self._queue) >= self.max_batch:
                self._cond.notify_all()
            elif len(self._queue) == 1:
                self._cond.notify_all()  # wake the loop to start this batch's deadline
        return fut

    def submit_many(
        self, items: Iterable[T], expired: Callable[[], bool] | None = None
    ) -> list[Future[R]]:
        return [self.submit(i, expired) for i in items]

    # ---- the loop ----
    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if not batch:
                if not self._running:
                    return
                continue
            try:
                self._run(batch)
            except Exception as e:  # noqa: BLE001 - a bug here must not strand the futures
                log.exception("batch loop error")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)

    def _collect(self) -> list[_Pending[T, R]]:
        with self._cond:
            while self._running and not self._queue:
                self._cond.wait()
            if not self._running:
                return []
            deadline = self._queue[0].t_submit + self.max_wait_s
            while self._running and len(self._queue) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            return batch

    def _live(self, batch: list[_Pending[T, R]]) -> list[_Pending[T, R]]:
        """Drop cancelled futures and expired items; one expiry check per callable."""
        verdicts: dict[int, bool] = {}
        live = []
        for p in batch:
            if not p.future.set_running_or_notify_cancel():
                continue
            if p.expired is not None:
                key = id(p.expired)
                if key not in verdicts:
                    try:
                        verdicts[key] = bool(p.expired())
                    except Exception:  # noqa: BLE001 - an unknowable state is not expiry
                        log.exception("expiry check failed; processing the item")
                        verdicts[key] = False
                if verdicts[key]:
                    self.stats.expired += 1
                    p.future.set_exception(BatchExpired("request expired before processing"))
                    continue
            live.append(p)
        return live

    def _run(self, batch: list[_Pending[T, R]]) -> None:
        live = self._live(batch)
        if not live:
            return
        try:
            results = self._call([p.item for p in live])
        except Exception as e:  # noqa: BLE001 - isolate below
            if len(live) == 1:
                self.stats.failed += 1
                live[0].future.set_exception(e)
                return
            log.warning("batch of %d failed (%s); retrying items one by one", len(live), e)
            self.stats.isolated_batches += 1
            for p in live:
                self._run_one(p)
            return
        for p, r in zip(live, results, strict=True):
            p.future.set_result(r)

    def _run_one(self, p: _Pending[T, R]) -> None:
        try:
            p.future.set_result(self._call([p.item])[0])
        except Exception as e:  # noqa: BLE001 - this item's own failure
            self.stats.failed += 1
            p.future.set_exception(e)

    def _call(self, items: list[T]) -> list[R]:
        t0 = time.perf_counter()
        out = list(self.fn(items))
        elapsed = time.perf_counter() - t0
        if len(out) != len(items):
            raise BatchSizeMismatch(
                f"{self.name}: batch function returned {len(out)} results for {len(items)} "
                "inputs; it must return exactly one result per input, in input order"
            )
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.sizes[len(items)] += 1
        if self.on_batch is not None:
            self.on_batch(len(items), elapsed)
        return out

"""The deadline batcher on its own: real threads, real clocks, a numeric batch function."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.queue.batcher import (
    Batcher,
    BatcherClosed,
    BatchExpired,
    BatchSizeMismatch,
)


class Recorder:
    """A batch function that squares numbers and remembers the batches it saw."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self.lock:
            self.batches.append(list(items))
        if self.delay_s:
            time.sleep(self.delay_s)
        return [x * x for x in items]


def test_full_batch_fires_without_waiting_for_deadline() -> None:
    rec = Recorder()
    with Batcher(rec, max_batch=4, max_wait_ms=5_000) as b:
        t0 = time.monotonic()
        futs = b.submit_many([1, 2, 3, 4])
        assert [f.result(timeout=2) for f in futs] == [1, 4, 9, 16]
        assert time.monotonic() - t0 < 1.0  # far below the 5 s deadline
    assert rec.batches == [[1, 2, 3, 4]]


def test_deadline_fires_a_partial_batch() -> None:
    rec = Recorder()
    with Batcher(rec, max_batch=64, max_wait_ms=150) as b:
        t0 = time.monotonic()
        futs = b.submit_many([5, 6])
        assert [f.result(timeout=3) for f in futs] == [25, 36]
        waited = time.monotonic() - t0
    assert 0.12 <= waited < 1.5, waited
    assert rec.batches == [[5, 6]]
    assert b.stats.sizes == {2: 1}


def test_order_and_n_to_n_across_concurrent_submitters() -> None:
    rec = Recorder(delay_s=0.01)
    with Batcher(rec, max_batch=8, max_wait_ms=10) as b:

        def client(base: int) -> list[int]:
            futs = [b.submit(base + i) for i in range(25)]
            return [f.result(timeout=10) for f in futs]

        with ThreadPoolExecutor(6) as pool:
            outs = list(pool.map(client, [1000 * k for k in range(6)]))
    for k, out in enumerate(outs):
        assert out == [(1000 * k + i) ** 2 for i in range(25)]
    assert sum(len(x) for x in rec.batches) == 150
    assert max(len(x) for x in rec.batches) <= 8
    # Items of different submitters shared batches (the point of cross-request batching).
    assert any(len({x // 1000 for x in batch}) > 1 for batch in rec.batches)
    assert b.stats.items == 150 and b.stats.batches == len(rec.batches)
    assert b.stats.mean_size > 1.0


def test_poisoned_item_fails_only_itself() -> None:
    def fn(items: list[float]) -> list[float]:
        if any(x < 0 for x in items):
            raise ValueError("negative input")
        return [x + 1 for x in items]

    with Batcher(fn, max_batch=4, max_wait_ms=1_000) as b:
        futs = b.submit_many([1.0, -1.0, 2.0, 3.0])
        assert futs[0].result(timeout=2) == 2.0
        with pytest.raises(ValueError, match="negative"):
            futs[1].result(timeout=2)
        assert [futs[2].result(timeout=2), futs[3].result(timeout=2)] == [3.0, 4.0]
    assert b.stats.isolated_batches == 1 and b.stats.failed == 1


def test_validation_rejects_before_joining_a_batch() -> None:
    seen: list[int] = []

    def fn(items: list[np.ndarray]) -> list[float]:
        seen.append(len(items))
        return [float(x.mean()) for x in items]

    def validate(x: np.ndarray) -> None:
        if x.shape != (4, 4, 3) or x.dtype != np.uint8:
            raise ValueError(f"crop must be 4x4x3 uint8, got {x.shape} {x.dtype}")

    good = np.full((4, 4, 3), 10, np.uint8)
    with Batcher(fn, max_batch=3, max_wait_ms=50, validate=validate) as b:
        futs = [b.submit(good), b.submit(np.zeros((5, 5), np.float32)), b.submit(good)]
        with pytest.raises(ValueError, match="4x4x3"):
            futs[1].result(timeout=2)
        assert futs[0].result(timeout=2) == futs[2].result(timeout=2) == 10.0
    assert seen == [2] and b.stats.rejected == 1


def test_expired_items_are_dropped_before_the_batch_function() -> None:
    rec = Recorder()
    cancelled = threading.Event()
    cancelled.set()
    with Batcher(rec, max_batch=4, max_wait_ms=20) as b:
        dead = b.submit_many([7, 8], expired=cancelled.is_set)
        alive = b.submit(9, expired=lambda: False)
        assert alive.result(timeout=2) == 81
        for f in dead:
            with pytest.raises(BatchExpired):
                f.result(timeout=2)
    assert rec.batches == [[9]] and b.stats.expired == 2


def test_n_in_n_out_is_enforced() -> None:
    with Batcher(lambda items: items[:-1], max_batch=2, max_wait_ms=10) as b:
        fut = b.submit(1)
        with pytest.raises(BatchSizeMismatch, match="exactly one result per input"):
            fut.result(timeout=2)


def test_batch_size_stats_and_hook() -> None:
    seen: list[tuple[int, float]] = []
    with Batcher(Recorder(), max_batch=3, max_wait_ms=30,
                 on_batch=lambda n, s: seen.append((n, s))) as b:
        for f in b.submit_many(range(7)):
            f.result(timeout=2)
    assert b.stats.sizes == {3: 2, 1: 1}
    assert [n for n, _ in seen] == [3, 3, 1] and all(s >= 0 for _, s in seen)


def test_stop_fails_waiting_items_and_refuses_new_ones() -> None:
    b = Batcher(Recorder(delay_s=0.3), max_batch=1, max_wait_ms=0).start()
    first = b.submit(2)
    time.sleep(0.05)  # the loop is now inside fn with `first`
    waiting = b.submit(3)
    b.stop()
    assert first.result(timeout=2) == 4
    with pytest.raises(BatcherClosed):
        waiting.result(timeout=2)
    with pytest.raises(BatcherClosed):
        b.submit(4)

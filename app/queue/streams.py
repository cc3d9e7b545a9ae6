"""The job queue: one Redis Stream read by a consumer group.

An entry is ``{job: <id>}``. Finished entries are acknowledged *and deleted*, so the stream
holds exactly the jobs accepted but not yet finished; that makes ``depth()`` a plain XLEN:

    depth = waiting (never delivered) + pending (delivered to a worker, not yet acknowledged)

A worker that dies leaves its entries pending; after ``visibility_timeout_s`` without a touch
another worker takes them over with XAUTOCLAIM. Live workers ``touch`` their in-flight entries
so that a long job is never stolen. Attempts are counted on the job (``app.store.results``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)

STREAM = "dfshield:jobs"
GROUP = "dfshield-workers"


@dataclass(frozen=True)
class Claimed:
    entry_id: str
    job_id: str
    reclaimed: bool = False  # taken over from a worker that went silent


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class JobQueue:
    """Enqueue, claim, acknowledge and reclaim job ids on a Redis Stream."""

    def __init__(self, r: redis.Redis, stream: str = STREAM, group: str = GROUP) -> None:
        self.r = r  # no I/O here: call ensure_group() once at startup
        self.stream = stream
        self.group = group

    def ensure_group(self) -> None:
        """Create the stream and its group if missing (idempotent, safe across processes)."""
        try:
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def enqueue(self, job_id: str) -> str:
        """Append a job; returns its stream entry id."""
        return _s(self.r.xadd(self.stream, {"job": job_id}))

    def claim(self, consumer: str, count: int = 1, block_ms: int = 1000) -> list[Claimed]:
        """New entries for ``consumer``, waiting up to ``block_ms`` for one to arrive."""
        try:
            resp = self.r.xreadgroup(
                self.group, consumer, {self.stream: ">"}, count=count, block=block_ms
            )
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            self.ensure_group()  # the stream was deleted (e.g. FLUSHALL): recreate, retry later
            return []
        return [self._claimed(eid, fields) for _, entries in resp or [] for eid, fields in entries]

    def reclaim_stale(self, consumer: str, min_idle_ms: int, count: int = 1) -> list[Claimed]:
        """Take over entries idle for ``min_idle_ms`` (their worker died or hung)."""
        try:
            resp = self.r.xautoclaim(self.stream, self.group, consumer, min_idle_ms, "0-0", count)
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            self.ensure_group()
            return []
        out = []
        for item in resp[1]:
            if item is None or item[1] is None:  # Redis 6.2: entry deleted while pending
                continue
            eid, fields = item
            out.append(self._claimed(eid, fields, reclaimed=True))
        if out:
            log.warning("reclaimed stale entries", extra={"entries": [c.entry_id for c in out]})
        return out

    def _claimed(self, eid: bytes | str, fields: dict, reclaimed: bool = False) -> Claimed:
        job = fields.get(b"job", fields.get("job", b""))
        return Claimed(_s(eid), _s(job), reclaimed)

    def touch(self, consumer: str, entry_ids: Iterable[str]) -> None:
        """Reset the idle time of in-flight entries so no one reclaims a live job."""
        ids = list(entry_ids)
        if ids:
            self.r.xclaim(self.stream, self.group, consumer, 0, ids, justid=True)

    def ack(self, entry_id: str) -> None:
        """Done with an entry (finished, failed for good, or its job was deleted)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()

    def requeue(self, entry_id: str, job_id: str) -> str:
        """Give a job back for another attempt now (atomically: ack old entry, append new)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.xadd(self.stream, {"job": job_id})
        return _s(pipe.execute()[-1])

    def depth(self) -> int:
        """Jobs accepted and not finished: waiting + pending (the backpressure measure)."""
        return int(self.r.xlen(self.stream))

    def pending(self) -> int:
        """Entries delivered to a worker and not yet acknowledged."""
        try:
            return int(self.r.xpending(self.stream, self.group)["pending"])
        except redis.ResponseError:
            return 0

    def waiting(self) -> int:
        """Entries no worker has received yet."""
        return max(self.depth() - self.pending(), 0)

"""Job state and results in Redis, plus the spooled media on disk.

Keys (every one carries the ``result_ttl_s`` TTL, refreshed on each write):

    dfshield:job:<id>          hash   JobRecord fields (status, progress, options, error, ...)
    dfshield:job:<id>:frames   hash   sampled-frame index -> FramePublic JSON (HSET: a frame
                                      re-processed after a retry overwrites, never duplicates)
    dfshield:job:<id>:png      hash   "<frame>/<face>/<kind>" -> PNG bytes (kind: crop, explanation)
    dfshield:job:<id>:result   string AnalysisResult JSON, written once the job is done
    dfshield:job:<id>:gone     string tombstone left by delete(), so a busy worker stops early
    dfshield:index             zset   job id by created_at: the recent-analyses index (/ui)
    dfshield:index:owner:<k>   zset   the same, per owner key id (what a non-admin may list)

The index zsets expire with the newest job and are pruned of entries older than the TTL on
every write and read, so they never outlive the jobs they point to for long.

Media: ``<data_dir>/media/<id>/source<ext>``, removed after processing unless ``keep_media``.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Literal

import redis
from pydantic import BaseModel, Field, ValidationError

from app.schemas import AnalysisResult, FramePublic, JobStatus, MediaInfo, Verdict

PngKind = Literal["crop", "explanation"]
TERMINAL = (JobStatus.DONE, JobStatus.FAILED)
_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class JobRecord(BaseModel):
    """What the job hash holds. Times are UNIX seconds."""

    id: str
    status: JobStatus = JobStatus.QUEUED
    created_at: float = Field(default_factory=time.time)
    updated_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    frames_done: int = 0
    frames_total: int | None = None
    attempts: int = 0
    worker: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    last_error: str | None = None  # most recent failed attempt, kept for the final error
    # request
    xai_method: str
    max_frames: int | None = None
    callback_url: str | None = None
    owner: str | None = None  # API key id of the submitter (auth plugs in here)
    filename: str | None = None
    size_bytes: int = 0
    media_path: str
    media: MediaInfo | None = None  # probe result at submit time
    entry_id: str | None = None  # current stream entry
    verdict: Verdict | None = None  # summary verdict, copied here at done (cheap listing)
    face_counts: dict[str, int] | None = None  # summary face counts by verdict, likewise
    # completion webhook (app.worker.webhook): pending | delivered | failed
    webhook_status: str | None = None
    webhook_attempts: int = 0
    webhook_http_status: int | None = None
    webhook_error: str | None = None

    def to_hash(self) -> dict[str, str]:
        out = {}
        for k, v in self.model_dump(mode="json", exclude_none=True).items():
            out[k] = json.dumps(v) if isinstance(v, dict | list) else str(v)
        return out

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> JobRecord:
        d: dict[str, object] = {k.decode(): v.decode() for k, v in h.items()}
        for field in ("media", "face_counts"):
            if field in d:
                d[field] = json.loads(str(d[field]))
        return cls.model_validate(d)


def new_job_id() -> str:
    """128 random bits (CSPRNG) as 32 hex digits; unguessable, so ids are no capability leak."""
    return secrets.token_hex(16)


def valid_job_id(job_id: str) -> bool:
    """Ids are 32 lowercase hex digits; anything else is never a key (no key injection)."""
    return bool(_ID_RE.match(job_id))


def _key(job_id: str, part: str = "") -> str:
    return f"dfshield:job:{job_id}" + (f":{part}" if part else "")


INDEX_KEY = "dfshield:index"  # not "dfshield:jobs": that is the stream


def _owner_index(owner: str) -> str:
    return f"{INDEX_KEY}:owner:{owner}"


def _png_field(frame: int, face: int, kind: PngKind) -> str:
    return f"{frame}/{face}/{kind}"


class ResultStore:
    """All reads and writes of job state; shared by the API and the worker."""

    def __init__(self, r: redis.Redis, ttl_s: int, data_dir: Path) -> None:
        self.r = r
        self.ttl_s = int(ttl_s)
        self.media_root = Path(data_dir) / "media"

    # ---- media spool ----
    def media_dir(self, job_id: str) -> Path:
        return self.media_root / job_id

    def remove_media(self, job_id: str) -> None:
        shutil.rmtree(self.media_dir(job_id), ignore_errors=True)

    # ---- job hash ----
    def create(self, job: JobRecord) -> None:
        job.updated_at = time.time()
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(_key(job.id, "gone"))
        pipe.hset(_key(job.id), mapping=job.to_hash())
        pipe.expire(_key(job.id), self.ttl_s)
        indexes = [INDEX_KEY] + ([_owner_index(job.owner)] if job.owner else [])
        for index in indexes:
            pipe.zadd(index, {job.id: job.created_at})
            pipe.zremrangebyscore(index, "-inf", time.time() - self.ttl_s)
            pipe.expire(index, self.ttl_s)
        pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        h = self.r.hgetall(_key(job_id))
        # A worker write racing a DELETE (progress, attempts) can leave stray fields behind
        # the purge; without its `id` the hash is no job (was: a 500 on the next GET).
        return JobRecord.from_hash(h) if h and b"id" in h else None

    def exists(self, job_id: str) -> bool:
        return bool(self.r.exists(_key(job_id)))

    def update(self, job_id: str, **fields: object) -> None:
        """Set fields on a live job (no-op when it was deleted: never resurrect a purged job)."""
        if self.is_deleted(job_id):
            return
        mapping = {k: str(v) for k, v in fields.items() if v is not None}
        mapping["updated_at"] = str(time.time())
        unset = [k for k, v in fields.items() if v is None]
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(_key(job_id), mapping=mapping)
        if unset:
            pipe.hdel(_key(job_id), *unset)
        pipe.expire(_key(job_id), self.ttl_s)
        pipe.execute()

    def begin_attempt(self, job_id: str, worker: str) -> int:
        """Count one more attempt and mark the job running; returns the attempt number."""
        attempts = int(self.r.hincrby(_key(job_id), "attempts", 1))
        self.update(job_id, status=JobStatus.RUNNING, worker=worker, started_at=time.time())
        return attempts

    def undo_attempt(self, job_id: str) -> None:
        """An attempt that ended through no fault of the job (worker shutdown) does not count."""
        self.r.hincrby(_key(job_id), "attempts", -1)

    def set_progress(self, job_id: str, frames_done: int, frames_total: int | None) -> None:
        self.update(job_id, frames_done=frames_done, frames_total=frames_total)

    def mark_retry(self, job_id: str, error: str, entry_id: str | None = None) -> None:
        """Back to the queue after a failed attempt; the error is kept as ``last_error``."""
        self.update(job_id, status=JobStatus.QUEUED, last_error=error, entry_id=entry_id,
                    worker=None)

    def mark_failed(self, job_id: str, code: str, message: str) -> None:
        self.update(job_id, status=JobStatus.FAILED, error_code=code, error_message=message,
                    finished_at=time.time())

    def mark_done(self, job_id: str, result: AnalysisResult) -> None:
        """Store the final result and flip the status in one transaction."""
        if self.is_deleted(job_id):
            return
        now = str(time.time())
        n = str(len(result.frames))
        pipe = self.r.pipeline(transaction=True)
        pipe.set(_key(job_id, "result"), result.model_dump_json(), ex=self.ttl_s)
        pipe.hset(_key(job_id), mapping={"status": JobStatus.DONE.value, "finished_at": now,
                                         "updated_at": now, "frames_done": n, "frames_total": n,
                                         "verdict": result.summary.verdict.value,
                                         "face_counts": result.summary.faces.model_dump_json()})
        pipe.expire(_key(job_id), self.ttl_s)
        pipe.execute()

    # ---- frames and PNGs ----
    def put_frames(
        self,
        job_id: str,
        frames: list[FramePublic],
        pngs: dict[tuple[int, int, PngKind], bytes] | None = None,
        frames_total: int | None = None,
    ) -> int:
        """Write (overwrite) frames and their PNGs; returns how many distinct frames are stored."""
        if self.is_deleted(job_id):
            return 0
        fk, pk = _key(job_id, "frames"), _key(job_id, "png")
        pipe = self.r.pipeline(transaction=True)
        if frames:
            pipe.hset(fk, mapping={str(f.index): f.model_dump_json() for f in frames})
        if pngs:
            pipe.hset(pk, mapping={_png_field(i, k, kind): b for (i, k, kind), b in pngs.items()})
            pipe.expire(pk, self.ttl_s)
        pipe.expire(fk, self.ttl_s)
        pipe.hlen(fk)
        done = int(pipe.execute()[-1])
        self.set_progress(job_id, done, frames_total)  # HLEN: idempotent across retries
        return done

    def get_frames(self, job_id: str) -> list[FramePublic]:
        raw = self.r.hvals(_key(job_id, "frames"))
        frames = [FramePublic.model_validate_json(v) for v in raw]
        return sorted(frames, key=lambda f: f.index)

    def get_png(self, job_id: str, frame: int, face: int, kind: PngKind) -> bytes | None:
        return self.r.hget(_key(job_id, "png"), _png_field(frame, face, kind))

    def get_result(self, job_id: str) -> AnalysisResult | None:
        raw = self.r.get(_key(job_id, "result"))
        return AnalysisResult.model_validate_json(raw) if raw else None

    # ---- recent analyses (index) ----
    def recent(self, limit: int = 50, owner: str | None = None) -> list[JobRecord]:
        """Newest first; ``owner`` restricts to one key's analyses. Expired ids are skipped."""
        index = _owner_index(owner) if owner else INDEX_KEY
        self.r.zremrangebyscore(index, "-inf", time.time() - self.ttl_s)
        ids = [i.decode() for i in self.r.zrevrange(index, 0, max(limit, 1) - 1)]
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(_key(job_id))
        jobs: list[JobRecord] = []
        for h in pipe.execute():
            if h:
                with contextlib.suppress(ValidationError):  # a half-purged hash: not listed
                    jobs.append(JobRecord.from_hash(h))
        if len(jobs) < len(ids):  # purged by TTL before the index noticed: drop the ids
            gone = set(ids) - {j.id for j in jobs}
            self.r.zrem(index, *gone)
        return jobs

    # ---- deletion ----
    def delete(self, job_id: str) -> bool:
        """Purge results, PNGs and media; a tombstone stops a busy worker. True if it existed."""
        owner = self.r.hget(_key(job_id), "owner")
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(INDEX_KEY, job_id)
        if owner:
            pipe.zrem(_owner_index(owner.decode()), job_id)
        pipe.set(_key(job_id, "gone"), "1", ex=self.ttl_s)
        pipe.delete(_key(job_id), _key(job_id, "frames"), _key(job_id, "png"),
                    _key(job_id, "result"))
        found = bool(pipe.execute()[-1])
        self.remove_media(job_id)
        return found

    def is_deleted(self, job_id: str) -> bool:
        return bool(self.r.exists(_key(job_id, "gone")))

    def keys_of(self, job_id: str) -> list[str]:
        """Every Redis key a job may own (for tests and ops tooling)."""
        return [_key(job_id, p) for p in ("", "frames", "png", "result", "gone")]

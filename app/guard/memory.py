"""The guard's memory in Redis, shared by every API replica and worker (one memory, all keys).

Keys (``<key>`` is an API key id; ``<tag>`` the first 16 hex digits of a job id):

    dfshield:guard:salt               string  the generated salt (when DFSHIELD_GUARD_SALT is unset)
    dfshield:guard:idx:<gen>          hash    8-byte hash -> packed 14-byte records, newest last
    dfshield:guard:up:<tag>           string  "<job id> <key id>" of an indexed upload
    dfshield:guard:exact:<digest>     string  job id of the first upload with these exact bytes
    dfshield:guard:done:<job id>      string  this upload was counted (a retry does not recount)
    dfshield:guard:job:<job id>       string  JSON guard record of the analysis (moderators only)
    dfshield:guard:key:<key>          hash    exact_repeats, suspected_at, last_at, evidence
    dfshield:guard:key:<key>:recent   zset    "<job id>:<0|1>" by time, 1 = near-duplicate
    dfshield:guard:key:<key>:links    hash    other key -> uploads that matched across the two
    dfshield:guard:suspected          zset    suspected key -> time of its latest evidence

The index is cut into time generations of ``ttl_s / GENERATIONS``; each generation key expires
once its newest record is older than the TTL, so memory is freed by Redis itself, and a lookup
reads only the generations still inside the TTL (records carry their time, so the TTL is exact
for matching). A record is ``[upload tag 8 B][face number u16][unix time u32]``; a bucket (one
hash's list) keeps its newest ``bucket_cap`` records, so a hash shared by many faces costs a
bounded amount. A lookup is one pipelined HMGET per generation of the query's S hashes:
O(hashes), whatever the memory holds. Measured cost: README, threat model.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from app.guard.fingerprints import Fingerprint

PREFIX = "dfshield:guard:"
SALT_KEY = PREFIX + "salt"
SUSPECTED_KEY = PREFIX + "suspected"
GENERATIONS = 4
TAG_BYTES = 8
RECORD = np.dtype([("tag", ">u8"), ("face", ">u2"), ("ts", ">u4")])

# KEYS[1] = generation; ARGV = cap (bytes), pexpire (ms), then field, record pairs.
_INSERT_LUA = """
local cap = tonumber(ARGV[1])
for i = 3, #ARGV, 2 do
  local v = (redis.call('HGET', KEYS[1], ARGV[i]) or '') .. ARGV[i + 1]
  if #v > cap then v = string.sub(v, #v - cap + 1) end
  redis.call('HSET', KEYS[1], ARGV[i], v)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


def upload_tag(job_id: str) -> bytes:
    """The 8 bytes that stand for an upload in the index (job ids are uuid4 hex)."""
    return bytes.fromhex(job_id[: 2 * TAG_BYTES])


def resolve_salt(r: redis.Redis, configured: str | None) -> str:
    """The configured salt, else the deployment's random one (created once, kept in Redis)."""
    if configured:
        return configured
    r.set(SALT_KEY, secrets.token_hex(32), nx=True)
    raw = r.get(SALT_KEY)
    if raw is None:  # flushed between SET and GET: try once more
        r.set(SALT_KEY, secrets.token_hex(32), nx=True)
        raw = r.get(SALT_KEY)
    return raw.decode() if isinstance(raw, bytes) else str(raw)


@dataclass(frozen=True)
class Match:
    """A stored face of another upload that shares ``shared`` hashes with a query face."""

    tag: bytes
    face: int
    shared: int


def _key(key_id: str, part: str = "") -> str:
    return f"{PREFIX}key:{key_id}" + (f":{part}" if part else "")


class GuardMemory:
    """Reads and writes of the guard's Redis state; thread-safe (one Redis client)."""

    def __init__(
        self,
        r: redis.Redis,
        ttl_s: float,
        bucket_cap: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.r = r
        self.ttl_s = float(ttl_s)
        self.slot_s = self.ttl_s / GENERATIONS
        self.cap_bytes = int(bucket_cap) * RECORD.itemsize
        self.clock = clock
        self._insert = r.register_script(_INSERT_LUA)

    # ---- fingerprint index ----
    def _generation(self, t: float) -> int:
        return int(t // self.slot_s)

    def _live_generations(self, now: float) -> range:
        return range(self._generation(now - self.ttl_s), self._generation(now) + 1)

    def lookup(
        self, tag: bytes, prints: Sequence[Fingerprint], threshold: int
    ) -> list[list[Match]]:
        """Per query face, the stored faces of *other* uploads sharing more than ``threshold``
        hashes with it in one view, inside the TTL. Faces of the upload ``tag`` itself never
        match (the frames of a video are alike by nature)."""
        fields = sorted({h for fp in prints for h in _fields(fp.hashes)})
        if not fields:
            return [[] for _ in prints]
        now = self.clock()
        pipe = self.r.pipeline(transaction=False)
        for gen in self._live_generations(now):
            pipe.hmget(f"{PREFIX}idx:{gen}", fields)
        holders: dict[bytes, set[tuple[bytes, int]]] = {f: set() for f in fields}
        since = now - self.ttl_s
        for values in pipe.execute():
            for field, raw in zip(fields, values, strict=True):
                if raw:
                    holders[field].update(_holders(raw, tag, since))
        return [_matches(fp, holders, threshold) for fp in prints]

    def insert(self, job_id: str, key_id: str, first_face: int,
               prints: Sequence[Fingerprint]) -> None:
        """Index the faces ``first_face, first_face + 1, ...`` of one upload."""
        now = self.clock()
        tag = upload_tag(job_id)
        args: list[Any] = [self.cap_bytes, int((self.ttl_s + self.slot_s) * 1000)]
        for n, fp in enumerate(prints):
            rec = np.array([(int.from_bytes(tag, "big"), first_face + n, int(now))],
                           dtype=RECORD).tobytes()
            for field in _fields(fp.hashes):
                args += [field, rec]
        pipe = self.r.pipeline(transaction=False)  # one round trip for both writes
        if len(args) > 2:
            self._insert(keys=[f"{PREFIX}idx:{self._generation(now)}"], args=args, client=pipe)
        pipe.set(f"{PREFIX}up:{tag.hex()}", f"{job_id} {key_id}", ex=self._ttl())
        pipe.execute()

    def owners(self, tags: Iterable[bytes]) -> dict[bytes, tuple[str, str]]:
        """(job id, key id) of indexed uploads still remembered."""
        tags = list(tags)
        if not tags:
            return {}
        raw = self.r.mget([f"{PREFIX}up:{t.hex()}" for t in tags])
        out = {}
        for t, v in zip(tags, raw, strict=True):
            if v:
                job_id, _, key_id = v.decode().partition(" ")
                out[t] = (job_id, key_id)
        return out

    def first_upload_of(self, digest: str, job_id: str) -> bool:
        """True when no other upload had these exact bytes within the TTL (retries included)."""
        name = f"{PREFIX}exact:{digest}"
        if self.r.set(name, job_id, nx=True, ex=self._ttl()):
            return True
        first = self.r.get(name)
        return first is not None and first.decode() == job_id

    def claim_count(self, job_id: str) -> bool:
        """Whether this call is the first to count the upload (a retried job counts once)."""
        return bool(self.r.set(f"{PREFIX}done:{job_id}", "1", nx=True, ex=self._ttl()))

    def _ttl(self) -> int:
        return max(int(self.ttl_s + 0.999), 1)

    def index_bytes(self) -> int:
        """Redis memory held by the fingerprint index and its upload records (MEMORY USAGE)."""
        total = 0
        for pattern in (f"{PREFIX}idx:*", f"{PREFIX}up:*"):
            for name in self.r.scan_iter(match=pattern, count=1000):
                total += int(self.r.memory_usage(name, samples=0) or 0)
        return total

    # ---- per-key state ----
    def record_upload(self, key_id: str, job_id: str, near_duplicate: bool, keep: int) -> None:
        """One counted (non-exact) upload of ``key_id``; the newest ``keep`` are kept."""
        now = self.clock()
        name = _key(key_id, "recent")
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(name, {f"{job_id}:{int(near_duplicate)}": now})
        pipe.zremrangebyscore(name, "-inf", now - self.ttl_s)
        pipe.zremrangebyrank(name, 0, -keep - 1)
        pipe.expire(name, self._ttl())
        pipe.execute()

    def record_exact(self, key_id: str) -> int:
        """Count a byte-identical re-upload (kept apart: it teaches an attacker nothing)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(_key(key_id), "exact_repeats", 1)
        pipe.expire(_key(key_id), self._ttl())
        return int(pipe.execute()[0])

    def link(self, key_id: str, others: Iterable[str]) -> None:
        """One upload of ``key_id`` matched uploads of ``others``: strengthen both directions."""
        pipe = self.r.pipeline(transaction=False)
        for other in set(others) - {key_id}:
            for a, b in ((key_id, other), (other, key_id)):
                pipe.hincrby(_key(a, "links"), b, 1)
                pipe.expire(_key(a, "links"), self._ttl())
        pipe.execute()

    def links(self, key_id: str) -> dict[str, int]:
        raw = self.r.hgetall(_key(key_id, "links"))
        return {k.decode(): int(v) for k, v in raw.items()}

    def recent(self, key_ids: Sequence[str], n: int) -> list[tuple[float, str, bool]]:
        """The newest ``n`` counted uploads of all ``key_ids`` together: (time, job id, dup)."""
        since = self.clock() - self.ttl_s
        pipe = self.r.pipeline(transaction=False)
        for k in key_ids:
            pipe.zrevrangebyscore(_key(k, "recent"), "+inf", since, start=0, num=n,
                                  withscores=True)
        rows = []
        for entries in pipe.execute():
            for member, ts in entries:
                job_id, _, dup = member.decode().rpartition(":")
                rows.append((float(ts), job_id, dup == "1"))
        rows.sort(reverse=True)
        return rows[:n]

    def exact_repeats(self, key_ids: Sequence[str]) -> int:
        pipe = self.r.pipeline(transaction=False)
        for k in key_ids:
            pipe.hget(_key(k), "exact_repeats")
        return sum(int(v) for v in pipe.execute() if v)

    def suspect(self, key_id: str, evidence: dict[str, Any], ttl_s: int) -> bool:
        """Mark (or refresh) ``key_id`` as suspected; True when it was not suspected before."""
        now = self.clock()
        name = _key(key_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.hsetnx(name, "suspected_at", repr(now))
        pipe.hset(name, mapping={"last_at": repr(now), "evidence": json.dumps(evidence)})
        pipe.expire(name, ttl_s)
        pipe.zadd(SUSPECTED_KEY, {key_id: now})
        pipe.zremrangebyscore(SUSPECTED_KEY, "-inf", now - ttl_s)
        return bool(pipe.execute()[0])

    def key_state(self, key_id: str) -> dict[str, Any]:
        raw = {k.decode(): v.decode() for k, v in self.r.hgetall(_key(key_id)).items()}
        out: dict[str, Any] = {"exact_repeats": int(raw.get("exact_repeats", 0))}
        if "suspected_at" in raw:
            out["suspected_at"] = float(raw["suspected_at"])
            out["last_at"] = float(raw.get("last_at", raw["suspected_at"]))
            out["evidence"] = json.loads(raw.get("evidence", "{}"))
        return out

    def is_suspected(self, key_id: str) -> bool:
        return bool(self.r.hexists(_key(key_id), "suspected_at"))

    def suspected(self, ttl_s: int) -> list[str]:
        """Keys suspected within the last ``ttl_s``, newest evidence first."""
        self.r.zremrangebyscore(SUSPECTED_KEY, "-inf", self.clock() - ttl_s)
        return [k.decode() for k in self.r.zrevrange(SUSPECTED_KEY, 0, -1)]

    def clear(self, key_id: str) -> bool:
        """Forget a key's suspicion, uploads and links (a moderator's 'not an attack')."""
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(SUSPECTED_KEY, key_id)
        pipe.delete(_key(key_id), _key(key_id, "recent"), _key(key_id, "links"))
        return bool(pipe.execute()[0])

    # ---- per-analysis record ----
    def put_job(self, job_id: str, record: dict[str, Any], ttl_s: int) -> None:
        self.r.set(f"{PREFIX}job:{job_id}", json.dumps(record), ex=ttl_s)

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.get(f"{PREFIX}job:{job_id}")
        return json.loads(raw) if raw else None


def _fields(fp: np.ndarray) -> list[bytes]:
    return [h.tobytes() for h in fp.astype(">u8")]


def _holders(raw: bytes, own: bytes, since: float) -> set[tuple[bytes, int]]:
    recs = np.frombuffer(raw[: len(raw) - len(raw) % RECORD.itemsize], dtype=RECORD)
    keep = (recs["ts"] >= since) & (recs["tag"] != np.uint64(int.from_bytes(own, "big")))
    return {(int(t).to_bytes(TAG_BYTES, "big"), int(f))
            for t, f in zip(recs["tag"][keep], recs["face"][keep], strict=True)}


def _matches(fp: Fingerprint, holders: dict[bytes, set[tuple[bytes, int]]],
             threshold: int) -> list[Match]:
    """Stored faces sharing more than ``threshold`` hashes with ``fp`` in its closer view."""
    best: Counter[tuple[bytes, int]] = Counter()
    for view in (fp.levels, fp.relief):
        counts: Counter[tuple[bytes, int]] = Counter()
        for field in _fields(view):
            counts.update(holders.get(field, ()))
        for holder, n in counts.items():
            best[holder] = max(best[holder], n)
    return sorted((Match(t, f, n) for (t, f), n in best.items() if n > threshold),
                  key=lambda m: -m.shared)

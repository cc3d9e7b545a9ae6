"""The guard's Redis memory: other uploads only, exact TTL, capped buckets, O(hashes) lookups,
under 2 KB per stored face, the salt generated once."""

from __future__ import annotations

import uuid

import numpy as np
import redis

from app.guard.fingerprints import Fingerprint, FingerprintKey, fingerprint
from app.guard.memory import GENERATIONS, PREFIX, RECORD, GuardMemory, resolve_salt, upload_tag
from tests.guard.conftest import noisy

KEY = FingerprintKey.from_salt("memory-test")
T = 3


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def job() -> str:
    return uuid.uuid4().hex


def fp(crop: np.ndarray) -> Fingerprint:
    return fingerprint(crop, KEY, 20)


def test_lookup_finds_other_uploads_never_the_same_one(
    r: redis.Redis, crops: dict[str, np.ndarray]
) -> None:
    m = GuardMemory(r, 3600, 64)
    first = job()
    frames = [fp(noisy(crops["obama"], s)) for s in range(3)]  # a video: alike frames
    assert m.lookup(upload_tag(first), frames, T) == [[], [], []]
    m.insert(first, "aaaaaaaaaaaa", 0, frames)
    assert m.lookup(upload_tag(first), frames, T) == [[], [], []]  # its own frames: never
    hits = m.lookup(upload_tag(job()), [fp(noisy(crops["obama"], 9)), fp(crops["biden"])], T)
    assert {h.face for h in hits[0]} == {0, 1, 2} and hits[1] == []
    assert all(h.tag == upload_tag(first) and h.shared > T for h in hits[0])
    assert m.owners([upload_tag(first)]) == {upload_tag(first): (first, "aaaaaaaaaaaa")}


def test_ttl_eviction(r: redis.Redis, crops: dict[str, np.ndarray]) -> None:
    clock = Clock()
    m = GuardMemory(r, 100, 64, clock=clock)
    m.insert(job(), "aaaaaaaaaaaa", 0, [fp(crops["obama"])])
    query = [fp(noisy(crops["obama"], 1))]
    clock.t += 99
    assert m.lookup(upload_tag(job()), query, T)[0]  # still remembered
    clock.t += 2
    assert m.lookup(upload_tag(job()), query, T) == [[]]  # past the TTL: forgotten
    # Redis frees it too: the generation expires once its newest record is past the TTL.
    (gen,) = r.keys(PREFIX + "idx:*")
    assert 0 < r.pttl(gen) <= (100 + 100 / GENERATIONS) * 1000


def test_bucket_cap_keeps_the_newest(r: redis.Redis, crops: dict[str, np.ndarray]) -> None:
    m = GuardMemory(r, 3600, 4)
    same = fp(crops["biden"])
    uploads = [job() for _ in range(7)]
    for u in uploads:
        m.insert(u, "aaaaaaaaaaaa", 0, [same])
    (gen,) = r.keys(PREFIX + "idx:*")
    assert {len(v) for v in r.hvals(gen)} == {4 * RECORD.itemsize}
    hits = m.lookup(upload_tag(job()), [same], T)[0]
    assert {h.tag for h in hits} == {upload_tag(u) for u in uploads[-4:]}


def test_lookup_costs_one_hmget_per_generation_whatever_the_memory_holds(
    r: redis.Redis, crops: dict[str, np.ndarray]
) -> None:
    m = GuardMemory(r, 3600, 64)
    rng = np.random.default_rng(0)
    for _ in range(300):  # fill the memory with unrelated fingerprints
        m.insert(job(), "bbbbbbbbbbbb", 0, [Fingerprint(rng.integers(1, 2**62, 10, np.uint64),
                                                       rng.integers(1, 2**62, 10, np.uint64))])
    r.config_resetstat()
    m.lookup(upload_tag(job()), [fp(crops["obama"])], T)
    calls = r.info("commandstats")["cmdstat_hmget"]["calls"]
    assert calls == GENERATIONS + 1


def test_under_2kb_of_redis_per_stored_face(r: redis.Redis, crops: dict[str, np.ndarray]) -> None:
    m = GuardMemory(r, 86_400, 64)
    n = 0
    for crop in crops.values():
        for seed in range(40):
            m.insert(job(), "cccccccccccc", 0, [fp(np.roll(noisy(crop, seed), seed, axis=1))])
            n += 1
    assert m.index_bytes() / n <= 2048


def test_exact_repeats_and_counting_once(r: redis.Redis) -> None:
    m = GuardMemory(r, 3600, 64)
    a, b = job(), job()
    assert m.first_upload_of("d1", a) and m.first_upload_of("d1", a)  # a retry of the same job
    assert not m.first_upload_of("d1", b)
    assert m.claim_count(a) and not m.claim_count(a)


def test_salt_is_generated_once_and_a_configured_one_wins(r: redis.Redis) -> None:
    first = resolve_salt(r, None)
    assert len(first) == 64 and resolve_salt(r, None) == first
    assert resolve_salt(r, "configured") == "configured"

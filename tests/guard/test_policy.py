"""The decision: near-duplicate queries make a key suspected at the K-th match, benign variants
and exact repeats do not, keys that hit the same fingerprints are judged together."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from app.api.metrics import QUERY_ATTACK_FLAGS
from app.guard.memory import GuardMemory
from app.guard.policy import Guard, GuardRule, group_of
from tests.guard.conftest import jpeg, noisy

SALT = "policy-test-salt-never-logged"
K = 6


@pytest.fixture
def guard(r: redis.Redis) -> Guard:
    return Guard(GuardMemory(r, 3600, 64), GuardRule(), SALT, 3600)


def upload(guard: Guard, key: str, crops: list[np.ndarray], tmp: Path,
           data: bytes | None = None) -> dict:
    """One upload through the worker's guard calls; ``data``: the file's bytes."""
    job_id = uuid.uuid4().hex
    media = tmp / f"{job_id}.bin"
    media.write_bytes(data if data is not None else job_id.encode())
    watch = guard.start(job_id, key, media)
    watch.observe(crops)
    record = watch.finish()
    assert record is not None
    return record


def test_a_campaign_is_suspected_at_its_kth_near_duplicate(
    guard: Guard, crops: dict[str, np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = QUERY_ATTACK_FLAGS._value.get()
    caplog.set_level(logging.WARNING)
    seen = [upload(guard, "aaaaaaaaaaaa", [noisy(crops["obama"], q)], tmp_path)
            for q in range(K + 1)]
    assert [s["near_duplicate"] for s in seen] == [False] + [True] * K
    assert [s["key_suspected"] for s in seen] == [False] * K + [True]
    assert QUERY_ATTACK_FLAGS._value.get() == before + 1
    event = next(r for r in caplog.records if getattr(r, "event", "") == "query_attack_suspected")
    assert event.keys == ["aaaaaaaaaaaa"] and event.near_duplicates == K
    assert SALT not in caplog.text  # the salt is never logged
    state = guard.memory.key_state("aaaaaaaaaaaa")
    assert state["evidence"]["near_duplicates"] == K and len(state["evidence"]["examples"]) == 5


def test_benign_variants_and_exact_repeats_are_not_suspected(
    guard: Guard, crops: dict[str, np.ndarray], tmp_path: Path
) -> None:
    for name, crop in crops.items():  # one key per photo, 5 near-duplicate variants each
        key = f"{abs(hash(name)) % 16**12:012x}"
        for v in (crop, jpeg(crop, 90), jpeg(crop, 70), noisy(crop, 1), np.fliplr(crop).copy()):
            assert not upload(guard, key, [v], tmp_path)["key_suspected"]
    same = b"the same bytes every time"
    records = [upload(guard, "bbbbbbbbbbbb", [crops["biden"]], tmp_path, same)
               for _ in range(3 * K)]
    assert [r["exact_repeat"] for r in records] == [False] + [True] * (3 * K - 1)
    assert not any(r["key_suspected"] for r in records)
    assert guard.memory.key_state("bbbbbbbbbbbb")["exact_repeats"] == 3 * K - 1
    assert guard.memory.suspected(3600) == []


def test_frames_of_one_upload_are_never_compared(
    guard: Guard, crops: dict[str, np.ndarray], tmp_path: Path
) -> None:
    video = [noisy(crops["obama"], s) for s in range(12)]  # one upload, alike frames
    record = upload(guard, "aaaaaaaaaaaa", video, tmp_path)
    assert not record["near_duplicate"] and record["faces"] == 12


def test_keys_that_hit_the_same_fingerprints_are_linked(
    guard: Guard, crops: dict[str, np.ndarray], tmp_path: Path
) -> None:
    keys = [f"{i:012x}" for i in range(1, 6)]
    records = [upload(guard, keys[q % 5], [noisy(crops["grace_hopper"], q)], tmp_path)
               for q in range(K + 1)]
    assert records[-1]["key_suspected"] and not records[-2]["key_suspected"]
    assert set(guard.memory.suspected(3600)) == set(keys)
    assert set(group_of(guard.memory, keys[0], guard.rule)) == set(keys)
    assert guard.memory.links(keys[0])[keys[1]] >= 2
    bystander = upload(guard, "ffffffffffff", [crops["biden"]], tmp_path)
    assert not bystander["key_suspected"]


def test_a_retried_job_is_counted_once(
    guard: Guard, crops: dict[str, np.ndarray], tmp_path: Path
) -> None:
    media = tmp_path / "m.bin"
    media.write_bytes(b"x")
    for _ in range(3):  # three attempts of one job
        watch = guard.start("0" * 32, "aaaaaaaaaaaa", media)
        watch.observe([crops["obama"]])
        watch.finish()
    assert len(guard.memory.recent(["aaaaaaaaaaaa"], 100)) == 1

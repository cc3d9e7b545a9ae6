"""The decision: which keys run a query-based attack campaign, and what they get.

Per upload (in the worker, on the crops g sees):

- a byte-identical re-upload (keyed digest of the file) is counted apart as an *exact repeat*
  and not fingerprinted: it yields the same scores again, so it teaches an attacker nothing;
- otherwise every face is looked up (other uploads only, inside the TTL) and then indexed; the
  upload is a *near-duplicate* when one of its faces shares more than T hashes with a stored
  face. Keys whose uploads matched each other are *linked* (one more per matching upload).

The rule. A key's group is the key plus the keys reachable through links of weight at least
``link_min`` (at most ``group_max`` keys). The group is suspected when at least ``min_matches``
of its newest ``recent_uploads`` counted uploads (all its keys together, inside the TTL) are
near-duplicates; every key of the group is then marked. Defaults 6 of the last 20 with links of
2: benign traffic calibrated (README, threat model) stays at 4 of 20 or below (a photo sent in
5 variants gives 4), whereas an attack's queries are near-duplicates from its second or third
query on, so a single key is caught at about its 7th query, and a campaign split round-robin
over keys is caught as fast because its keys link each other within the first rounds.

Actions (``guard_action``) apply to suspected keys that are neither admin nor moderate, at the
API: ``flag`` changes nothing a suspected key can see (moderators see the flag); the others are
visible and so teach the attacker that it was caught: ``verdict_only`` drops the scores of its
answers, ``throttle`` leaves it ``guard_throttle_per_min`` submits a minute (429 as usual), and
``reject`` answers 403 ``query_attack_suspected``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis

from app.api.metrics import GUARD_FACES, GUARD_UPLOADS, QUERY_ATTACK_FLAGS, STAGE_SECONDS
from app.config import Settings
from app.guard.fingerprints import FingerprintKey, fingerprint
from app.guard.memory import GuardMemory, resolve_salt, upload_tag

log = logging.getLogger(__name__)
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class GuardRule:
    """The suspicion rule's parameters (see the module docstring)."""

    hashes: int = 20
    match_threshold: int = 3
    min_matches: int = 6
    recent_uploads: int = 20
    link_min: int = 2
    group_max: int = 32
    suspect_ttl_s: int = 86_400

    @classmethod
    def from_settings(cls, s: Settings) -> GuardRule:
        return cls(s.guard_hashes, s.guard_match_threshold, s.guard_min_matches,
                   s.guard_recent_uploads, s.guard_link_min, s.guard_group_max,
                   s.guard_suspect_ttl_s)

    def describe(self) -> str:
        return (f">= {self.min_matches} near-duplicates (> {self.match_threshold} of "
                f"{self.hashes} hashes shared) among the group's last {self.recent_uploads} "
                f"uploads; keys linked by >= {self.link_min} matching uploads form a group")


def group_of(memory: GuardMemory, key_id: str, rule: GuardRule) -> list[str]:
    """``key_id`` and the keys reachable through strong enough links (breadth first, bounded)."""
    group, frontier = [key_id], [key_id]
    while frontier and len(group) < rule.group_max:
        nxt = []
        for k in frontier:
            for other, weight in sorted(memory.links(k).items()):
                if weight >= rule.link_min and other not in group and len(group) < rule.group_max:
                    group.append(other)
                    nxt.append(other)
        frontier = nxt
    return group


@dataclass
class Judgement:
    """What the rule saw for one group."""

    group: list[str]
    recent: int
    near_duplicates: int
    examples: list[str]
    suspected: bool

    def evidence(self, rule: GuardRule, exact_repeats: int) -> dict[str, Any]:
        return {
            "reason": (f"{self.near_duplicates} of the last {self.recent} uploads are "
                       f"near-duplicates of earlier ones"
                       + (f", across {len(self.group)} linked keys" if len(self.group) > 1
                          else "")),
            "rule": rule.describe(), "group": self.group, "recent_uploads": self.recent,
            "near_duplicates": self.near_duplicates, "exact_repeats": exact_repeats,
            "examples": self.examples,
        }


def judge(memory: GuardMemory, key_id: str, rule: GuardRule) -> Judgement:
    group = group_of(memory, key_id, rule)
    rows = memory.recent(group, rule.recent_uploads)
    dups = [job for _, job, dup in rows if dup]
    return Judgement(group, len(rows), len(dups), dups[:MAX_EXAMPLES],
                     len(dups) >= rule.min_matches)


@dataclass
class UploadGuard:
    """The guard's view of one job while the worker runs it (one per attempt)."""

    guard: Guard
    job_id: str
    key_id: str
    exact: bool
    faces: int = 0
    matched_faces: int = 0
    matched_tags: set[bytes] = field(default_factory=set)
    seconds: float = 0.0

    def observe(self, crops: Sequence[np.ndarray]) -> None:
        """Fingerprint these face crops, look them up, then index them (never raises)."""
        if self.exact or not crops:
            return
        t0 = time.perf_counter()
        try:
            self._observe(crops)
        except (redis.RedisError, ValueError) as e:  # the guard must never fail a job
            log.warning("guard lookup failed: %s", e)
        self.seconds += time.perf_counter() - t0
        STAGE_SECONDS.labels("guard").observe(time.perf_counter() - t0)

    def _observe(self, crops: Sequence[np.ndarray]) -> None:
        g = self.guard
        prints = [fingerprint(c, g.key(), g.rule.hashes) for c in crops]
        found = g.memory.lookup(upload_tag(self.job_id), prints, g.rule.match_threshold)
        g.memory.insert(self.job_id, self.key_id, self.faces, prints)
        self.faces += len(crops)
        GUARD_FACES.inc(len(crops))
        for matches in found:
            self.matched_faces += bool(matches)
            self.matched_tags.update(m.tag for m in matches)

    def finish(self) -> dict[str, Any] | None:
        """Count the upload, apply the rule, store the analysis' guard record (never raises)."""
        t0 = time.perf_counter()
        try:
            return self.guard.conclude(self)
        except redis.RedisError as e:
            log.warning("guard decision failed: %s", e)
            return None
        finally:  # the decision is part of the guard's cost per face
            STAGE_SECONDS.labels("guard").observe(time.perf_counter() - t0)


class Guard:
    """Worker side of the guard: ``start(job)`` per attempt, then ``observe`` and ``finish``."""

    def __init__(self, memory: GuardMemory, rule: GuardRule, salt: str | None,
                 record_ttl_s: int) -> None:
        self.memory = memory
        self.rule = rule
        self._configured_salt = salt
        self._key: FingerprintKey | None = None
        self.record_ttl_s = record_ttl_s

    @classmethod
    def from_settings(cls, settings: Settings, r: redis.Redis) -> Guard:
        salt = settings.guard_salt.get_secret_value() if settings.guard_salt else None
        memory = GuardMemory(r, settings.guard_ttl_s, settings.guard_bucket_cap)
        return cls(memory, GuardRule.from_settings(settings), salt, settings.result_ttl_s)

    def key(self) -> FingerprintKey:
        """The salted key, resolved on first use (a generated salt lives in Redis)."""
        if self._key is None:
            self._key = FingerprintKey.from_salt(resolve_salt(self.memory.r,
                                                              self._configured_salt))
        return self._key

    def start(self, job_id: str, key_id: str | None, media: Path) -> UploadGuard:
        key_id = key_id or "anonymous"
        exact = False
        with contextlib.suppress(OSError, redis.RedisError):
            exact = not self.memory.first_upload_of(self.key().digest_file(media), job_id)
        return UploadGuard(self, job_id, key_id, exact)

    def conclude(self, up: UploadGuard) -> dict[str, Any]:
        m, rule = self.memory, self.rule
        owners = m.owners(up.matched_tags)
        # Uploads without a face are not counted: nothing to compare, nothing to dilute with.
        if (up.exact or up.faces) and m.claim_count(up.job_id):
            if up.exact:
                m.record_exact(up.key_id)
            else:
                m.record_upload(up.key_id, up.job_id, bool(up.matched_tags), rule.recent_uploads)
                m.link(up.key_id, {k for _, k in owners.values()})
            kind = "exact_repeat" if up.exact else (
                "near_duplicate" if up.matched_tags else "new")
            GUARD_UPLOADS.labels(kind).inc()
        verdict = judge(m, up.key_id, rule)
        if verdict.suspected:
            self._suspect(verdict, up.job_id)
        record = {
            "near_duplicate": bool(up.matched_tags), "exact_repeat": up.exact,
            "faces": up.faces, "matched_faces": up.matched_faces,
            "matched_analyses": sorted(j for j, _ in owners.values())[:MAX_EXAMPLES],
            "key_suspected": verdict.suspected or m.is_suspected(up.key_id),
            "guard_ms": round(up.seconds * 1000, 3),
        }
        m.put_job(up.job_id, record, self.record_ttl_s)
        return record

    def _suspect(self, verdict: Judgement, job_id: str) -> None:
        m, rule = self.memory, self.rule
        evidence = verdict.evidence(rule, m.exact_repeats(verdict.group))
        new = [k for k in verdict.group if m.suspect(k, evidence, rule.suspect_ttl_s)]
        if new:
            QUERY_ATTACK_FLAGS.inc(len(new))
            log.warning("query attack suspected", extra={
                "event": "query_attack_suspected", "keys": new, "group": verdict.group,
                "near_duplicates": verdict.near_duplicates, "recent_uploads": verdict.recent,
                "examples": verdict.examples, "job_id": job_id})


@dataclass(frozen=True)
class AnalysisFlag:
    """What a moderator sees about one analysis."""

    suspected: bool
    reason: str | None
    record: dict[str, Any] | None


def flag_of(memory: GuardMemory, job_id: str, owner: str | None) -> AnalysisFlag:
    """Suspected when the analysis was judged so, or its key is suspected now."""
    record = memory.get_job(job_id)
    state = memory.key_state(owner) if owner else {}
    suspected = bool(state.get("suspected_at")) or bool(record and record.get("key_suspected"))
    reason = None
    if suspected:
        evidence = state.get("evidence") or {}
        reason = f"key {owner}: " + str(evidence.get("reason") or "suspected by the guard")
    return AnalysisFlag(suspected, reason, record)

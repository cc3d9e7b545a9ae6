"""Moderator-UI sessions in Redis: the browser holds a random session id, never an API key.

Logging in with a key creates a session that remembers the key's *id* (not the key) and a CSRF
token for the upload form. Each request looks the key id up in the current key ring again, so
removing a key from ``DFSHIELD_API_KEYS`` ends its sessions at the next restart. Redis stores
only SHA-256 of the session id: a dump of Redis yields no usable cookie. Open mode (no keys)
gets anonymous sessions, so its upload form carries a CSRF token too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

import redis

from app.api.auth import ANONYMOUS, KeyRing, Principal

_PREFIX = "dfshield:ui:session:"
SESSION_ID_BYTES = 32  # 256 bits: not guessable, not enumerable


@dataclass(frozen=True)
class UiSession:
    sid: str  # what the cookie holds
    key_id: str
    csrf: str  # the upload form's hidden field must equal this

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf, presented or "")


def _redis_key(sid: str) -> str:
    return _PREFIX + hashlib.sha256(sid.encode("utf-8")).hexdigest()


class UiSessions:
    """Create, look up and end UI sessions; each lives ``ttl_s`` from login."""

    def __init__(self, r: redis.Redis, ttl_s: int) -> None:
        self.r, self.ttl_s = r, ttl_s

    def create(self, principal: Principal) -> UiSession:
        session = UiSession(secrets.token_urlsafe(SESSION_ID_BYTES), principal.key_id,
                            secrets.token_urlsafe(32))
        body = json.dumps({"key_id": session.key_id, "csrf": session.csrf})
        self.r.set(_redis_key(session.sid), body, ex=self.ttl_s)
        return session

    def get(self, sid: str | None) -> UiSession | None:
        if not sid or len(sid) > 128:
            return None
        raw = self.r.get(_redis_key(sid))
        if raw is None:
            return None
        body = json.loads(raw)
        return UiSession(sid, str(body["key_id"]), str(body["csrf"]))

    def end(self, sid: str | None) -> None:
        if sid and len(sid) <= 128:
            self.r.delete(_redis_key(sid))


def session_principal(keyring: KeyRing, session: UiSession) -> Principal | None:
    """The session's principal under the current key ring; None once its key is gone."""
    if keyring.open:
        return ANONYMOUS
    return keyring.by_id(session.key_id)

"""API keys with roles (``submit``, ``read``, ``moderate``, ``admin``), stored and compared as
hashes.

Configuration (``DFSHIELD_API_KEYS``): a comma-separated list of ``KEY_OR_HASH:role[+role...]``,
for example ``sha256$9f86d0...:submit+read,sha256$2c26b4...:admin``. The key part is either
plaintext (handy in development) or ``sha256$<64 hex>`` as printed by :func:`hash_key` (the CLI
exposes it as ``dfshield keys hash``), so production configs never contain a usable key. Keys are
random tokens (:func:`generate_key`), so an unsalted SHA-256 is enough: there is nothing to
brute-force the way there is with passwords.

The API reads the :class:`KeyRing` from ``request.app.state.keyring`` (set it at startup with
:func:`build_keyring`, which also refuses an open production service); when that attribute is
missing the ring is built once from :func:`app.config.get_settings` and cached there.

Roles: ``admin`` implies every other role. ``moderate`` reads every key's analyses (it implies
``read``) and sees the guard's flags, but cannot delete what others submitted. With no keys
configured (or ``auth_disabled``) the service runs in *open mode*: every request is an
anonymous principal holding all roles.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request, status

from app.config import Settings, get_settings

ROLES = frozenset({"submit", "read", "moderate", "admin"})
HASH_PREFIX = "sha256$"
KEY_ID_LEN = 12
ANONYMOUS_ID = "anonymous"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class AuthConfigError(ValueError):
    """``DFSHIELD_API_KEYS`` (or the auth settings) cannot be used; the message says why."""


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``key_id`` is safe to log and to store as an analysis owner."""

    key_id: str
    roles: frozenset[str]
    anonymous: bool = False

    def has_role(self, role: str) -> bool:
        if role in self.roles or "admin" in self.roles:
            return True
        return role == "read" and "moderate" in self.roles

    @property
    def reads_everything(self) -> bool:
        """May read every key's analyses: open mode, ``admin`` or ``moderate``."""
        return self.anonymous or bool(self.roles & {"admin", "moderate"})

    @property
    def reviews(self) -> bool:
        """A real admin/moderate key: sees full scores and the guard's flags (never open mode,
        where every caller, an attacker included, would be that key)."""
        return not self.anonymous and bool(self.roles & {"admin", "moderate"})


ANONYMOUS = Principal(ANONYMOUS_ID, ROLES, anonymous=True)


def hash_key(key: str) -> str:
    """The config form of a key: ``sha256$<hex>``. What ``dfshield keys hash`` prints."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A new random API key (256 bits); store only :func:`hash_key` of it."""
    return "dfs_" + secrets.token_urlsafe(32)


def key_id_of(hashed: str) -> str:
    """First 12 hex of the hash: identifies a key without revealing it."""
    return hashed.removeprefix(HASH_PREFIX)[:KEY_ID_LEN]


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    key_id: str
    roles: frozenset[str]


def _parse_roles(text: str, where: str) -> frozenset[str]:
    roles = frozenset(r.strip().lower() for r in text.split("+"))
    unknown = sorted(roles - ROLES)
    if not text.strip() or unknown:
        raise AuthConfigError(
            f"{where}: unknown or missing role(s) {unknown or ['']}; "
            f"use one or more of {sorted(ROLES)} joined by '+'"
        )
    return roles


def _parse_entry(entry: str, where: str) -> _Entry:
    key, sep, role_text = entry.rpartition(":")
    if not sep or not key.strip():
        raise AuthConfigError(f"{where}: expected KEY_OR_HASH:role[+role], got no ':' or no key")
    key = key.strip()
    if key.startswith(HASH_PREFIX):
        hexpart = key.removeprefix(HASH_PREFIX).lower()
        if not _HEX64.fullmatch(hexpart):
            raise AuthConfigError(f"{where}: '{HASH_PREFIX}' must be followed by 64 hex digits")
        hashed = HASH_PREFIX + hexpart
    else:
        hashed = hash_key(key)  # plaintext key: hashed here and dropped
    digest = bytes.fromhex(hashed.removeprefix(HASH_PREFIX))
    return _Entry(digest, key_id_of(hashed), _parse_roles(role_text, where))


class KeyRing:
    """Configured keys as SHA-256 digests; never holds a plaintext key."""

    def __init__(self, entries: list[_Entry] | None = None) -> None:
        self._entries = tuple(entries or ())

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """Parse ``DFSHIELD_API_KEYS``; errors name the entry position, never the key."""
        entries: list[_Entry] = []
        for n, raw in enumerate(spec.split(","), start=1):
            if raw.strip():
                entries.append(_parse_entry(raw.strip(), f"DFSHIELD_API_KEYS entry {n}"))
        seen: set[str] = set()
        for e in entries:
            if e.key_id in seen:  # same key twice (or a 48-bit prefix clash): ambiguous owner
                raise AuthConfigError(f"DFSHIELD_API_KEYS: key id {e.key_id} appears twice")
            seen.add(e.key_id)
        return cls(entries)

    @property
    def open(self) -> bool:
        return not self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal of ``presented``, ``None`` if missing or unknown.

        Every configured digest is compared (no early exit) so timing does not reveal which
        key, or how many keys, came close. Open mode returns the anonymous principal.
        """
        if self.open:
            return ANONYMOUS
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8")).digest()
        match: _Entry | None = None
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.digest):
                match = entry
        return Principal(match.key_id, match.roles) if match else None

    def by_id(self, key_id: str) -> Principal | None:
        """The principal of a configured key id (UI sessions store ids, never keys)."""
        for entry in self._entries:
            if entry.key_id == key_id:
                return Principal(entry.key_id, entry.roles)
        return None


def open_mode_warning() -> str:
    """The line to log at startup when the API runs without authentication."""
    return (
        "AUTH DISABLED: no API keys configured (DFSHIELD_API_KEYS empty or "
        "DFSHIELD_AUTH_DISABLED=true); every caller is anonymous with all roles "
        "(submit, read, moderate, admin) and can read every analysis. Use only on a trusted "
        "network."
    )


def build_keyring(settings: Settings) -> KeyRing:
    """The key ring for ``settings``; refuses an open API in production.

    ``auth_disabled=true`` forces open mode even when keys are configured.
    """
    if settings.auth_disabled:
        return KeyRing()
    ring = KeyRing.parse(settings.api_keys)
    if ring.open and settings.environment == "production":
        raise AuthConfigError(
            "refusing to start: environment=production but no API keys are configured. "
            "Set DFSHIELD_API_KEYS (e.g. 'sha256$<hex>:submit+read', hash keys with "
            "`dfshield keys hash`) or set DFSHIELD_AUTH_DISABLED=true to run open on purpose."
        )
    return ring


def presented_key(request: Request) -> str | None:
    """The key from ``Authorization: Bearer <key>``, else from ``X-API-Key``."""
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip() or None


def get_keyring(request: Request) -> KeyRing:
    ring = getattr(request.app.state, "keyring", None)
    if ring is None:
        ring = build_keyring(get_settings())
        request.app.state.keyring = ring
    return ring


def _problem(status_code: int, code: str, detail: str) -> HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return HTTPException(status_code, detail={"code": code, "detail": detail}, headers=headers)


def authorize(request: Request, role: str) -> Principal:
    """Authenticate the request and check ``role``; raises 401/403 ``HTTPException``."""
    principal = get_keyring(request).authenticate(presented_key(request))
    if principal is None:
        raise _problem(
            status.HTTP_401_UNAUTHORIZED,
            "unauthorized",
            "missing or unknown API key: send 'Authorization: Bearer <key>' or 'X-API-Key'",
        )
    if not principal.has_role(role):
        raise _problem(
            status.HTTP_403_FORBIDDEN, "forbidden", f"this API key lacks the '{role}' role"
        )
    return principal


def require_role(role: str) -> Callable[[Request], Awaitable[Principal]]:
    """FastAPI dependency: ``principal: Principal = Depends(require_role("submit"))``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {sorted(ROLES)}")

    async def dependency(request: Request) -> Principal:
        return authorize(request, role)

    dependency.__name__ = f"require_{role}"
    return dependency


def can_read(principal: Principal, owner_key_id: str | None) -> bool:
    """Whether ``principal`` may read an analysis submitted by ``owner_key_id``.

    Open mode, ``admin`` and ``moderate``: everything. Otherwise only the submitting key, and
    only if it also holds ``read`` (a ``submit``-only key cannot read results back, and a
    ``read`` key cannot read other keys' analyses). Analyses with no owner are readable by
    admins and moderators only.
    """
    if principal.reads_everything:
        return True
    return "read" in principal.roles and owner_key_id == principal.key_id


def can_delete(principal: Principal, owner_key_id: str | None) -> bool:
    """``DELETE`` rule: open mode, admin, or the submitting key (any role) may purge it; a
    moderator reads everything but deletes only what it submitted."""
    if principal.anonymous or "admin" in principal.roles:
        return True
    return owner_key_id is not None and owner_key_id == principal.key_id

"""API keys: parsing, authentication, ownership, and the 401/403/200 matrix over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI

from app.api.auth import (
    ANONYMOUS,
    ROLES,
    AuthConfigError,
    KeyRing,
    Principal,
    build_keyring,
    can_delete,
    can_read,
    generate_key,
    hash_key,
    key_id_of,
    open_mode_warning,
    require_role,
)
from app.config import Settings, get_settings
from tests.live_http import serve

SUBMIT, READ, ADMIN, BOTH = "key-submit-0001", "key-read-0002", "key-admin-0003", "key-both-0004"
# SUBMIT and BOTH in plaintext (dev form), READ and ADMIN hashed (production form).
SPEC = (
    f"{SUBMIT}:submit, {hash_key(READ)}:read,"
    f"{hash_key(ADMIN).upper().replace('SHA256$', 'sha256$')}:admin,{BOTH}:submit+read,"
)


# Module-level aliases, the way app/api/deps.py declares them.
Submitter = Annotated[Principal, Depends(require_role("submit"))]
Reader = Annotated[Principal, Depends(require_role("read"))]
Moderator = Annotated[Principal, Depends(require_role("moderate"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]


def _who(p: Principal) -> dict[str, object]:
    return {"key_id": p.key_id, "roles": sorted(p.roles), "anonymous": p.anonymous}


def make_app(ring: KeyRing | None) -> FastAPI:
    app = FastAPI()
    if ring is not None:
        app.state.keyring = ring

    @app.get("/submit")
    async def submit(p: Submitter) -> dict[str, object]:
        return _who(p)

    @app.get("/read")
    async def read(p: Reader) -> dict[str, object]:
        return _who(p)

    @app.get("/moderate")
    async def moderate(p: Moderator) -> dict[str, object]:
        return _who(p)

    @app.get("/admin")
    async def admin(p: Admin) -> dict[str, object]:
        return _who(p)

    return app


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(make_app(KeyRing.parse(SPEC))) as url:
        yield url


# ------------------------------------------------------------------ parsing


def test_hash_key_form_and_key_id() -> None:
    hashed = hash_key("abc")
    assert hashed == "sha256$ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert key_id_of(hashed) == "ba7816bf8f01"
    assert generate_key() != generate_key()
    assert len(generate_key()) > 40


def test_plaintext_and_hashed_forms_authenticate_the_same() -> None:
    plain = KeyRing.parse(f"{READ}:read").authenticate(READ)
    hashed = KeyRing.parse(f"{hash_key(READ)}:read").authenticate(READ)
    assert plain == hashed == Principal(key_id_of(hash_key(READ)), frozenset({"read"}), False)


def test_parse_spec_with_whitespace_case_and_trailing_comma() -> None:
    ring = KeyRing.parse(SPEC)
    assert len(ring) == 4 and not ring.open
    assert ring.authenticate(BOTH).roles == frozenset({"submit", "read"})
    assert ring.authenticate(ADMIN).roles == frozenset({"admin"})


def test_keyring_keeps_no_plaintext() -> None:
    ring = KeyRing.parse(SPEC)
    dump = repr(ring._entries)
    for key in (SUBMIT, READ, ADMIN, BOTH):
        assert key not in dump


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("just-a-key", "entry 1"),
        (":submit", "no key"),
        ("k1:submit,k2:", "entry 2"),
        ("k1:superuser", "superuser"),
        ("k1:submit+nope", "nope"),
        ("sha256$abc:read", "64 hex"),
        (f"sha256${'g' * 64}:read", "64 hex"),
        ("k1:read,k1:admin", "appears twice"),
        (f"k1:read,{hash_key('k1')}:admin", "appears twice"),
    ],
)
def test_bad_entries_raise_clear_errors(spec: str, fragment: str) -> None:
    with pytest.raises(AuthConfigError, match=fragment.replace("$", r"\$")) as info:
        KeyRing.parse(spec)
    assert "k1" not in str(info.value).replace("entry", "")  # never echo a key


# ------------------------------------------------------------------ authenticate


@pytest.mark.parametrize(
    ("presented", "roles"),
    [
        (None, None),
        ("", None),
        ("wrong-key", None),
        (hash_key(READ), None),  # the stored hash is not a credential
        (READ + " ", None),
        (SUBMIT, {"submit"}),
        (READ, {"read"}),
        (ADMIN, {"admin"}),
        (BOTH, {"submit", "read"}),
    ],
)
def test_authenticate_matrix(presented: str | None, roles: set[str] | None) -> None:
    principal = KeyRing.parse(SPEC).authenticate(presented)
    if roles is None:
        assert principal is None
    else:
        assert principal is not None and principal.roles == roles and not principal.anonymous
        assert principal.key_id == key_id_of(hash_key(presented or ""))


def test_open_mode_is_anonymous_with_all_roles() -> None:
    ring = KeyRing.parse(" , ")
    assert ring.open
    for presented in (None, "anything"):
        assert ring.authenticate(presented) == ANONYMOUS
    assert ANONYMOUS.anonymous and ANONYMOUS.roles == ROLES
    assert "AUTH DISABLED" in open_mode_warning()


def test_admin_implies_every_role() -> None:
    admin = Principal("a" * 12, frozenset({"admin"}))
    assert all(admin.has_role(r) for r in ROLES)
    reader = Principal("b" * 12, frozenset({"read"}))
    assert reader.has_role("read") and not reader.has_role("submit")


def test_require_role_rejects_unknown_role() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        require_role("superuser")


# ------------------------------------------------------------------ settings


def test_production_without_keys_refuses_to_start() -> None:
    with pytest.raises(AuthConfigError, match="DFSHIELD_AUTH_DISABLED"):
        build_keyring(Settings(environment="production", api_keys="", auth_disabled=False))


def test_production_open_only_when_explicitly_disabled() -> None:
    ring = build_keyring(Settings(environment="production", api_keys="", auth_disabled=True))
    assert ring.open
    keyed = build_keyring(Settings(environment="production", api_keys=f"{hash_key(READ)}:read"))
    assert keyed.authenticate(READ) is not None
    # auth_disabled wins over configured keys: it is the explicit switch.
    forced = build_keyring(Settings(api_keys=f"{READ}:read", auth_disabled=True))
    assert forced.open


def test_development_without_keys_is_open() -> None:
    assert build_keyring(Settings(environment="development", api_keys="")).open


# ------------------------------------------------------------------ ownership


def test_can_read_and_delete_rules() -> None:
    owner = key_id_of(hash_key(BOTH))
    both = Principal(owner, frozenset({"submit", "read"}))
    submit_only = Principal(owner, frozenset({"submit"}))
    other_reader = Principal("0" * 12, frozenset({"read"}))
    admin = Principal("f" * 12, frozenset({"admin"}))
    assert can_read(both, owner)
    assert not can_read(submit_only, owner)  # submit alone never reads results back
    assert not can_read(other_reader, owner)
    assert not can_read(both, None)
    assert can_read(admin, owner) and can_read(admin, None)
    assert can_read(ANONYMOUS, owner) and can_read(ANONYMOUS, None)
    assert can_delete(submit_only, owner) and can_delete(admin, owner)
    assert not can_delete(other_reader, owner) and not can_delete(both, None)


# ------------------------------------------------------------------ over HTTP (real uvicorn)

ALLOWED = {
    SUBMIT: {"submit"},
    READ: {"read"},
    ADMIN: {"submit", "read", "moderate", "admin"},
    BOTH: {"submit", "read"},
}


@pytest.mark.parametrize("key", [SUBMIT, READ, ADMIN, BOTH])
@pytest.mark.parametrize("role", sorted(ROLES))
def test_http_role_matrix(base_url: str, key: str, role: str) -> None:
    r = httpx.get(f"{base_url}/{role}", headers={"Authorization": f"Bearer {key}"})
    if role in ALLOWED[key]:
        assert r.status_code == 200
        assert r.json()["key_id"] == key_id_of(hash_key(key))
        assert r.json()["anonymous"] is False
    else:
        assert r.status_code == 403
        assert r.json()["detail"]["code"] == "forbidden"
        assert role in r.json()["detail"]["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Basic {SUBMIT}"},  # only the Bearer scheme carries a key
        {"Authorization": "Bearer"},
        {"X-API-Key": "wrong-key"},
    ],
)
def test_http_unauthorized(base_url: str, headers: dict[str, str]) -> None:
    r = httpx.get(f"{base_url}/submit", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["detail"]["code"] == "unauthorized"


def test_http_x_api_key_header(base_url: str) -> None:
    r = httpx.get(f"{base_url}/read", headers={"X-API-Key": READ})
    assert r.status_code == 200 and r.json()["roles"] == ["read"]
    r = httpx.get(f"{base_url}/read", headers={"X-API-Key": SUBMIT})
    assert r.status_code == 403


def test_http_open_mode() -> None:
    with serve(make_app(KeyRing())) as url:
        for role in ROLES:
            r = httpx.get(f"{url}/{role}")
            assert r.status_code == 200 and r.json()["anonymous"] is True


def test_keyring_falls_back_to_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFSHIELD_API_KEYS", f"{hash_key(ADMIN)}:admin")
    monkeypatch.setenv("DFSHIELD_AUTH_DISABLED", "false")
    get_settings.cache_clear()
    app = make_app(None)
    try:
        with serve(app) as url:
            assert httpx.get(f"{url}/admin").status_code == 401
            r = httpx.get(f"{url}/admin", headers={"Authorization": f"Bearer {ADMIN}"})
            assert r.status_code == 200
        assert isinstance(app.state.keyring, KeyRing)  # built once, cached on the app
    finally:
        get_settings.cache_clear()

"""``/v1/guard``: the keys the guard suspects of query-based attack campaigns, with evidence.

Readable by ``admin`` and ``moderate`` keys; only ``admin`` may clear a key (after review of a
false alarm). Never reachable by a plain client key, so no client learns it is suspected.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response

from app.api.deps import AdminPrincipal, GuardDep, ModeratePrincipal, SettingsDep
from app.api.errors import not_found
from app.api.models import KeyEvidence, KeyGuardState, SuspectedKeys
from app.guard.memory import GuardMemory
from app.guard.policy import GuardRule
from app.schemas import Problem

router = APIRouter(prefix="/v1/guard", tags=["guard"])
_ERRORS = {code: {"model": Problem, "content": {"application/problem+json": {}}}
           for code in (401, 403, 422, 429)}
# In the schema, so clients and fuzzers know which ids exist; FastAPI answers others 422.
KeyId = Annotated[str, Path(pattern=r"^([0-9a-f]{12}|anonymous)$",
                            description="a key id (12 hex digits, as listed) or `anonymous`")]


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def key_view(memory: GuardMemory, key_id: str) -> KeyGuardState:
    state = memory.key_state(key_id)
    rows = memory.recent([key_id], 10_000)
    evidence = state.get("evidence")
    return KeyGuardState(
        key_id=key_id, suspected="suspected_at" in state,
        suspected_at=_dt(state.get("suspected_at")), last_evidence_at=_dt(state.get("last_at")),
        evidence=KeyEvidence.model_validate(evidence) if evidence else None,
        exact_repeats=state["exact_repeats"], recent_uploads=len(rows),
        near_duplicates=sum(dup for _, _, dup in rows), links=memory.links(key_id),
    )


# Stateful clients (schemathesis) follow the listed ids to the per-key operations.
_KEY_LINKS = {name: {"operationId": op, "parameters": {"key_id": "$response.body#/keys/0/key_id"}}
              for name, op in (("GetKeyState", "get_key_state"), ("ClearKey", "clear_key"))}


@router.get("/keys", response_model=SuspectedKeys,
            responses={**_ERRORS, 200: {"links": _KEY_LINKS}},
            summary="Keys suspected of a query-based attack campaign, with evidence")
def list_suspected_keys(_: ModeratePrincipal, memory: GuardDep,
                        settings: SettingsDep) -> SuspectedKeys:
    keys = memory.suspected(settings.guard_suspect_ttl_s)
    return SuspectedKeys(action=settings.guard_action,
                         rule=GuardRule.from_settings(settings).describe(),
                         keys=[key_view(memory, k) for k in keys])


def on_record(view: KeyGuardState) -> bool:
    """Whether the guard holds anything on the key (cleared and unseen keys hold nothing)."""
    return bool(view.suspected or view.exact_repeats or view.recent_uploads or view.links)


@router.get("/keys/{key_id}", response_model=KeyGuardState,
            responses={**_ERRORS, 404: {**_ERRORS[401], "description": "Not Found: "
                                        "`not_found`: the guard holds nothing on this key"}},
            summary="One key as the guard sees it (suspected or not)",
            description="404 when the guard holds nothing on the key: no counted uploads "
                        "within the TTL, or cleared since (`DELETE`).")
def get_key_state(key_id: KeyId, _: ModeratePrincipal, memory: GuardDep) -> KeyGuardState:
    view = key_view(memory, key_id)
    if not on_record(view):  # what DELETE cleared is gone, as for any other resource
        raise not_found(f"guard record of key {key_id}")
    return view


@router.delete("/keys/{key_id}", status_code=204, response_class=Response, responses=_ERRORS,
               summary="Clear a key's suspicion, uploads and links (a reviewed false alarm)")
def clear_key(key_id: KeyId, _: AdminPrincipal, memory: GuardDep) -> Response:
    memory.clear(key_id)
    return Response(status_code=204)

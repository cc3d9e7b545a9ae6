"""``/v1/guard``: the keys the guard suspects of query-based attack campaigns, with evidence.

Readable by ``admin`` and ``moderate`` keys; only ``admin`` may clear a key (after review of a
false alarm). Never reachable by a plain client key, so no client learns it is suspected.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fastapi import APIRouter, Response

from app.api.deps import AdminPrincipal, GuardDep, ModeratePrincipal, SettingsDep
from app.api.errors import ApiError
from app.api.models import KeyEvidence, KeyGuardState, SuspectedKeys
from app.guard.memory import GuardMemory
from app.guard.policy import GuardRule
from app.schemas import Problem

router = APIRouter(prefix="/v1/guard", tags=["guard"])
_ERRORS = {code: {"model": Problem, "content": {"application/problem+json": {}}}
           for code in (401, 403, 422, 429)}
_KEY_ID = re.compile(r"[0-9a-f]{12}|anonymous")


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def _checked(key_id: str) -> str:
    if not _KEY_ID.fullmatch(key_id):
        raise ApiError(422, "validation_error",
                       "key_id must be a key id (12 hex digits, as listed) or 'anonymous'")
    return key_id


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


@router.get("/keys", response_model=SuspectedKeys, responses=_ERRORS,
            summary="Keys suspected of a query-based attack campaign, with evidence")
def suspected_keys(_: ModeratePrincipal, memory: GuardDep,
                   settings: SettingsDep) -> SuspectedKeys:
    keys = memory.suspected(settings.guard_suspect_ttl_s)
    return SuspectedKeys(action=settings.guard_action,
                         rule=GuardRule.from_settings(settings).describe(),
                         keys=[key_view(memory, k) for k in keys])


@router.get("/keys/{key_id}", response_model=KeyGuardState, responses=_ERRORS,
            summary="One key as the guard sees it (suspected or not)")
def key_state(key_id: str, _: ModeratePrincipal, memory: GuardDep) -> KeyGuardState:
    return key_view(memory, _checked(key_id))


@router.delete("/keys/{key_id}", status_code=204, response_class=Response, responses=_ERRORS,
               summary="Clear a key's suspicion, uploads and links (a reviewed false alarm)")
def clear_key(key_id: str, _: AdminPrincipal, memory: GuardDep) -> Response:
    memory.clear(_checked(key_id))
    return Response(status_code=204)

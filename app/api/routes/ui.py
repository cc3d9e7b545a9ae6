"""``/ui``: server-rendered moderator pages over the same store, keys and ownership rules.

Auth: the same API keys, from the ``Authorization``/``X-API-Key`` header or from the HttpOnly,
``SameSite=Strict`` cookie the login form sets (scoped to ``/ui``; never a query parameter,
which would end up in logs and referrers). A missing or unknown key sends pages to the login
form; open mode needs no login. Page views count against the key's rate limit; the face images
they embed do not (one page shows up to a hundred of them).
"""

from __future__ import annotations

import math
from typing import Annotated
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from app.api import ui_html
from app.api.auth import Principal, get_keyring
from app.api.deps import (
    UI_COOKIE,
    GuardDep,
    StoreDep,
    authenticate,
    get_ui_principal,
    guard_restricted,
    load_job,
)
from app.api.errors import ApiError
from app.api.exposure import expose_frames, expose_persons, exposure_for
from app.api.routes.analyses import filter_frames
from app.config import ScoreExposure
from app.guard.policy import flag_of
from app.pipeline.tracks import summarize_persons
from app.schemas import FramePublic, JobStatus, PersonPublic, Verdict
from app.store.results import JobRecord, PngKind, ResultStore

router = APIRouter(prefix="/ui", include_in_schema=False)
FRAMES_PER_PAGE = 24
COOKIE_MAX_AGE_S = 8 * 3600
_HEADERS = {
    # No script at all; images and the stylesheet from here only; no framing (clickjacking).
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class UiError(Exception):
    """An HTML error page, or a redirect to the login form (``login=True``)."""

    def __init__(self, status: int, title: str, message: str, *, login: bool = False) -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.login = status, title, message, login


def html(content: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(content, status_code=status, headers=_HEADERS)


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def _ui_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, UiError)
    if exc.login:
        target = "/ui/login?" + urlencode({"next": _here(request)})
        return RedirectResponse(target, status_code=303, headers=_HEADERS)
    return html(ui_html.error_page(exc.status, exc.title, exc.message), exc.status)


def install(app: FastAPI) -> None:
    """Mount the UI and its HTML error handling on ``app``."""
    app.include_router(router)
    app.add_exception_handler(UiError, _ui_error)


# ---------------------------------------------------------------- auth


async def get_viewer(request: Request) -> Principal:
    """The page viewer: a key with ``read`` (rate limited); otherwise the login form."""
    try:
        viewer = await get_ui_principal(request)
    except ApiError as e:
        if e.status != 401:
            raise
        raise UiError(401, "Log in", e.detail, login=True) from None
    if not viewer.has_role("read"):
        raise UiError(403, "Forbidden", "this API key lacks the 'read' role the UI needs")
    return viewer


def get_image_viewer(request: Request) -> Principal:
    """Images: the same key check (401/403 problem+json), not counted against the limit."""
    viewer = authenticate(request, request.cookies.get(UI_COOKIE))
    if not viewer.has_role("read"):
        raise ApiError(403, "forbidden", "this API key lacks the 'read' role")
    return viewer


Viewer = Annotated[Principal, Depends(get_viewer)]
ImageViewer = Annotated[Principal, Depends(get_image_viewer)]


def _safe_next(target: str) -> str:
    """Only local /ui paths: the login form must not become an open redirect."""
    parts = urlsplit(target)
    ok = (not parts.scheme and not parts.netloc and parts.path.startswith("/ui")
          and "\\" not in target and not target.startswith("//"))
    return target if ok else "/ui"


def _same_origin(request: Request) -> None:
    """Refuse cross-site form posts (login CSRF); browsers send Origin on every POST."""
    origin = request.headers.get("origin")
    # Host only: behind a TLS-terminating proxy the scheme seen here may differ from Origin's.
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise UiError(403, "Forbidden", "cross-site form submission refused")


@router.get("/style.css")
def stylesheet() -> Response:
    return Response(ui_html.CSS, media_type="text/css",
                    headers={"Cache-Control": "public, max-age=3600"})


@router.get("/login")
def login_form(request: Request, next: str = "/ui") -> Response:
    if get_keyring(request).open:
        return RedirectResponse(_safe_next(next), status_code=303)
    return html(ui_html.login_page(_safe_next(next)))


@router.post("/login")
def login(
    request: Request,
    key: Annotated[str, Form(max_length=512)],
    next: Annotated[str, Form(max_length=2048)] = "/ui",  # the form field
) -> Response:
    _same_origin(request)
    target = _safe_next(next)
    principal = get_keyring(request).authenticate(key.strip())
    if principal is None:
        return html(ui_html.login_page(target, "unknown API key"), 401)
    if not principal.has_role("read"):
        return html(ui_html.login_page(target, "this key lacks the 'read' role"), 403)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(UI_COOKIE, key.strip(), max_age=COOKIE_MAX_AGE_S, path="/ui",
                        httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    _same_origin(request)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(UI_COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


# ---------------------------------------------------------------- pages


@router.get("", response_class=HTMLResponse)
def index(
    viewer: Viewer, store: StoreDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> Response:
    everyone = viewer.reads_everything
    jobs = store.recent(limit, owner=None if everyone else viewer.key_id)
    return html(ui_html.index_page(jobs, viewer, limit))


def _parse_verdicts(raw: str | None) -> tuple[Verdict, ...]:
    names = [v.strip() for v in (raw or "").split(",") if v.strip()]
    try:
        return tuple(Verdict(v) for v in names)
    except ValueError:
        allowed = ", ".join(v.value for v in Verdict)
        raise UiError(422, "Bad filter", f"verdict must be among {allowed}") from None


def _job(store: ResultStore, job_id: str, viewer: Principal) -> JobRecord:
    try:
        return load_job(store, job_id, viewer)
    except ApiError as e:
        raise UiError(404, "Not found", e.detail) from None


def _view(
    frames: list[FramePublic],
    verdicts: tuple[Verdict, ...],
    page: int,
    person: int | None = None,
    persons: list[PersonPublic] | None = None,
) -> ui_html.FrameView:
    counts = {v: 0 for v in Verdict}
    for f in frames:
        counts[f.verdict] += 1
    chosen = filter_frames(frames, list(verdicts), person)
    pages = max(1, math.ceil(len(chosen) / FRAMES_PER_PAGE))
    page = min(page, pages)
    start = (page - 1) * FRAMES_PER_PAGE
    return ui_html.FrameView(verdicts, chosen[start : start + FRAMES_PER_PAGE], counts,
                             len(chosen), page, pages, person, persons or [])


def _exposure(request: Request, viewer: Principal) -> ScoreExposure:
    return exposure_for(viewer, request.app.state.settings, guard_restricted(request, viewer))


@router.get("/analyses/{job_id}", response_class=HTMLResponse)
def analysis(
    job_id: str,
    request: Request,
    viewer: Viewer,
    store: StoreDep,
    guard: GuardDep,
    verdict: str | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    person: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    wanted = _parse_verdicts(verdict)
    job = _job(store, job_id, viewer)
    result = store.get_result(job.id) if job.status == JobStatus.DONE else None
    frames = result.frames if result is not None else store.get_frames(job.id)
    persons = result.persons if result is not None else summarize_persons(frames)
    level = _exposure(request, viewer)
    view = _view(expose_frames(frames, level), wanted, page, person,
                 expose_persons(persons, level))
    flag = None  # moderators only, and never on the viewer's own analyses
    if viewer.reviews and viewer.key_id != job.owner:
        flag = flag_of(guard, job.id, job.owner)
    return html(ui_html.analysis_page(job, result, view, viewer, flag))


def _png(store: ResultStore, viewer: Principal, job_id: str, frame: int, face: int,
         kind: PngKind) -> Response:
    job = load_job(store, job_id, viewer)  # 404 problem for others' analyses
    data = store.get_png(job.id, frame, face, kind)
    if data is None:
        raise ApiError(404, "not_found", f"no {kind} image for face {face} of frame {frame}")
    return Response(data, media_type="image/png",
                    headers={"Cache-Control": "private, max-age=3600",
                             "X-Content-Type-Options": "nosniff"})


@router.get("/analyses/{job_id}/frames/{frame}/faces/{face}/crop.png")
def crop_png(job_id: str, frame: int, face: int, viewer: ImageViewer,
             store: StoreDep) -> Response:
    return _png(store, viewer, job_id, frame, face, "crop")


@router.get("/analyses/{job_id}/frames/{frame}/faces/{face}/explanation.png")
def explanation_png(job_id: str, frame: int, face: int, request: Request,
                    viewer: ImageViewer, store: StoreDep) -> Response:
    if _exposure(request, viewer) == "verdict":  # no gradient pictures without scores
        raise ApiError(404, "not_found", f"no explanation image for face {face} of frame {frame}")
    return _png(store, viewer, job_id, frame, face, "explanation")

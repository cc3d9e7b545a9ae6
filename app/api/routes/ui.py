"""``/ui``: server-rendered moderator pages over the same store, keys and ownership rules.

Auth: the same API keys, from the ``Authorization``/``X-API-Key`` header or from the login
form, which starts a server-side session (app.api.ui_session) and sets an HttpOnly,
``SameSite=Strict`` cookie scoped to ``/ui`` holding only the session id. Keys never travel in
a query string or a page. A missing or unknown key sends pages to the login form; open mode
needs no login. Page views count against the key's rate limit; the face images they embed do
not (one page shows up to a hundred of them). Forms: same-origin check plus, for session
users, the session's CSRF token (header-key callers need none: browsers never add that header
cross-site). Pages work without JavaScript; /ui/static/ui.js only adds keyboard moves on the
timeline and grid and live progress.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from app.api import ui_views
from app.api.auth import Principal, get_keyring, presented_key
from app.api.deps import (
    UI_COOKIE,
    GuardDep,
    QueueDep,
    SettingsDep,
    StoreDep,
    authenticate_ui,
    get_ui_principal,
    guard_restricted,
    load_job,
    ui_session,
    ui_sessions,
)
from app.api.errors import ApiError
from app.api.exposure import expose_frames, expose_json, expose_persons, exposure_for
from app.api.models import AnalysisWithFrames
from app.api.routes.analyses import filter_frames
from app.api.submit import FieldCheck, accept_upload
from app.config import ScoreExposure, XaiMethod
from app.guard.policy import flag_of
from app.media.errors import MediaError
from app.pipeline.tracks import summarize_persons
from app.schemas import JobStatus, Verdict
from app.store.results import JobRecord, PngKind, ResultStore

router = APIRouter(prefix="/ui", include_in_schema=False)
_HERE = Path(__file__).resolve().parents[1]
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,  # every {{ }} is escaped, attributes included
    undefined=jinja2.StrictUndefined,  # a misspelt name fails the test, not the moderator
    trim_blocks=True, lstrip_blocks=True,
)
_ENV.globals.update(score_text=ui_views.score_text, when=ui_views.when,
                    duration_text=ui_views.duration_text, VERDICTS=ui_views.VERDICTS,
                    STATUSES=ui_views.STATUSES, analysis_url=ui_views.analysis_url)
TEMPLATES = Jinja2Templates(env=_ENV)
_HEADERS = {
    # Scripts and styles from this origin only (no inline script or style), no framing.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
                               "img-src 'self'; style-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class UiError(Exception):
    """An HTML error page, or a redirect to the login form (``login=True``)."""

    def __init__(self, status: int, title: str, message: str, *, login: bool = False,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.login = status, title, message, login
        self.headers = headers or {}  # e.g. Connection: close on a refused upload


def render(request: Request, name: str, http_status: int = 200,
           **context: object) -> HTMLResponse:
    context.setdefault("viewer", None)
    context.setdefault("csrf", "")
    context.setdefault("refresh_s", 0)
    response = TEMPLATES.TemplateResponse(request, name, context, status_code=http_status)
    response.headers.update(_HEADERS)
    return response


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def _ui_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, UiError)
    if exc.login:
        target = "/ui/login?" + urlencode({"next": _here(request)})
        return RedirectResponse(target, status_code=303, headers=_HEADERS)
    response = render(request, "error.html", exc.status, status=exc.status, title=exc.title,
                      message=exc.message)
    response.headers.update(exc.headers)
    return response


def install(app: FastAPI) -> None:
    """Mount the UI, its static files and its HTML error handling on ``app``."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=_HERE / "static"), name="ui-static")
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
    """Images and JSON: the same key check (401/403 problem+json), not rate limited."""
    viewer = authenticate_ui(request)
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
    """Refuse cross-site form posts; browsers send Origin on every POST."""
    origin = request.headers.get("origin")
    # Host only: behind a TLS-terminating proxy the scheme seen here may differ from Origin's.
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise UiError(403, "Forbidden", "cross-site form submission refused")


def _set_session_cookie(request: Request, response: Response, sid: str) -> None:
    ttl = request.app.state.settings.ui_session_ttl_s
    response.set_cookie(UI_COOKIE, sid, max_age=ttl, path="/ui", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


@router.get("/login")
def login_form(request: Request, next: str = "/ui") -> Response:
    if get_keyring(request).open:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html", next_url=_safe_next(next), error=None)


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
        return render(request, "login.html", 401, next_url=target, error="unknown API key")
    if not principal.has_role("read"):
        return render(request, "login.html", 403, next_url=target,
                      error="this key lacks the 'read' role")
    ui_sessions(request).end(request.cookies.get(UI_COOKIE))  # no session fixation
    session = ui_sessions(request).create(principal)
    response = RedirectResponse(target, status_code=303)
    _set_session_cookie(request, response, session.sid)
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    _same_origin(request)
    ui_sessions(request).end(request.cookies.get(UI_COOKIE))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(UI_COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


def _form_token(request: Request, viewer: Principal) -> tuple[str, str | None]:
    """(CSRF token for this page's forms, a new session id to set when one was started)."""
    session = ui_session(request)
    if session is not None:
        return session.csrf, None
    if presented_key(request) and not viewer.anonymous:
        return "", None  # header auth: no cookie, no CSRF exposure
    session = ui_sessions(request).create(viewer)  # open mode: an anonymous session
    return session.csrf, session.sid


# ---------------------------------------------------------------- pages


def _parse_verdicts(raw: str | None) -> tuple[Verdict, ...]:
    names = [v.strip() for v in (raw or "").split(",") if v.strip()]
    try:
        return tuple(Verdict(v) for v in names)
    except ValueError:
        allowed = ", ".join(v.value for v in Verdict)
        raise UiError(422, "Bad filter", f"verdict must be among {allowed}") from None


def _parse_status(raw: str | None) -> JobStatus | None:
    if not raw:
        return None
    try:
        return JobStatus(raw)
    except ValueError:
        allowed = ", ".join(s.value for s in JobStatus)
        raise UiError(422, "Bad filter", f"status must be among {allowed}") from None


@router.get("", response_class=HTMLResponse)
def index(
    request: Request, viewer: Viewer, store: StoreDep, settings: SettingsDep,
    verdict: str | None = None, status: str | None = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    wanted = _parse_verdicts(verdict)
    if len(wanted) > 1:
        raise UiError(422, "Bad filter", "the list filters by one verdict at a time")
    everyone = viewer.reads_everything
    jobs = store.recent(settings.ui_list_max, owner=None if everyone else viewer.key_id)
    view = ui_views.list_view(jobs, wanted[0] if wanted else None, _parse_status(status),
                              page, settings.ui_page_size)
    csrf, new_sid = _form_token(request, viewer)
    busy = any(j.status in (JobStatus.QUEUED, JobStatus.RUNNING) for j in view.rows)
    response = render(request, "index.html", viewer=viewer, view=view, csrf=csrf,
                      can_submit=viewer.has_role("submit"), xai_methods=get_args(XaiMethod),
                      default_xai=settings.xai_method, max_frames=settings.max_frames,
                      max_frames_cap=settings.max_frames_cap,
                      max_upload_mb=settings.max_upload_mb, refresh_s=5 if busy else 0)
    if new_sid:
        _set_session_cookie(request, response, new_sid)
    return response


def _check_csrf(request: Request) -> FieldCheck:
    """Cookie sessions must echo their CSRF token (header-key uploads need none); empty
    inputs are dropped."""
    session = ui_session(request)
    # Header auth needs no token (browsers never add that header cross-site).
    header_auth = bool(presented_key(request)) and not get_keyring(request).open

    def check(fields: dict[str, str]) -> None:
        token = fields.pop("csrf", None)
        if not header_auth and (session is None or not session.csrf_ok(token)):
            raise UiError(403, "Forbidden", "the form's security token is missing or stale: "
                          "reload the page and upload again")
        for name in [k for k, v in fields.items() if v == ""]:
            del fields[name]  # a cleared form input means "the default" here, unlike the API

    return check


@router.post("/upload")
async def upload(request: Request, viewer: Viewer, settings: SettingsDep, store: StoreDep,
                 queue: QueueDep) -> Response:
    _same_origin(request)
    if not viewer.has_role("submit"):
        raise UiError(403, "Forbidden", "this API key lacks the 'submit' role uploads need")
    try:
        accepted = await accept_upload(request, viewer, settings, store, queue,
                                       check=_check_csrf(request))
    except ApiError as e:
        raise UiError(e.status, "Upload refused", f"{e.code}: {e.detail}",
                      headers=dict(e.headers or {})) from None
    except MediaError as e:
        raise UiError(e.http_status, "Upload refused", f"{e.code}: {e.message}") from None
    return RedirectResponse(f"/ui/analyses/{accepted.job.id}", status_code=303,
                            headers=_HEADERS)


def _job(store: ResultStore, job_id: str, viewer: Principal) -> JobRecord:
    try:
        return load_job(store, job_id, viewer)
    except ApiError as e:
        raise UiError(404, "Not found", e.detail) from None


def _exposure(request: Request, viewer: Principal) -> ScoreExposure:
    return exposure_for(viewer, request.app.state.settings, guard_restricted(request, viewer))


@router.get("/analyses/{job_id}", response_class=HTMLResponse)
def analysis(
    job_id: str, request: Request, viewer: Viewer, store: StoreDep, guard: GuardDep,
    verdict: str | None = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    person: Annotated[int | None, Query(ge=0, le=100_000)] = None,
) -> Response:
    wanted = _parse_verdicts(verdict)
    job = _job(store, job_id, viewer)
    result = store.get_result(job.id) if job.status == JobStatus.DONE else None
    frames = result.frames if result is not None else store.get_frames(job.id)
    persons = result.persons if result is not None else summarize_persons(frames)
    level = _exposure(request, viewer)
    frames, persons = expose_frames(frames, level), expose_persons(persons, level)
    view = _frame_view(job.id, frames, wanted, page, person, persons)
    flag = None  # moderators only, and never on the viewer's own analyses
    if viewer.reviews and viewer.key_id != job.owner:
        flag = flag_of(guard, job.id, job.owner)
    th = result.thresholds if result is not None else None
    cards = ui_views.face_cards(job.id, view.frames, th, view.verdicts, view.person)
    busy = job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    return render(request, "analysis.html", viewer=viewer, job=job, result=result, view=view,
                  cards=cards, flag=flag, busy=busy, refresh_s=5 if busy else 0,
                  link=ui_views.analysis_url(job.id, view.verdicts, view.page, view.person))


def _frame_view(job_id: str, frames: list, verdicts: tuple[Verdict, ...], page: int,
                person: int | None, persons: list) -> ui_views.FrameView:
    counts = {v: 0 for v in Verdict}
    for f in frames:
        counts[f.verdict] += 1
    chosen = filter_frames(frames, list(verdicts), person)
    per = ui_views.FRAMES_PER_PAGE
    pages = max(1, -(-len(chosen) // per))
    page = min(page, pages)
    return ui_views.FrameView(verdicts, chosen[(page - 1) * per: page * per], counts,
                              len(chosen), page, pages, person, persons,
                              ui_views.timeline(job_id, frames))


@router.get("/analyses/{job_id}/status.json")
def status_json(job_id: str, viewer: ImageViewer, store: StoreDep) -> Response:
    """What the page's script polls while the job runs (no scores: just progress)."""
    job = load_job(store, job_id, viewer)
    body = {"status": job.status.value, "frames_done": job.frames_done,
            "frames_total": job.frames_total, "verdict": job.verdict.value if job.verdict else None}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/analyses/{job_id}/result.json")
async def result_json(job_id: str, request: Request, viewer: ImageViewer,
                      store: StoreDep) -> Response:
    """The analysis as the API returns it (same exposure), as a download."""
    job = await run_in_threadpool(load_job, store, job_id, viewer)
    result = await run_in_threadpool(store.get_result, job.id)
    frames = result.frames if result is not None else await run_in_threadpool(
        store.get_frames, job.id)
    body = AnalysisWithFrames.build(job, result, frames=frames).model_dump(mode="json")
    return JSONResponse(expose_json(body, _exposure(request, viewer)), headers={
        "Content-Disposition": f'attachment; filename="dfshield-{job.id}.json"',
        "Cache-Control": "no-store"})


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

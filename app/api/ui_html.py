"""HTML of the moderator UI: pure functions from store records to escaped markup.

Everything that came from a client (file names, errors, callback URLs) goes through
:func:`esc`; URLs are built from validated job ids and integers, and their query strings with
``urlencode``. No JavaScript: filters and paging are links, a running job refreshes by
``<meta http-equiv=refresh>``, so the CSP can forbid scripts entirely.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from app.api.auth import Principal
from app.guard.policy import AnalysisFlag
from app.schemas import AnalysisResult, FacePublic, FramePublic, JobStatus, PersonPublic, Verdict
from app.store.results import JobRecord

VERDICTS = (Verdict.FAKE, Verdict.ATTACKED, Verdict.REAL, Verdict.UNCERTAIN, Verdict.NO_FACE)
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1em;align-items:center}
header a{color:#fff;font-weight:600;text-decoration:none}header .who{margin-left:auto;opacity:.8}
header form{display:inline}main{padding:1em 1.2em;max-width:1400px}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{padding:.35em .6em;border-bottom:1px solid #e3e5ea;text-align:left;vertical-align:top}
code,.id{font-family:ui-monospace,monospace;font-size:12px}
.v{display:inline-block;padding:0 .5em;border-radius:3px;font-weight:600;font-size:12px}
.v-fake{background:#fcd9d6;color:#8a1c12}.v-attacked{background:#ffe7b3;color:#7a4a00}
.v-real{background:#d7f2dd;color:#145c25}.v-no_face,.v-none{background:#e3e5ea;color:#444}
.v-uncertain{background:#dde6f7;color:#23406e}.q{color:#23406e;font-size:12px}
.filters a{margin-right:.8em}.filters a.on{font-weight:700;text-decoration:none;color:#000}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:1em}
.frame{background:#fff;border:1px solid #e3e5ea;border-radius:4px;padding:.6em}
.face{display:flex;gap:.5em;margin-top:.5em;flex-wrap:wrap}
.face img{width:150px;height:150px;object-fit:contain;background:#eee}
.noimg{width:150px;height:150px;display:flex;align-items:center;justify-content:center;
background:#eee;color:#666;font-size:12px;text-align:center}
.err{color:#8a1c12}.muted{color:#666}.pager a{margin-right:1em}
"""


def esc(value: object) -> str:
    """HTML-escape anything (quotes included: safe inside attribute values too)."""
    return html.escape("" if value is None else str(value), quote=True)


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def badge(verdict: str | None) -> str:
    name = verdict or "none"
    return f'<span class="v v-{esc(name)}">{esc(verdict or "–")}</span>'


def page(title: str, body: str, viewer: Principal | None = None, refresh_s: int = 0) -> str:
    """The layout: header with the viewer and a logout button (keyed mode only)."""
    who = ""
    if viewer is not None and not viewer.anonymous:
        who = (f'<span class="who">key <code>{esc(viewer.key_id)}</code> '
               f'({esc("+".join(sorted(viewer.roles)))})</span>'
               '<form method="post" action="/ui/logout"><button>Log out</button></form>')
    elif viewer is not None:
        who = '<span class="who">open mode (no authentication)</span>'
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'{refresh}<title>{esc(title)} · dfshield</title>'
        '<link rel="stylesheet" href="/ui/style.css"></head><body>'
        f'<header><a href="/ui">dfshield moderation</a>{who}</header>'
        f"<main>{body}</main></body></html>"
    )


def error_page(status: int, title: str, message: str, viewer: Principal | None = None) -> str:
    body = (f"<h1>{esc(status)} {esc(title)}</h1><p class=err>{esc(message)}</p>"
            '<p><a href="/ui">Back to the analyses</a></p>')
    return page(title, body, viewer)


def login_page(next_url: str, error: str | None = None) -> str:
    msg = f"<p class=err>{esc(error)}</p>" if error else ""
    body = (
        "<h1>Log in</h1><p>Enter an API key with the <code>read</code> role. It is kept in an "
        "HttpOnly cookie for this site's <code>/ui</code> pages only.</p>" + msg +
        '<form method="post" action="/ui/login">'
        f'<input type="hidden" name="next" value="{esc(next_url)}">'
        '<input type="password" name="key" autocomplete="current-password" size="50" required '
        'autofocus aria-label="API key"> <button>Log in</button></form>'
    )
    return page("Log in", body)


# ---------------------------------------------------------------- list of analyses


def _row(job: JobRecord, show_owner: bool) -> str:
    progress = f"{job.frames_done}/{job.frames_total if job.frames_total is not None else '?'}"
    status = esc(job.status.value)
    if job.status == JobStatus.FAILED:
        status += f' <span class="err">{esc(job.error_code)}</span>'
    owner = f"<td><code>{esc(job.owner)}</code></td>" if show_owner else ""
    return (
        f"<tr><td>{esc(when(job.created_at))}</td>"
        f'<td><a class="id" href="/ui/analyses/{esc(job.id)}">{esc(job.id)}</a></td>'
        f"<td>{esc(job.filename)}</td><td>{status}</td><td>{badge(job.verdict)}</td>"
        f"<td>{esc(progress)}</td>{owner}</tr>"
    )


def index_page(jobs: Sequence[JobRecord], viewer: Principal, limit: int) -> str:
    show_owner = viewer.reads_everything
    head = "<tr><th>created</th><th>analysis</th><th>file</th><th>status</th><th>verdict</th>"
    head += "<th>frames</th>" + ("<th>owner</th>" if show_owner else "") + "</tr>"
    rows = "".join(_row(j, show_owner) for j in jobs)
    if not rows:
        rows = '<tr><td colspan="7" class="muted">no analyses in the retention window</td></tr>'
    scope = "all keys" if show_owner else "submitted with this key"
    body = (f"<h1>Recent analyses</h1><p class=muted>newest {limit}, {scope}</p>"
            f"<table>{head}{rows}</table>")
    busy = any(j.status in (JobStatus.QUEUED, JobStatus.RUNNING) for j in jobs)
    return page("Analyses", body, viewer, refresh_s=5 if busy else 0)


# ---------------------------------------------------------------- one analysis


@dataclass(frozen=True)
class FrameView:
    """What the analysis page shows: the filter, one page of frames and the counts."""

    verdicts: tuple[Verdict, ...]  # empty: all
    frames: Sequence[FramePublic]
    counts: dict[Verdict, int]
    total: int  # frames matching the filter
    page: int
    pages: int
    person: int | None = None  # only frames where this person appears
    persons: Sequence[PersonPublic] = ()


def _url(
    job_id: str, verdicts: Iterable[Verdict] = (), page_no: int = 1, person: int | None = None
) -> str:
    query: dict[str, str] = {}
    if names := ",".join(v.value for v in verdicts):
        query["verdict"] = names
    if person is not None:
        query["person"] = str(person)
    if page_no > 1:
        query["page"] = str(page_no)
    return f"/ui/analyses/{job_id}" + (f"?{urlencode(query)}" if query else "")


def image_url(job_id: str, frame: int, face: int, kind: str) -> str:
    return f"/ui/analyses/{job_id}/frames/{frame}/faces/{face}/{kind}.png"


def _score(value: float | None) -> str:
    """A score as shown: 3 decimals, fewer when the exposure policy rounded it, – when hidden."""
    if value is None:
        return "–"
    return f"{value:.3f}" if round(value, 1) != value else f"{value:.1f}"


def _guard_row(flag: AnalysisFlag) -> tuple[str, str]:
    if not flag.suspected:
        return ("query attack", '<span class="muted">not suspected</span>')
    return ("query attack", f'<span class="err">suspected</span> {esc(flag.reason)}')


def _summary(job: JobRecord, result: AnalysisResult | None,
             flag: AnalysisFlag | None = None) -> str:
    rows = [("status", esc(job.status.value)), ("file", esc(job.filename)),
            ("created", esc(when(job.created_at))), ("finished", esc(when(job.finished_at))),
            ("progress", esc(f"{job.frames_done}/{job.frames_total or '?'} frames"))]
    if job.status == JobStatus.FAILED:
        rows.append(("error", f'<span class="err">{esc(job.error_code)}: '
                              f"{esc(job.error_message)}</span>"))
    if result is not None:
        s, th = result.summary, result.thresholds
        frames = ", ".join(f"{k}: {v}" for k, v in s.frames.model_dump().items())
        faces = ", ".join(f"{k}: {v}" for k, v in s.faces.model_dump().items() if k != "no_face")
        rows += [("verdict", badge(s.verdict.value)), ("frames", esc(frames)),
                 ("faces", esc(faces)),
                 ("persons", esc(", ".join(f"{k}: {v}" for k, v in s.persons.model_dump().items()
                                           if k != "no_face"))),
                 ("thresholds", esc(f"τ_fake {th.tau_fake:.3f}, τ_attacked {th.tau_attacked:.3f}")),
                 ("XAI", esc(result.xai_method)),
                 ("models", "<br>".join(
                     esc(f"{m.role}: {m.name}@{m.version}" + ("" if m.trained else " (UNTRAINED)"))
                     for m in result.models))]
        rows += [("warning", f'<span class="err">{esc(w)}</span>') for w in result.warnings]
    if job.callback_url:
        hook = f"{job.webhook_status or 'not sent yet'}, {job.webhook_attempts} attempt(s)"
        if job.webhook_error:
            hook += f" ({job.webhook_error})"
        rows.append(("webhook", f"<code>{esc(job.callback_url)}</code> {esc(hook)}"))
    if flag is not None:
        rows.append(_guard_row(flag))
    rows.append(("API", f"<code>/v1/analyses/{esc(job.id)}</code>"))
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _filters(job_id: str, view: FrameView) -> str:
    on_all = " class=on" if not view.verdicts else ""
    links = [f'<a href="{esc(_url(job_id, person=view.person))}"{on_all}>'
             f"all ({sum(view.counts.values())})</a>"]
    for v in VERDICTS:
        on = " class=on" if view.verdicts == (v,) else ""
        links.append(f'<a href="{esc(_url(job_id, [v], person=view.person))}"{on}>'
                     f"{esc(v.value)} ({view.counts.get(v, 0)})</a>")
    return '<p class="filters">Show frames: ' + "".join(links) + "</p>" + _person_filter(
        job_id, view)


def _person_filter(job_id: str, view: FrameView) -> str:
    """Links to the frames of one person (with the person's own verdict)."""
    if not view.persons:
        return ""
    on_all = " class=on" if view.person is None else ""
    links = [f'<a href="{esc(_url(job_id, view.verdicts))}"{on_all}>everyone</a>']
    for p in view.persons:
        on = " class=on" if view.person == p.id else ""
        links.append(f'<a href="{esc(_url(job_id, view.verdicts, person=p.id))}"{on}>'
                     f"person {p.id}</a> {badge(p.verdict.value)} "
                     f'<span class="muted">({len(p.frames)} frames)</span> ')
    return '<p class="filters">Person: ' + "".join(links) + "</p>"


def _face(job_id: str, frame: int, face: FacePublic) -> str:
    crop = image_url(job_id, frame, face.index, "crop")
    alt = f"frame {frame} face {face.index}"
    if face.explanation_url is not None:
        heat = (f'<img src="{esc(image_url(job_id, frame, face.index, "explanation"))}" '
                f'alt="{esc(alt)} explanation" title="XAI heatmap over the crop" loading="lazy">')
    elif face.p_fake is None:  # the score exposure policy withholds scores and heatmaps
        heat = '<div class="noimg">no heatmap<br>(scores not shown to this key)</div>'
    else:  # g called it fake: no XAI map, no d
        heat = '<div class="noimg">no heatmap<br>(detector called it fake)</div>'
    p_att = _score(face.p_attacked)
    person = "" if face.person is None else f"person {face.person} · "
    quality = "".join(f'<br><span class="q">{esc(q)}</span>' for q in face.quality)
    return (
        f'<div class="face"><img src="{esc(crop)}" alt="{esc(alt)} crop" title="face crop" '
        f'loading="lazy">{heat}'
        f"<div>{esc(person)}face {face.index} {badge(face.verdict.value)}<br>"
        f"p_fake <b>{esc(_score(face.p_fake))}</b><br>p_attacked <b>{esc(p_att)}</b><br>"
        f'<span class="muted">detection {face.detection_prob:.2f}</span>{quality}</div></div>'
    )


def _frame(job_id: str, frame: FramePublic) -> str:
    faces = "".join(_face(job_id, frame.index, f) for f in frame.faces)
    if not frame.faces:
        faces = '<p class="muted">no face found</p>'
    source = f", source frame {frame.source_index}" if frame.source_index is not None else ""
    return (f'<div class="frame" id="frame-{frame.index}"><b>frame {frame.index}</b> '
            f"{badge(frame.verdict.value)} <span class=muted>t = {frame.timestamp:.2f} s"
            f"{esc(source)}</span>{faces}</div>")


def _pager(job_id: str, view: FrameView) -> str:
    if view.pages <= 1:
        return ""
    links = []
    if view.page > 1:
        prev = _url(job_id, view.verdicts, view.page - 1, view.person)
        links.append(f'<a href="{esc(prev)}">« previous</a>')
    links.append(f"page {view.page} of {view.pages}")
    if view.page < view.pages:
        nxt = _url(job_id, view.verdicts, view.page + 1, view.person)
        links.append(f'<a href="{esc(nxt)}">next »</a>')
    return '<p class="pager">' + " ".join(links) + "</p>"


def analysis_page(
    job: JobRecord, result: AnalysisResult | None, view: FrameView, viewer: Principal,
    flag: AnalysisFlag | None = None,
) -> str:
    """The analysis page; ``flag``: the guard's view, only ever passed for moderators."""
    grid = "".join(_frame(job.id, f) for f in view.frames)
    if not grid:
        grid = '<p class="muted">no frames match this filter (yet)</p>'
    link = _url(job.id, view.verdicts, view.page, view.person)
    body = (
        f'<h1>Analysis <span class="id">{esc(job.id)}</span></h1>'
        f"{_summary(job, result, flag)}"
        f'<p>Shareable link (needs a key that may read it): <a href="{esc(link)}">'
        f"<code>{esc(link)}</code></a></p>"
        f"{_filters(job.id, view)}{_pager(job.id, view)}<div class=grid>{grid}</div>"
        f"{_pager(job.id, view)}"
    )
    busy = job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    return page(f"Analysis {job.id[:8]}", body, viewer, refresh_s=3 if busy else 0)

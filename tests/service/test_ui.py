"""The moderator UI over the real service, at the HTTP level: list, filters, paging, analysis
page, images, downloads, sessions, CSRF. The browser-driven checks are in test_ui_browser.py."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis

from app.config import Settings
from app.pipeline.analyze import Analyzer
from app.worker.main import Worker
from tests.service.live import IMAGE, VIDEO, LiveApi, make_settings, wait_for

EVIL = "<script>alert(1)</script><img src=x onerror=alert(1)>.jpg"
BOTH, OTHER, SUBMIT, READ, ADMIN = (f"ui-key-{n}-{'y' * 16}"
                                    for n in ("both", "other", "sub", "read", "adm"))
SPEC = f"{BOTH}:submit+read,{OTHER}:submit+read,{SUBMIT}:submit,{READ}:read,{ADMIN}:admin"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r'<img src="([^"]+)"')
CSRF = re.compile(r'name="csrf" value="([^"]*)"')
CELL = re.compile(r'<a class="cell v-(\w+)" href="([^"]+)" data-frame="(\d+)"')


def _upload(c: httpx.Client, path: Path = IMAGE, name: str | None = None, **headers: str) -> str:
    files = {"file": (name or path.name, path.read_bytes())}
    resp = c.post("/v1/analyze", headers=headers, files=files)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def _html(resp: httpx.Response, status: int = 200) -> str:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("text/html")
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and resp.headers["x-frame-options"] == "DENY"
    return resp.text


def _live(tmp_path: Path, redis_server, redis_client: redis.Redis, api_factory, worker_factory,
          **over: object) -> LiveApi:
    s: Settings = make_settings(tmp_path / "data", redis_server.url, **over)
    return api_factory(s, redis_client, worker_factory(s, redis_client))


def test_list_filters_paging_counts_and_escaping(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
) -> None:
    live = _live(tmp_path, redis_server, redis_client, api_factory, worker_factory,
                 ui_page_size=1)
    c = live.client
    image = _upload(c, name=EVIL)
    video = _upload(c, VIDEO)
    done = {j: wait_for(c, j) for j in (image, video)}

    first = _html(c.get("/ui"))  # newest first, one per page
    assert f'href="/ui/analyses/{video}"' in first and image not in first
    assert 'rel="next"' in first and "page 1 of 2" in first
    second = _html(c.get("/ui", params={"page": 2}))
    assert f'href="/ui/analyses/{image}"' in second and 'rel="prev"' in second
    assert "<script>alert" not in second and "<img src=x" not in second  # file name escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in second
    assert ">image</td>" in second  # the duration column
    faces = done[image]["summary"]["faces"]
    assert f"{faces['fake']} / {faces['attacked']} / {faces['real']}" in second

    v_image = done[image]["summary"]["verdict"]
    only = _html(c.get("/ui", params={"verdict": v_image, "status": "done"}))
    assert f"v v-{v_image}" in only and (image in only or "page 1 of" in only)
    assert "0 of the newest 2" in _html(c.get("/ui", params={"status": "failed"}))
    assert "status must be among" in _html(c.get("/ui", params={"status": "bogus"}), 422)
    assert "verdict must be among" in _html(c.get("/ui", params={"verdict": "bad"}), 422)
    assert 'name="csrf" value="' in first and 'enctype="multipart/form-data"' in first


@pytest.fixture
def all_fake(tmp_path: Path, redis_server, redis_client: redis.Redis,
             api_factory: Callable[..., LiveApi]) -> Iterator[LiveApi]:
    """A service whose g calls every face fake (tau_fake 0): every heatmap explains the fake
    logit. Its own analyzer, since the session's shared one keeps the manifest's thresholds."""
    s = make_settings(tmp_path / "data", redis_server.url, tau_fake=0.0)
    worker = Worker(s, redis_client, analyzer=Analyzer.from_settings(s)).start()
    try:
        yield api_factory(s, redis_client, worker)
    finally:
        worker.stop(timeout=10)


def test_analysis_page_timeline_grid_heatmaps_and_downloads(all_fake: LiveApi) -> None:
    c = all_fake.client
    job_id = _upload(c, VIDEO)
    done = wait_for(c, job_id)
    frames = c.get(f"/v1/analyses/{job_id}/frames").json()["items"]
    page = _html(c.get(f"/ui/analyses/{job_id}"))

    cells = CELL.findall(page)  # one per sampled frame, coloured and lettered by verdict
    assert [int(n) for _, _, n in cells] == [f["index"] for f in frames]
    assert [v for v, _, _ in cells] == [f["verdict"] for f in frames]
    assert cells[2][1] == f"/ui/analyses/{job_id}#frame-2" and 'id="frame-2"' in page
    faces = [face for f in frames for face in f["faces"]]
    assert faces and all(f["explanation_of"] == "fake" for f in faces)
    srcs = IMG.findall(page)
    assert len(srcs) == 2 * len(faces)  # crop and heatmap for every face
    for src in srcs:
        img = c.get(src)
        assert img.status_code == 200 and img.content.startswith(PNG_MAGIC)
    assert page.count("why g called it fake (fake logit)") >= len(faces)
    assert 'class="fill w-' in page and "τ 0.000" in page  # score bars against thresholds
    assert done["summary"]["verdict"] in page and "timings" in page

    empty = _html(c.get(f"/ui/analyses/{job_id}", params={"verdict": "real"}))
    assert not IMG.findall(empty) and "no frames match" in empty
    status = c.get(f"/ui/analyses/{job_id}/status.json").json()
    assert status == {"status": "done", "frames_done": len(frames),
                      "frames_total": len(frames), "verdict": done["summary"]["verdict"]}
    download = c.get(f"/ui/analyses/{job_id}/result.json")
    assert "attachment" in download.headers["content-disposition"]
    assert download.json()["id"] == job_id and len(download.json()["frames"]) == len(frames)
    assert "not found" in _html(c.get("/ui/analyses/" + "f" * 32), 404)
    assert c.get("/ui/static/ui.js").headers["content-type"].startswith("text/javascript")


@pytest.fixture
def keyed(tmp_path: Path, redis_server, redis_client: redis.Redis,
          api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker]) -> LiveApi:
    """The service with keys on (SPEC)."""
    return _live(tmp_path, redis_server, redis_client, api_factory, worker_factory,
                 api_keys=SPEC)


def test_sessions_hold_no_key_and_end_at_logout(keyed: LiveApi, redis_client: redis.Redis) -> None:
    live = keyed
    c = live.client
    mine = _upload(c, Authorization=f"Bearer {BOTH}")
    theirs = _upload(c, Authorization=f"Bearer {OTHER}")
    with httpx.Client(base_url=live.url, headers={"X-API-Key": BOTH}) as reader:
        wait_for(reader, mine)

    page_url = f"/ui/analyses/{mine}?verdict=real,fake"
    to_login = c.get(page_url)
    assert to_login.status_code == 303
    login_url = urlsplit(to_login.headers["location"])
    assert login_url.path == "/ui/login" and parse_qs(login_url.query)["next"] == [page_url]
    img = f"/ui/analyses/{mine}/frames/0/faces/0/crop.png"
    assert c.get(img).status_code == 401 and c.get(img).json()["code"] == "unauthorized"
    assert "unknown API key" in _html(c.post("/ui/login", data={"key": "nope"}), 401)
    assert "lacks the" in _html(c.post("/ui/login", data={"key": SUBMIT}), 403)
    cross = c.post("/ui/login", data={"key": BOTH}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and not c.cookies

    ok = c.post("/ui/login", data={"key": BOTH, "next": page_url})
    assert ok.status_code == 303 and ok.headers["location"] == page_url
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert BOTH not in cookie and len(c.cookies["dfshield_session"]) >= 43  # an id, not a key
    assert not [k for k in redis_client.keys("dfshield:ui:session:*")
                if c.cookies["dfshield_session"] in k.decode()]  # Redis holds only its hash
    assert c.post("/ui/login", data={"key": BOTH, "next": "//evil.example/ui"}
                  ).headers["location"] == "/ui"

    listing = _html(c.get("/ui"))
    assert mine in listing and theirs not in listing and BOTH not in listing
    for src in IMG.findall(_html(c.get(page_url))):
        assert c.get(src).headers["content-type"] == "image/png"
    assert "not found" in _html(c.get(f"/ui/analyses/{theirs}"), 404)
    assert c.get(f"/ui/analyses/{theirs}/result.json").status_code == 404
    admin = _html(c.get("/ui", headers={"Authorization": f"Bearer {ADMIN}"}))
    assert mine in admin and theirs in admin

    stolen = c.cookies["dfshield_session"]
    assert c.post("/ui/logout").status_code == 303 and not c.cookies
    with httpx.Client(base_url=live.url, cookies={"dfshield_session": stolen}) as thief:
        replay = thief.get("/ui")  # the session ended server-side, not only in the browser
    assert replay.status_code == 303 and replay.headers["location"].startswith("/ui/login")


def test_upload_form_needs_the_session_csrf_token(keyed: LiveApi,
                                                  redis_client: redis.Redis) -> None:
    live = keyed
    c = live.client
    assert c.post("/ui/login", data={"key": BOTH}).status_code == 303
    token = CSRF.findall(_html(c.get("/ui")))[0]
    files = {"file": (IMAGE.name, IMAGE.read_bytes())}
    for bad in ({}, {"csrf": "x" * len(token)}):
        refused = c.post("/ui/upload", data={**bad, "max_frames": "2"}, files=files)
        assert "security token" in _html(refused, 403)
    cross = c.post("/ui/upload", data={"csrf": token}, files=files,
                   headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert redis_client.zcard("dfshield:index") == 0  # nothing was accepted

    ok = c.post("/ui/upload", data={"csrf": token, "xai_method": "saliency",
                                    "max_frames": ""}, files=files)  # cleared: the default
    assert ok.status_code == 303 and ok.headers["location"].startswith("/ui/analyses/")
    job_id = ok.headers["location"].rsplit("/", 1)[1]
    with httpx.Client(base_url=live.url, headers={"X-API-Key": BOTH}) as api:
        assert wait_for(api, job_id)["status"] == "done"
        by_header = api.post("/ui/upload", files=files)  # header auth: no token needed
        assert by_header.status_code == 303
    bad_media = c.post("/ui/upload", data={"csrf": token}, files={"file": ("x.mp4", b"hello")})
    assert "unsupported_media" in _html(bad_media, 415)

    c.post("/ui/logout")
    assert c.post("/ui/login", data={"key": READ}).status_code == 303
    listing = _html(c.get("/ui"))
    assert 'action="/ui/upload"' not in listing  # no submit role, no form
    assert "lacks the &#39;submit&#39; role" in _html(c.post("/ui/upload", files=files), 403)

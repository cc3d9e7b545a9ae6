"""The moderator UI over the real service: listing, frame grid with filters, images, login."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import redis

from app.config import Settings
from app.worker.main import Worker
from tests.service.live import IMAGE, LiveApi, make_settings, wait_for

EVIL = "<script>alert(1)</script><img src=x onerror=alert(1)>.jpg"
BOTH, OTHER, SUBMIT, ADMIN = (f"ui-key-{n}-{'y' * 16}" for n in ("both", "other", "sub", "adm"))
SPEC = f"{BOTH}:submit+read,{OTHER}:submit+read,{SUBMIT}:submit,{ADMIN}:admin"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r'<img src="([^"]+)"')


def _upload(c: httpx.Client, name: str = IMAGE.name, **headers: str) -> str:
    resp = c.post("/v1/analyze", headers=headers, files={"file": (name, IMAGE.read_bytes())})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def _html(resp: httpx.Response, status: int = 200) -> str:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("text/html")
    assert "script-src" not in resp.headers["content-security-policy"]  # default-src 'none'
    return resp.text


def test_open_mode_list_grid_filters_images_and_escaping(service: LiveApi) -> None:
    c = service.client
    job_id = _upload(c, EVIL)
    done = wait_for(c, job_id)
    verdict = done["summary"]["verdict"]

    listing = _html(c.get("/ui"))
    assert f'href="/ui/analyses/{job_id}"' in listing and "open mode" in listing
    for page in (listing, _html(c.get(f"/ui/analyses/{job_id}"))):  # file name escaped
        assert "<script" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert f"{verdict}</span>" in listing  # the verdict badge

    frame = c.get(f"/v1/analyses/{job_id}/frames").json()["items"][0]
    page = _html(c.get(f"/ui/analyses/{job_id}", params={"verdict": frame["verdict"]}))
    srcs = IMG.findall(page)
    faces = frame["faces"]
    assert len(srcs) == len(faces) + sum(f["explanation_url"] is not None for f in faces)
    assert f"/ui/analyses/{job_id}/frames/0/faces/0/crop.png" in srcs
    for src in srcs:  # every image on the page resolves to a PNG
        img = c.get(src)
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert img.content.startswith(PNG_MAGIC)
    assert f"p_fake <b>{faces[0]['p_fake']:.3f}</b>" in page
    assert "t = 0.00 s" in page and f'class="v v-{faces[0]["verdict"]}"' in page

    other = next(v for v in ("fake", "attacked", "real", "no_face") if v != frame["verdict"])
    empty = _html(c.get(f"/ui/analyses/{job_id}?verdict={other}"))
    assert not IMG.findall(empty) and "no frames match" in empty
    assert f'href="/ui/analyses/{job_id}?verdict={other}" class=on' in empty  # shareable link
    assert "verdict must be among" in _html(c.get(f"/ui/analyses/{job_id}?verdict=bad"), 422)
    assert "not found" in _html(c.get("/ui/analyses/" + "f" * 32), 404)
    assert c.get("/ui/login", params={"next": "/ui"}).headers["location"] == "/ui"  # no login


def test_keyed_ui_login_cookie_ownership_and_logout(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
) -> None:
    s: Settings = make_settings(tmp_path / "data", redis_server.url, api_keys=SPEC)
    live = api_factory(s, redis_client, worker_factory(s, redis_client))
    c = live.client
    mine = _upload(c, Authorization=f"Bearer {BOTH}")
    theirs = _upload(c, Authorization=f"Bearer {OTHER}")
    with httpx.Client(base_url=live.url, headers={"X-API-Key": BOTH}) as reader:
        wait_for(reader, mine)

    # Not logged in: pages go to the login form (keeping where to come back), images are 401.
    page_url = f"/ui/analyses/{mine}?verdict=real,fake"
    to_login = c.get(page_url)
    assert to_login.status_code == 303
    login_url = urlsplit(to_login.headers["location"])
    assert login_url.path == "/ui/login" and parse_qs(login_url.query)["next"] == [page_url]
    assert 'type="password"' in _html(c.get(to_login.headers["location"]))
    img = f"/ui/analyses/{mine}/frames/0/faces/0/crop.png"
    assert c.get(img).status_code == 401 and c.get(img).json()["code"] == "unauthorized"

    # Wrong key, key without read, cross-site post: refused; no cookie set.
    assert "unknown API key" in _html(c.post("/ui/login", data={"key": "nope"}), 401)
    assert "lacks the" in _html(c.post("/ui/login", data={"key": SUBMIT}), 403)
    cross = c.post("/ui/login", data={"key": BOTH}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and not c.cookies

    # Log in: HttpOnly, SameSite=Strict cookie scoped to /ui; only local redirects.
    ok = c.post("/ui/login", data={"key": BOTH, "next": page_url})
    assert ok.status_code == 303 and ok.headers["location"] == page_url
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    evil = c.post("/ui/login", data={"key": BOTH, "next": "//evil.example/ui"})
    assert evil.headers["location"] == "/ui"

    listing = _html(c.get("/ui"))
    assert mine in listing and theirs not in listing  # only this key's analyses
    assert BOTH not in listing  # the page shows the key id, never the key
    grid = _html(c.get(page_url))
    for src in IMG.findall(grid):
        assert c.get(src).headers["content-type"] == "image/png"
    assert "not found" in _html(c.get(f"/ui/analyses/{theirs}"), 404)  # someone else's

    # Admin (header auth works too) sees every analysis; logout drops the cookie.
    admin = _html(c.get("/ui", headers={"Authorization": f"Bearer {ADMIN}"}))
    assert mine in admin and theirs in admin
    out = c.post("/ui/logout")
    assert out.status_code == 303 and not c.cookies
    assert c.get("/ui").status_code == 303

"""Security properties over the real service (issue 14, part 4): unguessable ids, another key's
analysis absent on every route (API, images, UI), traversal in ids and filenames refused,
secrets never logged, callbacks refused through redirects and DNS names of private ranges."""

from __future__ import annotations

import http.client
import itertools
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.api.auth import hash_key
from app.logs import JsonFormatter
from app.store.results import ResultStore, new_job_id, valid_job_id
from app.webhooks import forbidden_reason
from app.worker.main import Worker
from tests.service.live import IMAGE, LiveApi, make_settings, submit, wait_for

OWNER, OTHER, ADMIN = (f"sec-key-{n}-{'k' * 20}" for n in ("owner", "other", "admin"))
SPEC = f"{OWNER}:submit+read,{hash_key(OTHER)}:submit+read,{hash_key(ADMIN)}:admin"
SECRET = "webhook-secret-never-logged-0123456789"
PROBLEM = "application/problem+json"


def test_job_ids_carry_128_random_bits() -> None:
    ids = [new_job_id() for _ in range(512)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) and valid_job_id(i) for i in ids)
    # uuid4 fixes the version nibble (12) and two variant bits (16): only 122 random bits.
    for pos in range(32):
        assert len({i[pos] for i in ids}) >= 12, f"hex digit {pos} is not random"


def _scrub(text: str, job_id: str) -> str:
    text = re.sub(r'"request_id":\s*"[^"]*"', "", text)
    return re.sub(r'name="csrf"[^>]*>', "", text).replace(job_id, "<id>")


@pytest.fixture
def keyed(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
) -> Iterator[tuple[LiveApi, dict[str, httpx.Client]]]:
    s = make_settings(tmp_path / "data", redis_server.url, api_keys=SPEC, rate_limit_per_min=0,
                      keep_media=True, webhook_secret=SECRET, webhook_allow_private=True)
    live = api_factory(s, redis_client, worker_factory(s, redis_client))
    clients = {name: httpx.Client(base_url=live.url, timeout=30,
                                  headers={"Authorization": f"Bearer {key}"})
               for name, key in (("owner", OWNER), ("other", OTHER), ("admin", ADMIN))}
    yield live, clients
    for c in clients.values():
        c.close()


def test_another_keys_analysis_is_absent_on_every_route(
    keyed: tuple[LiveApi, dict[str, httpx.Client]],
) -> None:
    _, c = keyed
    job_id = submit(c["owner"], IMAGE).json()["id"]
    assert wait_for(c["owner"], job_id)["status"] == "done"
    face = c["owner"].get(f"/v1/analyses/{job_id}/frames").json()["items"][0]["faces"][0]
    paths = [f"/v1/analyses/{job_id}", f"/v1/analyses/{job_id}/frames", face["crop_url"],
             f"/ui/analyses/{job_id}", "/ui" + face["crop_url"].removeprefix("/v1")]
    if face.get("explanation_url"):
        paths += [face["explanation_url"], "/ui" + face["explanation_url"].removeprefix("/v1")]
    nobody = new_job_id()
    for path in paths:  # each route the owner can read...
        assert c["owner"].get(path).status_code == 200, path
        theirs = c["other"].get(path)  # ...is simply not there for another key:
        assert theirs.status_code == 404, (path, theirs.text)
        absent = c["other"].get(path.replace(job_id, nobody))  # the same as no analysis at all
        assert absent.status_code == 404
        assert theirs.headers["content-type"] == absent.headers["content-type"]
        assert _scrub(theirs.text, job_id) == _scrub(absent.text, nobody), path
    assert c["other"].delete(f"/v1/analyses/{job_id}").status_code == 404
    assert c["owner"].get(f"/v1/analyses/{job_id}").status_code == 200  # still there
    assert c["admin"].get(face["crop_url"]).status_code == 200


BAD_IDS = ["..", "../..", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "0" * 31,
           "0" * 33, "A" * 32, "dfshield:index", "*", "%00" + "0" * 29, "....//....//etc"]


def test_traversal_and_junk_ids_are_4xx_everywhere(
    keyed: tuple[LiveApi, dict[str, httpx.Client]],
) -> None:
    live, _ = keyed
    for bad, (method, template) in itertools.product(BAD_IDS, (
        ("GET", "/v1/analyses/{}"), ("GET", "/v1/analyses/{}/frames"),
        ("GET", "/v1/analyses/{}/frames/0/faces/0/crop.png"),
        ("GET", "/v1/analyses/{}/frames/0/faces/0/explanation.png"),
        ("DELETE", "/v1/analyses/{}"), ("GET", "/ui/analyses/{}"),
        ("GET", "/ui/analyses/{}/frames/0/faces/0/crop.png"), ("GET", "/v1/guard/keys/{}"),
    )):
        path = template.format(bad)
        # http.client sends the path byte for byte (httpx would resolve the dot segments).
        conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
        try:
            conn.request(method, path, headers={"Authorization": f"Bearer {ADMIN}"})
            resp = conn.getresponse()
            status, text = resp.status, resp.read().decode("utf-8", "replace")
        finally:
            conn.close()
        assert 400 <= status < 500, (method, path, status, text)
        assert "root:" not in text  # /etc/passwd never comes back


def test_upload_filename_cannot_escape_the_spool(
    keyed: tuple[LiveApi, dict[str, httpx.Client]], redis_client: redis.Redis,
) -> None:
    live, c = keyed
    data_dir = live.server.config.app.state.settings.data_dir
    store = ResultStore(redis_client, 86_400, data_dir)
    before = {p for p in data_dir.parent.rglob("*")}
    for name in ("../../../../tmp/dfs-pwned.jpg", "/etc/cron.d/x.jpg", "..\\..\\win.ini",
                 "a/../../b.jp\x00g", "x" * 300 + ".jpg"):
        resp = c["owner"].post("/v1/analyze", files={"file": (name, IMAGE.read_bytes())})
        assert resp.status_code == 202, (name, resp.text)
        job = store.get(resp.json()["id"])
        media = Path(job.media_path).resolve()
        assert media.parent == (data_dir / "media" / job.id).resolve(), media
        assert re.fullmatch(r"source(\.[a-z0-9]{1,8})?", media.name), media.name
        wait_for(c["owner"], job.id)
    created = {p for p in data_dir.parent.rglob("*")} - before
    assert all(p.resolve().is_relative_to(data_dir.resolve()) for p in created), created
    assert not Path("/tmp/dfs-pwned.jpg").exists()


class _Capture(logging.Handler):
    """Every log line of the process (API, worker, webhook delivery) at the shipped level
    (INFO; DEBUG would add httpcore's dumps of this test's own client traffic), as shipped."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def hook_target() -> Iterator[dict[str, Any]]:
    """A receiver on loopback: 500 once (retried, logged), then 200; and a redirector."""
    state: dict[str, Any] = {"plan": [500], "seen": [], "internal": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path.startswith("/internal"):
                state["internal"].append(self.path)  # must never be reached
                status, extra = 200, {}
            elif self.path.startswith("/redirect"):
                status = 307
                extra = {"Location": f"http://127.0.0.1:{self.server.server_address[1]}"
                                     "/internal/admin"}
            else:
                state["seen"].append(dict(self.headers))
                status, extra = (state["plan"].pop(0) if state["plan"] else 200), {}
            self.send_response(status)
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["base"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def test_keys_and_webhook_secret_never_reach_the_logs(
    keyed: tuple[LiveApi, dict[str, httpx.Client]], hook_target: dict[str, Any],
    redis_client: redis.Redis,
) -> None:
    live, c = keyed
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    try:
        anon = live.client
        hooked = submit(c["owner"], IMAGE, callback_url=hook_target["base"] + "/hook").json()
        redirected = submit(c["owner"], IMAGE,
                            callback_url=hook_target["base"] + "/redirect").json()
        anon.post("/v1/analyze", headers={"X-API-Key": OTHER},
                  files={"file": ("x.jpg", IMAGE.read_bytes())})
        for wrong in (OWNER + "x", OWNER[:-1], "Bearer " + OTHER):  # near-misses get logged?
            assert anon.get(f"/v1/analyses/{hooked['id']}",
                            headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        anon.post("/ui/login", data={"key": OWNER + "-typo"})
        anon.post("/ui/login", data={"key": OWNER})  # the UI form carries the key in a body
        store = ResultStore(redis_client, 86_400, Path("."))
        for job in (hooked, redirected):
            wait_for(c["owner"], job["id"])
        import time as _time

        deadline = _time.monotonic() + 30
        while _time.monotonic() < deadline and not (
            store.get(hooked["id"]).webhook_status == "delivered"
            and store.get(redirected["id"]).webhook_status == "failed"):
            _time.sleep(0.05)
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    assert store.get(hooked["id"]).webhook_status == "delivered"
    assert len(hook_target["seen"]) == 2  # one 500 (retried, logged) and one 200
    # A redirect is never followed, not even to loopback when loopback itself is allowed.
    failed = store.get(redirected["id"])
    assert failed.webhook_status == "failed" and "redirect" in (failed.webhook_error or "")
    assert hook_target["internal"] == []

    text = "\n".join(capture.lines)
    assert len(capture.lines) > 20 and "HTTP 500" in text  # it saw the whole flow, retries too
    for secret in (OWNER, OTHER, ADMIN, SECRET, OWNER[:-1]):
        assert secret not in text, f"a secret reached the logs: {secret[:10]}…"
    for key in (OWNER, OTHER):  # nor the hash that keys may be configured with
        assert hash_key(key).removeprefix("sha256$") not in text


def test_callbacks_to_names_of_private_addresses_are_refused(
    settings, redis_client: redis.Redis, api_factory: Callable[..., LiveApi],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    live = api_factory(settings, redis_client)  # default: private callbacks refused
    # This machine's own name resolves (through NSS, /etc/hosts) to a non-public address.
    own = socket.gethostname()
    addrs = {info[4][0] for info in socket.getaddrinfo(own, 80, type=socket.SOCK_STREAM)}
    import ipaddress

    assert any(forbidden_reason(ipaddress.ip_address(a.split("%")[0])) for a in addrs), addrs
    # Names an attacker controls: private ranges, and a public answer next to a private one.
    answers = {"intranet.attacker.test": ["10.20.30.40"], "meta.attacker.test": ["169.254.169.254"],
               "lan.attacker.test": ["192.168.0.10"], "mixed.attacker.test": ["93.184.216.34",
                                                                             "172.16.5.5"],
               "v6.attacker.test": ["fd12::1"]}
    real = socket.getaddrinfo

    def resolver(host: str, port: Any, *a: Any, **kw: Any) -> list[Any]:
        if host not in answers:
            return real(host, port, *a, **kw)
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (ip, port)) for ip in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    for host in [own, *answers]:
        resp = submit(live.client, IMAGE, callback_url=f"http://{host}:8080/hook")
        assert resp.status_code == 422, (host, resp.text)
        assert resp.headers["content-type"] == PROBLEM
        assert resp.json()["code"] == "callback_url_rejected"
    assert redis_client.xlen("dfshield:jobs") == 0

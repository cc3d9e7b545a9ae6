"""The API contract: a 405 lists the real methods in ``Allow``; every status an operation
answers is declared for it in the OpenAPI document, errors as problem+json ``Problem``."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from app.api.auth import hash_key
from app.config import Settings
from app.redis_conn import client_from_url
from app.worker.main import Worker
from tests.service.live import IMAGE, LiveApi, make_settings, submit, wait_for

KEY, READER = "contract-key-" + "c" * 20, "contract-read-" + "r" * 20
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")
JOB = "0" * 32


def _operation(spec: dict, method: str, url: str) -> tuple[str, dict]:
    """The documented operation serving ``method url`` (path templates matched)."""
    path = url.split("?")[0]
    for template, ops in spec["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in ops:
            return template, ops[method.lower()]
    raise AssertionError(f"{method} {path} is not documented")


def test_405_allow_lists_the_methods_that_work(
    settings: Settings, redis_client: redis.Redis, api_factory: Callable[..., LiveApi],
) -> None:
    c = api_factory(settings, redis_client).client
    for path in (f"/v1/analyses/{JOB}", "/v1/analyze", "/healthz", "/v1/guard/keys/abc",
                 f"/v1/analyses/{JOB}/frames", "/ui/login"):
        answers = {m: c.request(m, path) for m in METHODS}
        refused = {m for m, r in answers.items() if r.status_code == 405}
        assert refused, path
        served = set(METHODS) - refused
        for m in refused:
            resp = answers[m]
            assert resp.headers["content-type"] == "application/problem+json"
            assert resp.json()["code"] == "method_not_allowed"
            assert set(resp.headers["allow"].split(", ")) == served, (path, m)
            assert resp.headers["allow"] in resp.json()["detail"]


def test_every_error_is_declared_as_problem_json(
    settings: Settings, redis_client: redis.Redis, api_factory: Callable[..., LiveApi],
) -> None:
    spec = api_factory(settings, redis_client).client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # never sent
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status, resp in op["responses"].items():
                if int(status) < 400 or (path, status) == ("/readyz", "503"):
                    continue
                assert resp["content"] == {"application/problem+json": {"schema": PROBLEM_REF}}, (
                    method, path, status)
    analyze = {int(s) for s in spec["paths"]["/v1/analyze"]["post"]["responses"]}
    assert analyze >= {400, 401, 403, 413, 415, 422, 429, 500, 503, 507}
    get = {int(s) for s in spec["paths"]["/v1/analyses/{job_id}"]["get"]["responses"]}
    assert get >= {401, 403, 404, 422, 429, 500, 503}
    ready = spec["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]
    assert ready["schema"] == {"$ref": "#/components/schemas/ReadinessReport"}


def test_statuses_the_live_api_answers_are_all_declared(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
) -> None:
    s = make_settings(tmp_path / "data", redis_server.url, rate_limit_per_min=0,
                      api_keys=f"{KEY}:submit+read,{hash_key(READER)}:read", max_upload_mb=1)
    live = api_factory(s, redis_client, worker_factory(s, redis_client))
    # The same API against a Redis that is down: every store-backed route says 503.
    dead = api_factory(s, client_from_url(f"unix://{tmp_path / 'nobody.sock'}"))
    spec = live.client.get("/openapi.json").json()
    key = {"Authorization": f"Bearer {KEY}"}
    reader = {"Authorization": f"Bearer {READER}"}
    c = httpx.Client(base_url=live.url, headers=key, timeout=30)
    job = submit(c, IMAGE).json()["id"]
    wait_for(c, job)
    crop = f"/v1/analyses/{job}/frames/0/faces/0/crop.png"
    big = tmp_path / "big.jpg"
    big.write_bytes(IMAGE.read_bytes() * 5)  # 1.4 MB > the 1 MB cap
    tried: list[tuple[str, str, int]] = []

    def req(client: httpx.Client, method: str, url: str, **kw: object) -> None:
        tried.append((method, url, client.request(method, url, **kw).status_code))  # type: ignore[arg-type]

    files = {"file": ("x.jpg", IMAGE.read_bytes())}
    for url in (f"/v1/analyses/{job}", f"/v1/analyses/{job}/frames", crop,
                f"/v1/analyses/{JOB}", f"/v1/analyses/{JOB}/frames?limit=0", "/v1/guard/keys",
                "/v1/guard/keys/abc", "/v1/guard/keys/" + "a" * 12, "/readyz", "/healthz",
                "/metrics"):
        req(c, "GET", url)
        req(c, "GET", url, headers={"Authorization": "Bearer wrong"})
        req(dead.client, "GET", url, headers=key)
    req(c, "POST", "/v1/analyze", files=files)
    req(c, "POST", "/v1/analyze", files=files, headers=reader)
    req(c, "POST", "/v1/analyze", files={"file": ("e.mp4", b"")})
    req(c, "POST", "/v1/analyze", files={"file": ("t.mp4", b"plain text " * 50)})
    req(c, "POST", "/v1/analyze", content=b"--x\r\nbroken", headers={
        "content-type": "multipart/form-data; boundary=x", **key})
    req(c, "POST", "/v1/analyze", content=b"raw", headers={"content-type": "video/mp4", **key})
    req(c, "POST", "/v1/analyze", files={"file": ("b.jpg", big.read_bytes())})
    req(c, "POST", "/v1/analyze", files=files, data={"max_frames": "0"})
    req(dead.client, "POST", "/v1/analyze", files=files, headers=key)
    req(c, "DELETE", "/v1/guard/keys/" + "a" * 12)
    req(c, "DELETE", f"/v1/analyses/{JOB}", headers=reader)
    req(c, "DELETE", f"/v1/analyses/{job}")
    req(c, "DELETE", f"/v1/analyses/{job}")
    c.close()

    seen = {code for *_, code in tried}
    assert seen >= {200, 202, 204, 400, 401, 403, 404, 413, 415, 422, 503}, sorted(seen)
    for method, url, code in tried:
        template, op = _operation(spec, method, url)
        assert str(code) in op["responses"], f"{method} {url} answered {code}: not declared " \
            f"for {template} ({sorted(op['responses'])})"

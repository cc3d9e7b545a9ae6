"""Admission control over real HTTP: backpressure, upload cap while streaming, bad input,
readiness."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from app.config import Settings
from app.redis_conn import client_from_url
from app.worker.main import Worker
from tests.service.live import IMAGE, LiveApi, make_settings, submit

PROBLEM = "application/problem+json"


def _problem(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body = resp.json()
    assert body["code"] == code and body["status"] == status and body["detail"]
    assert body["request_id"] == resp.headers["x-request-id"]
    return body


def test_queue_full_answers_503_with_retry_after(
    settings: Settings, redis_client: redis.Redis, api_factory: Callable[..., LiveApi]
) -> None:
    small = settings.model_copy(update={"queue_max": 1, "queue_retry_after_s": 7})
    api = api_factory(small, redis_client)  # no worker: nothing drains the queue
    assert submit(api.client, IMAGE).status_code == 202
    resp = submit(api.client, IMAGE)
    _problem(resp, 503, "queue_full")
    assert resp.headers["retry-after"] == "7"
    media = list((small.data_dir / "media").iterdir())
    assert len(media) == 1  # the refused upload was never spooled


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_oversized_upload_is_refused_while_streaming(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi],
) -> None:
    """A chunked body far over the cap gets its 413 before the client has finished sending."""
    s = make_settings(tmp_path / "data", redis_server.url, max_upload_mb=0.25)
    api = api_factory(s, redis_client)
    cap = int(0.25 * 1024 * 1024)
    total_planned = 40 * cap  # 10 MB the client would send
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        sock.sendall(
            b"POST /v1/analyze HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=BND\r\n\r\n"
            + _chunk(b'--BND\r\nContent-Disposition: form-data; name="file"; '
                     b'filename="big.mp4"\r\nContent-Type: video/mp4\r\n\r\n')
        )
        sock.settimeout(0.05)
        block = b"\0" * 65536
        while sent < total_planned and not answer:
            sock.sendall(_chunk(block))
            sent += len(block)
            with contextlib.suppress(TimeoutError):
                answer = sock.recv(65536)
        sock.settimeout(5)
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"file_too_large"' in answer and b"x-request-id" in answer.lower()
    assert sent < total_planned / 4, f"server read {sent} bytes before refusing"
    media = s.data_dir / "media"
    assert not media.exists() or not any(media.iterdir())  # partial spool removed


def test_content_length_over_cap_is_refused_before_reading(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi],
) -> None:
    s = make_settings(tmp_path / "data", redis_server.url, max_upload_mb=1)
    api = api_factory(s, redis_client)
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/analyze HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000000\r\n"
                     b"Content-Type: multipart/form-data; boundary=B\r\n\r\n")
        answer = sock.recv(65536)  # no body byte was sent
    assert answer.startswith(b"HTTP/1.1 413") and b"file_too_large" in answer


def test_bad_inputs_are_problems(service: LiveApi, tmp_path: Path) -> None:
    c = service.client
    text = tmp_path / "notes.txt"
    text.write_text("this is not a video\n" * 50)
    _problem(submit(c, text), 415, "unsupported_media")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _problem(submit(c, empty), 400, "empty_file")
    no_file = c.post("/v1/analyze", files={"max_frames": (None, "2")})  # multipart, no file
    assert "file" in _problem(no_file, 422, "validation_error")["detail"]
    _problem(c.post("/v1/analyze", content=b"raw", headers={"content-type": "video/mp4"}),
             415, "unsupported_content_type")
    _problem(submit(c, IMAGE, max_frames=0), 422, "validation_error")
    _problem(submit(c, IMAGE, max_frames=100_000), 422, "too_many_frames")
    _problem(submit(c, IMAGE, xai_method="magic"), 422, "validation_error")
    _problem(submit(c, IMAGE, callback_url="not a url"), 422, "validation_error")
    _problem(c.get("/v1/analyses/not-an-id"), 404, "not_found")
    media = service.server.config.app.state.settings.data_dir / "media"
    assert not media.exists() or not any(media.iterdir())  # nothing left behind


def test_readyz_waits_for_a_worker_heartbeat(
    settings: Settings, redis_client: redis.Redis, api_factory: Callable[..., LiveApi],
    worker_factory: Callable[..., Worker],
) -> None:
    api = api_factory(settings, redis_client)
    assert api.client.get("/healthz").json() == {"status": "ok"}
    before = api.client.get("/readyz")
    assert before.status_code == 503
    checks = before.json()["checks"]
    assert checks["redis"] == "ok" and checks["worker"] != "ok"

    worker = worker_factory(settings, redis_client)
    deadline = time.monotonic() + 10
    while (after := api.client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, after.json()
        time.sleep(0.05)
    assert after.json() == {"status": "ready", "checks": {"redis": "ok", "worker": "ok"}}

    worker.stop(timeout=10)  # a clean stop takes its heartbeat away at once
    assert api.client.get("/readyz").status_code == 503


def test_readyz_in_serve_mode_also_checks_models(
    settings: Settings, redis_client: redis.Redis, api_factory: Callable[..., LiveApi],
    worker_factory: Callable[..., Worker],
) -> None:
    worker = worker_factory(settings, redis_client)
    api = api_factory(settings, redis_client, worker)
    deadline = time.monotonic() + 10
    while (resp := api.client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, resp.json()
        time.sleep(0.05)
    assert resp.json()["checks"] == {"redis": "ok", "worker": "ok", "models": "ok"}


def test_redis_down_gives_503_problems_and_readyz_says_why(
    settings: Settings, api_factory: Callable[..., LiveApi], tmp_path: Path
) -> None:
    dead = client_from_url(f"unix://{tmp_path / 'nobody.sock'}")
    api = api_factory(settings, dead)
    assert api.client.get("/healthz").status_code == 200  # alive, just not ready
    ready = api.client.get("/readyz")
    assert ready.status_code == 503 and "unreachable" in ready.json()["checks"]["redis"]
    body = _problem(api.client.get("/v1/analyses/" + "a" * 32), 503, "unavailable")
    assert "nobody.sock" not in body["detail"]  # no internals
    assert api.client.get("/metrics").status_code == 200  # scrapes still answer


def test_unexpected_error_is_a_500_problem_without_internals(
    settings: Settings, redis_client: redis.Redis, api_factory: Callable[..., LiveApi]
) -> None:
    api = api_factory(settings, redis_client)
    app = api.server.config.app

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internal state")

    resp = api.client.get("/boom", headers={"X-Request-ID": "trace-me"})
    body = _problem(resp, 500, "internal_error")
    assert resp.headers["x-request-id"] == "trace-me" == body["request_id"]
    assert "secret" not in resp.text and "Traceback" not in resp.text

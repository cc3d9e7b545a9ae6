"""Completion webhooks over the real service: a receiver on loopback gets the signed summary."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from app.config import Settings
from app.queue.streams import JobQueue
from app.store.results import JobRecord, ResultStore, new_job_id
from app.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, verify
from app.worker.main import Worker
from tests.service.live import IMAGE, LiveApi, submit, wait_for

SECRET = "webhook-test-secret-0123456789"


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 answering the planned statuses (then 200) and recording."""

    plan: list[int] = field(default_factory=list)
    got: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/dfshield?x=1"

    def answered(self, status: int, n: int = 1, timeout: float = 30.0) -> list[bytes]:
        """Bodies of the deliveries answered ``status`` once there are ``n`` of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            bodies = [body for code, _, body in self.got if code == status]
            if len(bodies) >= n:
                return bodies
            time.sleep(0.05)
        raise AssertionError(f"no {n} deliveries answered {status}: {self.got}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = rec.plan.pop(0) if rec.plan else 200
            rec.got.append((status, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    rec.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=rec.server.serve_forever, daemon=True)
    thread.start()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_private": True, "webhook_secret": SECRET,
                                       "max_attempts": 1})


def _until(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_done_analysis_posts_signed_summary_with_retry(
    hook_settings: Settings, redis_client: redis.Redis, receiver: Receiver,
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
) -> None:
    live = api_factory(hook_settings, redis_client, worker_factory(hook_settings, redis_client))
    receiver.plan = [503]  # the first attempt fails: the worker retries with backoff
    resp = submit(live.client, IMAGE, callback_url=receiver.url)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    done = wait_for(live.client, job_id)
    assert done["callback_url"] == receiver.url

    body = receiver.answered(200)[0]
    (_, first, _), (_, second, raw) = receiver.got[:2]
    assert raw == body
    assert verify(body, second[SIGNATURE_HEADER.lower()], SECRET)  # what receivers run
    assert not verify(body, second[SIGNATURE_HEADER.lower()], "another-secret-0123456789")
    assert not verify(body + b" ", second[SIGNATURE_HEADER.lower()], SECRET)
    assert second[EVENT_HEADER.lower()] == "analysis.completed"
    assert second["content-type"] == "application/json"
    assert first[DELIVERY_HEADER.lower()] == second[DELIVERY_HEADER.lower()]  # same on retry

    payload = json.loads(body)
    assert payload["id"] == job_id and payload["status"] == "done"
    assert payload["summary"] == done["summary"]  # verdict plus frame and face counts
    assert payload["thresholds"] == done["thresholds"]
    assert [m["sha256"] for m in payload["models"]] == [m["sha256"] for m in done["models"]]
    assert payload["links"]["analysis"] == f"/v1/analyses/{job_id}"
    assert payload["links"]["ui"] == f"/ui/analyses/{job_id}"
    assert "error" not in payload

    store = ResultStore(redis_client, hook_settings.result_ttl_s, hook_settings.data_dir)
    _until(lambda: store.get(job_id).webhook_status == "delivered")
    job = store.get(job_id)
    assert (job.webhook_attempts, job.webhook_http_status, job.webhook_error) == (2, 200, None)
    state = live.client.get(f"/v1/analyses/{job_id}").json()["webhook"]  # clients see it too
    assert state == {"status": "delivered", "attempts": 2, "http_status": 200, "error": None}


def test_failed_analysis_posts_its_error(
    hook_settings: Settings, redis_client: redis.Redis, receiver: Receiver,
    worker_factory: Callable[..., Worker], tmp_path: Path,
) -> None:
    store = ResultStore(redis_client, hook_settings.result_ttl_s, hook_settings.data_dir)
    job = JobRecord(id=new_job_id(), xai_method="saliency", callback_url=receiver.url,
                    media_path=str(tmp_path / "vanished.mp4"))  # gone before the worker ran
    store.create(job)
    JobQueue(redis_client).enqueue(job.id)
    worker_factory(hook_settings, redis_client)
    payload = json.loads(receiver.answered(200)[0])
    assert payload["id"] == job.id and payload["status"] == "failed"
    assert payload["error"]["code"] == "processing_error"
    assert "FileNotFoundError" in payload["error"]["message"]
    assert "summary" not in payload
    _until(lambda: store.get(job.id).webhook_status == "delivered")


def test_receiver_refusing_is_recorded_without_endless_retries(
    hook_settings: Settings, redis_client: redis.Redis, receiver: Receiver,
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
) -> None:
    live = api_factory(hook_settings, redis_client, worker_factory(hook_settings, redis_client))
    receiver.plan = [410]  # a 4xx other than 429: the receiver does not want it; no retry
    job_id = submit(live.client, IMAGE, callback_url=receiver.url).json()["id"]
    wait_for(live.client, job_id)
    store = ResultStore(redis_client, hook_settings.result_ttl_s, hook_settings.data_dir)
    _until(lambda: store.get(job_id).webhook_status == "failed")
    job = store.get(job_id)
    assert (job.webhook_attempts, job.webhook_http_status) == (1, 410)
    assert "410" in job.webhook_error and len(receiver.got) == 1


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://localhost/hook",
                                 "http://[::1]:8080/x", "http://169.254.169.254/latest"])
def test_private_callback_rejected_at_submit(
    settings: Settings, redis_client: redis.Redis, api_factory: Callable[..., LiveApi], url: str
) -> None:
    assert not settings.webhook_allow_private  # the default
    live = api_factory(settings, redis_client)
    resp = submit(live.client, IMAGE, callback_url=url)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["code"] == "callback_url_rejected" and "DFSHIELD_WEBHOOK_ALLOW_PRIVATE" in \
        body["detail"]
    assert JobQueue(redis_client).depth() == 0  # nothing enqueued
    media = settings.data_dir / "media"
    assert not media.exists() or not any(media.iterdir())  # the spooled upload was removed


def test_callback_url_must_be_http(
    settings: Settings, redis_client: redis.Redis, api_factory: Callable[..., LiveApi]
) -> None:
    live = api_factory(settings, redis_client)
    resp = submit(live.client, IMAGE, callback_url="file:///etc/passwd")
    assert resp.status_code == 422 and resp.json()["code"] == "validation_error"

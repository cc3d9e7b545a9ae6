"""Locust load test of a running dfshield service: upload, poll the Location until done.

    uv run locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 \
        --headless -u 8 -r 2 -t 2m --max-frames 8

Each user uploads one file (default: a 2 s clip with one face per frame, generated at start
from tests/data with OpenCV), polls ``GET /v1/analyses/{id}`` until ``done``/``failed`` and
records the end-to-end latency as a custom request, type ``E2E``, name ``analysis``
(its "size" column is the number of frames analysed). Backpressure answers (503 queue_full,
429 rate limited) count as failures of the POST, and the user waits ``Retry-After``.
Only ever point it at a service you run yourself on this machine or your own test hosts.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

_media_lock = threading.Lock()
_media: dict[str, Path] = {}
TERMINAL = ("done", "failed")


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("dfshield")
    group.add_argument("--media", default="", env_var="DFSHIELD_LOAD_MEDIA",
                       help="file to upload (default: a generated 2 s clip)")
    group.add_argument("--max-frames", type=int, default=8, env_var="DFSHIELD_LOAD_MAX_FRAMES",
                       help="frames sampled per video (form field max_frames)")
    group.add_argument("--xai-method", default="", env_var="DFSHIELD_LOAD_XAI_METHOD",
                       help="form field xai_method (default: the service's)")
    group.add_argument("--api-key", default="", env_var="DFSHIELD_LOAD_API_KEY",
                       help="sent as 'Authorization: Bearer <key>' (needs submit+read)")
    group.add_argument("--poll-interval", type=float, default=0.2,
                       env_var="DFSHIELD_LOAD_POLL_S", help="seconds between status polls")
    group.add_argument("--analysis-timeout", type=float, default=300.0,
                       env_var="DFSHIELD_LOAD_TIMEOUT_S",
                       help="give up on an analysis after this many seconds")


def _media_file(option: str) -> Path:
    """The upload, generated once per process (master and each worker alike)."""
    if option:
        return Path(option)
    with _media_lock:
        if "path" not in _media:
            from app.bench.media import make_sample_media

            tmp = Path(tempfile.mkdtemp(prefix="dfshield-locust-"))
            _media["tmp"] = tmp
            _media["path"] = make_sample_media(tmp, seconds=2.0)
        return _media["path"]


@events.quitting.add_listener
def _cleanup(**_: Any) -> None:
    if "tmp" in _media:
        shutil.rmtree(_media["tmp"], ignore_errors=True)


class AnalyzeUser(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.media = _media_file(opts.media if opts else "")
        self.form = {"max_frames": str(opts.max_frames if opts else 8)}
        if opts and opts.xai_method:
            self.form["xai_method"] = opts.xai_method
        self.headers = {"Authorization": f"Bearer {opts.api_key}"} if opts and opts.api_key else {}
        self.poll_s = opts.poll_interval if opts else 0.2
        self.timeout_s = opts.analysis_timeout if opts else 300.0

    @task
    def analyze(self) -> None:
        t0 = time.perf_counter()
        location = self._submit()
        if location is None:
            return
        body, error = self._poll(location, t0)
        frames = int(((body or {}).get("progress") or {}).get("frames_done") or 0)
        self.environment.events.request.fire(
            request_type="E2E", name="analysis", response_time=(time.perf_counter() - t0) * 1000,
            response_length=frames, exception=error, context={}, response=None, url=location,
        )

    def _submit(self) -> str | None:
        with self.media.open("rb") as fh, self.client.post(
            "/v1/analyze", files={"file": (self.media.name, fh)}, data=self.form,
            headers=self.headers, name="POST /v1/analyze", catch_response=True,
        ) as resp:
            if resp.status_code in (429, 503):
                resp.failure(f"{resp.status_code} backpressure")
                time.sleep(float(resp.headers.get("Retry-After", "1")))
                return None
            if resp.status_code not in (200, 202) or "Location" not in resp.headers:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
                return None
            return resp.headers["Location"]

    def _poll(self, location: str, t0: float) -> tuple[dict[str, Any] | None, Exception | None]:
        while True:
            resp = self.client.get(location, headers=self.headers, name="GET /v1/analyses/{id}")
            if resp.status_code != 200:
                return None, RuntimeError(f"status poll answered {resp.status_code}")
            body = resp.json()
            if body.get("status") == "done":
                return body, None
            if body.get("status") == "failed":
                code = (body.get("error") or {}).get("code", "failed")
                return body, RuntimeError(f"analysis failed: {code}")
            if time.perf_counter() - t0 > self.timeout_s:
                return body, TimeoutError(f"not done after {self.timeout_s:.0f} s")
            time.sleep(self.poll_s)

"""Helpers for live-service tests: settings, a uvicorn thread, polling, worker processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import uvicorn

from app.api.main import create_app
from app.config import REPO_ROOT, Settings
from app.worker.main import Worker

DATA = REPO_ROOT / "tests" / "data"
VIDEO = DATA / "pexels_woman_3063838.mp4"  # one real face in every frame
IMAGE = DATA / "obama.jpg"


def make_settings(data_dir: Path, redis_url: str, **over: object) -> Settings:
    base: dict[str, object] = dict(
        data_dir=data_dir, redis_url=redis_url, device="cpu", max_frames=4,
        worker_concurrency=2, worker_frame_chunk=2, max_wait_ms=10, heartbeat_ttl_s=3,
        visibility_timeout_s=2, log_json=True,
    )
    base.update(over)
    return Settings(_env_file=None, **base)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveApi:
    """The real API served by uvicorn in a background thread."""

    server: uvicorn.Server
    thread: threading.Thread
    port: int
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


def start_api(settings: Settings, r: redis.Redis, worker: Worker | None = None) -> LiveApi:
    port = free_port()
    app = create_app(settings, r, local_worker=worker)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                            access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return LiveApi(server, thread, port)


def wait_for(client: httpx.Client, job_id: str, timeout: float = 60.0) -> dict:
    """Poll until the analysis is done or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/analyses/{job_id}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"analysis {job_id} did not finish in {timeout} s: {body}")


def submit(client: httpx.Client, path: Path, **form: object) -> httpx.Response:
    with path.open("rb") as fh:
        return client.post("/v1/analyze", files={"file": (path.name, fh)},
                           data={k: str(v) for k, v in form.items()})


def spawn_worker(settings: Settings, log_path: Path, **env_over: str) -> subprocess.Popen[bytes]:
    """A real worker process (``python -m app.worker.main``) against the test's Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFSHIELD_")}
    env.update({
        "DFSHIELD_REDIS_URL": str(settings.redis_url),
        "DFSHIELD_DATA_DIR": str(settings.data_dir),
        "DFSHIELD_DEVICE": "cpu",
        "DFSHIELD_TORCH_THREADS": "1",
        "DFSHIELD_VISIBILITY_TIMEOUT_S": str(settings.visibility_timeout_s),
        "DFSHIELD_HEARTBEAT_TTL_S": str(settings.heartbeat_ttl_s),
        "DFSHIELD_WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "DFSHIELD_WORKER_FRAME_CHUNK": str(settings.worker_frame_chunk),
        "DFSHIELD_MAX_FRAMES": str(settings.max_frames),
        **env_over,
    })
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "app.worker.main"], cwd=REPO_ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)

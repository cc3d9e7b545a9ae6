"""The process launchers: ``run_serve`` all in one (embedded Redis), and the shared-Redis
requirement of ``run_api`` / ``run_worker``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from app.config import REPO_ROOT, Settings
from app.models.store import load_manifest
from app.service import run_api, run_worker
from tests.service.live import IMAGE, free_port, submit

SERVE = "from app.config import get_settings; from app.service import run_serve; " \
        "run_serve(get_settings())"


def test_serve_runs_embedded_redis_worker_and_api_then_stops_cleanly(tmp_path: Path) -> None:
    data = Path(tempfile.mkdtemp(prefix="dfs-serve-"))  # short: the redis socket lives here
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFSHIELD_")}
    env.update(DFSHIELD_DATA_DIR=str(data), DFSHIELD_PORT=str(port), DFSHIELD_DEVICE="cpu",
               DFSHIELD_MAX_FRAMES="2", DFSHIELD_HEARTBEAT_TTL_S="3")
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", SERVE], cwd=REPO_ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "serve never became ready"
                time.sleep(0.2)
            assert (data / "redis" / "redis.sock").exists()  # embedded, on a unix socket
            resp = submit(c, IMAGE, wait=60)
            assert resp.status_code == 200 and resp.json()["status"] == "done", resp.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # JSON logs: one object a line
    by_msg = {rec["msg"]: rec for rec in lines}
    assert by_msg["dfshield serve starting"]["redis"].startswith("embedded")
    # The banner names the served models and flags untrained ones, as the manifest says.
    manifest = load_manifest(REPO_ROOT / "models")
    banner = by_msg["worker ready"]["models"]
    for role in ("detector", "adversarial"):
        entry = manifest.get(getattr(manifest.default, role))
        shown = f"{entry.name}@{entry.version}" + ("" if entry.trained else " (UNTRAINED)")
        assert shown in banner
    assert by_msg["request"]["request_id"] and by_msg["request"]["path"] == "/v1/analyze"
    assert by_msg["job done"]["job_id"] == by_msg["analysis accepted"]["job_id"]
    assert not (data / "redis" / "redis.sock").exists()  # embedded Redis stopped with it
    shutil.rmtree(data, ignore_errors=True)


@pytest.mark.parametrize("launcher", [run_api, run_worker])
def test_api_and_worker_need_a_shared_redis(launcher, tmp_path: Path) -> None:
    s = Settings(_env_file=None, redis_url=None, data_dir=tmp_path, log_json=False)
    with pytest.raises(RuntimeError, match="DFSHIELD_REDIS_URL"):
        launcher(s)

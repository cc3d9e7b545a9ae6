"""A worker whose models fail to load: /readyz answers 503 naming it and why; no job is taken."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from app.config import REPO_ROOT
from app.models.store import ModelStoreError
from app.store.results import ResultStore
from app.worker.main import Worker
from tests.service.live import IMAGE, LiveApi, make_settings, submit


def _tampered_models(dest: Path) -> str:
    """models/ with the detector's weights altered by one byte (links for everything else)."""
    src = REPO_ROOT / "models"
    dest.mkdir()
    manifest = json.loads((src / "manifest.json").read_text())
    bad = next(m for m in manifest["models"] if m["role"] == "detector")["file"]
    for f in src.iterdir():
        if f.name == bad:
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0xFF
            (dest / f.name).write_bytes(bytes(data))
        else:
            (dest / f.name).symlink_to(f)
    return bad


def test_worker_with_broken_models_is_not_ready_and_takes_no_job(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi],
) -> None:
    s = make_settings(tmp_path / "data", redis_server.url)
    api = api_factory(s, redis_client)
    queued = submit(api.client, IMAGE)  # waiting before the worker exists
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["id"]
    bad = _tampered_models(tmp_path / "models")
    broken = s.model_copy(update={"models_dir": tmp_path / "models"})
    worker = Worker(broken, redis_client, name="gpu-box-7")  # loads its own models
    with pytest.raises(ModelStoreError, match="sha256 mismatch"):
        worker.start()  # what `dfshield worker` runs first; the process then exits non-zero
    assert not worker.models_loaded

    ready = api.client.get("/readyz")
    assert ready.status_code == 503
    worker_check = ready.json()["checks"]["worker"]
    assert "worker gpu-box-7 failed to start" in worker_check and bad in worker_check, worker_check
    assert "sha256 mismatch" in worker_check
    time.sleep(0.5)
    job = ResultStore(redis_client, s.result_ttl_s, s.data_dir).get(job_id)
    assert job is not None and job.status == "queued" and job.attempts == 0
    assert redis_client.xpending("dfshield:jobs", "dfshield-workers")["pending"] == 0
    assert api.client.get(f"/v1/analyses/{job_id}").json()["status"] == "queued"

"""API contract fuzzing: schemathesis, every check, against the live service with auth on.

The real API (uvicorn on loopback) with a real worker and Redis; schemathesis's CLI runs in a
subprocess with an admin key, every check, a fixed seed and a bounded number of examples, through
its coverage, fuzzing and stateful phases (the stateful phase follows the OpenAPI links from
``analyze`` to the analysis, its frames, face images and ``DELETE``). Zero failures are asserted.

One check is excluded, for media uploads only: ``positive_data_acceptance`` on ``POST
/v1/analyze`` (and any other operation taking a binary file in a multipart body).
A schema-valid upload is almost never a valid *submission*: the ``file`` is random bytes
(415 ``unsupported_media``) and a generated ``callback_url`` names a host that does not resolve
(422 ``callback_url_rejected``); no JSON Schema can say "decodable media" or "resolvable host".
Every other operation keeps it, and uploads keep every other check (negative data must
still be rejected, no 5xx, every status and header as documented).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis
from prometheus_client import REGISTRY

from app.config import REPO_ROOT
from app.store.results import ResultStore
from app.worker.main import Worker
from tests.service.live import IMAGE, LiveApi, make_settings

ADMIN = "fuzz-admin-" + "f" * 24
SEED = 14
MAX_EXAMPLES = 25
CONFIG = """\
hooks = "tests.service.schemathesis_hooks"

[checks]
enabled = true

[phases.stateful]
max-steps = 10
"""
# Schema-valid bytes are not decodable media: see the module docstring.
MEDIA_UPLOAD = """
[[operations]]
include-operation-id = "{op_id}"
checks.positive_data_acceptance.enabled = false
"""
CROP = "/v1/analyses/{job_id}/frames/{frame}/faces/{face}/crop.png"
REACHED = ("/v1/analyses/{job_id}", "/v1/analyses/{job_id}/frames", CROP)


def _served(route: str, status: str | None = None) -> float:
    """Requests the API answered on ``GET route`` so far (this process's metrics)."""
    total = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            labels = sample.labels
            if (sample.name == "dfshield_http_requests_total" and labels.get("route") == route
                    and labels.get("method") == "GET"
                    and (status is None or labels.get("status") == status)):
                total += sample.value
    return total


def media_uploads(spec: dict) -> list[str]:
    """Operations taking a binary file in a multipart body (``analyze``, and any like it)."""
    out = []
    for item in spec["paths"].values():
        for op in item.values():
            media = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if media is None:
                continue
            schema = media["schema"]
            if "$ref" in schema:
                schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
            if any(p.get("format") == "binary" for p in schema.get("properties", {}).values()):
                out.append(op["operationId"])
    return out


def _run_schemathesis(url: str, work: Path, config: str,
                      *args: str) -> tuple[dict, str, float]:
    """The CLI's JSON report, its console output and its wall time."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "schemathesis.toml").write_text(config)
    report = work / "report.json"
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file",
           str(work / "schemathesis.toml"), "run", f"{url}/openapi.json", "--seed", str(SEED),
           "--workers", "1", "--generation-database", "none", "--no-color",
           "--report", "json", "--report-json-path", str(report), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # the hooks module lives in tests/
    t0 = time.monotonic()
    # cwd: schemathesis keeps a crash cache in ./.schemathesis; not in the repository.
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert report.exists(), out[-4000:]
    return json.loads(report.read_text()), out, seconds


def _assert_clean(rep: dict, out: str) -> None:
    cases = rep["test_cases"]
    assert rep["failures"] == [] and cases["with_failures"] == 0, out[-8000:]
    assert rep["errors"] == [] and cases["errored"] == 0, out[-8000:]
    assert rep["exit_code"] == 0 and rep["complete"], out[-4000:]
    assert rep["operations"]["tested"] == rep["operations"]["selected"]
    assert {p: v["status"] for p, v in rep["phases"].items() if p != "examples"} == {
        "coverage": "success", "fuzzing": "success", "stateful": "success"}


def test_schemathesis_all_checks_zero_failures(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
) -> None:
    s = make_settings(tmp_path / "data", redis_server.url, api_keys=f"{ADMIN}:admin",
                      rate_limit_per_min=0, sync_wait_max_s=1.0)
    live = api_factory(s, redis_client, worker_factory(s, redis_client))
    before = {route: _served(route) for route in REACHED}
    crops_before, before_ok = _served(CROP, "200"), _served("/v1/analyses/{job_id}", "200")

    uploads = media_uploads(live.client.get("/openapi.json").json())
    assert "analyze" in uploads
    config = CONFIG + "".join(MEDIA_UPLOAD.format(op_id=op) for op in uploads)
    rep, out, seconds = _run_schemathesis(
        live.url, tmp_path / "admin", config, "--header", f"Authorization: Bearer {ADMIN}",
        "--max-examples", str(MAX_EXAMPLES))

    cases = rep["test_cases"]
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", out)
    print(f"schemathesis {rep['schemathesis_version']}: {cases['generated']} cases, "
          f"{cases['with_failures']} with failures, {len(rep['errors'])} errors, "
          f"links {links.group(1) if links else '?'}/{links.group(2) if links else '?'} "
          f"covered, {seconds:.0f} s; crops served 200: {_served(CROP, '200') - crops_before:.0f}")
    _assert_clean(rep, out)
    assert rep["operations"]["total"] >= 12 and cases["generated"] >= 300, rep["operations"]
    # The stateful phase followed analyze's links to real analyses: the API served them.
    assert links is not None and int(links.group(1)) >= 5, out[-4000:]
    reached = {route: _served(route) - before[route] for route in REACHED}
    assert all(n > 0 for n in reached.values()), reached
    assert _served("/v1/analyses/{job_id}", "200") > before_ok
    # (Whether a crop answers 200 or 404 depends on the worker having finished by the time the
    # link is followed: printed above, not asserted.)


def test_a_worker_write_after_delete_leaves_no_500(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi],
) -> None:
    """What the stateful phase found (analyze -> delete -> get = 500): a worker that claims a
    job just as it is purged counts the attempt (``HINCRBY``) into a new, id-less hash."""
    s = make_settings(tmp_path / "data", redis_server.url, api_keys=f"{ADMIN}:admin",
                      rate_limit_per_min=0)
    live = api_factory(s, redis_client)
    c, auth = live.client, {"Authorization": f"Bearer {ADMIN}"}
    with IMAGE.open("rb") as fh:
        job = c.post("/v1/analyze", files={"file": (IMAGE.name, fh)}, headers=auth).json()["id"]
    assert c.delete(f"/v1/analyses/{job}", headers=auth).status_code == 204
    ResultStore(redis_client, s.result_ttl_s, s.data_dir).begin_attempt(job, "late-worker")
    for path in (f"/v1/analyses/{job}", f"/v1/analyses/{job}/frames"):
        gone = c.get(path, headers=auth)
        assert (gone.status_code, gone.json()["code"]) == (404, "not_found"), gone.text


def test_schemathesis_keys_do_not_see_each_others_analyses(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
) -> None:
    """``object_level_authorization`` needs several identities: two client keys as peers (one
    must never read what the other created) and an admin, a Web Fuzzing Commons auth file."""
    keys = {name: f"fuzz-{name}-" + name[0] * 24 for name in ("alice", "bob", "admin")}
    roles = {"alice": "submit+read", "bob": "submit+read", "admin": "admin"}
    s = make_settings(tmp_path / "data", redis_server.url, rate_limit_per_min=0,
                      sync_wait_max_s=1.0,
                      api_keys=",".join(f"{keys[n]}:{roles[n]}" for n in keys))
    live = api_factory(s, redis_client, worker_factory(s, redis_client))
    wfc = tmp_path / "auth.json"
    wfc.write_text(json.dumps({"auth": [
        {"name": n, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {k}"}]}
        for n, k in keys.items()]}))
    uploads = media_uploads(live.client.get("/openapi.json").json())
    config = (CONFIG + f'\n[auth.wfc]\npath = "{wfc}"\npeers = ["alice", "bob"]\n'
              + "".join(MEDIA_UPLOAD.format(op_id=op) for op in uploads))
    rep, out, seconds = _run_schemathesis(
        live.url, tmp_path / "peers", config, "--include-tag", "analyses",
        "--max-examples", "15")
    cases = rep["test_cases"]
    print(f"schemathesis, peers alice/bob: {cases['generated']} cases, "
          f"{cases['with_failures']} with failures, {seconds:.0f} s")
    _assert_clean(rep, out)
    assert cases["generated"] >= 100, cases

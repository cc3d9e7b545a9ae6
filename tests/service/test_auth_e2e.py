"""API keys, ownership and per-key rate limits over the real service (uvicorn + Redis + worker)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.api.auth import hash_key, key_id_of
from app.config import Settings
from app.store.results import ResultStore
from app.worker.main import Worker
from tests.service.live import IMAGE, LiveApi, make_settings, submit, wait_for

SUBMIT, READ, BOTH, OTHER, ADMIN = (f"test-key-{n}-{'x' * 16}" for n in
                                    ("submit", "read", "both", "other", "admin"))
SPEC = (f"{SUBMIT}:submit,{hash_key(READ)}:read,{BOTH}:submit+read,"
        f"{hash_key(OTHER)}:submit+read,{hash_key(ADMIN)}:admin")
PROBLEM = "application/problem+json"
NO_JOB = "/v1/analyses/" + "0" * 32


def keyed(data_dir: Path, redis_url: str, **over: object) -> Settings:
    return make_settings(data_dir, redis_url, api_keys=SPEC, **over)


@pytest.fixture
def clients(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi], worker_factory: Callable[..., Worker],
) -> Iterator[dict[str, httpx.Client]]:
    s = keyed(tmp_path / "data", redis_server.url, rate_limit_per_min=0)
    live = api_factory(s, redis_client, worker_factory(s, redis_client))
    out = {name: httpx.Client(base_url=live.url, timeout=30,
                              headers={"Authorization": f"Bearer {key}"} if key else {})
           for name, key in (("none", None), ("submit", SUBMIT), ("read", READ),
                             ("both", BOTH), ("other", OTHER), ("admin", ADMIN))}
    yield out
    for c in out.values():
        c.close()


def _post(c: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    return c.post("/v1/analyze", headers=headers, files={"file": ("x.jpg", IMAGE.read_bytes())})


def _problem(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    assert resp.json()["code"] == code


def test_auth_matrix_over_the_real_service(
    clients: dict[str, httpx.Client], redis_client: redis.Redis, tmp_path: Path
) -> None:
    c = clients
    # No key, or an unknown one: 401 with the Bearer challenge, before anything else happens.
    for resp in (submit(c["none"], IMAGE), c["none"].get(NO_JOB),
                 c["none"].get(NO_JOB, headers={"Authorization": "Bearer nope"}),
                 c["none"].get(NO_JOB, headers={"X-API-Key": "nope"})):
        _problem(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"] == "Bearer"
    _problem(submit(c["read"], IMAGE), 403, "forbidden")  # read-only key cannot submit

    mine = submit(c["both"], IMAGE)
    assert mine.status_code == 202, mine.text
    job_id = mine.json()["id"]
    store = ResultStore(redis_client, 86_400, tmp_path)
    assert store.get(job_id).owner == key_id_of(hash_key(BOTH))  # owner = key id, never the key
    # X-API-Key works as well as Bearer.
    theirs = _post(c["none"], {"X-API-Key": SUBMIT})
    assert theirs.status_code == 202, theirs.text
    submit_only_id = theirs.json()["id"]

    done = wait_for(c["both"], job_id)  # submit+read reads its own analysis
    assert done["status"] == "done"
    frames = c["both"].get(f"/v1/analyses/{job_id}/frames").json()["items"]
    crop_url = frames[0]["faces"][0]["crop_url"]
    assert c["both"].get(crop_url).status_code == 200

    # A submit-only key may not read results back, not even its own: 403 (role), not 404.
    _problem(c["submit"].get(f"/v1/analyses/{submit_only_id}"), 403, "forbidden")
    # Other keys (read role or not) see someone else's analysis as absent.
    for name in ("other", "read"):
        for path in ("", "/frames", crop_url.removeprefix(f"/v1/analyses/{job_id}")):
            _problem(c[name].get(f"/v1/analyses/{job_id}{path}"), 404, "not_found")
        _problem(c[name].delete(f"/v1/analyses/{job_id}"), 404, "not_found")
    # Admin reads everything, then deletes; the owner then finds it gone.
    assert c["admin"].get(f"/v1/analyses/{job_id}").json()["status"] == "done"
    assert c["admin"].get(crop_url).headers["content-type"] == "image/png"
    assert c["admin"].delete(f"/v1/analyses/{job_id}").status_code == 204
    _problem(c["both"].get(f"/v1/analyses/{job_id}"), 404, "not_found")
    # The submitting key may purge its own analysis even without the read role.
    wait_for(c["admin"], submit_only_id)
    assert c["submit"].delete(f"/v1/analyses/{submit_only_id}").status_code == 204
    assert c["admin"].get(f"/v1/analyses/{submit_only_id}").status_code == 404


def test_probes_metrics_and_docs_stay_open(clients: dict[str, httpx.Client]) -> None:
    c = clients["none"]
    for path in ("/healthz", "/readyz", "/metrics", "/docs"):
        assert c.get(path).status_code == 200, path
    spec = c.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {"type": "http", "scheme": "bearer",
                                     "description": schemes["HTTPBearer"]["description"]}
    assert schemes["APIKeyHeader"]["name"] == "X-API-Key"
    assert {"HTTPBearer": []} in spec["paths"]["/v1/analyze"]["post"]["security"]


def test_rate_limit_per_key_with_retry_after(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi],
) -> None:
    live = api_factory(keyed(tmp_path / "d", redis_server.url, rate_limit_per_min=3),
                       redis_client)
    a = {"Authorization": f"Bearer {BOTH}"}
    first = live.client.get(NO_JOB, headers=a)
    assert first.status_code == 404  # counted, and says how much is left
    assert (first.headers["x-ratelimit-limit"], first.headers["x-ratelimit-remaining"]) == (
        "3", "2")
    for _ in range(2):
        assert live.client.get(NO_JOB, headers=a).status_code == 404
    for resp in (live.client.get(NO_JOB, headers=a), _post(live.client, a)):
        _problem(resp, 429, "rate_limited")
        assert 1 <= int(resp.headers["retry-after"]) <= 20  # one request every 60/3 s
        assert "retry in" in resp.json()["detail"]
    # Per key: another key is not affected; probes are never limited.
    assert live.client.get(NO_JOB, headers={"X-API-Key": OTHER}).status_code == 404
    assert live.client.get("/healthz").status_code == 200
    # The bucket lives in Redis (shared by every API replica).
    assert redis_client.exists(f"dfshield:ratelimit:{key_id_of(hash_key(BOTH))}")


def test_open_mode_is_not_rate_limited(
    settings: Settings, redis_client: redis.Redis, api_factory: Callable[..., LiveApi]
) -> None:
    live = api_factory(settings.model_copy(update={"rate_limit_per_min": 1}), redis_client)
    codes = [live.client.get(NO_JOB).status_code for _ in range(4)]
    assert codes == [404] * 4  # limits are per key; open mode has none

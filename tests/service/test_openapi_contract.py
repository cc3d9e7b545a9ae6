"""The API contract: a 405 lists the real methods in ``Allow``; every status an operation
answers is declared for it in the OpenAPI document, errors as problem+json ``Problem``, both
as read from the handlers' code and as answered by the live API; operation ids, body and
response schemas and links are what generated clients and stateful fuzzers need."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from app.api.auth import hash_key
from app.api.errors import ApiError
from app.config import Settings
from app.guard.memory import GuardMemory
from app.media.errors import MediaError
from app.redis_conn import client_from_url
from app.worker.main import Worker
from tests.service.live import IMAGE, LiveApi, make_settings, submit, wait_for

KEY, READER = "contract-key-" + "c" * 20, "contract-read-" + "r" * 20
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")
JOB = "0" * 32
OPERATION_IDS = {
    ("post", "/v1/analyze"): "analyze",
    ("get", "/v1/analyses/{job_id}"): "get_analysis",
    ("delete", "/v1/analyses/{job_id}"): "delete_analysis",
    ("get", "/v1/analyses/{job_id}/frames"): "list_frames",
    ("get", "/v1/analyses/{job_id}/frames/{frame}/faces/{face}/crop.png"): "get_face_crop",
    ("get", "/v1/analyses/{job_id}/frames/{frame}/faces/{face}/explanation.png"):
        "get_face_explanation",
    ("get", "/v1/guard/keys"): "list_suspected_keys",
    ("get", "/v1/guard/keys/{key_id}"): "get_key_state",
    ("delete", "/v1/guard/keys/{key_id}"): "clear_key",
    ("get", "/healthz"): "healthz",
    ("get", "/readyz"): "readyz",
    ("get", "/metrics"): "metrics",
}


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
    empty = c.post("/v1/analyze", files=files, data={"callback_url": ""})  # "" is no URI
    assert (empty.status_code, empty.json()["code"]) == (422, "validation_error"), empty.text
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


# ---- the statuses the handlers' code raises, read from the code ----------------------------

def _status_of(node: ast.expr, scope: dict[str, Any]) -> int | None:
    """A literal status: ``404`` or ``status.HTTP_429_TOO_MANY_REQUESTS``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        value = getattr(scope.get(node.value.id), node.attr, None)
        return value if isinstance(value, int) else None
    return None


def _callee(node: ast.expr, scope: dict[str, Any]) -> object:
    if isinstance(node, ast.Name):
        return scope.get(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        base = scope.get(node.value.id)  # module functions: heartbeat.live_workers(...)
        return getattr(base, node.attr, None) if isinstance(base, types.ModuleType) else None
    return None


def _ours(obj: object) -> bool:
    return (getattr(obj, "__module__", "") or "").startswith("app.")


def _functions(obj: object) -> Iterator[Callable[..., Any]]:
    """A function itself; a class's methods (its body is what an instantiation runs)."""
    if isinstance(obj, type):
        yield from (f for f in vars(obj).values() if inspect.isfunction(f))
    elif inspect.isfunction(obj):
        yield obj


def raised_statuses(fn: Callable[..., Any], seen: set[int] | None = None) -> set[int]:
    """Every error status ``fn`` can raise: ``ApiError(N, …)``/``HTTPException(N)`` and media
    errors it creates, following the project's functions and classes it calls."""
    seen = set() if seen is None else seen
    if id(fn) in seen:
        return set()
    seen.add(id(fn))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError):
        return set()
    closure = inspect.getclosurevars(fn)
    scope = {**fn.__globals__, **closure.nonlocals}
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            callee = _callee(node.func, scope)
            if callee in (ApiError, HTTPException) or (
                    isinstance(callee, type) and issubclass(callee, HTTPException)):
                arg = node.args[0] if node.args else next(
                    (k.value for k in node.keywords if k.arg == "status_code"), None)
                if arg is not None and (status := _status_of(arg, scope)) is not None:
                    out.add(status)
        elif isinstance(node, (ast.Name, ast.Attribute)):  # called, or handed to a caller
            target = _callee(node, scope)  # (run_in_threadpool(_check_capacity, ...))
            if isinstance(target, type) and issubclass(target, MediaError):
                out.add(target.http_status)
            elif _ours(target) and target not in (ApiError,):
                for f in _functions(target):
                    out |= raised_statuses(f, seen)
    return out


def _route_statuses(route: APIRoute) -> set[int]:
    """What the endpoint and every dependency it declares (recursively) can raise."""
    calls, stack = [route.endpoint], list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if dep.call is not None:
            calls.append(dep.call)
        stack.extend(dep.dependencies)
    seen: set[int] = set()
    return set().union(*(raised_statuses(c, seen) for c in calls))


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, inside included routers too (FastAPI wraps those in its own route)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (inner := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(inner.routes)


def test_statuses_the_handlers_raise_are_all_declared(
    settings: Settings, redis_client: redis.Redis, api_factory: Callable[..., LiveApi],
) -> None:
    live = api_factory(settings, redis_client)
    spec = live.client.get("/openapi.json").json()
    found: dict[str, set[int]] = {}
    for route in _api_routes(live.server.config.app.router.routes):
        for method in route.methods:
            op = spec["paths"].get(route.path_format, {}).get(method.lower())
            if op is None:  # not in the document (the /ui pages)
                continue
            raised = _route_statuses(route)
            found[op["operationId"]] = raised
            missing = raised - {int(s) for s in op["responses"]}
            assert not missing, f"{method} {route.path_format} raises {sorted(missing)}: " \
                f"not declared ({sorted(op['responses'])})"
    documented = {op["operationId"] for item in spec["paths"].values() for op in item.values()}
    assert set(found) == documented  # every operation was read
    # The reading works: what these handlers and their dependencies are known to raise.
    assert found["analyze"] >= {400, 401, 403, 413, 415, 422, 429, 503, 507}, found["analyze"]
    assert found["get_face_crop"] >= {401, 403, 404, 429}, found["get_face_crop"]
    assert found["get_key_state"] >= {401, 403, 404}, found["get_key_state"]
    assert found["healthz"] == set()


# ---- what generated clients and stateful fuzzers read -------------------------------------

def test_operation_ids_schemas_and_links_serve_generated_clients(
    settings: Settings, redis_client: redis.Redis, api_factory: Callable[..., LiveApi],
) -> None:
    spec = api_factory(settings, redis_client).client.get("/openapi.json").json()
    ops = {(m, p): op for p, item in spec["paths"].items() for m, op in item.items()}
    ids = {k: op["operationId"] for k, op in ops.items()}
    assert {k: ids.get(k) for k in OPERATION_IDS} == OPERATION_IDS
    by_id = {op["operationId"]: op for op in ops.values()}
    assert len(by_id) == len(ops)  # unique
    for (method, path), op_id in ids.items():  # routes added later get clean names too
        assert re.fullmatch(r"[a-z][a-z0-9_]*", op_id) and "_v1_" not in op_id, (method, path)
        assert not op_id.endswith(f"_{method}"), (method, path, op_id)
    schemas = spec["components"]["schemas"]
    assert not [name for name in schemas if name.startswith("Body_")]  # no generated names
    body = ops["post", "/v1/analyze"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"] == {"$ref": "#/components/schemas/AnalysisCreate"}
    form = schemas["AnalysisCreate"]
    assert form["required"] == ["file"] and form["additionalProperties"] is False
    assert form["properties"]["file"] == {"type": "string", "format": "binary",
                                          "description": form["properties"]["file"]["description"]}
    assert form["properties"]["max_frames"]["maximum"] == settings.max_frames_cap
    for name in ("get_face_crop", "get_face_explanation"):
        assert by_id[name]["responses"]["200"]["content"] == {
            "image/png": {"schema": {"type": "string", "format": "binary"}}}
    assert "text/plain" in by_id["metrics"]["responses"]["200"]["content"]
    accepted = ops["post", "/v1/analyze"]["responses"]["202"]
    assert accepted["headers"]["Location"]["required"] is True
    for status in ("429", "503"):
        assert "Retry-After" in ops["post", "/v1/analyze"]["responses"][status]["headers"]
    links = accepted["links"]
    assert {link["operationId"] for link in links.values()} >= {
        "get_analysis", "list_frames", "get_face_crop", "get_face_explanation",
        "delete_analysis"}
    for status in ("200", "202"):
        for name, link in ops["post", "/v1/analyze"]["responses"][status]["links"].items():
            target = by_id[link["operationId"]]
            params = {p["name"] for p in target["parameters"] if p["in"] == "path"}
            assert set(link["parameters"]) == params, (name, link)
            assert link["parameters"]["job_id"] == "$response.body#/id"


def test_a_cleared_guard_key_is_gone(
    tmp_path: Path, redis_server, redis_client: redis.Redis,
    api_factory: Callable[..., LiveApi],
) -> None:
    """``DELETE /v1/guard/keys/{id}`` removes the record: a later GET is 404, like any resource
    (schemathesis's use-after-free check), and a key the guard never saw is 404 too."""
    admin = "contract-admin-" + "a" * 20
    s = make_settings(tmp_path / "data", redis_server.url, api_keys=f"{admin}:admin",
                      rate_limit_per_min=0)
    c = api_factory(s, redis_client).client
    auth = {"Authorization": f"Bearer {admin}"}
    key_id = "b" * 12
    guard = GuardMemory(redis_client, s.guard_ttl_s, s.guard_bucket_cap)
    guard.record_exact(key_id)  # what the worker writes for a byte-identical re-upload
    seen = c.get(f"/v1/guard/keys/{key_id}", headers=auth)
    assert seen.status_code == 200 and seen.json()["exact_repeats"] == 1, seen.text
    assert c.delete(f"/v1/guard/keys/{key_id}", headers=auth).status_code == 204
    gone = c.get(f"/v1/guard/keys/{key_id}", headers=auth)
    assert (gone.status_code, gone.json()["code"]) == (404, "not_found"), gone.text
    assert c.get("/v1/guard/keys/" + "c" * 12, headers=auth).status_code == 404
    bad = c.get("/v1/guard/keys/not-a-key", headers=auth)
    assert (bad.status_code, bad.json()["code"]) == (422, "validation_error")

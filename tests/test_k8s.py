"""Offline checks of the Kubernetes manifests (deploy/k8s: a kustomize base + two overlays).

No cluster is needed. Each overlay is rendered by a small kustomize resolver written here for
the subset of kustomize the manifests use (resources, namespace, images, JSON 6902 patches,
secretGenerator from env files without name hash); when `kubectl` is on PATH its
`kubectl kustomize` renders the same overlay and must give the same objects, so the resolver
is checked against the reference implementation wherever one exists. Every rendered object is
then validated:

- built-in kinds against the Kubernetes OpenAPI JSON schemas bundled in the
  `kubernetes-validate` package (dev dependency), in strict mode (unknown fields are errors),
  for the oldest and the newest Kubernetes minor the tests target;
- KEDA's ScaledObject and TriggerAuthentication against the openAPIV3Schema of KEDA's own CRDs,
  tests/data/keda/*.yaml (kedacore/keda v2.20.2, config/crd/bases/, Apache-2.0, copied
  unchanged; provenance in tests/data/ATTRIBUTION.md), converted to JSON Schema the way
  kubeconform's openapi2jsonschema does in strict mode (see _crd_json_schema).

Then the deployment's invariants are asserted: probes, GPU limits only in the GPU overlay, the
KEDA trigger reading the queue's real stream, NetworkPolicies that keep /metrics internal and
Redis private, secrets never committed, non-root read-only containers.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import major_minor, schema_contents
from referencing import Registry, Resource

from app.config import Settings
from app.queue.streams import GROUP, STREAM, JobQueue

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu-dev", "gpu-prod")
KEDA_CRDS = ROOT / "tests" / "data" / "keda"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
# The oldest Kubernetes minor still in upstream/managed support when this was written, and the
# newest one kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.30", major_minor(kubernetes_validate.utils.latest_version()))
# Trigger metadata the redis-streams scaler reads (kedacore/keda v2.20.2,
# pkg/scalers/redis_streams_scaler.go redisStreamsMetadata + redis_scaler.go
# redisConnectionInfo); KEDA ignores unknown keys silently, so a typo would scale on defaults.
REDIS_STREAMS_METADATA = {
    "lagCount", "pendingEntriesCount", "streamLength", "stream", "consumerGroup",
    "databaseIndex", "activationLagCount", "enableTLS", "address", "addresses", "host", "hosts",
    "port", "ports", "username", "password", "sentinelUsername", "sentinelPassword",
    "sentinelMaster", "unsafeSsl", "usernameFromEnv", "passwordFromEnv", "addressFromEnv",
    "hostFromEnv", "portFromEnv",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass"}


# ---------------------------------------------------------------- the kustomize subset
class Unsupported(ValueError):
    """A kustomization uses a feature the resolver does not implement (never silently)."""


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "patches",
                      "generatorOptions", "secretGenerator"}


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _json_patch(doc: Any, ops: list[dict[str, Any]]) -> None:
    """RFC 6902 add / replace / remove, in place."""
    for op in ops:
        if op["op"] not in ("add", "replace", "remove"):
            raise Unsupported(f"JSON patch op {op['op']}")
        *parents, last = _pointer(op["path"])
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            if op["op"] == "add":
                node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
            elif op["op"] == "replace":
                node[int(last)] = copy.deepcopy(op["value"])
            else:
                del node[int(last)]
        else:
            if op["op"] == "replace" and last not in node:
                raise KeyError(f"replace of missing {op['path']}")  # RFC 6902: an error
            if op["op"] == "remove":
                del node[last]
            else:
                node[last] = copy.deepcopy(op["value"])


def _set_images(node: Any, images: list[dict[str, str]]) -> None:
    if isinstance(node, dict):
        for key in ("containers", "initContainers"):
            for c in node.get(key, []) if isinstance(node.get(key), list) else []:
                name, _, tag = c["image"].partition(":")
                for im in images:
                    if im["name"] == name:
                        new_tag = im.get("newTag", tag)
                        c["image"] = im.get("newName", name) + (f":{new_tag}" if new_tag else "")
        for v in node.values():
            _set_images(v, images)
    elif isinstance(node, list):
        for v in node:
            _set_images(v, images)


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"{path}: not KEY=VALUE: {line}")
            out[key] = value
    return out


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The objects `kustomize build path` gives, for the features in KUSTOMIZATION_KEYS."""
    k = yaml.safe_load((path / "kustomization.yaml").read_text())
    if set(k) - KUSTOMIZATION_KEYS:
        raise Unsupported(f"{path}: {sorted(set(k) - KUSTOMIZATION_KEYS)}")
    docs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        sub = (path / res).resolve()
        docs += kustomize(sub) if sub.is_dir() else [
            d for d in yaml.safe_load_all(sub.read_text()) if d]
    if k.get("secretGenerator"):
        if k.get("generatorOptions") != {"disableNameSuffixHash": True}:
            raise Unsupported("secretGenerator needs generatorOptions.disableNameSuffixHash")
        for gen in k["secretGenerator"]:
            if set(gen) - {"name", "envs"}:
                raise Unsupported(f"secretGenerator fields {sorted(gen)}")
            data: dict[str, str] = {}
            for env in gen["envs"]:
                data |= _env_file(path / env)  # a missing file fails, as in kustomize
            docs.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                         "metadata": {"name": gen["name"]},
                         "data": {key: base64.b64encode(v.encode()).decode()
                                  for key, v in data.items()}})
    for patch in k.get("patches", []):
        target, ops = patch["target"], yaml.safe_load(patch["patch"])
        if set(target) - {"kind", "name"} or not isinstance(ops, list):
            raise Unsupported(f"patch {patch}: only JSON 6902 patches targeted by kind + name")
        hits = [d for d in docs if d["kind"] == target["kind"]
                and d["metadata"]["name"] == target["name"]]
        if not hits:
            raise ValueError(f"{path}: patch target {target} matches nothing")
        for d in hits:
            _json_patch(d, ops)
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    _set_images(docs, k.get("images", []))
    return docs


def _materialise(tmp: Path) -> Path:
    """A copy of deploy/k8s with each overlay's secret files made from its *.env.example."""
    dest = tmp / "k8s"
    shutil.copytree(K8S, dest, ignore=shutil.ignore_patterns("secrets.env", "redis.env"))
    for example in dest.glob("overlays/*/*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    return dest


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _materialise(tmp_path_factory.mktemp("k8s"))


@pytest.fixture(scope="module")
def rendered(tree: Path) -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(tree / "overlays" / name) for name in OVERLAYS}


def _key(d: dict[str, Any]) -> tuple[str, str, str]:
    return d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]


def _by(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _container(workload: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    cs = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in cs if name is None or c["name"] == name)


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


# ---------------------------------------------------------------- rendering
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resolver_matches_kubectl_kustomize(tree: Path, rendered: dict, overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH: the resolver alone renders the overlays")
    out = subprocess.run([kubectl, "kustomize", str(tree / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    reference = {_key(d): d for d in yaml.safe_load_all(out.stdout) if d}
    ours = {_key(d): d for d in rendered[overlay]}
    assert sorted(ours) == sorted(reference)
    for key, doc in ours.items():
        assert doc == reference[key], key


def test_resolver_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(Unsupported):
        kustomize(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\nsecretGenerator: [{name: s, envs: [x.env]}]\n")
    with pytest.raises(Unsupported):  # a name hash would break KEDA's secret reference
        kustomize(tmp_path)


def test_overlays_do_not_build_without_their_secret_files(tmp_path: Path) -> None:
    dest = tmp_path / "k8s"
    shutil.copytree(K8S, dest, ignore=shutil.ignore_patterns("secrets.env", "redis.env"))
    for overlay in OVERLAYS:
        with pytest.raises(FileNotFoundError):
            kustomize(dest / "overlays" / overlay)


# ---------------------------------------------------------------- schemas
@cache
def _k8s_definitions(version: str) -> Resource:
    return Resource.from_contents(schema_contents(
        f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json", version))


def _crd_json_schema(node: Any, in_map: bool = False) -> Any:
    """An openAPIV3Schema as strict JSON Schema: objects that list their properties refuse
    others (unless x-kubernetes-preserve-unknown-fields), `nullable` allows null,
    x-kubernetes-int-or-string is integer or string; other x-kubernetes-* are dropped (the one
    CEL rule of the ScaledObject CRD is asserted in test_keda_scales_workers_on_the_job_stream).
    """
    if isinstance(node, list):
        return [_crd_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    if in_map:  # the names of `properties`: each value is a schema
        return {k: _crd_json_schema(v) for k, v in node.items()}
    out = {k: _crd_json_schema(v, in_map=k == "properties") for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in sorted(KEDA_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for v in crd["spec"]["versions"]:
            schema = _crd_json_schema(v["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = {  # CRDs leave metadata to the API server
                "$ref": "https://kubernetes.io/api/_definitions.json#/$defs/"
                        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
            schema["required"] = sorted({*schema.get("required", []), "spec"})
            api_version = f"{crd['spec']['group']}/{v['name']}"
            schemas[(api_version, crd["spec"]["names"]["kind"])] = schema
    return schemas


def _schema_errors(doc: dict[str, Any], version: str) -> list[str]:
    crd = _crd_schemas().get((doc["apiVersion"], doc["kind"]))
    if crd is None:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            return [f"{'.'.join(map(str, e.path))}: {e.message}"]
        return []
    registry = Registry().with_resource("https://kubernetes.io/api/_definitions.json",
                                        _k8s_definitions(version))
    validator = jsonschema.Draft202012Validator(crd, registry=registry)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_keda_crds_are_the_bundled_release() -> None:
    names = {p.name for p in KEDA_CRDS.glob("*.yaml")}
    assert names == {"keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml"}
    assert set(_crd_schemas()) == {("keda.sh/v1alpha1", "ScaledObject"),
                                   ("keda.sh/v1alpha1", "TriggerAuthentication")}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_matches_its_schema(rendered: dict, overlay: str, version: str) -> None:
    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    assert {"ScaledObject", "TriggerAuthentication", "Deployment", "StatefulSet"} <= kinds
    problems = {f"{d['kind']}/{d['metadata']['name']}": _schema_errors(d, version) for d in docs}
    assert {k: v for k, v in problems.items() if v} == {}


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        ("Deployment", lambda d: _container(d).update(livenesProbe={}), "livenesProbe"),
        ("Deployment", lambda d: d["spec"]["template"]["spec"].update(replicas=2), "replicas"),
        ("HorizontalPodAutoscaler", lambda d: d["spec"].update(minReplicas="2"), "minReplicas"),
        ("NetworkPolicy", lambda d: d["spec"].update(policyTypes="Ingress"), "policyTypes"),
        ("StatefulSet", lambda d: d["spec"].pop("selector"), "selector"),
        ("ScaledObject", lambda d: d["spec"].update(minReplicas=1), "minReplicas"),
        ("ScaledObject", lambda d: d["spec"]["triggers"][0].pop("type"), "type"),
        ("ScaledObject", lambda d: d["spec"].update(pollingInterval="15"), "pollingInterval"),
        ("ScaledObject", lambda d: d["metadata"].update(name=3), "name"),
        ("TriggerAuthentication", lambda d: d["spec"]["secretTargetRef"][0].pop("key"), "key"),
    ],
)
def test_schemas_catch_mistakes(rendered: dict, kind: str, mutate: Any, expected: str) -> None:
    doc = copy.deepcopy(next(d for d in rendered["gpu-prod"] if d["kind"] == kind))
    mutate(doc)
    errors = _schema_errors(doc, K8S_VERSIONS[-1])
    assert errors and any(expected in e for e in errors), errors


# ---------------------------------------------------------------- invariants
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    for w in _workloads(docs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            assert "livenessProbe" in c and "readinessProbe" in c, w["metadata"]["name"]
    api = _container(_by(docs, "Deployment")["api"])
    port = api["ports"][0]["name"]
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    healthcheck = re.search(r"COPY docker/healthcheck.py (\S+)", DOCKERFILE.read_text())[1]
    worker = _container(_by(docs, "Deployment")["worker"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert worker[probe]["exec"]["command"] == ["python", healthcheck, "worker"]
    # The first heartbeat follows model loading: the startup probe must outwait it.
    start = worker["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 180


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_only_in_the_gpu_overlay(rendered: dict, overlay: str) -> None:
    deployments = _by(rendered[overlay], "Deployment")
    worker = deployments["worker"]
    pod = worker["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in _container(worker)["env"]}
    api_limits = _container(deployments["api"])["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in api_limits
    # Without a GPU limit, the image's NVIDIA_VISIBLE_DEVICES=all must not reach the runtime.
    for w in deployments.values():
        c = _container(w)
        if "nvidia.com/gpu" not in c["resources"].get("limits", {}):
            assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in c["env"], w
    limits = _container(worker)["resources"]["limits"]
    if overlay == "gpu-prod":
        assert limits["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists",
                "effect": "NoSchedule"} in pod["tolerations"]
        assert env["DFSHIELD_DEVICE"] == "cuda"
    else:
        assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod
        assert env["DFSHIELD_DEVICE"] == "cpu"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_workers_on_the_job_stream(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    (ns,) = _by(docs, "Namespace")
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {ns}
    (so,) = _by(docs, "ScaledObject").values()
    assert so["spec"]["scaleTargetRef"]["name"] in _by(docs, "Deployment")
    assert so["spec"]["scaleTargetRef"]["name"] == "worker"
    # /readyz needs a live worker: with none, the API leaves its Service and the queue never
    # grows again. (Also the CRD's CEL rule: min <= max.)
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    (trigger,) = so["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis-streams" and trigger["metricType"] == "AverageValue"
    assert set(meta) <= REDIS_STREAMS_METADATA
    assert meta["stream"] == STREAM
    # XLEN mode: KEDA drops streamLength as soon as a consumerGroup is given (then it reads
    # XPENDING or the lag alone); see test_stream_length_is_pending_plus_lag for why XLEN.
    assert "consumerGroup" not in meta and "streamLength" in meta
    config = _by(docs, "ConfigMap")["dfshield-config"]["data"]
    assert meta["streamLength"] == config["DFSHIELD_WORKER_CONCURRENCY"]
    redis = _by(docs, "Service")["redis"]
    assert meta["address"] == f"redis.{ns}.svc:{redis['spec']['ports'][0]['port']}"
    for w in ("api", "worker"):
        env = {e["name"]: e.get("value") for e in _container(_by(docs, "Deployment")[w])["env"]}
        url = env["DFSHIELD_REDIS_URL"]
        assert url == f"redis://:$(REDIS_PASSWORD)@redis:{redis['spec']['ports'][0]['port']}/" \
                      f"{meta['databaseIndex']}"
        names = [e["name"] for e in _container(_by(docs, "Deployment")[w])["env"]]
        assert names.index("REDIS_PASSWORD") < names.index("DFSHIELD_REDIS_URL")  # $(…) order
    auth = _by(docs, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "password"
    assert ref["key"] in _by(docs, "Secret")[ref["name"]]["data"]


def test_stream_length_is_pending_plus_lag(tmp_path: Path) -> None:
    """The queue deletes what it acknowledges, so XLEN = the group's pending + undelivered
    entries: the one number that sizes the workers (KEDA's streamLength mode)."""
    from app.redis_conn import EmbeddedRedis, client_from_url

    server = EmbeddedRedis(tmp_path).start()
    try:
        r = client_from_url(server.url)
        q = JobQueue(r)
        assert (q.stream, q.group) == (STREAM, GROUP)
        q.ensure_group()
        for i in range(7):
            q.enqueue(f"job-{i}")
        running = q.claim("w1", count=3, block_ms=10)
        q.ack(running[0].entry_id)  # one finished
        q.requeue(running[1].entry_id, running[1].job_id)  # one given back (SIGTERM)
        pending = int(r.xpending(STREAM, GROUP)["pending"])
        last = next(g for g in r.xinfo_groups(STREAM) if g["name"].decode() == GROUP)[
            "last-delivered-id"].decode()
        waiting = len(r.xrange(STREAM, min=f"({last}", max="+"))
        assert (pending, waiting) == (1, 5)
        assert r.xlen(STREAM) == pending + waiting == q.depth()
    finally:
        server.stop()


def _peers(policies: list[dict[str, Any]], pod_labels: dict[str, str],
           port: int) -> list[dict[str, Any]] | None:
    """The `from` peers allowed to reach a pod's port; None = unrestricted (no policy)."""
    selecting = [p for p in policies if "Ingress" in p["spec"]["policyTypes"]
                 and _matches(p["spec"]["podSelector"], pod_labels)]
    if not selecting:
        return None
    peers = []
    for p in selecting:
        for rule in p["spec"].get("ingress", []):
            ports = [x["port"] for x in rule.get("ports", [])]
            if not ports or port in ports:
                assert rule.get("from"), f"{p['metadata']['name']}: a rule open to everyone"
                peers += rule["from"]
    return peers


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In"
        ok = ok and labels.get(e["key"]) in e["values"]
    return ok


def _namespace_of(peer: dict[str, Any]) -> str | None:
    sel = peer.get("namespaceSelector")
    return None if sel is None else sel["matchLabels"]["kubernetes.io/metadata.name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    policies = list(_by(docs, "NetworkPolicy").values())
    deployments = _by(docs, "Deployment")
    labels = {n: w["spec"]["template"]["metadata"]["labels"]
              for n, w in {**deployments, **_by(docs, "StatefulSet")}.items()}
    assert all("ipBlock" not in peer for p in policies
               for rule in p["spec"].get("ingress", []) for peer in rule.get("from", []))
    # Every pod is covered: the namespace denies ingress by default.
    assert any(p["spec"]["podSelector"] == {} and p["spec"].get("ingress") is None
               for p in policies)
    # Worker metrics: the port the worker serves them on, from the monitoring namespace only.
    config = _by(docs, "ConfigMap")["dfshield-config"]["data"]
    metrics_port = int(config["DFSHIELD_WORKER_METRICS_PORT"])
    assert metrics_port in [p["containerPort"] for p in _container(deployments["worker"])["ports"]]
    peers = _peers(policies, labels["worker"], metrics_port)
    assert peers and {_namespace_of(x) for x in peers} == {"monitoring"}
    # API port (which also serves /metrics): the ingress controller and Prometheus only.
    api_port = _container(deployments["api"])["ports"][0]["containerPort"]
    peers = _peers(policies, labels["api"], api_port)
    assert peers and {_namespace_of(x) for x in peers} == {"ingress-nginx", "monitoring"}
    # Redis: api and worker pods of this namespace, and KEDA's operator (it reads XLEN).
    peers = _peers(policies, labels["redis"], 6379)
    assert peers is not None
    in_ns = [x for x in peers if _namespace_of(x) is None]
    assert {n for n in labels if any(_matches(x["podSelector"], labels[n]) for x in in_ns)} == {
        "api", "worker"}
    assert {_namespace_of(x) for x in peers} - {None} == {"keda"}
    redis_policy = next(p for p in policies if _matches(p["spec"]["podSelector"], labels["redis"])
                        and "Egress" in p["spec"]["policyTypes"])
    assert redis_policy["spec"]["egress"] == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_keeps_internal_paths_internal(rendered: dict, overlay: str) -> None:
    config = _by(rendered[overlay], "ConfigMap")["dfshield-config"]["data"]
    for ing in _by(rendered[overlay], "Ingress").values():
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                assert p["pathType"] == "Prefix" and p["path"] in ("/v1", "/ui"), p
        body = ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
        assert int(body.rstrip("m")) >= float(config["DFSHIELD_MAX_UPLOAD_MB"])
    assert bool(_by(rendered[overlay], "Ingress")) == (overlay == "gpu-prod")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_contexts(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    (ns,) = _by(docs, "Namespace").values()
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    image_uid = re.search(r"USER (\d+):(\d+)", DOCKERFILE.read_text())
    for w in _workloads(docs):
        pod = w["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False
            assert csc["readOnlyRootFilesystem"] is True
            assert csc["capabilities"] == {"drop": ["ALL"]}
            if c["image"].split(":")[0].endswith("dfshield"):
                assert (str(sc["runAsUser"]), str(sc["runAsGroup"])) == image_uid.groups()
                assert "/tmp" in [m["mountPath"] for m in c["volumeMounts"]]  # MPLCONFIGDIR


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_is_durable(rendered: dict, overlay: str) -> None:
    (redis,) = _by(rendered[overlay], "StatefulSet").values()
    c = _container(redis)
    args = c["args"]
    opt = {a: args[i + 1] for i, a in enumerate(args) if a.startswith("--")}
    assert opt["--appendonly"] == "yes" and opt["--appendfsync"] == "everysec"
    assert opt["--maxmemory-policy"] == "noeviction"
    assert opt["--requirepass"] == "$(REDIS_PASSWORD)"
    to_mb = {"Mi": 1, "Gi": 1024}
    limit = c["resources"]["limits"]["memory"]
    assert int(opt["--maxmemory"].removesuffix("mb")) < int(limit[:-2]) * to_mb[limit[-2:]]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in c["volumeMounts"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_and_workers_share_the_data_dir(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    data_dir = re.search(r"DFSHIELD_DATA_DIR=(\S+)", DOCKERFILE.read_text())[1]
    claims = set()
    for name in ("api", "worker"):
        pod = _by(docs, "Deployment")[name]["spec"]["template"]["spec"]
        (mount,) = [m for m in _container(_by(docs, "Deployment")[name])["volumeMounts"]
                    if m["mountPath"] == data_dir]
        (vol,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        claims.add(vol["persistentVolumeClaim"]["claimName"])
    (claim,) = claims
    pvc = _by(docs, "PersistentVolumeClaim")[claim]
    modes = {"gpu-prod": ["ReadWriteMany"], "cpu-dev": ["ReadWriteOnce"]}  # dev: one node
    assert pvc["spec"]["accessModes"] == modes[overlay]
    config = _by(docs, "ConfigMap")["dfshield-config"]["data"]
    size = pvc["spec"]["resources"]["requests"]["storage"]
    assert size.endswith("Gi")
    spool_mb = int(config["DFSHIELD_QUEUE_MAX"]) * float(config["DFSHIELD_MAX_UPLOAD_MB"])
    assert int(size[:-2]) * 1024**3 >= spool_mb * 1e6, "DATA_DIR cannot hold a full queue"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaling_and_disruption(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    deployments = _by(docs, "Deployment")
    (hpa,) = _by(docs, "HorizontalPodAutoscaler").values()
    (so,) = _by(docs, "ScaledObject").values()
    scaled = {hpa["spec"]["scaleTargetRef"]["name"], so["spec"]["scaleTargetRef"]["name"]}
    assert scaled == set(deployments) == {"api", "worker"}
    for name in scaled:
        assert "replicas" not in deployments[name]["spec"], f"{name}: the autoscaler owns it"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "cpu" in _container(deployments["api"])["resources"]["requests"]
    pdbs = _by(docs, "PodDisruptionBudget")
    for w in _workloads(docs):
        tpl = w["spec"]["template"]["metadata"]["labels"]
        assert [p for p in pdbs.values() if _matches(p["spec"]["selector"], tpl)], w
    assert deployments["worker"]["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] >= 60  # finish the frame chunk, hand jobs back
    for svc in _by(docs, "Service").values():
        assert any(_matches({"matchLabels": svc["spec"]["selector"]},
                            w["spec"]["template"]["metadata"]["labels"]) for w in _workloads(docs))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_and_commands(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    for w in _workloads(docs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            name, _, tag = c["image"].rpartition(":")
            assert name and tag and tag != "latest", c["image"]
    deployments = _by(docs, "Deployment")
    assert _container(deployments["api"])["command"][:2] == ["dfshield", "api"]
    assert _container(deployments["worker"])["command"] == ["dfshield", "worker"]
    if overlay == "cpu-dev":  # the compose file's local image name
        assert _container(deployments["api"])["image"] == "dfshield:local"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_and_secrets(tree: Path, rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    known = {f"DFSHIELD_{f.upper()}" for f in Settings.model_fields}
    names = set(_by(docs, "ConfigMap")["dfshield-config"]["data"])
    for w in _workloads(docs):
        c = _container(w)
        names |= {e["name"] for e in c.get("env", []) if e["name"].startswith("DFSHIELD_")}
        for src in c.get("envFrom", []):
            ref = src.get("secretRef") or src["configMapRef"]
            kind = "Secret" if "secretRef" in src else "ConfigMap"
            assert ref["name"] in _by(docs, kind), ref
    example = (K8S / "overlays" / overlay / "secrets.env.example").read_text()
    names |= set(re.findall(r"^#?\s*(DFSHIELD_\w+)=", example, re.M))
    assert names - known == set(), "not a Settings field (typo?)"
    assert {"DFSHIELD_API_KEYS", "DFSHIELD_WEBHOOK_SECRET", "DFSHIELD_GUARD_SALT"} <= names
    # Secrets exist only as generated from the overlay's (git-ignored) files.
    secrets = _by(docs, "Secret")
    assert set(secrets) == {"dfshield-secrets", "dfshield-redis"}
    for d in yaml.safe_load_all("\n---\n".join(p.read_text() for p in K8S.rglob("*.yaml"))):
        assert not d or d.get("kind") != "Secret", "a Secret is committed under deploy/k8s"
    for f in ("secrets.env", "redis.env"):
        path = f"deploy/k8s/overlays/{overlay}/{f}"
        if shutil.which("git") and (ROOT / ".git").exists():
            assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0


def test_placeholder_secrets_are_refused_in_production() -> None:
    from app.api.auth import AuthConfigError, build_keyring
    from app.webhooks import check_secret

    values = _env_file(K8S / "overlays" / "gpu-prod" / "secrets.env.example")
    settings = Settings(environment="production", api_keys=values["DFSHIELD_API_KEYS"],
                        webhook_secret=values["DFSHIELD_WEBHOOK_SECRET"])
    with pytest.raises(AuthConfigError):
        build_keyring(settings)
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        check_secret(settings)
    examples = [p.read_text() for p in K8S.glob("overlays/*/*.env.example")]
    assert len(set(examples)) == 2, "both overlays ship the same two examples"


def test_compose_and_k8s_agree_on_redis_persistence() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]
    base = [d for d in yaml.safe_load_all((K8S / "base" / "redis.yaml").read_text())
            if d["kind"] == "StatefulSet"][0]
    args = _container(base)["args"]
    for flag in ("--appendonly", "--appendfsync", "--save", "--maxmemory-policy"):
        assert compose["command"][compose["command"].index(flag) + 1] == args[
            args.index(flag) + 1], flag
    assert compose["image"] == _container(base)["image"]

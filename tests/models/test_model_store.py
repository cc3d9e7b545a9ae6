"""Model store: publish → verify → load round trips, and every refusal path with real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from app.models.manifest import ManifestEntry
from app.models.publishing import write_entry
from app.models.registry import create_model
from app.models.store import (
    MANIFEST_NAME,
    ModelStoreError,
    list_entries,
    load_bundle,
    load_manifest,
    load_model,
    model_info,
    read_verified,
    sha256_file,
)


def _trained_like(name: str, seed: int) -> torch.nn.Module:
    """Random model whose BatchNorm statistics moved off their defaults (so they must load)."""
    torch.manual_seed(seed)
    model = create_model(name).train()
    with torch.no_grad():
        if model.spec.role == "detector":
            model(torch.rand(4, 3, 96, 96))
        else:
            model(torch.rand(4, 3, 96, 96), torch.rand(4, 3, 96, 96))
    return model.eval()


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """Built once per module: model construction dominates this file's run time."""
    models_dir = tmp_path_factory.mktemp("published")
    g = _trained_like("resnet10t_df", 1)
    d = _trained_like("detect_resnet10t", 2)
    write_entry(models_dir, g, "g1", version="1.0.0", threshold=0.6, metrics={"auc": 0.9})
    write_entry(models_dir, d, "d1", version="1.0.0", threshold=0.4, training={"seed": 2})
    return models_dir, g, d


@pytest.fixture()
def store(published, tmp_path: Path) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """A private copy of the published store that each test may tamper with."""
    src, g, d = published
    models_dir = tmp_path / "models"
    shutil.copytree(src, models_dir)
    return models_dir, g, d


def _edit_manifest(models_dir: Path, name: str, **changes: object) -> None:
    path = models_dir / MANIFEST_NAME
    raw = json.loads(path.read_text())
    for m in raw["models"]:
        if m["name"] == name:
            m.update(changes)
    path.write_text(json.dumps(raw))


def test_round_trip_gives_identical_outputs(store) -> None:
    models_dir, g, d = store
    bundle = load_bundle(models_dir, "cpu")
    assert bundle.detector_entry.name == "g1" and bundle.adversarial_entry.name == "d1"
    assert not bundle.detector.training and not bundle.adversarial.training
    x, m = torch.rand(2, 3, 150, 150), torch.rand(2, 3, 150, 150)
    with torch.no_grad():
        assert torch.equal(bundle.detector(x), g(x))
        assert torch.equal(bundle.adversarial(x, m), d(x, m))
    t = bundle.thresholds()
    assert (t.tau_fake, t.tau_attacked) == (0.6, 0.4)
    infos = bundle.model_infos()
    assert [i.name for i in infos] == ["g1", "d1"] and all(i.trained for i in infos)
    assert infos[0].sha256 == sha256_file(models_dir / bundle.detector_entry.file)


def test_manifest_records_provenance(store) -> None:
    models_dir, _, _ = store
    manifest = load_manifest(models_dir)
    assert manifest.default.detector == "g1" and manifest.default.adversarial == "d1"
    g1 = manifest.get("g1")
    assert g1.architecture == "resnet10t_df" and g1.role == "detector"
    assert g1.thresholds == {"tau_fake": 0.6} and g1.metrics == {"auc": 0.9}
    assert g1.preprocess.input_size == 128
    assert manifest.get("d1").preprocess.class_names == ("clean", "attacked")
    assert g1.file.endswith(".safetensors") and g1.sha256[:12] in g1.file
    info = model_info(g1)
    assert (info.name, info.architecture, info.version) == ("g1", "resnet10t_df", "1.0.0")


def test_tampered_weights_are_refused(store) -> None:
    models_dir, _, _ = store
    entry = load_manifest(models_dir).get("g1")
    path = models_dir / entry.file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="sha256 mismatch") as exc:
        load_model(models_dir, "g1")
    assert "re-publish" in str(exc.value)
    rows = {r.entry.name: r for r in list_entries(models_dir, verify=True)}
    assert rows["g1"].sha_ok is False and rows["d1"].sha_ok is True
    assert rows["g1"].is_default and rows["g1"].present


def test_missing_weights_file(store) -> None:
    models_dir, _, _ = store
    (models_dir / load_manifest(models_dir).get("d1").file).unlink()
    with pytest.raises(ModelStoreError, match="missing"):
        load_bundle(models_dir)
    assert {r.entry.name: r.present for r in list_entries(models_dir)} == {"g1": True, "d1": False}


def test_unlisted_model_and_unlisted_file(store) -> None:
    models_dir, _, _ = store
    with pytest.raises(ModelStoreError, match="not listed"):
        load_model(models_dir, "ghost")
    forged = load_manifest(models_dir).get("g1").model_copy(update={"file": "other.safetensors"})
    with pytest.raises(ModelStoreError, match="only files listed"):
        load_model(models_dir, forged)
    with pytest.raises(ModelStoreError, match="not a detector"):
        load_bundle(models_dir, detector="d1")


def test_unknown_architecture(store) -> None:
    models_dir, _, _ = store
    _edit_manifest(models_dir, "g1", architecture="no_such_net")
    with pytest.raises(ModelStoreError, match="unknown model 'no_such_net'"):
        load_model(models_dir, "g1")


def test_role_and_preprocess_must_match_registry(store) -> None:
    models_dir, _, _ = store
    pre = load_manifest(models_dir).get("g1").preprocess.model_dump(mode="json")
    _edit_manifest(models_dir, "g1", preprocess={**pre, "input_size": 224})
    with pytest.raises(ModelStoreError, match="preprocess"):
        load_model(models_dir, "g1")
    _edit_manifest(models_dir, "g1", preprocess=pre, architecture="detect_resnet10t")
    with pytest.raises(ModelStoreError, match="is a 'adversarial'"):
        load_model(models_dir, "g1")


def test_weights_that_do_not_fit_the_architecture(store) -> None:
    models_dir, _, _ = store
    # d1's weights declared as the small detector: right role/preprocess, wrong tensors.
    d1 = load_manifest(models_dir).get("d1")
    _edit_manifest(models_dir, "g1", file=d1.file, sha256=d1.sha256)
    with pytest.raises(ModelStoreError, match="do not fit architecture 'resnet10t_df'"):
        load_model(models_dir, "g1")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"format_version": 2, "models": []}', "schema"),
        ('{"format_version": 1, "default": {"detector": "x"}, "models": []}', "not among"),
    ],
)
def test_bad_manifest_files(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / MANIFEST_NAME).write_text(content)
    with pytest.raises(ModelStoreError, match=match):
        load_manifest(tmp_path)


def test_missing_dir_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="does not exist.*placeholder"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(ModelStoreError, match="no manifest.json"):
        load_manifest(tmp_path)


def test_paths_outside_the_models_dir_are_refused(store, tmp_path_factory) -> None:
    models_dir, _, _ = store
    _edit_manifest(models_dir, "g1", file="../elsewhere.safetensors")
    with pytest.raises(ModelStoreError, match="relative path inside"):
        load_manifest(models_dir)
    outside = tmp_path_factory.mktemp("outside") / "w.safetensors"
    outside.write_bytes(b"x")
    (models_dir / "link.safetensors").symlink_to(outside)
    _edit_manifest(models_dir, "g1", file="link.safetensors", sha256=sha256_file(outside))
    with pytest.raises(ModelStoreError, match="outside"):
        load_model(models_dir, "g1")


def test_republish_replaces_file_and_defaults(store) -> None:
    models_dir, _, _ = store
    old_file = load_manifest(models_dir).get("g1").file
    g_new = _trained_like("resnet10t_df", 7)
    e = write_entry(models_dir, g_new, "g1", version="1.1.0")
    assert e.file != old_file and not (models_dir / old_file).exists()

    write_entry(models_dir, g_new, "g2", version="2.0.0")  # set_default=None: keeps g1
    assert load_manifest(models_dir).default.detector == "g1"
    write_entry(models_dir, g_new, "g3", version="3.0.0", set_default=True)
    manifest = load_manifest(models_dir)
    assert manifest.default.detector == "g3"
    assert [m.name for m in manifest.models] == ["g1", "d1", "g2", "g3"]
    # same weights, same hash, whatever the entry name
    assert manifest.get("g2").sha256 == manifest.get("g3").sha256
    assert not list(models_dir.glob(".*.tmp"))


def test_publish_raw_net_and_onnx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    raw = create_model("resnet10t_df").net
    onnx_src = tmp_path / "src.onnx"
    onnx_src.write_bytes(b"onnx-bytes-stand-in")
    models_dir = tmp_path / "models"
    with pytest.raises(ModelStoreError, match="architecture="):
        write_entry(models_dir, raw, "g", version="1")
    e = write_entry(
        models_dir, raw, "g", version="1", architecture="resnet10t_df",
        onnx_path=onnx_src, onnx_opset=17, trained=False,
    )  # fmt: skip
    assert isinstance(e, ManifestEntry) and e.onnx is not None and e.onnx.opset == 17
    assert read_verified(models_dir, e.onnx.file, e.onnx.sha256) == b"onnx-bytes-stand-in"
    with pytest.raises(ModelStoreError, match="no adversarial named"):
        load_bundle(models_dir)

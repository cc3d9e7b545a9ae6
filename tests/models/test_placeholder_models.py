"""Placeholder weights: deterministic, flagged untrained, and the committed models/ loads."""

from __future__ import annotations

from pathlib import Path

import torch

from app.config import REPO_ROOT
from app.models.placeholder import PLACEHOLDER_VERSION, PLACEHOLDERS, write_placeholders
from app.models.publishing import write_entry
from app.models.registry import create_model
from app.models.store import list_entries, load_bundle, load_manifest

REPO_MODELS = REPO_ROOT / "models"


def test_committed_manifest_loads_and_flags_placeholders() -> None:
    manifest = load_manifest(REPO_MODELS)
    placeholder_names = {name for name, _ in PLACEHOLDERS}
    for e in manifest.models:
        if e.name in placeholder_names or e.version == PLACEHOLDER_VERSION:
            assert e.trained is False and e.version == PLACEHOLDER_VERSION
        if not e.trained:
            assert "UNTRAINED placeholder" in e.description
    assert all(r.present and r.sha_ok for r in list_entries(REPO_MODELS, verify=True))

    bundle = load_bundle(REPO_MODELS, "cpu")
    x = torch.rand(1, 3, 150, 150)
    with torch.no_grad():
        assert bundle.detector(x).shape == (1, 2)
        assert bundle.adversarial(x, x).shape == (1, 2)
    for info in bundle.model_infos():  # every result reports whether g/d were trained
        assert info.trained == manifest.get(info.name).trained


def test_placeholders_are_deterministic(tmp_path: Path) -> None:
    a = write_placeholders(tmp_path / "a", seed=0)
    b = write_placeholders(tmp_path / "b", seed=0)
    c = write_placeholders(tmp_path / "c", seed=1)
    assert [e.sha256 for e in a] == [e.sha256 for e in b]
    assert all(x.sha256 != y.sha256 for x, y in zip(a, c, strict=True))
    manifest = load_manifest(tmp_path / "a")
    assert manifest.default.detector == "placeholder-detector"
    assert manifest.default.adversarial == "placeholder-adversarial"
    for e in manifest.models:
        assert not e.trained and e.version == PLACEHOLDER_VERSION
        assert "not a detector" in e.description and e.training["seed"] == 0
    size = sum(p.stat().st_size for p in (tmp_path / "a").iterdir())
    assert size < 20_000_000


def test_rerunning_placeholders_keeps_trained_defaults(tmp_path: Path) -> None:
    torch.manual_seed(3)
    write_entry(tmp_path, create_model("resnet10t_df"), "real-g", version="1.0.0", trained=True)
    write_placeholders(tmp_path)
    manifest = load_manifest(tmp_path)
    assert manifest.default.detector == "real-g"
    assert manifest.default.adversarial == "placeholder-adversarial"

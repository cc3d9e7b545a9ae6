"""The bundled generators: listed with role ``generator``, verified, small, differentiable,
and the served g/d defaults untouched."""

from __future__ import annotations

import torch

from app.config import REPO_ROOT
from app.models.registry import create_model, list_models
from app.models.store import list_entries, load_manifest
from app.protect.generators import Generator, load_generators

MODELS = REPO_ROOT / "models"


def test_bundled_and_held_out_generators_are_in_the_manifest() -> None:
    manifest = load_manifest(MODELS)
    gens = [m for m in manifest.models if m.role == "generator"]
    assert {bool(m.training["held_out"]) for m in gens} == {True, False}
    assert {m.architecture for m in gens} == {"faceswap_ae64_w16", "faceswap_ae64_w12"}
    assert manifest.default.detector == "dfshield-g-resnet10t_df"
    assert manifest.default.adversarial == "dfshield-d-detect_resnet10t-saliency-finetune"
    for row in list_entries(MODELS, verify=True):
        if row.entry.role == "generator":
            assert row.sha_ok and not row.is_default
            assert (MODELS / row.entry.file).stat().st_size < 4_000_000  # a few MB at most


def test_generators_are_listed_only_by_role() -> None:
    assert set(list_models("generator")) == {"faceswap_ae64_w16", "faceswap_ae64_w12"}
    assert not set(list_models()) & set(list_models("generator"))


def test_loaded_generator_swaps_and_is_differentiable() -> None:
    (g,) = load_generators(MODELS)
    (h,) = load_generators(MODELS, held_out=True)
    assert isinstance(g, Generator) and g.name != h.name
    face = torch.rand(2, 3, 96, 96, requires_grad=True)
    out = g(face)
    assert out.shape == face.shape and out.min() >= 0 and out.max() <= 1
    out.sum().backward()
    assert face.grad is not None and face.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in g.parameters())


def test_untrained_architecture_builds_with_one_decoder_per_identity() -> None:
    g = create_model("faceswap_ae64_w12")
    assert len(g.net.decoders) == 4
    x = torch.rand(1, 3, 64, 64)
    assert not torch.equal(g.net.reconstruct(x, 0), g.net.reconstruct(x, 1))

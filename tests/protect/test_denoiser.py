"""The attacker's learned purifier: the committed weights denoise a held-out real face, it is
one of the purifiers evaluated, and stage 1 can be optimised through it within budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.config import REPO_ROOT
from app.models.registry import list_models
from app.models.store import load_manifest
from app.pipeline.faces import FaceDetector
from app.protect.denoiser import Denoiser, load_denoiser
from app.protect.generators import FaceGenerator
from app.protect.interrupt import patch_high_freq
from app.protect.persistence import Victim
from app.protect.protector import ProtectOptions, Protector
from app.protect.train_denoiser import NOISE_KINDS, DenoiserTrainConfig, perturb

MODELS = REPO_ROOT / "models"


@pytest.fixture(scope="module")
def denoiser() -> Denoiser:
    model = load_denoiser(MODELS)
    assert model is not None, "models/ lists no purifier: run `dfshield train denoiser`"
    return model


@pytest.fixture(scope="module")
def face(photo: np.ndarray, faces_detector: FaceDetector) -> np.ndarray:
    # grace_hopper is a test-split identity: the denoiser never trained on her.
    x1, y1, x2, y2 = faces_detector.detect([photo])[0][0].crop_box
    return photo[y1:y2, x1:x2]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def _noisy(face: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    h, w = face.shape[:2]
    if kind == "uniform":
        noise = rng.uniform(-0.05, 0.05, face.shape)
    else:  # a sign-PGD-like pattern: ±0.025 per pixel and channel
        noise = 0.025 * np.sign(rng.standard_normal((h, w, 3)))
    return np.clip(face + noise * 255, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("kind", ["uniform", "sign"])
def test_committed_denoiser_cleans_a_held_out_face(denoiser: Denoiser, face: np.ndarray,
                                                   kind: str) -> None:
    noisy = _noisy(face, kind, np.random.default_rng(0))
    before, after = _psnr(noisy, face), _psnr(denoiser.purify_rgb(noisy), face)
    assert after > before + 1.0, (kind, before, after)
    # What protection cares about: how much of the perturbation survives purification.
    survived = denoiser.purify_rgb(noisy).astype(float) - denoiser.purify_rgb(face)
    written = noisy.astype(float) - face
    assert np.sqrt(np.mean(survived**2)) < 0.7 * np.sqrt(np.mean(written**2))


def test_committed_denoiser_leaves_a_clean_face_nearly_alone(denoiser: Denoiser,
                                                             face: np.ndarray) -> None:
    out = denoiser.purify_rgb(face)
    assert out.shape == face.shape and out.dtype == np.uint8
    # The photo's own grain goes too (it looks like the noise it was trained on).
    assert _psnr(out, face) > 33.0


def test_purifier_role_is_listed_with_provenance() -> None:
    assert list_models("purifier") == ["dncnn7_w32"]
    assert "dncnn7_w32" not in list_models()  # not a crop scorer
    (entry,) = [m for m in load_manifest(MODELS).models if m.role == "purifier"]
    assert entry.training["command"].startswith("dfshield train denoiser ")
    assert entry.training["steps"] >= 1 and entry.dtype == "float16"
    assert (MODELS / entry.file).stat().st_size < 1_000_000
    with pytest.raises(ValueError, match="no decision threshold"):
        _ = entry.threshold


def test_training_noise_stays_in_its_bounds() -> None:
    cfg = DenoiserTrainConfig(data_root=MODELS)
    clean = torch.full((64, 3, 16, 16), 128 / 255)  # on the 8-bit grid
    for k, kind in enumerate(NOISE_KINDS):
        noisy = perturb(clean, cfg, torch.Generator().manual_seed(k), k)
        assert torch.all((noisy * 255 - (noisy * 255).round()).abs() < 1e-3)  # 8-bit
        linf = float((noisy - clean).abs().max())
        assert (linf == 0) == (kind == "clean")
        assert linf <= max(cfg.max_uniform, cfg.max_sign, 4 * cfg.max_sigma) + 1 / 255


def test_patch_high_freq_prefers_fine_texture() -> None:
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    checker = (((x + y) % 2) * 2 - 1).expand(1, 3, 32, 32)
    smooth = torch.sin(x / 32 * torch.pi).expand(1, 3, 32, 32)
    assert patch_high_freq(checker) > 5 * patch_high_freq(smooth)
    r = smooth.clone().requires_grad_(True)
    patch_high_freq(r).backward()
    assert r.grad is not None and r.grad.abs().sum() > 0


def test_purification_rows_include_the_denoiser(photo: np.ndarray,
                                                faces_detector: FaceDetector,
                                                tiny_gen: FaceGenerator) -> None:
    from app.protect.purification import PURIFIERS, purification_rows, purifiers_for, to_markdown

    purifiers = purifiers_for(MODELS)
    assert set(purifiers) == set(PURIFIERS) | {"denoiser"}
    assert set(purifiers_for(None)) == set(PURIFIERS)
    f = faces_detector.detect([photo])[0][0]
    victims = [Victim("gh", photo, f.box, f.crop_box)]
    rows = purification_rows([tiny_gen], faces_detector, {"clean": {"gh": photo}}, victims,
                             {"none": PURIFIERS["none"], "denoiser": purifiers["denoiser"]})
    assert [r["purifier"] for r in rows] == ["none", "denoiser"]
    assert not any(r[f"success_{tiny_gen.name}"] for r in rows)
    assert all(r["mtcnn_found"] for r in rows)
    assert "| clean | denoiser |" in to_markdown(rows, 0.025, [tiny_gen.name])


def test_protect_through_the_denoiser_stays_in_budget(photo: np.ndarray,
                                                      faces_detector: FaceDetector,
                                                      tiny_gen: FaceGenerator,
                                                      denoiser: Denoiser) -> None:
    opts = ProtectOptions(mode="interrupt", eps=0.025, steps=3, purifier_eot=True,
                          hf_weight=1.0)
    with pytest.raises(ValueError, match="purifier"):
        Protector([tiny_gen], faces_detector).protect(photo, opts)
    calls: list[int] = []
    hook = denoiser.register_forward_hook(lambda *_: calls.append(1))
    try:
        result = Protector([tiny_gen], faces_detector, denoiser).protect(photo, opts)
    finally:
        hook.remove()
    assert calls  # some views of the optimisation went through the denoiser
    diff = np.abs(result.protected.astype(int) - photo.astype(int))
    assert 0 < diff.max() <= 0.025 * 255
    assert result.report.steps_done == 3

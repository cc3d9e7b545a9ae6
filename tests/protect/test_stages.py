"""Stage 1 raises a generator's distortion; stage 2 lowers MTCNN's face evidence on a real
face; both stay inside the budget and the face regions."""

from __future__ import annotations

import numpy as np
import torch

from app.pipeline.faces import FaceDetector
from app.protect.budget import project, region_mask
from app.protect.crop import Eot, crop_resize
from app.protect.generators import FaceGenerator
from app.protect.interrupt import GEN_SIZE, PgdConfig, distortion, interruption
from app.protect.poison import MtcnnLoss, poisoning

EPS = 0.025


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def test_interruption_beats_random_noise_of_the_same_budget(
        photo: np.ndarray, faces_detector: FaceDetector, tiny_gen: FaceGenerator) -> None:
    face = faces_detector.detect([photo])[0][0]
    image = _tensor(photo)
    mask = region_mask(image.shape, [face.crop_box])
    cfg = PgdConfig(eps=EPS, steps=15, eot=Eot.none())
    delta, done = interruption(image, [face.crop_box], [tiny_gen], cfg, mask)
    assert done == 15
    assert delta.abs().max() <= EPS + 1e-6
    x1, y1, x2, y2 = face.crop_box
    outside = delta.clone()
    outside[..., y1:y2, x1:x2] = 0
    assert outside.abs().max() == 0  # only the face region is perturbed
    noise = project(torch.sign(torch.randn(image.shape)) * EPS, image, EPS, mask)
    clean = crop_resize(image, face.crop_box, GEN_SIZE)
    with torch.no_grad():
        pgd = distortion([tiny_gen], crop_resize(image + delta, face.crop_box, GEN_SIZE), clean)
        rnd = distortion([tiny_gen], crop_resize(image + noise, face.crop_box, GEN_SIZE), clean)
    assert pgd > 3 * rnd, (float(pgd), float(rnd))


def test_interruption_stops_at_the_deadline(photo: np.ndarray, faces_detector: FaceDetector,
                                            tiny_gen: FaceGenerator) -> None:
    face = faces_detector.detect([photo])[0][0]
    image = _tensor(photo)
    mask = region_mask(image.shape, [face.crop_box])
    calls = iter(range(100))
    _, done = interruption(image, [face.crop_box], [tiny_gen], PgdConfig(steps=50), mask,
                           stop=lambda: next(calls) >= 3)
    assert done == 3


def test_poisoning_lowers_mtcnn_face_evidence_on_a_real_face(
        photo: np.ndarray, faces_detector: FaceDetector) -> None:
    face = faces_detector.detect([photo])[0][0]
    image = _tensor(photo)
    mask = region_mask(image.shape, [face.crop_box])
    loss_fn = MtcnnLoss(faces_detector.mtcnn)
    d1 = torch.zeros_like(image)
    d1[mask.expand_as(image) > 0] = EPS / 2  # a half-saturated interruption to share with
    delta, _ = poisoning(image, [face.box], loss_fn, PgdConfig(eps=EPS, steps=20), mask, d1)
    assert delta.abs().max() <= EPS + 1e-6
    with torch.no_grad():
        before = [float(loss_fn(image + d1, [face.box], np.random.default_rng(s)))
                  for s in range(3)]
        after = [float(loss_fn(image + delta, [face.box], np.random.default_rng(s)))
                 for s in range(3)]
        o_before, o_after = _onet_prob(loss_fn, image + d1, face.box), \
            _onet_prob(loss_fn, image + delta, face.box)
    assert np.mean(after) < 0.7 * np.mean(before), (before, after)
    assert o_after < o_before


def _onet_prob(loss_fn: MtcnnLoss, image: torch.Tensor, box: tuple[float, ...]) -> float:
    from app.protect.poison import _normalise, _square_region

    crop = torch.nn.functional.interpolate(_square_region(image, box), size=(48, 48),
                                           mode="area")
    _, _, logits = loss_fn.onet(_normalise(crop))
    return float(logits.softmax(dim=1)[0, 1])


def test_feature_weight_reaches_the_loss_and_the_options(tiny_gen: FaceGenerator) -> None:
    from app.protect.service import options_from
    from app.protect.settings import ProtectSettings

    torch.manual_seed(0)
    clean = torch.rand(2, 3, GEN_SIZE, GEN_SIZE)
    adv = (clean + 0.05 * torch.randn_like(clean)).clamp(0, 1)
    with torch.no_grad():
        plain = torch.nn.functional.mse_loss(tiny_gen(adv), tiny_gen(clean))
        assert torch.allclose(distortion([tiny_gen], adv, clean, 0.0), plain)
        assert distortion([tiny_gen], adv, clean, 1.0) > plain  # the feature term adds
    opts = options_from(ps=ProtectSettings(feature_weight=0.0))
    assert opts.feature_weight == 0.0

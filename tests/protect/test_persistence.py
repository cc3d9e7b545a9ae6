"""Pieces of the persistence protocol: the attacker's croppers, retraining, the paired CI."""

from __future__ import annotations

import numpy as np
import torch

from app.pipeline.faces import FaceDetector
from app.protect.generators import FaceGenerator
from app.protect.persistence import Victim, attacker_dataset, paired_margin_ci, retrain


def test_croppers_keep_the_face_of_a_clean_photo(photo: np.ndarray,
                                                 faces_detector: FaceDetector) -> None:
    face = faces_detector.detect([photo])[0][0]
    victims = [Victim("gh", photo, face.box, face.crop_box)]
    for cropper in ("oracle", "mtcnn", "cascade"):
        crops, counts = attacker_dataset({"gh": photo}, victims, cropper, faces_detector)
        assert counts["faces_found"] == 1, cropper
        assert crops.shape[1:] == (3, 64, 64)


def test_a_blanked_face_gives_the_detector_croppers_nothing(
        photo: np.ndarray, faces_detector: FaceDetector) -> None:
    face = faces_detector.detect([photo])[0][0]
    blank = np.full_like(photo, 128)
    victims = [Victim("gh", photo, face.box, face.crop_box)]
    _, mt = attacker_dataset({"gh": blank}, victims, "mtcnn", faces_detector)
    _, oracle = attacker_dataset({"gh": blank}, victims, "oracle", faces_detector)
    assert mt["faces_found"] == 0 and oracle["faces_found"] == 1


def test_retraining_changes_the_generator_but_not_the_original(tiny_gen: FaceGenerator) -> None:
    crops, swap = torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)
    before = [p.clone() for p in tiny_gen.parameters()]
    g2 = retrain(tiny_gen, crops, swap, steps=2, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_gen.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before, g2.parameters(), strict=True))
    assert retrain(tiny_gen, torch.zeros(0, 3, 64, 64), swap, 2, 0) is not tiny_gen


def test_paired_margin_ci() -> None:
    m, lo, hi = paired_margin_ci([1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1])
    assert m == 4 / 6 and 0 < lo <= m <= hi <= 1
    m, lo, hi = paired_margin_ci([1, 0, 1, 0], [1, 0, 1, 0])
    assert m == lo == hi == 0


def test_purification_of_an_unprotected_photo_leaves_no_effect(
        photo: np.ndarray, faces_detector: FaceDetector, tiny_gen: FaceGenerator) -> None:
    from app.protect.purification import PURIFIERS, purification_rows, to_markdown

    face = faces_detector.detect([photo])[0][0]
    victims = [Victim("gh", photo, face.box, face.crop_box)]
    rows = purification_rows([tiny_gen], faces_detector, {"clean": {"gh": photo}}, victims)
    assert {r["purifier"] for r in rows} == set(PURIFIERS)
    # Purified original vs the same purified photo: nothing left to measure.
    assert not any(r[f"success_{tiny_gen.name}"] for r in rows)
    assert all(r["mtcnn_found"] for r in rows)
    assert "| clean | jpeg90 |" in to_markdown(rows, 0.025, [tiny_gen.name])

"""Attacks at upload resolution (``--native-share``): g behind the service's shrink, and the
rows they add to an attack set."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from app.training.attack_set import attack_set, read_jsonl
from app.training.common import load_trained, read_rgb
from app.training.native_res import BehindShrink, native_overrides, shrink, stack
from app.training.train_detector import train_detector
from tests.training.test_train import build_tiny_dataset


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("native")
    build_tiny_dataset(root / "data", identities=8, per=2)
    train_detector(root / "data", root / "g", epochs=2, batch_size=8, lr=3e-3, patience=5,
                   device="cpu", seed=0)
    attack_set(root / "data", root / "g", root / "att", batch_size=8, device="cpu", seed=0,
               train_attacks=["pgd"], eps_grid=[16], native_share=1.0,
               overrides={"pgd": {"iters": 20}})
    yield root
    torch.set_num_threads(before)


def test_g_behind_the_shrink_scores_what_the_service_would_hand_g(work: Path) -> None:
    g, _ = load_trained(work / "g", torch.device("cpu"))
    size = g.input_size
    rgb = np.random.default_rng(0).integers(0, 256, (int(size * 1.7), int(size * 1.7), 3),
                                            dtype=np.uint8)
    with torch.no_grad():
        behind = BehindShrink(g, size)(stack([rgb]))
        direct = g(stack(shrink([rgb], size)))
    assert shrink([rgb], size)[0].shape == (size, size, 3)
    assert torch.allclose(behind, direct, atol=0.05)  # cv2 and its copy: half a grey level
    x = stack([rgb]).requires_grad_(True)
    BehindShrink(g, size)(x)[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients reach the upload's pixels


def test_attacking_behind_the_shrink_leaves_g_in_eval_mode(work: Path) -> None:
    from app.training.attack_batch import attack_crops

    g, _ = load_trained(work / "g", torch.device("cpu"))
    x = torch.rand(2, 3, g.input_size * 2, g.input_size * 2)
    attack_crops(BehindShrink(g, g.input_size), x, "pgd", 0.5, overrides={"iters": 2})
    # the attack restores its model's mode: a wrapper left in training mode would switch g's
    # BatchNorm to batch statistics for everything after it
    assert not g.training and not any(m.training for m in g.modules())


def test_native_rows_are_shrunk_attacks_that_fool_g_within_budget(work: Path) -> None:
    meta = json.loads((work / "att" / "dataset.json").read_text())
    rows = read_jsonl(work / "att" / "index.jsonl")
    native = [r for r in rows if r["label"] == 1]
    assert native, "no native-resolution attack fooled g: the set-up no longer exercises it"
    assert meta["native_share"] == 1.0
    assert sum(s["native_kept"] for s in meta["stats"].values()) == len(native)
    g, _ = load_trained(work / "g", torch.device("cpu"))
    for r in native:
        assert "+native" in r["attack"] and r["attack"].startswith("pgd@16")
        scale = float(r["attack"].rsplit("native", 1)[1])
        assert 1.2 <= scale < 2.2 + 1e-6
        img = read_rgb(work / "att" / r["path"])
        assert img.shape == (g.input_size, g.input_size, 3)
        assert r["linf"] <= 16 / 255 + 1e-6  # the shrink can only average the perturbation
        with torch.no_grad():
            p = float(g(stack([img])).softmax(1)[0, 1])
        assert p == pytest.approx(r["p_fake_after"], abs=1e-4) and p < meta["tau_fake"]
        orig = cv2.resize(read_rgb(work / "data" / r["orig_path"]), img.shape[:2][::-1],
                          interpolation=cv2.INTER_AREA)
        assert np.abs(img.astype(int) - orig).max() > 0


def test_ddn_bound_keeps_its_rms_at_the_larger_side() -> None:
    assert native_overrides("ddn", {"eps_l2": 2.0}, 256, 128)["eps_l2"] == 4.0
    assert native_overrides("pgd", {"eps": 0.1}, 256, 128) == {"eps": 0.1}

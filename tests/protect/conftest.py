"""Fixtures of the active-defence tests: a real face photo, tiny generators, a model store
holding one (random-init) generator, MTCNN loaded once."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from app.config import REPO_ROOT
from app.models.registry import get_spec
from app.pipeline.faces import FaceDetector
from app.protect.generators import FaceGenerator, FaceSwapAE

PHOTO = REPO_ROOT / "tests" / "data" / "grace_hopper.jpg"  # one real face, 512x512


def tiny_generator(seed: int = 0, width: int = 4) -> FaceGenerator:
    torch.manual_seed(seed)
    g = FaceGenerator(get_spec("faceswap_ae64_w12"), FaceSwapAE(width=width)).eval()
    for p in g.parameters():
        p.requires_grad_(False)
    return g


@pytest.fixture
def tiny_gen() -> FaceGenerator:
    return tiny_generator()


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="session")
def faces_detector() -> FaceDetector:
    return FaceDetector(device="cpu", max_faces=4, crop_size=64)


@pytest.fixture(scope="session")
def gen_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir with one random-init generator (fast to load, real manifest + sha256)."""
    from app.models.publishing import write_entry
    from app.models.registry import create_model

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    write_entry(folder, create_model("faceswap_ae64_w12"), "test-gen", version="test",
                dtype="float16", training={"swap_to": 0, "held_out": False})
    return folder

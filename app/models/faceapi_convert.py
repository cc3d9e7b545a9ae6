"""Convert face-api's tfjs copy of dlib's face-recognition ResNet into a safetensors state dict.

Source: the npm package ``@vladmandic/face-api`` (MIT), ``model/face_recognition_model.bin`` +
``face_recognition_model-weights_manifest.json`` (dlib's model, public domain). The manifest
lists tensors in the order their bytes follow each other in the ``.bin``; a tensor with a
``quantization`` entry is stored as uint8/uint16 with ``value = q * scale + min``, any other as
little-endian float32. Conv filters are HWIO ([kh, kw, cin, cout]); ``fc`` is [256, 128].

Reads a ``.tgz`` as ``npm pack`` writes it, an unpacked package folder, or the manifest file
itself; nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.models.face_resnet import FaceDescriptor

MANIFEST = "face_recognition_model-weights_manifest.json"
N_TENSORS = 117
_QUANT = {"uint8": np.uint8, "uint16": np.uint16}
_BLOCK = re.compile(r"^conv(32|64|128|256)_(down_out|down|\d+)$")
_PARAM = {"conv/filters": "conv.weight", "conv/bias": "conv.bias",
          "scale/weights": "scale", "scale/biases": "shift"}


class ConversionError(ValueError):
    """The input is not face-api's face-recognition model; the message says what is off."""


@dataclass(frozen=True)
class TfjsWeights:
    tensors: dict[str, np.ndarray]  # tfjs name → float32 array in tfjs layout
    source_sha256: str  # of the tarball, or of the .bin when read from a folder
    source: str


def read_tfjs(path: Path) -> TfjsWeights:
    """Tensors of face-api's face-recognition model from a tarball, folder or manifest path."""
    path = Path(path)
    if path.is_file() and tarfile.is_tarfile(path):
        manifest, blob = _from_tarball(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        mpath = _manifest_path(path)
        manifest = _parse_manifest(mpath.read_bytes(), str(mpath))
        blob = b"".join((mpath.parent / p).read_bytes() for p in _bin_paths(manifest))
        digest = hashlib.sha256(blob).hexdigest()
    return TfjsWeights(_decode(manifest, blob), digest, path.name)


def _manifest_path(path: Path) -> Path:
    for cand in (path, *(path / sub / MANIFEST for sub in (".", "model", "package/model"))):
        if cand.is_file() and cand.name == MANIFEST:
            return cand
    raise ConversionError(f"{path}: no {MANIFEST} here (give the npm tarball of "
                          "@vladmandic/face-api, its unpacked folder or that manifest)")


def _from_tarball(path: Path) -> tuple[list[dict[str, Any]], bytes]:
    with tarfile.open(path) as tar:
        members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        entry = members.get(f"model/{MANIFEST}")
        if entry is None:
            raise ConversionError(f"{path}: no model/{MANIFEST} inside; is this the "
                                  "@vladmandic/face-api package?")
        manifest = _parse_manifest(_read_member(tar, entry), f"{path}:{entry.name}")
        parts = []
        for rel in _bin_paths(manifest):
            member = members.get(f"model/{rel}")
            if member is None:
                raise ConversionError(f"{path}: manifest names model/{rel}, missing from it")
            parts.append(_read_member(tar, member))
    return manifest, b"".join(parts)


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    if f is None:
        raise ConversionError(f"cannot read {member.name} from the tarball")
    return f.read()


def _parse_manifest(raw: bytes, where: str) -> list[dict[str, Any]]:
    try:
        groups = json.loads(raw)
        weights = [w for g in groups for w in g["weights"]]
        _ = [(w["name"], w["shape"]) for w in weights]
    except (ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{where} is not a tfjs weights manifest ({e})") from e
    if len(weights) != N_TENSORS:
        raise ConversionError(f"{where} lists {len(weights)} tensors; face-api's face-"
                              f"recognition model has {N_TENSORS}")
    return groups


def _bin_paths(manifest: list[dict[str, Any]]) -> list[str]:
    paths = [p for g in manifest for p in g.get("paths", [])]
    for p in paths:  # the manifest is input: it must not walk out of its folder
        if "/" in p or "\\" in p or p in ("", ".", ".."):
            raise ConversionError(f"manifest weight path {p!r} is not a plain file name")
    return paths


def _decode(manifest: list[dict[str, Any]], blob: bytes) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for w in (w for g in manifest for w in g["weights"]):
        n = int(np.prod(w["shape"]))
        q = w.get("quantization")
        dtype = np.dtype(_QUANT[q["dtype"]]) if q else np.dtype("<f4")
        end = offset + n * dtype.itemsize
        if end > len(blob):
            raise ConversionError(f"weights end before tensor {w['name']!r} (truncated .bin)")
        arr = np.frombuffer(blob, dtype=dtype, count=n, offset=offset).astype(np.float32)
        if q:
            arr = arr * np.float32(q["scale"]) + np.float32(q["min"])
        out[w["name"]] = arr.reshape(w["shape"])
        offset = end
    if offset != len(blob):
        raise ConversionError(f"{len(blob) - offset} bytes left after the last tensor")
    return out


def torch_name(tfjs_name: str) -> str:
    """``conv64_down/conv1/scale/weights`` → ``backbone.conv64.0.conv1.scale`` etc."""
    if tfjs_name == "fc":
        return "fc.weight"
    block, _, rest = tfjs_name.partition("/")
    if block == "conv32_down":
        return f"backbone.stem.{_PARAM[rest]}"
    m = _BLOCK.match(block)
    if m is None:
        raise ConversionError(f"unexpected tensor {tfjs_name!r}")
    ch, pos = m.groups()
    conv, _, param = rest.partition("/")
    if pos == "down_out":
        return f"backbone.down_out.{conv}.{_PARAM[param]}"
    # conv32 has no down block (its blocks are _1.._3); wider stages start with _down.
    idx = 0 if pos == "down" else int(pos) - (1 if ch == "32" else 0)
    return f"backbone.conv{ch}.{idx}.{conv}.{_PARAM[param]}"


def to_state_dict(weights: TfjsWeights) -> dict[str, torch.Tensor]:
    """tfjs tensors → the state dict of :class:`FaceDescriptor` (layouts transposed)."""
    state = {}
    for name, arr in weights.tensors.items():
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if t.ndim == 4:
            t = t.permute(3, 2, 0, 1)  # HWIO → OIHW
        elif name == "fc":
            t = t.t()  # [256, 128] → Linear's [out, in]
        state[torch_name(name)] = t.contiguous()
    return state


def convert(path: Path) -> tuple[FaceDescriptor, TfjsWeights]:
    """The descriptor network with face-api's weights loaded (strict: every key must fit)."""
    weights = read_tfjs(path)
    net = FaceDescriptor()
    state = to_state_dict(weights)
    expected = net.state_dict()
    bad = [k for k, v in state.items() if k not in expected or expected[k].shape != v.shape]
    missing = sorted(set(expected) - set(state))
    if bad or missing:
        raise ConversionError(f"tensors that do not fit: {bad[:5]}; missing: {missing[:5]}")
    net.load_state_dict(state, strict=True)
    return net.eval(), weights

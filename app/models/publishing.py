"""Publishing into the model store: content-addressed weights (and ONNX graphs) first, then
the manifest, each written atomically, so a reader sees the old entry or the new one, never a
mix. Reading and verifying is ``app.models.store``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from app.models.manifest import THRESHOLD_KEY, Defaults, Manifest, ManifestEntry, PreprocessInfo
from app.models.registry import ModelSpec, Role, get_spec
from app.models.store import (
    MANIFEST_NAME,
    STORAGE_DTYPES,
    ModelStoreError,
    listed_entry,
    load_manifest,
    resolve_file,
)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same dir, fsync, then rename: readers never see a partial."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; weights must be readable by the service user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_blob(models_dir: Path, stem: str, suffix: str, data: bytes) -> tuple[str, str]:
    # Content-addressed names: the manifest never points at a half-replaced file.
    sha = hashlib.sha256(data).hexdigest()
    rel = f"{stem}-{sha[:12]}{suffix}"
    _atomic_write(models_dir / rel, data)
    return rel, sha


def save_manifest(models_dir: Path, manifest: Manifest) -> None:
    text = json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n"
    _atomic_write(Path(models_dir) / MANIFEST_NAME, text.encode("utf-8"))


def _state_bytes(net: nn.Module, dtype: str = "float32") -> bytes:
    # Clone: safetensors refuses tensors that share storage, and wants contiguous CPU memory.
    cast = STORAGE_DTYPES[dtype]
    state = {k: _stored(v.detach().to("cpu"), cast).clone().contiguous()
             for k, v in net.state_dict().items()}
    return save_safetensors(state)


def _stored(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Only floating tensors shrink; BatchNorm's num_batches_tracked stays an integer.
    return t.to(dtype) if t.is_floating_point() else t


def _resolve_net(model: nn.Module, architecture: str | None) -> tuple[nn.Module, ModelSpec]:
    """Accept a wrapped model (Detector/AdversarialDetector) or its raw net + architecture."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, ModelSpec) and hasattr(model, "net"):
        if architecture is not None and architecture != spec.name:
            raise ModelStoreError(f"model is a {spec.name!r}, not {architecture!r}")
        return model.net, spec
    if architecture is None:
        raise ModelStoreError("a raw network needs architecture=<registry name>")
    try:
        return model, get_spec(architecture)
    except KeyError as e:
        raise ModelStoreError(e.args[0]) from None


def write_entry(
    models_dir: Path,
    model: nn.Module,
    name: str,
    *,
    version: str,
    threshold: float = 0.5,
    trained: bool = True,
    description: str = "",
    metrics: dict | None = None,
    training: dict | None = None,
    architecture: str | None = None,
    onnx_path: Path | None = None,
    onnx_opset: int | None = None,
    set_default: bool | None = None,
    dtype: str = "float32",
    onnx_grad_path: Path | None = None,
) -> ManifestEntry:
    """Publish ``model`` as entry ``name``: weights (and ONNX) + manifest, each atomically.

    ``threshold`` is tau_fake for a detector, tau_attacked for an adversarial detector.
    ``set_default``: True makes it the default for its role, False never, None only when the
    role has no default yet. Replacing an entry deletes its old files once unreferenced.
    ``dtype="float16"`` halves the file (and what each republish adds to the git history);
    loading casts back to float32.
    Concurrent publishers are not serialised: publish from one process at a time.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    net, spec = _resolve_net(model, architecture)
    manifest = load_manifest(models_dir) if (models_dir / MANIFEST_NAME).exists() else Manifest()

    file, sha = _write_blob(models_dir, name, ".safetensors", _state_bytes(net, dtype))
    if (onnx_path or onnx_grad_path) and onnx_opset is None:
        raise ModelStoreError("onnx_opset is required with onnx_path / onnx_grad_path")
    onnx = _onnx_artifact(models_dir, name, ".onnx", onnx_path, onnx_opset)
    onnx_grad = _onnx_artifact(models_dir, name, ".grad.onnx", onnx_grad_path, onnx_opset)

    entry = ManifestEntry.model_validate(
        {
            "name": name,
            "role": spec.role,
            "architecture": spec.name,
            "version": version,
            "file": file,
            "sha256": sha,
            "onnx": onnx,
            "onnx_grad": onnx_grad,
            "preprocess": PreprocessInfo.from_preprocess(spec.preprocess),
            "thresholds": {THRESHOLD_KEY[spec.role]: threshold} if spec.role in THRESHOLD_KEY
            else {},
            "dtype": dtype,
            "trained": trained,
            "description": description,
            "training": training or {},
            "metrics": metrics or {},
        }
    )
    old = manifest.find(name)
    models = [entry if m.name == name else m for m in manifest.models]
    if old is None:
        models.append(entry)
    defaults = _updated_defaults(manifest.default, spec.role, name, set_default)
    new_manifest = Manifest(default=defaults, models=models)
    save_manifest(models_dir, new_manifest)
    if old is not None:
        _remove_unreferenced(models_dir, new_manifest, old)
    return entry


def attach_onnx_grad(models_dir: Path, name: str, path: Path, opset: int) -> ManifestEntry:
    """Give the listed detector ``name`` its logits + gradient graph (replacing an older one)."""
    manifest = load_manifest(models_dir)
    old = listed_entry(manifest, name)
    if old.role != "detector":
        raise ModelStoreError(f"model {name!r} is a {old.role}; only detectors get a grad graph")
    grad = _onnx_artifact(models_dir, name, ".grad.onnx", path, opset)
    entry = ManifestEntry.model_validate({**old.model_dump(mode="json"), "onnx_grad": grad})
    new_manifest = Manifest(default=manifest.default,
                            models=[entry if m.name == name else m for m in manifest.models])
    save_manifest(models_dir, new_manifest)
    _remove_unreferenced(models_dir, new_manifest, old)
    return entry


def set_default(models_dir: Path, role: Role, name: str) -> None:
    """Make the listed model ``name`` the served default for ``role``."""
    manifest = load_manifest(models_dir)
    entry = listed_entry(manifest, name)
    if entry.role != role:
        raise ModelStoreError(f"model {name!r} is a {entry.role}, not a {role}")
    defaults = _updated_defaults(manifest.default, role, name, True)
    save_manifest(models_dir, Manifest(default=defaults, models=manifest.models))


def _updated_defaults(
    current: Defaults, role: Role, name: str, set_default: bool | None
) -> Defaults:
    if role not in ("detector", "adversarial"):
        return current  # backbones are never a serving default
    if set_default or (set_default is None and getattr(current, role) is None):
        return current.model_copy(update={role: name})
    return current


def _onnx_artifact(models_dir: Path, name: str, suffix: str, path: Path | None,
                   opset: int | None) -> dict[str, Any] | None:
    if path is None:
        return None
    file, sha = _write_blob(models_dir, name, suffix, Path(path).read_bytes())
    return {"file": file, "sha256": sha, "opset": opset}


def _files(entry: ManifestEntry) -> list[str]:
    return [entry.file] + [a.file for a in (entry.onnx, entry.onnx_grad) if a is not None]


def _remove_unreferenced(models_dir: Path, manifest: Manifest, old: ManifestEntry) -> None:
    referenced = {f for m in manifest.models for f in _files(m)}
    stale = _files(old)
    for rel in stale:
        if rel not in referenced:
            resolve_file(models_dir, rel).unlink(missing_ok=True)

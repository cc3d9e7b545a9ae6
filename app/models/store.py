"""Model store: ``models/manifest.json`` + safetensors weights, verified before anything loads.

Trust rule: a weights file is only read if the manifest lists it and its sha256 matches; the
bytes that were hashed are the bytes that get parsed (no window to swap the file), and they are
parsed by safetensors, never by pickle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors.torch import load as load_safetensors
from torch import nn

from app.models.manifest import (
    Manifest,
    ManifestEntry,
)
from app.models.registry import ModelSpec, create_model, get_spec
from app.models.wrappers import AdversarialDetector, Detector
from app.schemas import ModelInfo, Thresholds

MANIFEST_NAME = "manifest.json"
STORAGE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}
PLACEHOLDER_HINT = ("point DFSHIELD_MODELS_DIR at a folder with weights, train some with "
                    "`uv run dfshield train all --preset demo --models-dir DIR`, or create "
                    "placeholder weights with `uv run python -m app.models.placeholder DIR`")


class ModelStoreError(Exception):
    """The model store is missing, inconsistent or untrusted; the message names the fix."""


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(models_dir: Path) -> Manifest:
    models_dir = Path(models_dir)
    path = models_dir / MANIFEST_NAME
    if not models_dir.is_dir():
        raise ModelStoreError(
            f"models directory {models_dir} does not exist; set DFSHIELD_MODELS_DIR or "
            f"{PLACEHOLDER_HINT}"
        )
    if not path.is_file():
        raise ModelStoreError(f"no {MANIFEST_NAME} in {models_dir}; {PLACEHOLDER_HINT}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelStoreError(f"{path} is not valid JSON ({e}); fix or re-publish it") from e
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        raise ModelStoreError(f"{path} does not match the manifest schema:\n{e}") from e


def resolve_file(models_dir: Path, rel: str) -> Path:
    """Path of a manifest-listed file, refusing anything (incl. symlinks) outside models_dir."""
    root = Path(models_dir).resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise ModelStoreError(f"file {rel!r} resolves outside {root}; refusing to load it")
    return path


def read_verified(models_dir: Path, rel: str, sha256: str) -> bytes:
    """Bytes of a listed file after checking its sha256 (also for ONNX Runtime sessions)."""
    path = resolve_file(models_dir, rel)
    if not path.is_file():
        raise ModelStoreError(
            f"{rel} is listed in {MANIFEST_NAME} but missing from {models_dir}; restore it "
            "or re-publish the model"
        )
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ModelStoreError(
            f"sha256 mismatch for {rel}: manifest says {sha256}, file has {actual}; the file "
            "was modified or corrupted: restore it or re-publish the model "
            "(app.models.publishing.write_entry)"
        )
    return data


def check_entry(entry: ManifestEntry) -> ModelSpec:
    """The registry spec for an entry, refusing unknown architectures or disagreeing metadata."""
    try:
        spec = get_spec(entry.architecture)
    except KeyError as e:
        raise ModelStoreError(
            f"model {entry.name!r}: {e.args[0]}; fix its 'architecture' in {MANIFEST_NAME} "
            "or upgrade dfshield to a version that registers it"
        ) from None
    if spec.role != entry.role:
        raise ModelStoreError(
            f"model {entry.name!r} is listed as {entry.role!r} but architecture "
            f"{spec.name!r} is a {spec.role!r}; fix 'role' in {MANIFEST_NAME}"
        )
    if not entry.preprocess.matches(spec.preprocess):
        raise ModelStoreError(
            f"model {entry.name!r}: manifest preprocess {entry.preprocess.model_dump()} "
            f"disagrees with the registry's {spec.preprocess} for {spec.name!r}; the weights "
            "were trained for other inputs: re-publish them with the right architecture"
        )
    return spec


def load_model(
    models_dir: Path, entry: ManifestEntry | str, device: torch.device | str = "cpu"
) -> nn.Module:
    """Verified, wrapped (resize + normalise inside) model in eval mode on ``device``."""
    listed = listed_entry(load_manifest(models_dir), entry)
    check_entry(listed)
    state = load_safetensors(read_verified(models_dir, listed.file, listed.sha256))
    # float16-stored weights compute in float32 like every other model.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model = create_model(listed.architecture)
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelStoreError(
            f"weights {listed.file} do not fit architecture {listed.architecture!r}: {e}; "
            "re-publish them with the architecture they were trained with"
        ) from e
    return model.to(device).eval()


def listed_entry(manifest: Manifest, entry: ManifestEntry | str) -> ManifestEntry:
    name = entry if isinstance(entry, str) else entry.name
    listed = manifest.find(name)
    if listed is None:
        known = ", ".join(m.name for m in manifest.models) or "none"
        raise ModelStoreError(f"model {name!r} is not listed in {MANIFEST_NAME} (listed: {known})")
    if isinstance(entry, ManifestEntry) and (entry.file, entry.sha256) != (
        listed.file,
        listed.sha256,
    ):
        raise ModelStoreError(
            f"model {name!r}: file/sha256 differ from {MANIFEST_NAME}; only files listed "
            "there are loaded: publish the model with app.models.publishing.write_entry"
        )
    return listed


@dataclass
class ModelBundle:
    detector: Detector
    adversarial: AdversarialDetector
    detector_entry: ManifestEntry
    adversarial_entry: ManifestEntry

    def model_infos(self) -> list[ModelInfo]:
        return [model_info(self.detector_entry), model_info(self.adversarial_entry)]

    def thresholds(self) -> Thresholds:
        """The thresholds the published models were calibrated with."""
        return Thresholds(
            tau_fake=self.detector_entry.threshold,
            tau_attacked=self.adversarial_entry.threshold,
        )


def load_bundle(
    models_dir: Path,
    device: torch.device | str = "cpu",
    detector: str | None = None,
    adversarial: str | None = None,
) -> ModelBundle:
    """g and d by name, defaulting to the manifest's ``default`` pair."""
    manifest = load_manifest(models_dir)
    entries = {}
    for role, name in (("detector", detector), ("adversarial", adversarial)):
        name = name or getattr(manifest.default, role)
        if name is None:
            raise ModelStoreError(
                f"no {role} named and no default.{role} in {MANIFEST_NAME}; publish one"
            )
        entry = listed_entry(manifest, name)
        if entry.role != role:
            raise ModelStoreError(f"model {name!r} is a {entry.role}, not a {role}")
        entries[role] = entry
    return ModelBundle(
        detector=load_model(models_dir, entries["detector"], device),
        adversarial=load_model(models_dir, entries["adversarial"], device),
        detector_entry=entries["detector"],
        adversarial_entry=entries["adversarial"],
    )


def model_info(entry: ManifestEntry) -> ModelInfo:
    return ModelInfo(
        name=entry.name,
        role=entry.role,
        architecture=entry.architecture,
        version=entry.version,
        sha256=entry.sha256,
        trained=entry.trained,
    )


@dataclass(frozen=True)
class EntryStatus:
    entry: ManifestEntry
    is_default: bool
    present: bool
    sha_ok: bool | None  # None when not verified


def list_entries(models_dir: Path, verify: bool = False) -> list[EntryStatus]:
    """Every manifest entry with whether it is a default, present, and (optionally) intact."""
    manifest = load_manifest(models_dir)
    defaults = {manifest.default.detector, manifest.default.adversarial}
    rows = []
    for e in manifest.models:
        path = resolve_file(models_dir, e.file)
        present = path.is_file()
        sha_ok = (sha256_file(path) == e.sha256) if verify and present else None
        rows.append(EntryStatus(e, e.name in defaults, present, sha_ok))
    return rows

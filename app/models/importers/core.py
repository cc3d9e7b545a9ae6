"""``dfshield models import``: a published checkpoint → a verified model-store entry.

load the source (restricted unpickler or weights-only) → convert its keys to a registry
architecture → load them strictly → parity against the source on real face crops → write
safetensors + manifest entry → load it back through the store and check it is the same model.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.models.importers import ffpp_xception, icpr_effb4st
from app.models.importers.errors import CheckpointImportError
from app.models.importers.parity import BUNDLED_PORTRAITS, face_crops, max_logit_difference
from app.models.manifest import ManifestEntry
from app.models.publishing import write_entry
from app.models.registry import create_model
from app.models.store import MANIFEST_NAME, load_manifest, load_model, sha256_file
from app.models.wrappers import Detector

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # ManifestEntry.name
PARITY_TOLERANCE = 1e-4
DEFAULT_TAU_FAKE = 0.5


@dataclass(frozen=True)
class Converted:
    """A source checkpoint read and converted: registry weights + the source's own forward."""

    state: dict[str, torch.Tensor]
    source: Callable[[torch.Tensor], torch.Tensor]  # normalised batch → [B, 2] source logits


@dataclass(frozen=True)
class ImportFormat:
    name: str
    architecture: str  # registry name the weights are converted to
    pickled: bool  # a whole-model pickle: needs --trust-pickle
    loader: str  # how the file is read, for the manifest
    title: str
    example: str  # the published file name(s) it is for
    read: Callable[[Path], Converted]


def _read_ffpp(path: Path) -> Converted:
    source = ffpp_xception.load_source(path)
    return Converted(ffpp_xception.convert(source),
                     lambda x: ffpp_xception.source_logits(source, x))


def _read_icpr(path: Path) -> Converted:
    state = icpr_effb4st.load_source(path)
    return Converted(icpr_effb4st.convert(state),
                     lambda x: icpr_effb4st.source_logits(state, x))


FORMATS: dict[str, ImportFormat] = {
    f.name: f
    for f in (
        ImportFormat("ffpp-xception", "xception", True,
                     "restricted unpickler (torch layers + FaceForensics++ stand-in classes)",
                     "FaceForensics++ (Rössler et al.) face-crop Xception",
                     "faceforensics++_models_subset/face_detection/xception/all_c23.p",
                     _read_ffpp),
        ImportFormat("icpr-effb4st", "efficientnet_b4_st_tf", False,
                     "torch.load(weights_only=True)",
                     "icpr2020dfdc (Bonettini et al.) EfficientNetB4ST",
                     "EfficientNetB4ST_{FFPP,DFDC}_bestval-*.pth", _read_icpr),
    )
}


@dataclass(frozen=True)
class ImportReport:
    entry: ManifestEntry
    parity: float  # max |Δlogit| against the source on the face crops
    crops: int
    models_dir: Path
    is_default: bool
    note: str | None = None  # e.g. the served d was trained on another g's maps


def import_checkpoint(
    fmt: str,
    path: Path,
    name: str,
    models_dir: Path,
    *,
    trust_pickle: bool = False,
    set_default: bool = False,
    replace: bool = False,
    onnx: bool = False,
    images: Sequence[Path] | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> ImportReport:
    """Import ``path`` as detector ``name`` into ``models_dir``.

    Every refusal (format, trust, layout, parity) happens before anything is written. The entry
    becomes the default detector only with ``set_default``.
    """
    path, models_dir = Path(path), Path(models_dir)
    spec = _checked_format(fmt, path, trust_pickle)
    _check_name_free(models_dir, name, replace)
    sha = sha256_file(path)
    converted = spec.read(path)
    model = _registry_model(spec.architecture, converted.state)
    crops = face_crops(images or BUNDLED_PORTRAITS, model.input_size)
    parity = _checked_parity(model, converted, crops, tolerance, path, fmt)
    metrics = {"import_parity": {"max_abs_logit_diff": parity, "face_crops": len(crops),
                                 "tolerance": tolerance}}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_info = (_export_onnx(model, Path(tmp) / f"{name}.onnx", crops, tolerance)
                     if onnx else None)
        if onnx_info is not None:
            metrics["onnx_parity"] = onnx_info["parity"]
        entry = write_entry(
            models_dir, model, name, version=f"{fmt}-{sha[:12]}", threshold=DEFAULT_TAU_FAKE,
            trained=True, description=_description(spec, path, sha), metrics=metrics,
            training=_provenance(spec, path, sha, images), set_default=set_default,
            onnx_path=Path(onnx_info["file"]) if onnx_info else None,
            onnx_opset=onnx_info["opset"] if onnx_info else None,
        )
    _verify_stored(models_dir, entry, model, crops)
    default = load_manifest(models_dir).default.detector == name
    note = _pairing_note(models_dir, name) if default else None
    return ImportReport(entry, parity, len(crops), models_dir, default, note)


def _checked_parity(model: Detector, converted: Converted, crops: torch.Tensor, tol: float,
                    path: Path, fmt: str) -> float:
    parity = max_logit_difference(model, converted.source, crops)
    if not parity <= tol:  # also catches NaN
        raise CheckpointImportError(
            "parity_failed", f"max |Δlogit| = {parity:.3g} > {tol:g} against the source on "
            f"{len(crops)} face crops: {path.name} is not a plain {fmt} checkpoint")
    return parity


@torch.no_grad()
def _export_onnx(model: Detector, path: Path, crops: torch.Tensor, tol: float) -> dict[str, Any]:
    """ONNX for the ONNX Runtime backend, checked against torch on the same face crops.

    Not on uniform noise as ``train publish`` checks: a detector fed noise can give logits in
    the thousands, where float32 rounding alone exceeds an absolute tolerance.
    """
    import onnxruntime as ort

    from app.training.export import export_onnx

    info = export_onnx(model, path, check=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(sess.run(["logits"], {"crop": crops.numpy()})[0])
    diff = float((out - model(crops)).abs().max())
    if not diff <= tol:
        raise CheckpointImportError(
            "onnx_parity_failed", f"ONNX Runtime logits differ from torch by {diff:.3g} "
            f"(> {tol:g}) on the face crops; import without --onnx and serve with torch")
    info["parity"] = {"max_abs_diff_face_crops": diff, "atol": tol, "ok": True}
    return info


def _checked_format(fmt: str, path: Path, trust_pickle: bool) -> ImportFormat:
    if fmt not in FORMATS:
        raise CheckpointImportError(
            "bad_format", f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if not Path(path).is_file():
        raise CheckpointImportError("not_found", f"no such file: {path}")
    spec = FORMATS[fmt]
    if spec.pickled and not trust_pickle:
        raise CheckpointImportError(
            "untrusted_pickle", f"{Path(path).name} is a pickled whole model; pass "
            "--trust-pickle if you trust where it came from (it is read with a restricted "
            "unpickler that admits only torch layers and the expected class names)")
    return spec


def _check_name_free(models_dir: Path, name: str, replace: bool) -> None:
    if not NAME_RE.fullmatch(name):
        raise CheckpointImportError(
            "bad_name", f"--name {name!r} must be letters, digits, '_', '.' or '-'")
    if replace or not (Path(models_dir) / MANIFEST_NAME).is_file():
        return
    if load_manifest(models_dir).find(name) is not None:
        raise CheckpointImportError(
            "name_taken", f"{models_dir} already has a model named {name!r}; choose another "
            "--name or pass --replace")


def _registry_model(architecture: str, state: dict[str, torch.Tensor]) -> Detector:
    model = create_model(architecture)
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = [line.strip() for line in str(e).splitlines() if line.strip()][1:3]
        raise CheckpointImportError(
            "bad_checkpoint", f"the weights do not fit {architecture!r}: {' '.join(first)}"
        ) from None
    return model.eval()


def _description(spec: ImportFormat, path: Path, sha: str) -> str:
    return (f"imported {spec.title} from {path.name} (sha256 {sha}, format "
            f"{spec.name}); tau_fake = {DEFAULT_TAU_FAKE} is the source's own decision rule, "
            "not calibrated on your data")


def _provenance(spec: ImportFormat, path: Path, sha: str,
                images: Sequence[Path] | None) -> dict[str, Any]:
    from app.training.common import command_line, library_versions

    return {
        "kind": "imported", "format": spec.name, "origin": f"{spec.title}: {spec.example}",
        "source_file": path.name, "source_sha256": sha, "source_bytes": path.stat().st_size,
        "loaded_with": spec.loader, "class_order": ["real", "fake"],
        "tau_fake": f"{DEFAULT_TAU_FAKE}: argmax of [real, fake] / z > 0, as the source decides",
        "parity_images": [str(p) for p in (images or BUNDLED_PORTRAITS)],
        "import_command": command_line(), "versions": library_versions(),
    }


def _pairing_note(models_dir: Path, name: str) -> str | None:
    """Say so when the served d was not trained on this g's XAI maps (it then means little)."""
    manifest = load_manifest(models_dir)
    d = manifest.find(manifest.default.adversarial or "")
    if d is None or d.training.get("paired_detector") == name:
        return None
    return (f"the default d {d.name!r} was trained on maps of "
            f"{d.training.get('paired_detector') or 'another detector'!r}, not {name!r}: train "
            f"one with `dfshield train attack DATA {name} OUT` + `dfshield train adversarial "
            f"OUT RUN --detector {name}`, then `dfshield train publish {name} RUN`")


@torch.no_grad()
def _verify_stored(models_dir: Path, entry: ManifestEntry, model: Detector,
                   crops: torch.Tensor) -> None:
    # Trust but verify: the store must serve exactly the model that passed parity.
    stored = load_model(models_dir, entry.name)
    if not torch.equal(stored(crops), model(crops)):
        raise CheckpointImportError(
            "store_mismatch", f"{entry.name} reloaded from {models_dir} differs from the "
            "converted model")

"""Publish trained g and d to the model store (``dfshield train publish``).

Each model goes in as safetensors + ONNX (parity-checked) + a manifest entry written by
``app.models.publishing.write_entry``: validated threshold, data provenance, metrics, the command
lines that trained and published it. The published pair is then loaded back through
``load_bundle`` (hash check, strict weights) before this returns.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torch import nn

from app.models.publishing import set_default as set_default_model
from app.models.publishing import write_entry
from app.models.store import load_bundle, load_manifest
from app.models.wrappers import Detector
from app.training.common import (
    STORE_NAME_RE,
    RunRecord,
    StoredModelRecord,
    command_line,
    load_stored,
    load_trained,
)
from app.training.export import DEFAULT_OPSET, export_onnx
from app.training.export_grad import try_export_grad


def _name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_.-" else "-" for c in text).strip("-.")


def _training_info(record: RunRecord, extra: dict[str, Any]) -> dict[str, Any]:
    keep = ("kind", "arch", "arch_kwargs", "input_size", "seed", "args", "data", "versions",
            "best_epoch", "epochs_run", "history", "xai", "mode", "backbone_init",
            "detector_arch", "crop_size", "timings_s", "started", "finished")
    info = {k: record.get(k) for k in keep if record.get(k) is not None}
    info.update(run_dir=str(record.run_dir.resolve()), command=record.get("command"),
                publish_command=command_line(), **extra)
    return info


def _publish_one(
    models_dir: Path,
    model: nn.Module,
    record: RunRecord,
    name: str,
    version: str,
    threshold: float,
    description: str,
    onnx_size: int | None,
    opset: int,
    with_onnx: bool,
    set_default: bool,
    metrics: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        onnx_info = grad_info = None
        if with_onnx:
            onnx_info = export_onnx(model, Path(tmp) / f"{name}.onnx", opset, onnx_size)
            extra = {**extra, "onnx_input_size": onnx_info["input_size"],
                     "onnx_inputs": onnx_info["inputs"], "onnx_parity": onnx_info["parity"]}
            if isinstance(model, Detector):  # Saliency in ONNX Runtime, where it matches
                grad_info, why = try_export_grad(model, Path(tmp) / f"{name}.grad.onnx", opset)
                extra["onnx_grad_parity" if grad_info else "onnx_grad_skipped"] = (
                    grad_info["parity"] if grad_info else why)
        entry = write_entry(
            models_dir, model, name, version=version, threshold=threshold, trained=True,
            description=description, metrics=metrics,
            training=_training_info(record, extra),
            onnx_path=Path(onnx_info["file"]) if onnx_info else None,
            onnx_opset=opset if onnx_info else None, set_default=set_default,
            onnx_grad_path=Path(grad_info["file"]) if grad_info else None,
        )
    return entry.model_dump(mode="json")


def publish(
    detector_run: Path,
    adversarial_run: Path,
    models_dir: Path = Path("models"),
    set_default: bool = True,
    detector_name: str | None = None,
    adversarial_name: str | None = None,
    version: str | None = None,
    opset: int = DEFAULT_OPSET,
    onnx: bool = True,
    report: Path | None = None,
) -> dict[str, Any]:
    """Publish g (``detector_run``) and d (``adversarial_run``); returns both manifest entries.

    ``detector_run`` may name a detector already in ``models_dir`` (e.g. one imported with
    ``dfshield models import``): then only d is published, paired with it.
    ``report``: an evaluate ``report.json`` whose headline numbers join the entries' metrics.
    """
    detector_run, adversarial_run, models_dir = (
        Path(detector_run), Path(adversarial_run), Path(models_dir))
    g, g_rec = _load_detector(detector_run, models_dir)
    d, d_rec = load_trained(adversarial_run)
    if d_rec.get("detector_arch") not in (None, g.spec.name):
        raise ValueError(
            f"{adversarial_run} was trained on maps of a {d_rec['detector_arch']!r} detector, "
            f"not {g.spec.name!r}: publish it with the detector run it was trained with"
        )
    version = version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    summary = _report_summary(report)
    g_name = detector_name or _name(f"dfshield-g-{g.spec.name}")
    d_name = adversarial_name or _name(
        f"dfshield-d-{d.spec.name}-{d_rec.get('xai', 'saliency')}-{d_rec.get('mode', 'finetune')}")
    stored = _stored_in(g_rec, models_dir)
    if stored is not None:
        g_name, g_entry = stored, load_manifest(models_dir).get(stored).model_dump(mode="json")
    else:
        g_entry = _publish_one(
            models_dir, g, g_rec, g_name, version, float(g_rec["thresholds"]["tau_fake"]),
            f"deepfake detector g ({g.spec.name}), trained by dfshield; tau_fake chosen on val",
            None, opset, onnx, set_default,
            {**g_rec.get("metrics", {}), **summary.get("g", {})}, {})
    d_entry = _publish_one(
        models_dir, d, d_rec, d_name, version, float(d_rec["thresholds"]["tau_attacked"]),
        f"adversarial detector d ({d.spec.name}, {d_rec.get('xai')} maps of {g.spec.name}, "
        f"{d_rec.get('mode')}); tau_attacked chosen on val",
        g.input_size, opset, onnx, set_default,
        {**d_rec.get("metrics", {}), **summary.get("d", {})},
        {"paired_detector": g_name, "xai_method": d_rec.get("xai")})
    if stored is not None and set_default:
        set_default_model(models_dir, "detector", g_name)  # d only makes sense next to its g
    # Trust but verify: the store must load exactly what was just written.
    load_bundle(models_dir, "cpu", detector=g_name, adversarial=d_name)
    return {"detector": g_entry, "adversarial": d_entry, "models_dir": str(models_dir)}


def _load_detector(ref: Path, models_dir: Path) -> tuple[nn.Module, RunRecord]:
    # A name (not a run dir) is looked up in the store being published to.
    if not ref.is_dir() and STORE_NAME_RE.fullmatch(str(ref)):
        return load_stored(str(ref), "cpu", models_dir)
    return load_trained(ref)


def _stored_in(record: RunRecord, models_dir: Path) -> str | None:
    """Entry name when g came from this very model store (nothing to publish), else None."""
    if not isinstance(record, StoredModelRecord):
        return None
    info = record["model_store"]
    return info["name"] if Path(info["dir"]).resolve() == models_dir.resolve() else None


def _report_summary(report: Path | None) -> dict[str, Any]:
    if report is None:
        return {}
    data = json.loads(Path(report).read_text(encoding="utf-8"))
    targets = data.get("targets", [])
    return {"g": {"evaluation": {"report": str(report), "targets": targets,
                                 "detector": data.get("detector", {}).get("clean")}},
            "d": {"evaluation": {"report": str(report), "targets": targets}}}

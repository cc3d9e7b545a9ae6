"""The model pairs ``dfshield bench all`` times: the bundled store and the paper's
architectures (untrained placeholders: Xception g at 299 px, Detect-ResNet50 d), each as an
:class:`Analyzer`, plus ONNX Runtime scorers where the pair exports.

The placeholder store and its ONNX graphs are written once into the cache folder
(deterministic: seed 0) and reused by later runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from app.config import Settings, XaiFused
from app.models.manifest import ManifestEntry, OnnxArtifact
from app.models.placeholder import write_placeholders
from app.models.store import ModelBundle, load_bundle, sha256_file
from app.pipeline.analyze import Analyzer, resolve_thresholds
from app.runtime import AttackScorer, FakeScorer
from app.schemas import Thresholds

log = logging.getLogger(__name__)

PAPER_DETECTOR = "xception"
PAPER_ADVERSARIAL = "detect_resnet50"
ONNX_OPSET = 17


@dataclass
class ArchSet:
    """One g/d pair under test; ``onnx`` is None with ``onnx_skip`` saying why."""

    label: str  # "bundled" or "paper"
    analyzer: Analyzer  # torch, xai_fused=auto, the pair's own thresholds
    onnx: tuple[FakeScorer, AttackScorer] | None
    onnx_provider: str
    onnx_skip: str
    # The pair served with DFSHIELD_BACKEND=onnx (g's gradient graph when it has one).
    onnx_analyzer: Analyzer | None = None

    def onnx_like(self, thresholds: Thresholds, xai_fused: XaiFused) -> Analyzer | None:
        """Another ONNX-backend Analyzer of this pair (e.g. every face called real)."""
        a = self.onnx_analyzer
        if a is None or a.models_dir is None:
            return None
        return Analyzer(a.bundle, a.device, thresholds, "saliency", amp=False,
                        xai_fused=xai_fused, backend="onnx", models_dir=a.models_dir,
                        threads=a.threads)

    @property
    def g_arch(self) -> str:
        return self.analyzer.bundle.detector_entry.architecture

    @property
    def d_arch(self) -> str:
        return self.analyzer.bundle.adversarial_entry.architecture


def bundled_set(settings: Settings, device: torch.device, threads: int) -> ArchSet:
    """The served pair (DFSHIELD_MODELS_DIR's defaults); ONNX from its published graphs."""
    bundle = load_bundle(settings.models_dir, device)
    analyzer = Analyzer(bundle, device, resolve_thresholds(bundle, settings), "saliency",
                        amp=False, xai_fused="auto")
    return _with_onnx("bundled", analyzer, settings.models_dir, device, threads)


def paper_set(cache_dir: Path, settings: Settings, device: torch.device,
              threads: int) -> ArchSet:
    """Untrained Xception g + Detect-ResNet50 d, written once into ``cache_dir/paper-store``
    by :func:`app.models.placeholder.write_placeholders`, ONNX-exported where they export."""
    store = Path(cache_dir) / "paper-store"
    names = (f"placeholder-detector-{PAPER_DETECTOR}",
             f"placeholder-adversarial-{PAPER_ADVERSARIAL}")
    if not (store / "manifest.json").is_file():
        write_placeholders(store, 0, PAPER_DETECTOR, PAPER_ADVERSARIAL)
    bundle = load_bundle(store, device, *names)
    analyzer = Analyzer(bundle, device, resolve_thresholds(bundle, settings), "saliency",
                        amp=False, xai_fused="auto")
    try:
        _export_onnx(store, bundle)
    except Exception as exc:  # noqa: BLE001 - any exporter failure is a skip with its reason
        log.warning("ONNX export of the paper pair failed: %s", exc)
    return _with_onnx("paper", analyzer, store, device, threads)


def _export_onnx(store: Path, bundle: ModelBundle) -> None:
    """Give the placeholder entries ONNX artifacts (once): g at its size, d at g's size, and
    g's gradient graph (unchecked: random-init gradients say nothing about parity, and the
    graphs are for timing)."""
    from app.training.export import export_onnx  # onnx + exporter only load when needed
    from app.training.export_grad import export_grad_onnx

    size = bundle.detector.input_size
    for role, model in (("detector", bundle.detector), ("adversarial", bundle.adversarial)):
        entry = bundle.detector_entry if role == "detector" else bundle.adversarial_entry
        rel = f"{entry.name}.onnx"
        if not (store / rel).is_file():
            export_onnx(model, store / f".{rel}.tmp", ONNX_OPSET, input_size=size, check=False)
            (store / f".{rel}.tmp").replace(store / rel)
        update = {"onnx": _artifact(store, rel)}
        if role == "detector":
            grad_rel = f"{entry.name}.grad.onnx"
            if not (store / grad_rel).is_file():
                export_grad_onnx(model, store / f".{grad_rel}.tmp", ONNX_OPSET, check=False)
                (store / f".{grad_rel}.tmp").replace(store / grad_rel)
            update["onnx_grad"] = _artifact(store, grad_rel)
        updated = entry.model_copy(update=update)
        if role == "detector":
            bundle.detector_entry = updated
        else:
            bundle.adversarial_entry = updated


def _artifact(store: Path, rel: str) -> OnnxArtifact:
    return OnnxArtifact(file=rel, sha256=sha256_file(store / rel), opset=ONNX_OPSET)


def _with_onnx(label: str, analyzer: Analyzer, models_dir: Path, device: torch.device,
               threads: int) -> ArchSet:
    entries: tuple[ManifestEntry, ...] = (analyzer.bundle.detector_entry,
                                          analyzer.bundle.adversarial_entry)
    missing = [e.name for e in entries if e.onnx is None]
    if missing:
        reason = f"no ONNX graph for {', '.join(missing)} (export failed or not published)"
        log.warning("%s pair: ONNX Runtime skipped: %s", label, reason)
        return ArchSet(label, analyzer, None, "", reason)
    try:  # the served ONNX pair: its g and d are the ORT scorers the sections time
        served = Analyzer(analyzer.bundle, device, analyzer.thresholds, "saliency", amp=False,
                          xai_fused="auto", backend="onnx", models_dir=models_dir,
                          threads=threads)
    except Exception as exc:  # noqa: BLE001 - a session that will not load is a logged skip
        log.warning("%s pair: ONNX Runtime skipped: %s", label, exc)
        return ArchSet(label, analyzer, None, "", f"ONNX Runtime failed to load: {exc}")
    return ArchSet(label, analyzer, (served.g, served.d), served.runtime, "", served)

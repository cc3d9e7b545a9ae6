"""g → XAI → d on a batch of face crops, and assembly of per-frame / per-file results.

``Analyzer.score_crops`` is the one batched model pass; the CLI and the service worker both
use it (the worker feeds it crops collected across requests).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from app.config import Settings, XaiFused
from app.device import configure_threads, resolve_device
from app.media import SampledFrame
from app.models.fast import folded_model
from app.models.store import ModelBundle, load_bundle
from app.models.wrappers import Detector
from app.pipeline.explain import Explainer, attribution_to_map, map_to_image
from app.pipeline.faces import DetectedFace
from app.pipeline.fused import (
    ALL_REAL,
    FUSED_BREAK_EVEN,
    FUSED_METHODS,
    TargetRule,
    fused_pass,
    fused_pays,
)
from app.pipeline.quality import QualityRule
from app.pipeline.tracks import summarize_persons
from app.pipeline.verdicts import face_verdict, frame_verdict, rules, summarize
from app.runtime import BACKENDS, AttackScorer, Backend, FakeScorer
from app.schemas import (
    AnalysisResult,
    FacePublic,
    FramePublic,
    MediaInfo,
    ModelInfo,
    Thresholds,
    Verdict,
)

if TYPE_CHECKING:  # onnxruntime loads only with the onnx backend
    from app.runtime.onnx_grad import OnnxGradGraph

log = logging.getLogger(__name__)

UNTRAINED_WARNING = (
    "models are UNTRAINED placeholders (random weights): scores and verdicts are meaningless"
)


@dataclass
class FaceScore:
    p_fake: float
    p_attacked: float | None
    verdict: Verdict  # from the scores alone; build_frame makes flagged faces uncertain
    # uint8 HxWx3 map image: d's map of the real logit for real-called faces ("real"), or with
    # explain_fake the fake logit's map for fake-called ones ("fake"); else None.
    xai_map: np.ndarray | None
    xai_target: Literal["real", "fake"] | None = None


def crops_to_tensor(crops: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """uint8 HxWx3 RGB crops (same size) → float [B,3,H,W] in [0,1]."""
    shapes = {c.shape for c in crops}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[2] != 3:
        raise ValueError(f"crops must share one HxWx3 shape, got {sorted(shapes)}")
    t = torch.from_numpy(np.ascontiguousarray(np.stack(crops)))
    if device.type == "cuda":  # uint8 over the bus (4x less than float), pinned + async
        t = t.pin_memory().to(device, non_blocking=True)
    return t.to(device).permute(0, 3, 1, 2).float().div_(255.0)


def _add_time(timings: dict[str, float] | None, stage: str, t0: float) -> None:
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - t0) * 1000.0


def resolve_thresholds(bundle: ModelBundle, settings: Settings) -> Thresholds:
    """Settings override the thresholds the published models were calibrated with."""
    th = bundle.thresholds()
    return Thresholds(
        tau_fake=th.tau_fake if settings.tau_fake is None else settings.tau_fake,
        tau_attacked=th.tau_attacked if settings.tau_attacked is None else settings.tau_attacked,
    )


class Analyzer:
    """Holds g, d and one explainer per XAI method; scores batches of crops.

    ``backend="onnx"`` scores g and d in ONNX Runtime (the store's verified ``.onnx`` files in
    ``models_dir``, ``threads`` intra-op threads, 0 = ORT's default); Saliency and
    Input×Gradient maps then come from g's gradient graph when the store lists one
    (``onnx_grad``), other maps from the torch detector ``self.detector``. ``self.g`` /
    ``self.d`` are what scores.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        device: torch.device,
        thresholds: Thresholds,
        xai_method: str = "saliency",
        amp: bool = True,
        backend: Backend = "torch",
        models_dir: Path | None = None,
        threads: int = 0,
        explain_fake: bool = False,
        xai_fused: XaiFused = "auto",
        fold_bn: bool = True,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.bundle = bundle
        self.device = device
        self.detector = bundle.detector.to(device).eval()
        self.adversarial = bundle.adversarial.to(device).eval()
        if fold_bn:  # same function, fewer memory passes (app/models/fast.py)
            self.detector = folded_model(self.detector)
            self.adversarial = folded_model(self.adversarial)
        self.thresholds = thresholds
        self.xai_method = xai_method
        self.explain_fake = explain_fake  # also map the fake logit of fake-called faces (UI)
        self.xai_fused = xai_fused
        self._real_share = 1.0  # smoothed share of faces g called real (fused-path choice)
        # Autocast only on CUDA: CPU bf16 autocast is slower and less accurate here.
        self.amp = amp and device.type == "cuda" and backend == "torch" and self._amp_holds()
        self.models: list[ModelInfo] = bundle.model_infos()
        self.crop_size: int = self.detector.input_size
        self._explainers: dict[tuple[str, str], Explainer] = {}
        self.backend = backend
        self.models_dir, self.threads = models_dir, threads  # where ORT sessions came from
        self.runtime = "torch"  # what runs g and d, e.g. "onnxruntime CPUExecutionProvider"
        self.g: FakeScorer = self.detector
        self.d: AttackScorer = self.adversarial
        self.grad_graph: OnnxGradGraph | None = None
        if backend == "onnx":
            self._use_onnx(models_dir, threads)

    def _amp_holds(self) -> bool:
        """fp16 autocast only where it scores as fp32 does (app.models.amp_check)."""
        from app.models.amp_check import amp_parity

        parity = amp_parity(self.detector, self.adversarial, self.device, torch.float16)
        if not parity.ok:
            log.warning("AMP off: fp16 scores differ from fp32 by %.3g / %.3g (p_fake / "
                        "p_attacked; tolerance %g)", parity.max_dp_fake,
                        parity.max_dp_attacked, parity.tolerance)
        return parity.ok

    def _use_onnx(self, models_dir: Path | None, threads: int) -> None:
        if models_dir is None:
            raise ValueError("backend 'onnx' needs models_dir (the store holding the .onnx files)")
        from app.runtime.onnx import load_onnx_pair  # onnxruntime only loads when asked for

        g, d = load_onnx_pair(models_dir, self.bundle, self.device, threads)
        self.g, self.d = g, d
        self.runtime = f"onnxruntime {g.provider}"
        if self.bundle.detector_entry.onnx_grad is not None:  # Saliency / I×G in ORT too
            from app.runtime.onnx_grad import OnnxGradGraph

            self.grad_graph = OnnxGradGraph(models_dir, self.bundle.detector_entry,
                                            self.device, threads)

    @classmethod
    def from_settings(cls, settings: Settings, device: str | None = None) -> Analyzer:
        configure_threads(settings.torch_threads)
        dev = resolve_device(device or settings.device)
        bundle = load_bundle(settings.models_dir, dev)
        return cls(bundle, dev, resolve_thresholds(bundle, settings), settings.xai_method,
                   settings.amp, backend=settings.backend, models_dir=settings.models_dir,
                   threads=settings.torch_threads, explain_fake=settings.explain_fake,
                   xai_fused=settings.xai_fused, fold_bn=settings.fold_batchnorm)

    @property
    def device_label(self) -> str:
        """Device plus runtime when g and d do not run in torch: ``cpu (onnxruntime …)``."""
        if self.backend == "torch":
            return str(self.device)
        return f"{self.device} ({self.runtime})"

    @property
    def trained(self) -> bool:
        return all(m.trained for m in self.models)

    def explainer(self, method: str, target: str = "real") -> Explainer:
        if (method, target) not in self._explainers:
            self._explainers[method, target] = Explainer(self.detector, method, target=target)
        return self._explainers[method, target]

    def _autocast(self) -> AbstractContextManager[object]:
        if self.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return nullcontext()

    def score_crops(
        self,
        crops: Sequence[np.ndarray],
        methods: Sequence[str] | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[FaceScore]:
        """One batched pass: g on all crops, then XAI + d on the real-called ones (N in → N out).

        ``methods`` gives each crop's XAI method (crops from different requests may differ).
        """
        if not crops:
            return []
        methods = list(methods) if methods is not None else [self.xai_method] * len(crops)
        if len(methods) != len(crops):
            raise ValueError(f"{len(crops)} crops but {len(methods)} XAI methods")
        x = crops_to_tensor(crops, self.device)
        if self._use_fused(methods):
            return self._score_fused(x, methods[0], timings)
        t0 = time.perf_counter()
        with self._autocast():
            p_fake = self.g.p_fake(x).float().cpu().numpy()
        _add_time(timings, "detector", t0)
        self._note_real_share(p_fake)
        p_att: dict[int, float] = {}
        maps: dict[int, np.ndarray] = {}
        for method, idx in self._groups(p_fake, methods, real=True).items():
            self._score_group(x, idx, method, p_att, maps, timings)
        fake_maps: dict[int, np.ndarray] = {}
        if self.explain_fake:
            for method, idx in self._groups(p_fake, methods, real=False).items():
                self._explain_fake(x, idx, method, fake_maps, timings)
        return [self._face_score(float(p_fake[i]), p_att.get(i), maps.get(i), fake_maps.get(i))
                for i in range(len(crops))]

    def _use_fused(self, methods: list[str]) -> bool:
        """One forward for g and its maps (app.pipeline.fused) when it is the cheaper path."""
        if self.xai_fused == "off" or self.amp:
            return False  # under AMP g scores in fp16, maps in fp32
        if self.backend != "torch" and self.grad_graph is None:
            return False  # ORT scores g, captum would need g's forward again
        if len(set(methods)) != 1 or methods[0] not in FUSED_METHODS:
            return False
        share = 1.0 if self.explain_fake else self._real_share  # faces that will need a map
        return self.xai_fused == "on" or fused_pays(share, FUSED_BREAK_EVEN)

    def _note_real_share(self, p_fake: np.ndarray) -> None:
        real = float(np.mean(p_fake < self.thresholds.tau_fake)) if len(p_fake) else 1.0
        self._real_share = 0.9 * self._real_share + 0.1 * real  # recent traffic, smoothed

    def _score_fused(self, x: torch.Tensor, method: str,
                     timings: dict[str, float] | None) -> list[FaceScore]:
        rule = TargetRule(self.thresholds.tau_fake, self.explain_fake)
        out = fused_pass(self.detector, x, method, rule, self.grad_graph)
        if timings is not None:  # the same stages as the separate path: g's forward, the maps
            timings["detector"] = timings.get("detector", 0.0) + out.forward_s * 1000.0
            timings["xai"] = timings.get("xai", 0.0) + out.backward_s * 1000.0
        p_fake = out.p_fake.cpu().numpy()
        self._note_real_share(p_fake)
        maps = attribution_to_map(out.attributions)
        real = torch.nonzero(out.targets == Detector.REAL).flatten().tolist()
        p_att: dict[int, float] = {}
        if real:
            t0 = time.perf_counter()
            with self._autocast():
                probs = self.d.p_attacked(x[real], maps[real]).float().cpu().numpy()
            _add_time(timings, "adversarial", t0)
            p_att = {i: float(p) for i, p in zip(real, probs, strict=True)}
        images = {i: map_to_image(maps[i]) for i in range(len(p_fake))
                  if i in p_att or self.explain_fake}
        return [self._face_score(float(p), p_att.get(i), images.get(i) if i in p_att else None,
                                 None if i in p_att else images.get(i))
                for i, p in enumerate(p_fake)]

    def _face_score(self, p_fake: float, p_att: float | None, real_map: np.ndarray | None,
                    fake_map: np.ndarray | None) -> FaceScore:
        target = "real" if real_map is not None else "fake" if fake_map is not None else None
        return FaceScore(p_fake=p_fake, p_attacked=p_att,
                         verdict=face_verdict(p_fake, p_att, self.thresholds),
                         xai_map=real_map if real_map is not None else fake_map,
                         xai_target=target)

    def _groups(self, p_fake: np.ndarray, methods: list[str], real: bool) -> dict[str, list[int]]:
        """Indices of the real-called (``real``) or fake-called faces, by XAI method."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(p_fake):
            if (p < self.thresholds.tau_fake) == real:
                groups[methods[i]].append(i)
        return groups

    def _explain_fake(self, x: torch.Tensor, idx: list[int], method: str,
                      maps: dict[int, np.ndarray], timings: dict[str, float] | None) -> None:
        """Why g called these faces fake: the same map rule over the fake logit (no d)."""
        t0 = time.perf_counter()
        xai = self.explainer(method, "fake").maps(x[idx])
        _add_time(timings, "xai_fake", t0)
        for j, i in enumerate(idx):
            maps[i] = map_to_image(xai[j])

    def _score_group(
        self,
        x: torch.Tensor,
        idx: list[int],
        method: str,
        p_att: dict[int, float],
        maps: dict[int, np.ndarray],
        timings: dict[str, float] | None,
    ) -> None:
        sub = x[idx]
        t0 = time.perf_counter()
        if self.grad_graph is not None and method in FUSED_METHODS:
            graph = fused_pass(self.detector, sub, method, ALL_REAL, self.grad_graph)
            xai = attribution_to_map(graph.attributions)
        else:  # fp32: gradients under autocast are noisier
            xai = self.explainer(method).maps(sub)
        _add_time(timings, "xai", t0)
        t0 = time.perf_counter()
        with self._autocast():
            probs = self.d.p_attacked(sub, xai).float().cpu().numpy()
        _add_time(timings, "adversarial", t0)
        for j, i in enumerate(idx):
            p_att[i] = float(probs[j])
            maps[i] = map_to_image(xai[j])


def face_public(face: DetectedFace, score: FaceScore, person: int | None = None) -> FacePublic:
    """One face's public result: a face with a quality flag keeps its scores, verdict uncertain."""
    return FacePublic(
        index=face.index,
        box=[round(float(v), 2) for v in face.box],
        crop_box=[int(v) for v in face.crop_box],
        detection_prob=round(float(face.prob), 4),
        landmarks=[[round(float(a), 2), round(float(b), 2)] for a, b in face.landmarks],
        p_fake=score.p_fake,
        p_attacked=score.p_attacked,
        verdict=Verdict.UNCERTAIN if face.quality else score.verdict,
        quality=list(face.quality),
        sharpness=round(float(face.sharpness), 4),
        person=person,
    )


def build_frame(
    frame: SampledFrame,
    faces: Sequence[DetectedFace],
    scores: Sequence[FaceScore],
    persons: Sequence[int] | None = None,
) -> FramePublic:
    """One sampled frame's public result; the frame verdict is its worst face.

    ``persons`` are the faces' person ids (``FaceTracker.assign``), None: not tracked.
    """
    if len(faces) != len(scores) or (persons is not None and len(persons) != len(faces)):
        n_persons = "no" if persons is None else len(persons)
        raise ValueError(f"{len(faces)} faces but {len(scores)} scores, {n_persons} persons")
    ids: Sequence[int | None] = [None] * len(faces) if persons is None else persons
    public = [face_public(f, s, p) for f, s, p in zip(faces, scores, ids, strict=True)]
    return FramePublic(
        index=frame.index,
        source_index=frame.source_index,
        timestamp=round(frame.timestamp, 4),
        verdict=frame_verdict([f.verdict for f in public]),
        faces=public,
    )


def build_result(
    info: MediaInfo,
    frames: Sequence[FramePublic],
    analyzer: Analyzer,
    xai_method: str,
    timings_ms: dict[str, float],
    warnings: Sequence[str],
    quality: QualityRule | None = None,
) -> AnalysisResult:
    """The full result, persons included; untrained placeholder weights are called out in
    ``warnings``. ``quality`` is the rule the face detector applied (its defaults if None)."""
    warns = list(warnings)
    if not analyzer.trained:
        warns.insert(0, UNTRAINED_WARNING)
    persons = summarize_persons(frames)
    return AnalysisResult(
        summary=summarize(frames, [p.verdict for p in persons]),
        media=info,
        frames=list(frames),
        persons=persons,
        thresholds=analyzer.thresholds,
        rules=rules((quality or QualityRule()).public()),
        xai_method=xai_method,
        models=analyzer.models,
        timings_ms={k: round(v, 2) for k, v in timings_ms.items()},
        warnings=warns,
        device=analyzer.device_label,
    )

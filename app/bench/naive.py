"""The paper's pipeline written the obvious way, against dfshield's batched path, same models.

Naive, per face, batch 1: resize + normalise, g's forward (timm network, no_grad) for p_fake,
then captum ``Saliency`` as a separate call (g runs again, forward + backward), the map rule,
then d (its timm ResNet over crop and map) — one face at a time, parameters left trainable
as a training script leaves them. dfshield: ``Analyzer.score_crops`` over all the faces in one
call, every face called real (so every face gets its map and d, as in the naive loop).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import Saliency

from app.bench.csvout import Figure, Target
from app.bench.pipeline import _time_stage, all_real
from app.bench.stores import ArchSet
from app.models.wrappers import AdversarialDetector, Detector
from app.pipeline.analyze import Analyzer
from app.pipeline.explain import attribution_to_map

CPU_RATIO_TARGET = Target(">=", 2.0)
GPU_RATIO_TARGET = Target(">=", 10.0)


class NaivePipeline:
    """Copies of the pair's networks, called one face at a time."""

    def __init__(self, detector: Detector, adversarial: AdversarialDetector) -> None:
        self.g = copy.deepcopy(detector).eval().requires_grad_(True)
        self.d = copy.deepcopy(adversarial).eval().requires_grad_(True)
        self.saliency = Saliency(self.g.net)

    def face(self, crop: np.ndarray, device: torch.device) -> tuple[float, float]:
        """(p_fake, p_attacked) of one uint8 HxWx3 crop."""
        x = torch.from_numpy(crop).to(device).permute(2, 0, 1)[None].float() / 255.0
        x_n = self.g.prep(x)
        with torch.no_grad():
            p_fake = self.g.net(x_n).softmax(dim=1)[0, Detector.FAKE]
        attr = self.saliency.attribute(x_n.detach().requires_grad_(True), target=Detector.REAL,
                                       abs=True)
        xai_map = attribution_to_map(attr)
        with torch.no_grad():
            p_att = self.d(x, xai_map).softmax(dim=1)[0, 1]
        return float(p_fake), float(p_att)


def naive_figures(arch: ArchSet, n_faces: int, repeats: int, seed: int = 0) -> list[Figure]:
    """Per-face ms of the naive loop and of score_crops on the same crops, and their ratio."""
    a = arch.analyzer
    rng = np.random.default_rng(seed)
    crops: Sequence[np.ndarray] = list(
        rng.integers(0, 256, size=(n_faces, a.crop_size, a.crop_size, 3), dtype=np.uint8))
    naive = NaivePipeline(a.bundle.detector, a.bundle.adversarial)  # as loaded: BN unfolded
    every_real = all_real(a)
    batched = Analyzer(a.bundle, a.device, every_real, "saliency", amp=a.amp, xai_fused="auto")
    naive_s, _ = _time_stage(lambda: [naive.face(c, a.device) for c in crops], a.device,
                             repeats, warmup=1)
    ours_s, _ = _time_stage(lambda: batched.score_crops(crops), a.device, repeats, warmup=1)
    naive_ms, ours_ms = naive_s * 1000 / n_faces, ours_s * 1000 / n_faces
    target = GPU_RATIO_TARGET if a.device.type == "cuda" else CPU_RATIO_TARGET
    pair = f"{arch.g_arch} + saliency + {arch.d_arch}"
    out = [
        Figure("naive", f"{arch.label}: naive per face ({pair})", "torch", 1, naive_ms,
               "ms/face"),
        Figure("naive", f"{arch.label}: dfshield score_crops ({pair})", "torch", n_faces,
               ours_ms, "ms/face"),
        Figure("naive", f"{arch.label}: naive / dfshield", "torch", n_faces,
               naive_ms / ours_ms, "x", target),
    ]
    served = arch.onnx_like(every_real, "auto")
    if served is not None and served.grad_graph is not None:  # DFSHIELD_BACKEND=onnx
        onnx_s, _ = _time_stage(lambda: served.score_crops(crops), a.device, repeats, warmup=1)
        onnx_ms = onnx_s * 1000 / n_faces
        out += [Figure("naive", f"{arch.label}: dfshield score_crops ({pair})", "onnx",
                       n_faces, onnx_ms, "ms/face"),
                Figure("naive", f"{arch.label}: naive / dfshield", "onnx", n_faces,
                       naive_ms / onnx_ms, "x", target)]
    return out

"""Each XAI method's cost as a multiple of g's forward, and d's, on one batch of random crops.

The stages are app.bench.pipeline's (g; g then captum's map: the separate path, g runs twice;
+ d; ``Analyzer.score_crops`` with every face called real, separate and fused), plus the fused
map alone (``app.pipeline.fused.fused_pass``: one forward with input gradients, one backward)
and d alone on precomputed maps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from app.bench.csvout import Figure, Target
from app.bench.pipeline import _stages, _time_stage, all_real, uint8_crops
from app.bench.stores import ArchSet
from app.pipeline.analyze import crops_to_tensor
from app.pipeline.fused import ALL_REAL, fused_pass

FUSED_EXTRA_TARGET = Target("<=", 1.0)  # fused Saliency: map costs <= 1x g's forward extra
PAIR_TARGET = Target("<=", 3.0)  # bundled g + Saliency + d <= 3x g
GPU_FACES_TARGET = Target(">=", 1000.0)  # bundled pair with Saliency, faces/s on a GPU
SERVICE_STAGE = "score_crops saliency + d, fused"


def xai_figures(arch: ArchSet, methods: Sequence[str], batch: int, repeats: int,
                seed: int = 0) -> list[Figure]:
    """ms/face of every stage, and each stage as a multiple of g's forward."""
    a = arch.analyzer
    rng = np.random.default_rng(seed)
    crops = list(rng.integers(0, 256, size=(batch, a.crop_size, a.crop_size, 3), dtype=np.uint8))
    x = crops_to_tensor(crops, a.device)
    stages = _stages(a, x, methods) + _extra_stages(arch, x)
    ms = {name: _time_stage(fn, a.device, repeats, warmup=1)[0] * 1000 / batch
          for name, fn in stages}
    g_ms = ms["g"]
    out = [Figure("xai", f"{arch.label}: {name}", "torch", batch, v, "ms/face")
           for name, v in ms.items()]
    out += [Figure("xai", f"{arch.label}: {name} / g", "torch", batch, v / g_ms, "x g")
            for name, v in ms.items() if name != "g"]
    fused_extra = ms["g + saliency fused (one pass)"] / g_ms - 1
    out.append(Figure("xai", f"{arch.label}: saliency fused, extra over g", "torch", batch,
                      fused_extra, "x g extra", FUSED_EXTRA_TARGET))
    return out + _pair_figures(arch, ms, batch) + _onnx_figures(arch, x, batch, repeats)


def _onnx_figures(arch: ArchSet, x: torch.Tensor, batch: int, repeats: int) -> list[Figure]:
    """The same stages with DFSHIELD_BACKEND=onnx: g, g's gradient graph (logits + Saliency in
    one ONNX Runtime pass), and the service path on it."""
    served = arch.onnx_like(all_real(arch.analyzer), "on")
    if served is None or served.grad_graph is None or arch.onnx is None:
        return []
    a, crops = arch.analyzer, uint8_crops(x)
    stages: list[tuple[str, Callable[[], object]]] = [
        ("g", lambda: arch.onnx[0].p_fake(x)),  # type: ignore[index]
        ("g + saliency graph (one pass)",
         lambda: fused_pass(a.detector, x, "saliency", ALL_REAL, served.grad_graph)),
        (SERVICE_STAGE, lambda: served.score_crops(crops)),
    ]
    ms = {name: _time_stage(fn, a.device, repeats, warmup=1)[0] * 1000 / batch
          for name, fn in stages}
    out = [Figure("xai", f"{arch.label}: {name}", "onnx", batch, v, "ms/face")
           for name, v in ms.items()]
    extra = ms["g + saliency graph (one pass)"] / ms["g"] - 1
    out.append(Figure("xai", f"{arch.label}: saliency graph, extra over g", "onnx", batch,
                      extra, "x g extra", FUSED_EXTRA_TARGET))
    pair = ms[SERVICE_STAGE] / ms["g"]
    out.append(Figure("xai", f"{arch.label}: g + saliency + d (service path) / g", "onnx",
                      batch, pair, "x g", PAIR_TARGET if arch.label == "bundled" else None))
    return out


def _extra_stages(arch: ArchSet, x: torch.Tensor) -> list[tuple[str, Callable[[], object]]]:
    a = arch.analyzer
    maps = a.explainer("saliency").maps(x)

    def fused() -> object:
        return fused_pass(a.detector, x, "saliency", ALL_REAL)

    def d_alone() -> object:
        with torch.no_grad():
            return a.d.p_attacked(x, maps)

    return [("g + saliency fused (one pass)", fused), ("d", d_alone)]


def _pair_figures(arch: ArchSet, ms: dict[str, float], batch: int) -> list[Figure]:
    """The service's path (score_crops, fused) against the pair targets."""
    if SERVICE_STAGE not in ms:
        return []
    device = arch.analyzer.device
    bundled = arch.label == "bundled"
    pair = ms[SERVICE_STAGE] / ms["g"]
    faces_s = 1000.0 / ms[SERVICE_STAGE]
    gpu = bundled and device.type == "cuda"
    return [
        Figure("xai", f"{arch.label}: g + saliency + d (service path) / g", "torch", batch,
               pair, "x g", PAIR_TARGET if bundled else None),
        Figure("xai", f"{arch.label}: g + saliency + d (service path)", "torch", batch,
               faces_s, "faces/s", GPU_FACES_TARGET if gpu else None),
    ]

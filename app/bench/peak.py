"""The machine's fp32 matmul peak, and g's and d's forward over a batch curve as ms/face and
achieved GFLOP/s as a share of that peak (FLOPs counted once per architecture with
``torch.utils.flop_counter.FlopCounterMode``; the ONNX graphs do the same work).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from app.bench.csvout import Figure, Target
from app.bench.pipeline import _sync, _time_stage
from app.bench.stores import ArchSet
from app.runtime import AttackScorer, FakeScorer

PEAK_SHARE_TARGET = Target(">=", 35.0)  # % of the matmul peak at g's best batch (CPU)
Forward = Callable[[torch.Tensor], object]


def matmul_peak(device: torch.device, n: int = 2048, tries: int = 5) -> float:
    """Best fp32 ``torch.matmul`` GFLOP/s of two ``n x n`` matrices over ``tries`` runs."""
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=gen).to(device)
    b = torch.rand(n, n, generator=gen).to(device)
    torch.matmul(a, b)  # warm-up: thread pool, cuBLAS handle
    _sync(device)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def ort_matmul_peak(n: int = 2048, tries: int = 5, threads: int = 0) -> float:
    """Best fp32 GFLOP/s of ONNX Runtime's MatMul (CPU provider) on two ``n x n`` matrices.

    The machine's peak is the better of this and torch's: torch's MKL takes a slow path on
    AMD CPUs, so its matmul alone under-states what the cores can do (ORT's MLAS does not)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                              spec[:2], spec[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {k: rng.random((n, n), dtype=np.float32) for k in "ab"}
    sess.run(None, feed)  # warm-up
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        sess.run(None, feed)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def flops_per_face(fn: Forward, x1: torch.Tensor) -> float:
    """FLOPs of one face through ``fn`` (a batch-1 input), as FlopCounterMode counts them."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(x1)
    return float(counter.get_total_flops())


def _g_forward(g: FakeScorer) -> Forward:
    def run(x: torch.Tensor) -> object:
        with torch.no_grad():
            return g.p_fake(x)

    return run


def _d_forward(d: AttackScorer) -> Forward:
    def run(x: torch.Tensor) -> object:  # crop and a map of the same shape (values irrelevant)
        with torch.no_grad():
            return d.p_attacked(x, x.flip(-1))

    return run


def forward_figures(arch: ArchSet, peak_gflops: float, batches: Sequence[int], repeats: int,
                    seed: int = 0) -> list[Figure]:
    """ms/face and % of peak per batch for g and d, in torch and (when exported) ONNX Runtime."""
    a = arch.analyzer
    backends: list[tuple[str, FakeScorer, AttackScorer]] = [("torch", a.g, a.d)]
    if arch.onnx is not None:
        backends.append((arch.onnx_provider, *arch.onnx))
    size = a.crop_size
    gen = torch.Generator().manual_seed(seed)
    x1 = torch.rand(1, 3, size, size, generator=gen).to(a.device)
    flops = {"g": flops_per_face(_g_forward(a.detector), x1),
             "d": flops_per_face(_d_forward(a.adversarial), x1)}
    out = [Figure("forward", f"{role} {_arch(arch, role)} FLOPs", "torch", 1, f / 1e9,
                  "GFLOP/face") for role, f in flops.items()]
    for backend, g, d in backends:
        for role, fn in (("g", _g_forward(g)), ("d", _d_forward(d))):
            out += _curve(f"{role} {_arch(arch, role)}", backend, fn, flops[role], peak_gflops,
                          batches, repeats, x1)
    return out


def _arch(arch: ArchSet, role: str) -> str:
    return arch.g_arch if role == "g" else arch.d_arch


def _curve(name: str, backend: str, fn: Forward, flops: float, peak: float,
           batches: Sequence[int], repeats: int, x1: torch.Tensor) -> list[Figure]:
    """One forward per batch size on random inputs shaped like ``x1`` (median of repeats)."""
    device = x1.device
    out: list[Figure] = []
    shares: dict[int, float] = {}
    for b in batches:
        x = x1.expand(b, -1, -1, -1).contiguous()
        secs, _ = _time_stage(lambda x=x: fn(x), device, repeats, warmup=1)
        ms = secs * 1000 / b
        shares[b] = flops / (ms / 1000) / 1e9 / peak * 100
        out.append(Figure("forward", f"{name} forward", backend, b, ms, "ms/face"))
        out.append(Figure("forward", f"{name} share of peak", backend, b, shares[b], "% peak"))
    best = max(shares, key=lambda k: shares[k])
    target = PEAK_SHARE_TARGET if device.type == "cpu" else None
    out.append(Figure("forward", f"{name} best share of peak", backend, best, shares[best],
                      "% peak", target))
    return out

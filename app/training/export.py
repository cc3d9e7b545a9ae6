"""ONNX export of g and d with a parity check against torch (ONNX Runtime, CPU provider).

g: input ``crop`` [B,3,S,S] → ``logits`` [B,2]; d: inputs ``crop`` and ``xai_map`` → ``logits``.
The batch axis is dynamic; the spatial size is fixed at export (``input_size``, default the
model's own), so resize + normalise are baked into the graph exactly as the wrapper does them.
d is exported at the size the service feeds it: its g's input size (crop and map both).
The TorchScript exporter is used (``dynamo=False``): the dynamo one needs onnxscript, which
the project does not ship.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from app.models.wrappers import AdversarialDetector

DEFAULT_OPSET = 17
PARITY_ATOL = 1e-4


class OnnxParityError(RuntimeError):
    """ONNX Runtime's logits differ from torch's by more than the tolerance."""


def _names(model: nn.Module) -> tuple[list[str], dict[str, dict[int, str]]]:
    inputs = ["crop", "xai_map"] if isinstance(model, AdversarialDetector) else ["crop"]
    axes = {n: {0: "batch"} for n in [*inputs, "logits"]}
    return inputs, axes


def _inputs(n_inputs: int, batch: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.rand(batch, 3, size, size, generator=gen) for _ in range(n_inputs)]


def export_onnx(
    model: nn.Module,
    path: Path,
    opset: int = DEFAULT_OPSET,
    input_size: int | None = None,
    check: bool = True,
    atol: float = PARITY_ATOL,
    batch_sizes: Sequence[int] = (1, 3),
) -> dict[str, Any]:
    """Write ``path`` and (``check``) verify it against torch; returns a summary dict.

    Raises :class:`OnnxParityError` when the max abs logit difference exceeds ``atol``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Export a CPU fp32 copy in eval mode: the caller's model keeps its device and mode.
    cpu = copy.deepcopy(model).to("cpu", torch.float32).eval()
    size = int(input_size or cpu.input_size)
    names, axes = _names(cpu)
    example = tuple(_inputs(len(names), 2, size, torch.Generator().manual_seed(0)))
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter warns that it is legacy, and the tracer about shape checks in the
        # wrapper (resolved once at the fixed export size, which is the point).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            cpu, example, str(path), dynamo=False, opset_version=opset,
            input_names=names, output_names=["logits"], dynamic_axes=axes,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path))
    summary: dict[str, Any] = {"file": str(path), "opset": opset, "input_size": size,
                               "inputs": names}
    if check:
        summary["parity"] = check_parity(cpu, path, size, atol, batch_sizes)
    return summary


def check_parity(
    model: nn.Module,
    path: Path,
    input_size: int,
    atol: float = PARITY_ATOL,
    batch_sizes: Sequence[int] = (1, 3),
    seed: int = 0,
) -> dict[str, Any]:
    """Max abs logit difference torch vs ONNX Runtime (CPU) on random inputs per batch size."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    cpu = model.to("cpu").eval()
    gen = torch.Generator().manual_seed(seed)
    diffs: dict[str, float] = {}
    for b in batch_sizes:
        xs = _inputs(len(names), b, input_size, gen)
        with torch.no_grad():
            ref = cpu(*xs).float().numpy()
        out = sess.run(["logits"], {n: x.numpy() for n, x in zip(names, xs, strict=True)})[0]
        if out.shape != ref.shape:
            raise OnnxParityError(f"{path}: ONNX logits {out.shape} vs torch {ref.shape} at "
                                  f"batch {b}")
        diffs[str(b)] = float(np.abs(out - ref).max())
    worst = max(diffs.values())
    if not worst <= atol:
        raise OnnxParityError(
            f"{path}: ONNX Runtime logits differ from torch by {worst:.3g} (> {atol:g}) "
            f"per batch size {diffs}; the exported graph is not faithful: check for ops the "
            "exporter approximates (e.g. resize modes) or export at another opset"
        )
    return {"max_abs_diff": diffs, "atol": atol, "ok": True}

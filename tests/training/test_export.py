"""ONNX export of the small g and d: parity with torch within 1e-4, dynamic batch, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from app.models.registry import create_model
from app.training.export import OnnxParityError, check_parity, export_onnx


def _settled(model: nn.Module, seed: int) -> nn.Module:
    """Random init plus non-trivial BatchNorm statistics, so logits are not all alike."""
    torch.manual_seed(seed)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    size = model.input_size
    with torch.no_grad():
        for _ in range(2):
            x = torch.rand(4, 3, size, size, generator=gen)
            model(x) if model.spec.role == "detector" else model(x, x.flip(-1))
    return model.eval()


def _batch_dim(path: Path) -> list[str]:
    graph = onnx.load(str(path)).graph
    return [i.type.tensor_type.shape.dim[0].dim_param for i in graph.input]


def test_detector_export_parity_dynamic_batch(tmp_path: Path) -> None:
    g = _settled(create_model("resnet10t_df"), 0)
    out = export_onnx(g, tmp_path / "g.onnx")
    assert out["inputs"] == ["crop"] and out["input_size"] == 128 and out["opset"] == 17
    assert out["parity"]["ok"] and set(out["parity"]["max_abs_diff"]) == {"1", "3"}
    assert max(out["parity"]["max_abs_diff"].values()) <= 1e-4
    assert _batch_dim(tmp_path / "g.onnx") == ["batch"]
    # A batch size never seen at export also runs and matches.
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 3, 128, 128, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = g(x).numpy()
    got = sess.run(["logits"], {"crop": x.numpy()})[0]
    assert got.shape == (5, 2) and np.abs(got - ref).max() <= 1e-4
    assert not g.training  # the caller's model is untouched (export works on a copy)


def test_adversarial_export_at_detector_size_resizes_inside(tmp_path: Path) -> None:
    d = _settled(create_model("detect_resnet10t"), 1)
    # d is fed at its g's crop size; 96 != 128 puts the resize into the graph.
    out = export_onnx(d, tmp_path / "d.onnx", input_size=96)
    assert out["inputs"] == ["crop", "xai_map"] and out["input_size"] == 96
    assert max(out["parity"]["max_abs_diff"].values()) <= 1e-4
    assert _batch_dim(tmp_path / "d.onnx") == ["batch", "batch"]
    sess = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape[1:] for i in sess.get_inputs()] == [[3, 96, 96], [3, 96, 96]]


def test_parity_failure_is_a_clear_error(tmp_path: Path) -> None:
    g = _settled(create_model("resnet10t_df"), 2)
    export_onnx(g, tmp_path / "g.onnx", check=False)
    other = _settled(create_model("resnet10t_df"), 3)  # different weights than the file
    with pytest.raises(OnnxParityError, match="differ from torch"):
        check_parity(other, tmp_path / "g.onnx", 128)

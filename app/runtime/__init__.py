"""Serving backends for g and d: torch (the wrappers themselves) or ONNX Runtime.

Both expose the same scoring calls on float ``[B,3,H,W]`` crops in [0,1]:
``p_fake(x)`` for g and ``p_attacked(crop, xai_map)`` for d. The XAI pass needs gradients, so it
always runs on the torch detector. ONNX Runtime wrappers live in :mod:`app.runtime.onnx`
(imported on demand: the torch backend never loads onnxruntime).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:  # keeps this module light: the CLI imports Backend before any torch
    import torch

Backend = Literal["torch", "onnx"]
BACKENDS: tuple[str, ...] = ("torch", "onnx")


class FakeScorer(Protocol):
    """g as the pipeline scores with it (``Detector`` or ``OnnxDetector``)."""

    def p_fake(self, x: torch.Tensor) -> torch.Tensor: ...


class AttackScorer(Protocol):
    """d as the pipeline scores with it (``AdversarialDetector`` or ``OnnxAdversarial``)."""

    def p_attacked(self, crop: torch.Tensor, xai_map: torch.Tensor) -> torch.Tensor: ...


__all__ = ["BACKENDS", "AttackScorer", "Backend", "FakeScorer"]

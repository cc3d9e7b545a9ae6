"""Device selection: CUDA when present, CPU otherwise."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda if available else cpu. Asking for cuda without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device 'cuda' requested but no CUDA device is available; use --device cpu"
        )
    return torch.device(name)


def configure_threads(n: int) -> None:
    """Set intra-op threads; 0 keeps torch's default (one per core)."""
    if n > 0:
        torch.set_num_threads(n)

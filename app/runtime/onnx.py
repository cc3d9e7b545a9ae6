"""ONNX Runtime sessions for g and d, with the torch wrappers' scoring semantics.

The published graphs (``app.training.export``) take float ``[B,3,S,S]`` in [0,1] at one fixed S
(``onnx_input_size``) and carry resize + normalise inside, as traced at S. Inputs of another
size are therefore resized to S here with the wrapper's own rule (bilinear, no corner
alignment). That matches torch exactly when S is the model's input size (always for g) or the
inputs already are S (d in the service: crops and maps come at g's input size, d's export size).

Trust rule as for safetensors: the ONNX bytes are hashed against the manifest and the hashed
bytes are the ones handed to ONNX Runtime.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from app.models.manifest import ManifestEntry
from app.models.store import MANIFEST_NAME, ModelBundle, ModelStoreError, read_verified

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
# Input names fixed by app.training.export for each role, in call order.
INPUT_NAMES: dict[str, tuple[str, ...]] = {
    "detector": ("crop",),
    "adversarial": ("crop", "xai_map"),
}
OUTPUT_NAME = "logits"


def pick_provider(device: torch.device) -> str:
    """CUDA EP when torch runs on CUDA and this ONNX Runtime build has it, else the CPU EP."""
    if device.type == "cuda" and CUDA_EP in ort.get_available_providers():
        return CUDA_EP
    return CPU_EP


def _providers(provider: str, device: torch.device) -> list[str | tuple[str, dict[str, int]]]:
    if provider == CUDA_EP:
        index = device.index if device.index is not None else torch.cuda.current_device()
        return [(CUDA_EP, {"device_id": index}), CPU_EP]
    return [CPU_EP]


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA libraries ORT's CUDA provider links (cuBLAS, cuFFT, cuRAND, cuDNN …) from
    the nvidia-* wheels in the environment: they are not on the loader's path, and torch only
    loads the ones it uses itself (not cuRAND)."""
    try:
        ort.preload_dlls(directory="")
    except Exception as exc:  # noqa: BLE001 - a missing library shows as the CPU-EP fallback
        log.warning("could not preload CUDA libraries for ONNX Runtime: %s", exc)


def make_session(data: bytes, device: torch.device, threads: int,
                 name: str) -> tuple[ort.InferenceSession, str]:
    """A session on the provider ``device`` calls for; returns it and the provider it got."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # ORT's own warnings (e.g. unused initializers) are noise
    if threads > 0:
        opts.intra_op_num_threads = threads
    wanted = pick_provider(device)
    if wanted == CUDA_EP:
        preload_cuda_libraries()
    session = ort.InferenceSession(data, opts, providers=_providers(wanted, device))
    # ORT falls back to the CPU EP when CUDA libraries fail to load: report what runs.
    provider: str = session.get_providers()[0]
    if provider != wanted:
        log.warning("ONNX Runtime picked %s instead of %s for %r", provider, wanted, name)
    return session, provider


def run_bound(session: ort.InferenceSession, provider: str, inputs: dict[str, torch.Tensor],
              outputs: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """One run with ORT's I/O binding: inputs are read from, and float32 outputs of the given
    shapes written into, torch memory on the provider's device (CUDA tensors never make a
    round trip through the host)."""
    device = torch.device("cuda", torch.cuda.current_device()) if provider == CUDA_EP \
        else torch.device("cpu")
    binding = session.io_binding()
    held = {n: t.to(device, torch.float32).contiguous() for n, t in inputs.items()}
    for name, t in held.items():
        binding.bind_input(name, device.type, device.index or 0, np.float32, tuple(t.shape),
                           t.data_ptr())
    out = {n: torch.empty(shape, dtype=torch.float32, device=device)
           for n, shape in outputs.items()}
    for name, t in out.items():
        binding.bind_output(name, device.type, device.index or 0, np.float32, tuple(t.shape),
                            t.data_ptr())
    if device.type == "cuda":
        torch.cuda.current_stream().synchronize()  # ORT runs on its own stream
    session.run_with_iobinding(binding)
    return out


def _onnx_bytes(models_dir: Path, entry: ManifestEntry) -> bytes:
    if entry.onnx is None:
        raise ModelStoreError(
            f"backend 'onnx' requested but model {entry.name!r} has no ONNX artifact in "
            f"{MANIFEST_NAME}; re-publish it with ONNX (`dfshield train publish` exports it "
            "unless --no-onnx) or set DFSHIELD_BACKEND=torch"
        )
    return read_verified(models_dir, entry.onnx.file, entry.onnx.sha256)


class OnnxModel:
    """One verified ONNX Runtime session for a manifest entry; returns torch logits."""

    ROLE = "detector"

    def __init__(
        self,
        models_dir: Path,
        entry: ManifestEntry,
        device: torch.device | str = "cpu",
        threads: int = 0,
    ) -> None:
        if entry.role != self.ROLE:
            raise ModelStoreError(f"model {entry.name!r} is a {entry.role}, not a {self.ROLE}")
        self.entry = entry
        self.device = torch.device(device)
        self.session, self.provider = make_session(
            _onnx_bytes(Path(models_dir), entry), self.device, threads, entry.name)
        self.input_names, self.input_size = self._check_inputs()
        log.info(
            "ONNX Runtime %s for %s %r (opset %d, input %dpx, %s threads)",
            self.provider, entry.role, entry.name, entry.onnx.opset if entry.onnx else -1,
            self.input_size, threads or "default",
        )

    def _check_inputs(self) -> tuple[tuple[str, ...], int]:
        """Input names and the fixed spatial size, checked against the role and the manifest."""
        inputs = self.session.get_inputs()
        names = tuple(i.name for i in inputs)
        expected = INPUT_NAMES[self.entry.role]
        listed = self.entry.training.get("onnx_inputs")
        if names != expected or (listed is not None and tuple(listed) != expected):
            raise ModelStoreError(
                f"ONNX graph of {self.entry.name!r} takes inputs {list(names)} (manifest says "
                f"{listed}); a {self.entry.role} needs {list(expected)}: re-publish it"
            )
        sizes = {tuple(i.shape[2:]) for i in inputs}
        size = next(iter(sizes))
        listed_size = self.entry.training.get("onnx_input_size")
        if (len(sizes) != 1 or len(size) != 2 or size[0] != size[1]
                or not isinstance(size[0], int) or listed_size not in (None, size[0])):
            raise ModelStoreError(
                f"ONNX graph of {self.entry.name!r} has input sizes {sorted(sizes)} (manifest "
                f"onnx_input_size={listed_size}); expected one fixed square size: re-publish it"
            )
        return names, int(size[0])

    def _to_graph(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected [B,3,H,W], got {tuple(x.shape)}")
        x = x.detach().float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False)
        return x

    def logits(self, *xs: torch.Tensor) -> torch.Tensor:
        """Logits ``[B,2]`` (float32) on the first input's device."""
        if len(xs) != len(self.input_names):
            raise ValueError(f"{self.entry.name!r} takes {len(self.input_names)} inputs")
        if len({x.shape[0] for x in xs}) != 1:
            raise ValueError(f"batch mismatch: {[x.shape[0] for x in xs]}")
        if xs[0].shape[0] == 0:
            return torch.empty(0, 2, device=xs[0].device)
        feed = {n: self._to_graph(x) for n, x in zip(self.input_names, xs, strict=True)}
        out = run_bound(self.session, self.provider, feed, {OUTPUT_NAME: (xs[0].shape[0], 2)})
        return out[OUTPUT_NAME].to(xs[0].device)


class OnnxDetector(OnnxModel):
    """g in ONNX Runtime: ``p_fake`` as ``Detector.p_fake`` computes it."""

    FAKE = 1

    def p_fake(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).float().softmax(dim=1)[:, self.FAKE]


class OnnxAdversarial(OnnxModel):
    """d in ONNX Runtime: ``p_attacked`` as ``AdversarialDetector.p_attacked`` computes it."""

    ROLE = "adversarial"
    ATTACKED = 1

    def p_attacked(self, crop: torch.Tensor, xai_map: torch.Tensor) -> torch.Tensor:
        return self.logits(crop, xai_map).float().softmax(dim=1)[:, self.ATTACKED]


def load_onnx_pair(
    models_dir: Path,
    bundle: ModelBundle,
    device: torch.device | str = "cpu",
    threads: int = 0,
) -> tuple[OnnxDetector, OnnxAdversarial]:
    """ONNX Runtime g and d for the bundle's manifest entries (sha256-verified)."""
    for entry in (bundle.detector_entry, bundle.adversarial_entry):
        if entry.onnx is None:
            _onnx_bytes(Path(models_dir), entry)  # raises the clear "no ONNX artifact" error
    return (
        OnnxDetector(models_dir, bundle.detector_entry, device, threads),
        OnnxAdversarial(models_dir, bundle.adversarial_entry, device, threads),
    )

"""GPU readiness that a CPU machine can check: every library ONNX Runtime's CUDA provider links
is in the locked environment (only the host's driver, libcuda, may be missing), and the
service's preload finds them — cuRAND was missing before nvidia-curand joined the lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnxruntime

CAPI = Path(onnxruntime.__file__).parent / "capi"
NVIDIA = Path(onnxruntime.__file__).parents[1] / "nvidia"
DRIVER = "libcuda.so.1"  # comes with the host's NVIDIA driver, never from a wheel


def _nvidia_lib_dirs() -> str:
    return os.pathsep.join(str(p) for p in sorted(NVIDIA.glob("*/lib")))


def test_cuda_provider_links_only_locked_libraries() -> None:
    provider = CAPI / "libonnxruntime_providers_cuda.so"
    assert provider.is_file(), "onnxruntime-gpu ships the CUDA provider"
    out = subprocess.run(["ldd", str(provider)], capture_output=True, text=True, check=True,
                         env={**os.environ, "LD_LIBRARY_PATH": _nvidia_lib_dirs()}).stdout
    missing = sorted({line.split()[0] for line in out.splitlines() if "not found" in line})
    assert missing in ([], [DRIVER]), missing
    assert "libcurand.so.10" in out


def test_preload_maps_curand_into_the_process() -> None:
    code = ("from app.runtime.onnx import preload_cuda_libraries; preload_cuda_libraries(); "
            "print(open('/proc/self/maps').read())")
    maps = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).parents[1]).stdout
    assert "libcurand.so.10" in maps and "libcublas.so" in maps

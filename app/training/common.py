"""Shared training plumbing: seeds, devices/AMP, run records, checkpoints, crops (metrics and
thresholds: app.training.metrics).

Every ``dfshield train`` stage writes one run directory holding ``record.json`` (arguments, seed,
library versions, metrics, timings, status) and its checkpoints: ``last.pt`` (everything needed
to resume: weights, optimizer, scheduler, epoch, RNG) and ``best.pt`` (weights of the best
epoch). Checkpoints are our own files; they are still read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from app.device import resolve_device
from app.models.registry import create_model

log = logging.getLogger("dfshield.training")

RECORD_NAME = "record.json"
BEST_NAME = "best.pt"
LAST_NAME = "last.pt"
STORE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a manifest entry name, not a path
# (stage, done, total): the CLI turns these into a rich progress bar.
ProgressFn = Callable[[str, int, int | None], None]


def no_progress(stage: str, done: int, total: int | None) -> None:
    """Default progress callback: silent."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def pick_device(name: str = "auto") -> torch.device:
    return resolve_device(name)


def autocast(device: torch.device, amp: bool) -> AbstractContextManager[object]:
    """fp16 autocast on CUDA only: CPU autocast (bf16) is slower and less accurate here."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def make_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")


def optimizer_step(
    loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    grad_clip: float | None = None,
) -> None:
    """One (possibly fp16-scaled) optimisation step, shared by the g and d training loops.

    ``grad_clip``: clip the global gradient norm (the pretrained face trunk has no BatchNorm,
    and without clipping one large step can wreck it).
    """
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(opt)
        params = [p for group in opt.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(opt)
    scaler.update()


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("dfshield", "torch", "torchvision", "timm", "captum", "numpy", "scikit-learn",
                "onnx", "onnxruntime-gpu", "onnxruntime", "opencv-python-headless"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    out["cuda"] = torch.version.cuda
    out["git_commit"] = _git_commit()
    return out


def _git_commit() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no NaN/inf
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class RunRecord:
    """``record.json`` of one run, rewritten atomically whenever it changes."""

    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.data = data

    @classmethod
    def start(cls, run_dir: Path, kind: str, args: dict[str, Any], seed: int) -> RunRecord:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        previous = cls.load(run_dir).data if (run_dir / RECORD_NAME).is_file() else {}
        data = {
            "kind": kind,
            "status": "running",
            "args": jsonable(args),
            "seed": seed,
            "command": command_line(),
            "versions": library_versions(),
            "started": now_iso(),
            "metrics": {},
            "timings_s": previous.get("timings_s", {}),
            "history": previous.get("history", []),
        }
        rec = cls(run_dir, data)
        rec.save()
        return rec

    @classmethod
    def load(cls, run_dir: Path) -> RunRecord:
        path = Path(run_dir) / RECORD_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {RECORD_NAME} in {run_dir}: is it a dfshield run dir?")
        return cls(Path(run_dir), json.loads(path.read_text(encoding="utf-8")))

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def update(self, **values: Any) -> None:
        self.data.update(jsonable(values))
        self.save()

    def add_timing(self, name: str, seconds: float) -> None:
        self.data.setdefault("timings_s", {})[name] = round(seconds, 3)
        self.save()

    def finish(self, **values: Any) -> None:
        self.update(status="done", finished=now_iso(), **values)

    def save(self) -> None:
        text = json.dumps(jsonable(self.data), indent=2, allow_nan=False)
        atomic_write_text(self.run_dir / RECORD_NAME, text + "\n")


@contextmanager
def timed(record: RunRecord | None, name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if record is not None:
            record.add_timing(name, time.perf_counter() - t0)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temp file then rename: a crash never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(Path(path), map_location=device, weights_only=True)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class StoredModelRecord(RunRecord):
    """Read-only stand-in for the run record of a model taken from the model store."""

    def save(self) -> None:
        raise RuntimeError(f"{self.data.get('model_store')} is a model-store entry, not a run")


def load_trained(
    run_dir: Path, device: torch.device | str = "cpu", which: str = BEST_NAME
) -> tuple[nn.Module, RunRecord]:
    """The wrapped model of a training run (its best checkpoint by default), in eval mode.

    ``run_dir`` may also name an entry of the model store (``DFSHIELD_MODELS_DIR``), e.g. an
    imported detector (``dfshield models import``): then its thresholds stand in for the record's.
    """
    if not Path(run_dir).is_dir() and STORE_NAME_RE.fullmatch(str(run_dir)):
        return load_stored(str(run_dir), device)
    record = RunRecord.load(run_dir)
    model = create_model(record["arch"], **record.get("arch_kwargs", {}))
    ckpt = load_checkpoint(Path(run_dir) / which)
    model.net.load_state_dict(ckpt["model"], strict=True)
    return model.to(device).eval(), record


def load_stored(
    name: str, device: torch.device | str = "cpu", models_dir: Path | None = None
) -> tuple[nn.Module, StoredModelRecord]:
    """A verified model of the model store by entry name, with a record-like view of its entry."""
    from app.config import get_settings
    from app.models.store import ModelStoreError, load_manifest, load_model

    folder = Path(models_dir or get_settings().models_dir)
    try:
        entry = load_manifest(folder).find(name)
        if entry is None:
            raise FileNotFoundError(
                f"{name!r} is neither a run dir nor a model in {folder}; pass a run dir, or a "
                "name from `dfshield models list` (DFSHIELD_MODELS_DIR selects the store)")
        model = load_model(folder, entry, device)
    except ModelStoreError as e:
        raise ValueError(f"{name!r} is not a run dir, and the model store says: {e}") from None
    data = {"kind": "model_store", "arch": entry.architecture, "thresholds": entry.thresholds,
            "metrics": entry.metrics, "model_store": {"dir": str(folder), "name": entry.name,
                                                      "version": entry.version,
                                                      "sha256": entry.sha256}}
    return model.eval(), StoredModelRecord(folder, data)


# ----------------------------------------------------------------------------- crops


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Square crop to ``size``² (area filter when shrinking, as the serving face cropper would)."""
    if rgb.shape[:2] == (size, size):
        return rgb
    interp = cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 → float [3,H,W] in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [3,H,W] in [0,1] → uint8 HxWx3 (rounded: the lossless-PNG value of the crop)."""
    arr = (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return arr.permute(1, 2, 0).cpu().numpy()


class CropFiles(torch.utils.data.Dataset):
    """Crops listed by index records (``path`` relative to ``root``), resized to ``size``.

    Returns ``(tensor [3,S,S] in [0,1], label, position)``; ``transform`` acts on the tensor.
    """

    def __init__(
        self,
        root: Path,
        records: Sequence[dict[str, Any]],
        size: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.root = Path(root)
        self.records = list(records)
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        rec = self.records[i]
        x = to_tensor(resize_rgb(read_rgb(self.root / rec["path"]), self.size))
        if self.transform is not None:
            x = self.transform(x)
        return x, int(rec["label"]), i


def loader(
    ds: torch.utils.data.Dataset,
    batch_size: int,
    workers: int = 0,
    sampler: torch.utils.data.Sampler | None = None,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
        drop_last=drop_last, persistent_workers=workers > 0,
    )


def balanced_sampler(labels: Sequence[int], seed: int) -> torch.utils.data.Sampler:
    """Draw both classes equally often (with replacement), one epoch = len(labels) draws."""
    arr = np.asarray(labels)
    counts = np.bincount(arr, minlength=2).astype(np.float64)
    weights = 1.0 / np.maximum(counts[arr], 1.0)
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(weights), num_samples=len(arr), replacement=True, generator=gen
    )

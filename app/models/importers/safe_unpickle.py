"""A restricted unpickler for importing *whole pickled models* (``torch.save(model)``) offline.

A pickle is a program: every global it names is imported and may be called. This unpickler
imports nothing. Each global the file names is looked up in an explicit table of objects:
the few torch / collections callables a pickled ``nn.Module`` tree needs, plus stand-in classes
the importer supplies for the user's own modules (e.g. FaceForensics++'s ``network.xception``),
so the user's code is never imported or run. Any other global is refused with
:class:`ForbiddenGlobal`, which names it.

Used only by ``dfshield models import``; the service never unpickles anything (it loads
safetensors from the verified model store).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import types
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

Global = tuple[str, str]  # (module, name) as written in the pickle


def _no_backend() -> None:
    # Old (torch < 1.5) pickles store ``module._backend = _get_thnn_function_backend()``:
    # a stub that returns None is all modern torch needs.
    return None


# Torch and standard-library globals a pickled tree of these layers needs, and nothing more.
# Objects, not import paths: the lookup never imports a module.
TORCH_GLOBALS: dict[Global, Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("torch.nn.backends.thnn", "_get_thnn_function_backend"): _no_backend,
    ("torch.nn.modules.conv", "Conv2d"): nn.Conv2d,
    ("torch.nn.modules.batchnorm", "BatchNorm2d"): nn.BatchNorm2d,
    ("torch.nn.modules.activation", "ReLU"): nn.ReLU,
    ("torch.nn.modules.pooling", "MaxPool2d"): nn.MaxPool2d,
    ("torch.nn.modules.container", "Sequential"): nn.Sequential,
    ("torch.nn.modules.linear", "Linear"): nn.Linear,
    ("torch.nn.modules.dropout", "Dropout"): nn.Dropout,
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; nothing of it was executed."""

    def __init__(self, module: str, name: str) -> None:
        self.global_name = f"{module}.{name}"
        super().__init__(
            f"refusing pickle global {self.global_name!r}: only torch layers, tensors and the "
            "expected model classes are allowed, so this file is either not the expected "
            "checkpoint or unsafe to load"
        )


def _python3_name(module: str, name: str) -> Global:
    """Protocol-2 pickles (torch's default) spell names the Python 2 way (``__builtin__``);
    rename them as pickle itself would, for the table lookup and the error message only."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def restricted_pickle_module(stand_ins: Mapping[Global, Any]) -> types.ModuleType:
    """A module object usable as ``torch.load(..., pickle_module=...)``.

    ``stand_ins`` maps the user-code globals the file may name to the importer's own classes;
    together with :data:`TORCH_GLOBALS` it is the whole allow-list.
    """
    allowed = {**TORCH_GLOBALS, **stand_ins}

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            module, name = _python3_name(module, name)
            try:
                return allowed[(module, name)]
            except KeyError:
                raise ForbiddenGlobal(module, name) from None

    def load(file: Any, **kwargs: Any) -> Any:
        # torch's legacy (pre-zip) format reads its header records with ``pickle_module.load``.
        return RestrictedUnpickler(file, **kwargs).load()

    def loads(data: bytes, **kwargs: Any) -> Any:
        return load(io.BytesIO(data), **kwargs)

    module = types.ModuleType("dfshield_restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.loads = loads  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return module


def load_restricted(path: Path, stand_ins: Mapping[Global, Any]) -> Any:
    """``torch.load`` of a whole-object pickle (zip or legacy format) through the allow-list.

    torch intercepts its storage types (``torch.FloatStorage`` …) itself and maps tensors to
    CPU; every other global goes through :func:`restricted_pickle_module`'s ``find_class``.
    """
    with warnings.catch_warnings():
        # Legacy files embed their classes' source; it never matches the stand-ins': no news.
        warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
        return torch.load(
            Path(path),
            map_location="cpu",
            weights_only=False,  # the allow-list replaces torch's weights-only unpickler
            pickle_module=restricted_pickle_module(stand_ins),
        )

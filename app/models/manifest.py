"""Schema of ``models/manifest.json``: what the service trusts about each weights file."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from app.models.registry import Preprocess, Role

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
THRESHOLD_KEY: dict[str, str] = {"detector": "tau_fake", "adversarial": "tau_attacked"}


def _check_sha(value: str) -> str:
    if not SHA256_RE.match(value):
        raise ValueError("sha256 must be 64 lowercase hex characters")
    return value


def _check_relative(value: str) -> str:
    # Files live inside the models dir: no absolute paths, no escaping it with "..".
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"file {value!r} must be a relative path inside the models directory")
    return value


Sha256 = Annotated[str, AfterValidator(_check_sha)]
RelPath = Annotated[str, AfterValidator(_check_relative)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OnnxArtifact(_Strict):
    file: RelPath
    sha256: Sha256
    opset: int = Field(ge=7)


class PreprocessInfo(_Strict):
    input_size: int = Field(ge=8)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...] = Field(max_length=2)

    @classmethod
    def from_preprocess(cls, p: Preprocess) -> PreprocessInfo:
        return cls(input_size=p.input_size, mean=p.mean, std=p.std, class_names=p.class_names)

    def matches(self, p: Preprocess, tol: float = 1e-9) -> bool:
        pairs = zip(self.mean + self.std, p.mean + p.std, strict=True)
        close = all(abs(a - b) <= tol for a, b in pairs)
        return close and self.input_size == p.input_size and self.class_names == p.class_names


class ManifestEntry(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    role: Role
    architecture: str = Field(description="registry name passed to create_model")
    version: str
    file: RelPath = Field(description="safetensors weights, relative to the models dir")
    sha256: Sha256
    onnx: OnnxArtifact | None = None
    onnx_grad: OnnxArtifact | None = Field(
        None, description="detectors: logits + input-gradient graph (app.training.export_grad)")
    preprocess: PreprocessInfo
    thresholds: dict[str, float]
    dtype: Literal["float32", "float16"] = Field(
        "float32", description="storage precision of the safetensors file (loaded as float32)")
    trained: bool
    description: str = ""
    training: dict[str, Any] = Field(default_factory=dict, description="free-form provenance")
    metrics: dict[str, Any] = Field(default_factory=dict)
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="after")
    def _thresholds_for_role(self) -> ManifestEntry:
        key = THRESHOLD_KEY.get(self.role)
        if key is not None and key not in self.thresholds:
            raise ValueError(f"{self.role} entry {self.name!r} needs thresholds.{key}")
        if not all(0.0 <= v <= 1.0 for v in self.thresholds.values()):
            raise ValueError(f"thresholds of {self.name!r} must lie in [0, 1]")
        return self

    @property
    def threshold(self) -> float:
        """The decision threshold for this role (tau_fake or tau_attacked)."""
        if self.role not in THRESHOLD_KEY:
            raise ValueError(f"{self.role} entry {self.name!r} has no decision threshold")
        return self.thresholds[THRESHOLD_KEY[self.role]]


class Defaults(_Strict):
    detector: str | None = None
    adversarial: str | None = None


class Manifest(_Strict):
    format_version: Literal[1] = 1
    default: Defaults = Field(default_factory=Defaults)
    models: list[ManifestEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model names: {dupes}")
        for role in ("detector", "adversarial"):
            name = getattr(self.default, role)
            if name is None:
                continue
            entry = self.find(name)
            if entry is None:
                raise ValueError(f"default.{role} = {name!r} is not among the listed models")
            if entry.role != role:
                raise ValueError(f"default.{role} = {name!r} has role {entry.role!r}")
        return self

    def find(self, name: str) -> ManifestEntry | None:
        return next((m for m in self.models if m.name == name), None)

    def get(self, name: str) -> ManifestEntry:
        entry = self.find(name)
        if entry is None:
            known = ", ".join(m.name for m in self.models) or "none"
            raise KeyError(f"model {name!r} is not in the manifest; listed: {known}")
        return entry

"""What a red-team run found: per source image, per uploaded file, per attacked face; totals.

A face *fools g end to end* when the service, analysing the uploaded file, found it again and
did not call it fake: its verdict is ``real`` (d missed the attack) or ``attacked`` (d caught
it). ``lost``: the service found no face where the attacked face was; ``uncertain``: found,
but flagged too small or blurry to judge. Neither counts as fooling g.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Outcome = Literal["fake", "real", "attacked", "uncertain", "lost"]
FOOLED: frozenset[str] = frozenset({"real", "attacked"})
ImageStatus = Literal["attacked", "skipped"]


@dataclass
class FaceOutcome:
    face: int  # index of the face in the clean image's detection (0 = largest)
    p_fake_clean: float  # g on the clean image's crop (this machine)
    p_fake_local: float  # g on the adversarial image's crop, before saving (this machine)
    outcome: Outcome
    service_p_fake: float | None = None
    service_p_attacked: float | None = None
    service_face: int | None = None  # the matched face's index in the service's answer
    crop_box: list[int] | None = None  # the attacked crop (clean image's detection)
    service_crop_box: list[int] | None = None  # the crop the service cut after re-detecting

    @property
    def fooled(self) -> bool:
        return self.outcome in FOOLED


@dataclass
class UploadReport:
    file: str
    variant: str  # pgd | eot
    format: str  # png | jpeg90
    job_id: str | None = None
    status: str = "not_sent"  # the analysis status: done | failed | error (HTTP)
    verdict: str | None = None  # the analysis summary verdict
    faces: list[FaceOutcome] = field(default_factory=list)
    error: str | None = None

    @property
    def fooled(self) -> int:
        return sum(f.fooled for f in self.faces)

    @property
    def caught(self) -> int:
        return sum(f.outcome == "attacked" for f in self.faces)


@dataclass
class VariantInfo:
    variant: str
    iters: int
    linf: int  # 8-bit levels
    p_fake_local: list[float]
    views_real: float | None  # share of random EOT views (JPEG, resize, shift) g calls real


@dataclass
class ImageReport:
    source: str
    status: ImageStatus
    reason: str | None = None  # why it was skipped
    faces_found: int = 0
    attacked_faces: list[int] = field(default_factory=list)
    p_fake_clean: list[float] = field(default_factory=list)  # every face found
    variants: list[VariantInfo] = field(default_factory=list)
    uploads: list[UploadReport] = field(default_factory=list)
    control: list[UploadReport] = field(default_factory=list)  # unattacked, same formats


def _beyond_control(images: list[ImageReport]) -> dict[str, int]:
    """Attacked faces whose unattacked upload (same image, same format) the service called
    fake: of those, how many the attack got past g and how many d then flagged."""
    faces = fooled = caught = 0
    for im in images:
        clean = {(u.format, f.face): f.outcome for u in im.control for f in u.faces}
        for u in im.uploads:
            for f in u.faces:
                if clean.get((u.format, f.face)) == "fake":
                    faces, fooled = faces + 1, fooled + f.fooled
                    caught += f.outcome == "attacked"
    return {"faces": faces, "fooled": fooled, "fooled_attacked": caught}


def _counts(uploads: list[UploadReport]) -> dict[str, int]:
    outcomes = Counter(f.outcome for u in uploads for f in u.faces)
    faces = sum(len(u.faces) for u in uploads)
    return {
        "uploads": len(uploads),
        "uploads_done": sum(u.status == "done" for u in uploads),
        "faces": faces,
        "fooled": outcomes["real"] + outcomes["attacked"],
        "fooled_attacked": outcomes["attacked"],
        "fooled_real": outcomes["real"],
        "fake": outcomes["fake"],
        "uncertain": outcomes["uncertain"],
        "lost": outcomes["lost"],
        "files_fooled": sum(bool(u.faces) and u.fooled == len(u.faces) for u in uploads),
    }


@dataclass
class RedteamReport:
    config: dict[str, Any]
    images: list[ImageReport] = field(default_factory=list)

    @property
    def uploads(self) -> list[UploadReport]:
        return [u for im in self.images for u in im.uploads]

    def totals(self) -> dict[str, Any]:
        """Counts over every upload, then split by variant × format."""
        ups = self.uploads
        by: dict[str, dict[str, int]] = {}
        for key in sorted({(u.variant, u.format) for u in ups}):
            by["/".join(key)] = _counts([u for u in ups if (u.variant, u.format) == key])
        return {
            "images": len(self.images),
            "images_attacked": sum(im.status == "attacked" for im in self.images),
            "images_skipped": sum(im.status == "skipped" for im in self.images),
            **_counts(ups),
            "by_variant_format": by,
            # fooled = the service did not call the clean upload fake (no attack needed)
            "control": _counts([u for im in self.images for u in im.control]),
            "beyond_control": _beyond_control(self.images),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "totals": self.totals(),
                "images": [asdict(im) for im in self.images]}

"""A black-box attacker that can only use the HTTP API: the in-house NES and Square attacks see
g through :class:`HttpScorer`, whose every image is one PNG upload, scored by the service.

Each query is ``POST /v1/analyze`` with ``wait`` (the synchronous answer carries the frames),
sent with the campaign's keys in turn (round-robin when there are several). After every query
an admin key asks ``/v1/guard/keys`` whether a key of the campaign is suspected yet; the
campaign ends (:class:`CampaignOver`) at that query or when its query budget is spent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import httpx
import numpy as np
import torch
from torch import Tensor, nn

from app.api.auth import hash_key, key_id_of
from app.training.attacks.nes import nes
from app.training.attacks.square import square

P_CLIP = 1e-6
WAIT_S = "60"


class CampaignOver(Exception):
    """Raised from a query: the guard caught the campaign, or its budget is spent."""


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def to_uint8(x: Tensor) -> np.ndarray:
    """One [3,H,W] image in [0,1] as the HxWx3 uint8 RGB an attacker would upload."""
    return (x.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def first_p_fake(body: dict) -> float | None:
    """p_fake of the first face of the first frame, None when no face was found."""
    for frame in body.get("frames") or []:
        for face in frame.get("faces") or []:
            if face.get("p_fake") is not None:
                return float(face["p_fake"])
    return None


@dataclass
class Campaign:
    """One attack run: its keys, its budget, and what happened."""

    base_url: str
    keys: list[str]
    admin_key: str
    budget: int
    queries: int = 0
    detected_at: int | None = None
    no_face: int = 0
    key_ids: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.key_ids = [key_id_of(hash_key(k)) for k in self.keys]
        self._client = httpx.Client(base_url=self.base_url, timeout=120)

    def close(self) -> None:
        self._client.close()

    def query(self, rgb: np.ndarray) -> float | None:
        """Upload one image with the next key; its p_fake (None: no face found)."""
        key = self.keys[self.queries % len(self.keys)]
        resp = self._client.post(
            "/v1/analyze", headers={"Authorization": f"Bearer {key}"},
            files={"file": ("query.png", png_bytes(rgb), "image/png")}, data={"wait": WAIT_S})
        resp.raise_for_status()
        body = resp.json()
        if resp.status_code == 202:  # not finished within wait: poll like any client
            body = self._poll(body["links"]["analysis"], key)
        self.queries += 1
        return first_p_fake(body)

    def _poll(self, location: str, key: str) -> dict:
        headers = {"Authorization": f"Bearer {key}"}
        while True:
            body = self._client.get(location, headers=headers).raise_for_status().json()
            if body["status"] in ("done", "failed"):
                frames = self._client.get(location + "/frames", headers=headers).json()
                return {**body, "frames": frames.get("items", [])}

    def detected(self) -> bool:
        resp = self._client.get("/v1/guard/keys",
                                headers={"Authorization": f"Bearer {self.admin_key}"})
        suspected = {k["key_id"] for k in resp.raise_for_status().json()["keys"]}
        return bool(suspected & set(self.key_ids))

    def after_query(self) -> None:
        if self.detected_at is None and self.detected():
            self.detected_at = self.queries
            raise CampaignOver("detected")
        if self.queries >= self.budget:
            raise CampaignOver("budget")


class HttpScorer(nn.Module):
    """g as an attacker reaches it: logits [-z/2, z/2] from the service's p_fake (z = logit p),
    so the attacks' margin Z_real - Z_fake is -logit(p_fake). No face: p_fake = 1 (no signal)."""

    def __init__(self, campaign: Campaign) -> None:
        super().__init__()
        self.campaign = campaign
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # attacks freeze params

    def forward(self, x: Tensor) -> Tensor:
        out = []
        for img in x:
            p = self.campaign.query(to_uint8(img))
            if p is None:
                self.campaign.no_face += 1
                p = 1.0
            p = min(max(p, P_CLIP), 1 - P_CLIP)
            z = math.log(p / (1 - p))
            out.append((-z / 2, z / 2))
            self.campaign.after_query()
        return torch.tensor(out, dtype=torch.float32)


def run_campaign(attack: str, face: np.ndarray, campaign: Campaign, seed: int = 0,
                 kappa: float = 0.0) -> Campaign:
    """Drive ``attack`` ("nes" | "square", the paper's settings) until caught or out of budget.

    ``kappa`` > 0 keeps the attack going after g calls the face real (a confident-real goal).
    """
    x = torch.from_numpy(face).permute(2, 0, 1).float().div(255).unsqueeze(0)
    model = HttpScorer(campaign)
    try:
        if attack == "nes":
            nes(model, x, iters=100, restarts=5, n_pairs=20, sigma=1e-3, kappa=kappa, seed=seed)
        elif attack == "square":
            square(model, x, max_queries=5000, p_init=0.8, kappa=kappa, seed=seed)
        else:
            raise ValueError(f"unknown attack {attack!r}; use 'nes' or 'square'")
    except CampaignOver:
        pass
    return campaign

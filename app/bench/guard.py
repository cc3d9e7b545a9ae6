"""``dfshield bench guard``: does the guard catch NES and Square campaigns driven through the
HTTP API, how fast, and does it leave benign traffic alone? Figures are printed, never asserted.

One ``dfshield serve`` child process on loopback (API keys, the guard's default settings, its
Redis started here so the benchmark can read the guard's memory). Phases:

1. benign traffic (``app.bench.guard_data``) from its own keys: near-duplicate, exact-repeat and
   flagged uploads, suspected benign keys; the guard's cost (ms per face from /metrics, Redis
   bytes per stored face);
2. attack runs: for each attack, key split and face, the guard's memory is emptied (the salt
   kept), then the attack queries until a key of the campaign is suspected or the budget is
   spent (``app.bench.guard_http``). A split of 5 sends the queries round-robin over 5 keys.
"""

from __future__ import annotations

import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import redis
import torch
from rich.console import Console
from rich.table import Table

from app.api.auth import hash_key, key_id_of
from app.bench.guard_data import (
    DEFAULT_CROPS,
    PHOTOS,
    Upload,
    crop_files,
    encode,
    read_rgb,
    variants,
    video_stills,
)
from app.bench.guard_http import Campaign, run_campaign
from app.bench.media import make_sample_media
from app.bench.service import free_port, running_service
from app.config import Settings
from app.guard.memory import PREFIX, SALT_KEY, GuardMemory
from app.redis_conn import EmbeddedRedis, client_from_url

MAX_SPLIT = 5


@dataclass
class AttackRun:
    attack: str
    split: int
    face: str
    queries: int
    detected_at: int | None
    no_face: int
    p_fake: float


@dataclass
class BenignReport:
    uploads: Counter[str] = field(default_factory=Counter)
    near_duplicate: Counter[str] = field(default_factory=Counter)
    exact_repeat: Counter[str] = field(default_factory=Counter)
    flagged: Counter[str] = field(default_factory=Counter)
    keys: int = 0
    suspected_keys: list[str] = field(default_factory=list)


@dataclass
class GuardReport:
    runs: list[AttackRun]
    budget: int
    benign: BenignReport
    ms_per_face: float | None
    bytes_per_face: float | None
    faces_indexed: int
    wall_s: float = 0.0


# ---------------------------------------------------------------- inputs
def attack_faces(n: int, crops_root: Path) -> list[tuple[str, np.ndarray, float]]:
    """(name, crop, local p_fake) of ``n`` faces, those g calls most fake first."""
    from app.pipeline.analyze import Analyzer, crops_to_tensor

    analyzer = Analyzer.from_settings(Settings(_env_file=None, device="cpu"))
    side = analyzer.crop_size
    files = crop_files(crops_root, "fake")
    faces = [(p.stem, read_rgb(p, side)) for p in files]
    if len(faces) < n:  # no training crops here: faces cut from the repository's test media
        faces += _faces_from_test_media(side)
    with torch.no_grad():
        p = [float(analyzer.g.p_fake(crops_to_tensor([f], analyzer.device))) for _, f in faces]
    ranked = sorted(zip(faces, p, strict=True), key=lambda t: -t[1])[:n]
    return [(name, crop, pf) for (name, crop), pf in ranked]


def _faces_from_test_media(side: int) -> list[tuple[str, np.ndarray]]:
    from app.pipeline.faces import FaceDetector

    detector = FaceDetector.from_settings(Settings(_env_file=None, device="cpu"), "cpu", side)
    images = [(p.stem, read_rgb(p)) for p in PHOTOS]
    images += [(f"video_{t:.0f}s", rgb) for t, rgb in video_stills(1.0, 19)]
    out = []
    for name, rgb in images:
        for face in detector.detect([rgb])[0][:1]:
            out.append((name, face.crop))
            out.append((name + "_flip", np.ascontiguousarray(face.crop[:, ::-1])))
    return out


def benign_uploads(photos: int, stills: int, clip_uploads: int, distinct: int,
                   crops_root: Path, workdir: Path) -> list[Upload]:
    """The benign traffic, one benign key index per client."""
    real = crop_files(crops_root, "real")
    sources = [read_rgb(p) for p in PHOTOS] + [read_rgb(p) for p in real[distinct:]]
    ups: list[Upload] = []
    for k, rgb in enumerate(sources[:photos]):
        ups += [Upload(k, "variants", f"photo{k}.{how}", data) for how, data in variants(rgb)]
    key = len({u.key for u in ups})
    for t, rgb in video_stills(1.0, 2 * stills):  # two keys, interleaved a second apart
        ups.append(Upload(key + int(t) % 2, "stills", f"still_{t:.0f}s.jpg", encode(rgb)))
    key += 2
    clip = make_sample_media(workdir / "clip").read_bytes()
    for i in range(2 * clip_uploads):
        ups.append(Upload(key + i % 2, "clip", "clip.mp4", clip, (("max_frames", "4"),)))
    key += 2
    for i, p in enumerate(real[:distinct]):
        ups.append(Upload(key + i % 10, "distinct", p.name, encode(read_rgb(p), ".png")))
    return ups


# ---------------------------------------------------------------- phases
def _keys(prefix: str, n: int) -> list[str]:
    return [f"bench-{prefix}-{i}-{secrets.token_hex(8)}" for i in range(n)]


def _send(url: str, key: str, up: Upload) -> str:
    with httpx.Client(base_url=url, timeout=300) as c:
        resp = c.post("/v1/analyze", headers={"Authorization": f"Bearer {key}"},
                      files={"file": (up.name, up.data)}, data={"wait": "120", **dict(up.form)})
        resp.raise_for_status()
        return str(resp.json()["id"])


def run_benign(url: str, keys: list[str], admin: str, ups: list[Upload]) -> BenignReport:
    with ThreadPoolExecutor(max_workers=2) as pool:  # per key, uploads stay in order
        by_key: dict[int, list[Upload]] = {}
        for u in ups:
            by_key.setdefault(u.key, []).append(u)
        jobs = [pool.submit(lambda b: [(u, _send(url, keys[u.key], u)) for u in b], batch)
                for batch in by_key.values()]
        sent = [pair for j in jobs for pair in j.result()]
    report = BenignReport(keys=len(by_key))
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {admin}"}) as c:
        for up, job_id in sent:
            body = c.get(f"/v1/analyses/{job_id}").raise_for_status().json()
            guard = body.get("guard") or {}
            report.uploads[up.kind] += 1
            report.near_duplicate[up.kind] += bool(guard.get("near_duplicate"))
            report.exact_repeat[up.kind] += bool(guard.get("exact_repeat"))
            report.flagged[up.kind] += bool(body.get("query_attack_suspected"))
        mine = {key_id_of(hash_key(k)) for k in keys}
        listed = c.get("/v1/guard/keys").raise_for_status().json()["keys"]
        report.suspected_keys = sorted(k["key_id"] for k in listed if k["key_id"] in mine)
    return report


def reset_guard(r: redis.Redis) -> None:
    """Empty the guard's memory and key state; keep the salt."""
    names = [n for n in r.scan_iter(match=PREFIX + "*", count=1000) if n != SALT_KEY.encode()]
    for i in range(0, len(names), 500):
        r.delete(*names[i : i + 500])


def guard_cost(url: str, r: redis.Redis) -> tuple[float | None, float | None, int]:
    """(ms per face, Redis bytes per stored face, faces fingerprinted) from /metrics + Redis."""
    from prometheus_client.parser import text_string_to_metric_families

    seconds = faces = 0.0
    for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in fam.samples:
            if s.name == "dfshield_stage_seconds_sum" and s.labels.get("stage") == "guard":
                seconds = s.value
            elif s.name == "dfshield_guard_faces_total":
                faces = s.value
    if not faces:
        return None, None, 0
    stored = GuardMemory(r, 1, 1).index_bytes()
    return seconds * 1000 / faces, stored / faces, int(faces)


# ---------------------------------------------------------------- the benchmark
def bench_guard(
    faces: int = 20,
    attacks: Sequence[str] = ("nes", "square"),
    splits: Sequence[int] = (1, MAX_SPLIT),
    budget: int = 30,
    photos: int = 10,
    stills: int = 10,
    clip_uploads: int = 3,
    distinct: int = 60,
    crops_root: Path = DEFAULT_CROPS,
    log: Console | None = None,
) -> GuardReport:
    """Run both phases against one ``dfshield serve``; see the module docstring."""
    say = (log or Console(stderr=True)).log
    t0 = time.perf_counter()
    targets = attack_faces(faces, crops_root)
    attackers, benign_keys, admin = _keys("attack", MAX_SPLIT), _keys("benign", 64), _keys(
        "admin", 1)[0]
    spec = ",".join([f"{k}:submit+read" for k in attackers + benign_keys] + [f"{admin}:admin"])
    with tempfile.TemporaryDirectory(prefix="dfs-guard-") as tmp:
        work = Path(tmp)
        server = EmbeddedRedis(work).start()
        r = client_from_url(server.url)
        env = {"DFSHIELD_REDIS_URL": server.url, "DFSHIELD_API_KEYS": spec,
               "DFSHIELD_AUTH_DISABLED": "false", "DFSHIELD_MAX_FRAMES": "4"}
        try:
            with running_service(16, free_port(), work, overrides=env) as url:
                ups = benign_uploads(photos, stills, clip_uploads, distinct, crops_root, work)
                say(f"benign phase: {len(ups)} uploads")
                benign = run_benign(url, benign_keys, admin, ups)
                ms, bytes_, indexed = guard_cost(url, r)
                runs = _attack_runs(url, r, targets, attacks, splits, budget, attackers, admin,
                                    say)
        finally:
            r.close()
            server.stop()
    return GuardReport(runs, budget, benign, ms, bytes_, indexed, time.perf_counter() - t0)


def _attack_runs(url: str, r: redis.Redis, targets: list[tuple[str, np.ndarray, float]],
                 attacks: Sequence[str], splits: Sequence[int], budget: int,
                 attackers: list[str], admin: str,
                 say: Callable[[str], None]) -> list[AttackRun]:
    runs = []
    for attack in attacks:
        for split in splits:
            for i, (name, crop, pf) in enumerate(targets):
                reset_guard(r)
                c = Campaign(url, attackers[:split], admin, budget)
                try:
                    run_campaign(attack, crop, c, seed=i)
                finally:
                    c.close()
                runs.append(AttackRun(attack, split, name, c.queries, c.detected_at,
                                      c.no_face, pf))
            done = [x for x in runs if x.attack == attack and x.split == split]
            say(f"{attack} over {split} key(s): "
                f"{sum(x.detected_at is not None for x in done)}/{len(done)} detected")
    return runs


# ---------------------------------------------------------------- report
def _detection_row(runs: list[AttackRun], budget: int) -> list[str]:
    at = [x.detected_at for x in runs if x.detected_at is not None]
    ended = [x for x in runs if x.detected_at is None and x.queries < budget]
    missed = [x for x in runs if x.detected_at is None and x.queries >= budget]
    campaigns = len(runs) - len(ended)
    share = f"{len(at)}/{campaigns} ({100 * len(at) / campaigns:.0f} %)" if campaigns else "-"
    first = f"{len(ended)}" + (f" (<= {max(x.queries for x in ended)} q.)" if ended else "")
    return [share, f"{statistics.median(at):g}" if at else "-", str(max(at)) if at else "-",
            first, str(len(missed)), str(sum(x.no_face for x in runs))]


def print_guard(report: GuardReport, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    table = Table(title=f"Attack campaigns through the HTTP API (budget {report.budget} queries)")
    for col in ("attack", "keys", "detected", "median query", "worst query",
                "succeeded first", "undetected", "no-face answers"):
        table.add_column(col, justify="right")
    for attack in dict.fromkeys(x.attack for x in report.runs):
        for split in dict.fromkeys(x.split for x in report.runs):
            runs = [x for x in report.runs if x.attack == attack and x.split == split]
            if runs:
                table.add_row(attack, str(split), *_detection_row(runs, report.budget))
    console.print(table)
    console.print("targets: 100 % detected, median <= 10 queries, worst <= 25. 'succeeded "
                  "first': the attack fooled g before any stateful rule could fire "
                  "(not counted as campaigns).")
    _print_benign(report, console)


def _print_benign(report: GuardReport, console: Console) -> None:
    b = report.benign
    table = Table(title=f"Benign traffic ({b.keys} keys)")
    for col in ("kind", "uploads", "near-duplicate", "exact repeat", "flagged"):
        table.add_column(col, justify="right")
    for kind in b.uploads:
        table.add_row(kind, str(b.uploads[kind]), str(b.near_duplicate[kind]),
                      str(b.exact_repeat[kind]), str(b.flagged[kind]))
    total, flagged = sum(b.uploads.values()), sum(b.flagged.values())
    table.add_row("all", str(total), str(sum(b.near_duplicate.values())),
                  str(sum(b.exact_repeat.values())), str(flagged))
    console.print(table)
    rate = 100 * flagged / total if total else 0.0
    console.print(f"false-flag rate {rate:.2f} % of benign uploads (target <= 0.1 %); "
                  f"suspected benign keys: {len(b.suspected_keys)} (target 0)")
    ms = "-" if report.ms_per_face is None else f"{report.ms_per_face:.2f}"
    kb = "-" if report.bytes_per_face is None else f"{report.bytes_per_face:.0f}"
    console.print(f"guard cost: {ms} ms per face in the worker (fingerprint + Redis lookup + "
                  f"insert), {kb} bytes of Redis per stored face ({report.faces_indexed} faces); "
                  f"wall time {report.wall_s:.0f} s")

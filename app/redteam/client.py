"""A small HTTP client of the dfshield API: upload a file, poll it, read its frames.

It talks to the one base URL it was given and nothing else: every request is built from that
base and a fixed path (links in responses are never followed, nor are redirects), so a
red-team run cannot be steered at another host.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
RETRYABLE = (429, 503)  # rate limited / queue full: both send Retry-After


class ServiceError(Exception):
    """The service refused a request or an analysis failed; the message says which."""


def check_base_url(url: str) -> str:
    """``url`` without a trailing slash, if it is a plain http(s) origin (optionally a path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must be an http(s) URL such as http://127.0.0.1:8000, got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("--url must not carry credentials, a query or a fragment; pass the key "
                         "with --api-key / DFSHIELD_API_KEY")
    return url.rstrip("/")


class ServiceClient:
    """``submit`` → ``wait`` → ``frames`` against one dfshield service."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 30.0,
                 poll_s: float = 0.2, max_retries: int = 5) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base = check_base_url(url)
        self.poll_s = poll_s
        self.max_retries = max_retries
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout_s,
                                 follow_redirects=False, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One call, retried after Retry-After on 429/503; any other non-2xx raises."""
        for attempt in range(self.max_retries + 1):
            files = kw.get("files")
            if files:  # rewind the upload before a retry re-sends it
                for _, (_, fh, _) in files.items():
                    fh.seek(0)
            resp = self.http.request(method, path, **kw)
            if resp.status_code not in RETRYABLE or attempt == self.max_retries:
                break
            time.sleep(min(float(resp.headers.get("Retry-After", "1") or 1), 30.0))
        if resp.is_success:
            return resp
        raise ServiceError(f"{method} {path}: HTTP {resp.status_code} {_problem(resp)}")

    def submit(self, path: Path) -> str:
        """Upload ``path`` to POST /v1/analyze; the analysis id."""
        mime = MIME.get(path.suffix.lower(), "application/octet-stream")
        with path.open("rb") as fh:
            resp = self._request("POST", "/v1/analyze", files={"file": (path.name, fh, mime)})
        return str(resp.json()["id"])

    def wait(self, job_id: str, timeout_s: float = 300.0) -> dict[str, Any]:
        """Poll GET /v1/analyses/{id} until done or failed."""
        deadline = time.monotonic() + timeout_s
        while True:
            body = self._request("GET", f"/v1/analyses/{job_id}").json()
            if body["status"] in ("done", "failed"):
                return body
            if time.monotonic() > deadline:
                raise ServiceError(f"analysis {job_id} still {body['status']} after {timeout_s} s")
            time.sleep(self.poll_s)

    def frames(self, job_id: str) -> list[dict[str, Any]]:
        """Every frame of a finished analysis (an image has one)."""
        items: list[dict[str, Any]] = []
        while True:
            page = self._request("GET", f"/v1/analyses/{job_id}/frames",
                                 params={"offset": len(items), "limit": 500}).json()
            items += page["items"]
            if not page["items"] or len(items) >= page["total"]:
                return items


def _problem(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        return f"{body.get('code', '')}: {body.get('detail', '')}"
    except ValueError:
        return resp.text[:200]

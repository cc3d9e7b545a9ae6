"""Completion callbacks: SSRF-safe callback URLs, signed payloads, retried delivery.

Signature scheme (Stripe-like), sent as two headers with every delivery::

    X-DFShield-Event: analysis.completed
    X-DFShield-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

Receivers recompute the HMAC over the *raw* request body prefixed by the timestamp and a dot,
compare in constant time, and reject timestamps older than a tolerance (replay protection);
:func:`verify` does exactly that. ``X-DFShield-Delivery`` is one id per delivery, the same on
every retry, so receivers can drop duplicates.

SSRF: a callback URL must be http(s) and every address its host resolves to must be public
(unless ``allow_private``). It is checked at submit time (:func:`validate_callback_url`) and
again before every delivery attempt, and the request then connects to the very address that was
checked (Host header and TLS SNI keep the original name), so DNS rebinding between check and
connect cannot redirect it. Redirects are never followed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from app.config import Settings

log = logging.getLogger(__name__)

EVENT = "analysis.completed"
SIGNATURE_HEADER = "X-DFShield-Signature"
EVENT_HEADER = "X-DFShield-Event"
DELIVERY_HEADER = "X-DFShield-Delivery"
MAX_URL_LEN = 2048
MAX_BACKOFF_S = 60.0
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRejected(ValueError):
    """A callback URL that may not be called. ``code`` is stable and machine-readable."""

    http_status = 422

    def __init__(self, message: str, code: str = "callback_url_rejected") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- URL validation (SSRF)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one tunnels to (mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or ``None`` when it is."""
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_v4(ip)) is not None:
        reason = forbidden_reason(inner)
        return f"{reason} (embedded in {ip})" if reason else None
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    return next((f"{name} address {ip}" for name, hit in checks if hit), None)


@dataclass(frozen=True)
class Target:
    """A validated callback: the URL, its host and port, and the addresses checked."""

    url: str
    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[IPAddress, ...]


def _split(url: str) -> tuple[str, str, int, str]:
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LEN:
        raise WebhookRejected(f"callback_url must be a URL of at most {MAX_URL_LEN} characters")
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookRejected(f"callback_url scheme must be http or https, not {scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise WebhookRejected("callback_url must not contain credentials (user:pass@)")
    if not parts.hostname:
        raise WebhookRejected("callback_url has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise WebhookRejected("callback_url has an invalid port") from None
    path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return scheme, parts.hostname.rstrip(".").lower(), port, path


def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookRejected(f"callback host {host!r} does not resolve: {exc}") from None
    addrs: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop IPv6 scope id
        if ip not in addrs:
            addrs.append(ip)
    if not addrs:
        raise WebhookRejected(f"callback host {host!r} resolves to no address")
    return tuple(addrs)


def resolve_callback(url: str, allow_private: bool = False) -> Target:
    """Parse, resolve and check ``url``; every resolved address must be public."""
    scheme, host, port, path = _split(url)
    addrs = _resolve(host, port)
    if not allow_private:
        for ip in addrs:
            if reason := forbidden_reason(ip):
                raise WebhookRejected(
                    f"callback host {host!r} resolves to a {reason}; only public addresses "
                    "may receive callbacks (set DFSHIELD_WEBHOOK_ALLOW_PRIVATE=true to allow)"
                )
    return Target(url.strip(), scheme, host, port, path, addrs)


def validate_callback_url(url: str, allow_private: bool = False) -> str:
    """The URL (stripped) if it may receive callbacks; raises :class:`WebhookRejected`."""
    return resolve_callback(url, allow_private).url


# ---------------------------------------------------------------- signing

MIN_SECRET_LEN = 16


def check_secret(settings: Settings) -> None:
    """Refuse (``ValueError``) the shipped or a short webhook secret in production."""
    default = Settings.model_fields["webhook_secret"].default
    weak = settings.webhook_secret == default or len(settings.webhook_secret) < MIN_SECRET_LEN
    if settings.environment == "production" and weak:
        raise ValueError(
            "refusing to start: DFSHIELD_WEBHOOK_SECRET is the development default or shorter "
            f"than {MIN_SECRET_LEN} characters; set a random secret (e.g. `openssl rand -hex 32`)"
        )


def _mac(body: bytes, secret: str, timestamp: int) -> str:
    msg = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), msg, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``X-DFShield-Signature`` value for ``body``: ``t=<unix>,v1=<hex>``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_mac(body, secret, t)}"


def verify(
    body: bytes, header: str | None, secret: str, tolerance_s: int = 300, now: float | None = None
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` of ``now``.

    Accepts several ``v1=`` values (a sender rotating secrets may send one per secret).
    """
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value.strip())
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = _mac(body, secret, timestamp).encode("ascii")
    ok = False
    for candidate in candidates:  # no early exit: constant work whichever one matches
        ok |= hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
    return ok


# ---------------------------------------------------------------- delivery


@dataclass(frozen=True)
class DeliveryResult:
    delivered: bool
    attempts: int
    status_code: int | None
    error: str | None
    delivery_id: str


def _pinned_request(target: Target, ip: IPAddress) -> tuple[str, dict[str, str], dict[str, Any]]:
    """URL aimed at ``ip`` plus the Host header and SNI of the original name."""
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    default = 443 if target.scheme == "https" else 80
    netloc = literal if target.port == default else f"{literal}:{target.port}"
    host_header = target.host if target.port == default else f"{target.host}:{target.port}"
    url = f"{target.scheme}://{netloc}{target.path}"
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return url, {"Host": host_header}, extensions


def _retry_delay(attempt: int, backoff_s: float, retry_after: str | None) -> float:
    """Exponential backoff with jitter; a receiver's 429 ``Retry-After`` wins if longer."""
    delay = backoff_s * (2**attempt) * random.uniform(0.5, 1.5)
    if retry_after and retry_after.strip().isdigit():
        delay = max(delay, float(retry_after))
    return min(delay, MAX_BACKOFF_S)


def _attempt(
    client: httpx.Client, target: Target, body: bytes, secret: str, delivery_id: str
) -> httpx.Response:
    url, headers, extensions = _pinned_request(target, target.addresses[0])
    headers |= {
        "Content-Type": "application/json",
        "User-Agent": "dfshield-webhook/1",
        EVENT_HEADER: EVENT,
        DELIVERY_HEADER: delivery_id,
        SIGNATURE_HEADER: sign(body, secret),  # fresh timestamp: retries must not go stale
    }
    request = client.build_request(
        "POST", url, content=body, headers=headers, extensions=extensions
    )
    response = client.send(request, stream=True)  # status only: never buffer a huge reply
    response.close()
    return response


def deliver(
    url: str,
    payload: dict[str, Any],
    secret: str,
    attempts: int = 5,
    backoff_s: float = 0.5,
    timeout_s: float = 5,
    allow_private: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryResult:
    """POST ``payload`` as signed JSON to ``url``; blocking (run it in a worker thread).

    Retries connection errors, timeouts, 5xx and 429 with exponential backoff; gives up at once
    on other 4xx, on any 3xx (redirects are not followed) and on a URL that no longer validates.
    """
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    delivery_id = uuid.uuid4().hex
    status: int | None = None
    error: str | None = None
    made = 0
    with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        for attempt in range(max(1, attempts)):
            try:
                target = resolve_callback(url, allow_private)  # again: DNS may have changed
            except WebhookRejected as exc:
                return DeliveryResult(False, made, status, f"{exc.code}: {exc}", delivery_id)
            made += 1
            retry_after = None
            try:
                response = _attempt(client, target, body, secret, delivery_id)
                status, error = response.status_code, None
                if response.is_success:
                    return DeliveryResult(True, made, status, None, delivery_id)
                error = f"receiver answered HTTP {status}"
                if response.is_redirect:
                    error += " (redirects are not followed: give the final URL)"
                if status != 429 and status < 500:
                    break
                retry_after = response.headers.get("retry-after")
            except httpx.HTTPError as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
            log.info("webhook %s to %s: attempt %d: %s", delivery_id, target.host, made, error)
            if attempt + 1 < attempts:
                sleep(_retry_delay(attempt, backoff_s, retry_after))
    return DeliveryResult(False, made, status, error, delivery_id)

"""Webhooks: SSRF checks, the signature scheme, and delivery to a real loopback receiver.

Traffic only ever goes to 127.0.0.1; public addresses appear as literals for validation only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.config import Settings
from app.webhooks import (
    EVENT,
    WebhookRejected,
    check_secret,
    deliver,
    resolve_callback,
    sign,
    validate_callback_url,
    verify,
)

SECRET = "whsec-test-0123456789"
PAYLOAD = {"id": "an_123", "status": "done", "summary": {"verdict": "fake"}}


# ------------------------------------------------------------------ SSRF validation


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://localhost:8080/hook", "loopback"),
        ("http://LOCALHOST./hook", "loopback"),
        ("http://2130706433/", "loopback"),  # 127.0.0.1 as one decimal number
        ("http://10.1.2.3/", "private"),
        ("http://172.16.0.9/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://100.64.0.1/", "not globally routable"),
        ("http://224.0.0.1/", "multicast"),
        ("http://0.0.0.0:9000/", "unspecified"),
        ("http://[::1]/", "loopback"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fc00::5]/", "private"),
        ("http://[ff02::1]/", "multicast"),
        ("http://[::]/", "unspecified"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[2002:7f00:1::1]/", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),  # NAT64 wrapping 169.254.169.254
    ],
)
def test_private_targets_are_refused(url: str, reason: str) -> None:
    with pytest.raises(WebhookRejected, match=reason) as info:
        validate_callback_url(url, allow_private=False)
    assert info.value.code == "callback_url_rejected"
    assert "DFSHIELD_WEBHOOK_ALLOW_PRIVATE" in info.value.message


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://93.184.216.34/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://93.184.216.34:70/", "scheme"),
        ("93.184.216.34/hook", "scheme"),
        ("http:///nohost", "no host"),
        ("http://user:pw@93.184.216.34/", "credentials"),
        ("http://93.184.216.34:99999/", "port"),
        ("http://93.184.216.34/" + "a" * 2100, "at most"),
        ("", "at most"),
    ],
)
def test_malformed_urls_are_refused(url: str, fragment: str) -> None:
    with pytest.raises(WebhookRejected, match=fragment):
        validate_callback_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/hook?x=1",
        "http://93.184.216.34:8080/",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/cb",
    ],
)
def test_public_literals_are_accepted(url: str) -> None:
    assert validate_callback_url(f"  {url} ") == url  # validation only: nothing is sent


def test_resolved_target_keeps_name_port_and_path() -> None:
    target = resolve_callback("https://93.184.216.34:8443/a/b?c=d#frag")
    assert (target.host, target.port, target.path) == ("93.184.216.34", 8443, "/a/b?c=d")
    assert [str(a) for a in target.addresses] == ["93.184.216.34"]


def test_allow_private_admits_loopback() -> None:
    assert validate_callback_url("http://127.0.0.1:9/x", allow_private=True)
    assert validate_callback_url("http://localhost/x", allow_private=True)


# ------------------------------------------------------------------ signing


def test_signature_scheme_is_hmac_of_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"s3cret", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert sign(body, "s3cret", 1_700_000_000) == f"t=1700000000,v1={expected}"


def test_verify_accepts_fresh_signature() -> None:
    body = json.dumps(PAYLOAD).encode()
    assert verify(body, sign(body, SECRET), SECRET)
    assert verify(body, sign(body, SECRET, 1000), SECRET, now=1000 + 299)


def test_verify_rejects_tampering_wrong_secret_and_stale() -> None:
    body = json.dumps(PAYLOAD).encode()
    header = sign(body, SECRET, 1000)
    assert not verify(body.replace(b"fake", b"real"), header, SECRET, now=1000)
    assert not verify(body, header, "other-secret", now=1000)
    assert not verify(body, header, SECRET, now=1000 + 301)  # stale: replay window closed
    assert not verify(body, header, SECRET, now=1000 - 301)  # from the future
    assert not verify(body, header, SECRET, tolerance_s=10, now=1011)
    # the timestamp is signed: moving it forward breaks the signature
    assert not verify(body, header.replace("t=1000", "t=1200"), SECRET, now=1200)


@pytest.mark.parametrize(
    "header", [None, "", "garbage", "t=1000", "v1=abc", "t=abc,v1=00", "t=1000,v1="]
)
def test_verify_rejects_malformed_headers(header: str | None) -> None:
    assert not verify(b"{}", header, SECRET, now=1000)


def test_verify_accepts_any_of_several_v1_values() -> None:
    good = sign(b"{}", SECRET, 1000)
    rotated = f"t=1000,v1={'0' * 64},{good.split(',')[1]}"
    assert verify(b"{}", rotated, SECRET, now=1000)


def test_production_refuses_weak_secret() -> None:
    for weak in ("dev-webhook-secret", "short"):
        with pytest.raises(ValueError, match="DFSHIELD_WEBHOOK_SECRET"):
            check_secret(Settings(environment="production", webhook_secret=weak))
    check_secret(Settings(environment="production", webhook_secret="x" * 32))
    check_secret(Settings(environment="development", webhook_secret="dev-webhook-secret"))


# ------------------------------------------------------------------ delivery (loopback only)


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that answers with scripted statuses."""

    url: str
    script: list[Any] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            step = state.script.pop(0) if state.script else 200
            state.seen.append(
                {
                    "path": self.path,
                    "host": self.headers["Host"],
                    "event": self.headers["X-DFShield-Event"],
                    "delivery": self.headers["X-DFShield-Delivery"],
                    "verified": verify(body, self.headers["X-DFShield-Signature"], SECRET),
                    "body": json.loads(body),
                }
            )
            if step == "slow":
                time.sleep(0.6)
                step = 200
            self.send_response(step)
            if step == 302:
                self.send_header("Location", "/elsewhere")
            if step == 429:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.handle_error = lambda *a: None  # type: ignore[method-assign]  # timed-out clients
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/dfshield"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


FAST = {"backoff_s": 0.01, "timeout_s": 2, "allow_private": True}


def test_retries_5xx_then_delivers(receiver: Receiver) -> None:
    receiver.script = [500, 500, 200]
    result = deliver(receiver.url, PAYLOAD, SECRET, attempts=5, **FAST)
    assert result.delivered and result.attempts == 3 and result.status_code == 200
    assert result.error is None
    assert [s["verified"] for s in receiver.seen] == [True, True, True]
    assert {s["delivery"] for s in receiver.seen} == {result.delivery_id}  # same id on retries
    assert all(s["event"] == EVENT and s["body"] == PAYLOAD for s in receiver.seen)
    assert receiver.seen[0]["path"] == "/hooks/dfshield"


def test_429_is_retried(receiver: Receiver) -> None:
    receiver.script = [429, 200]
    result = deliver(receiver.url, PAYLOAD, SECRET, **FAST)
    assert result.delivered and result.attempts == 2


def test_gives_up_on_4xx(receiver: Receiver) -> None:
    receiver.script = [404, 200]
    result = deliver(receiver.url, PAYLOAD, SECRET, **FAST)
    assert not result.delivered and result.attempts == 1 and result.status_code == 404
    assert "404" in (result.error or "")
    assert len(receiver.seen) == 1


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    receiver.script = [302]
    result = deliver(receiver.url, PAYLOAD, SECRET, **FAST)
    assert not result.delivered and result.status_code == 302 and result.attempts == 1
    assert "redirect" in (result.error or "")
    assert [s["path"] for s in receiver.seen] == ["/hooks/dfshield"]


def test_exhausts_attempts_on_persistent_5xx(receiver: Receiver) -> None:
    receiver.script = [503, 503, 503]
    result = deliver(receiver.url, PAYLOAD, SECRET, attempts=3, **FAST)
    assert not result.delivered and result.attempts == 3 and result.status_code == 503


def test_timeout_is_retried(receiver: Receiver) -> None:
    receiver.script = ["slow", 200]
    opts = FAST | {"timeout_s": 0.2}
    result = deliver(receiver.url, PAYLOAD, SECRET, attempts=3, **opts)
    assert result.delivered and result.attempts == 2


def test_connection_refused_is_retried_then_reported() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    delays: list[float] = []
    url = f"http://127.0.0.1:{port}/"
    opts = {"backoff_s": 1.0, "allow_private": True, "sleep": delays.append}
    result = deliver(url, PAYLOAD, SECRET, attempts=4, **opts)
    assert not result.delivered and result.attempts == 4 and result.status_code is None
    assert "ConnectError" in (result.error or "")
    assert len(delays) == 3
    # exponential with jitter in [0.5, 1.5] x 2^n
    for n, delay in enumerate(delays):
        assert 0.5 * 2**n <= delay <= 1.5 * 2**n


def test_private_target_refused_at_delivery_without_traffic(receiver: Receiver) -> None:
    result = deliver(receiver.url, PAYLOAD, SECRET, backoff_s=0.01, allow_private=False)
    assert not result.delivered and result.attempts == 0
    assert (result.error or "").startswith("callback_url_rejected")
    assert receiver.seen == []


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Resolve the given names from ``answers`` (popping one per lookup, keeping the last)."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        queue = answers[host]
        ip = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_connects_to_the_checked_address_with_original_host(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = _fake_dns(monkeypatch, {"hooks.customer.test": ["127.0.0.1"]})
    port = receiver.url.split(":")[2].split("/")[0]
    result = deliver(f"http://hooks.customer.test:{port}/cb", PAYLOAD, SECRET, **FAST)
    assert result.delivered
    assert receiver.seen[0]["host"] == f"hooks.customer.test:{port}"
    assert receiver.seen[0]["verified"]
    assert asked == ["hooks.customer.test"]  # one lookup, and the connection used its answer


def test_dns_rebinding_is_caught_at_delivery(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Public at submit time, loopback by delivery time (the attacker flipped the record).
    _fake_dns(monkeypatch, {"rebind.customer.test": ["93.184.216.34", "127.0.0.1"]})
    port = receiver.url.split(":")[2].split("/")[0]
    url = f"http://rebind.customer.test:{port}/cb"
    assert validate_callback_url(url) == url
    result = deliver(url, PAYLOAD, SECRET, backoff_s=0.01)
    assert not result.delivered and result.attempts == 0
    assert "loopback" in (result.error or "")
    assert receiver.seen == []

"""Streaming multipart upload: the file part goes to disk chunk by chunk under a byte cap.

Starlette's ``request.form()`` would spool the whole body before the route sees it; here the
cap is enforced while bytes arrive, so an oversized upload is refused after ``cap`` bytes,
not after the client has sent everything.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect

from app.api.errors import ApiError
from app.media.errors import FileTooLarge

FILE_FIELD = "file"
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 16
INCOMPLETE = "upload_incomplete"  # the body stopped before the multipart message ended
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


@dataclass
class SpooledUpload:
    path: Path | None = None  # None: no file part
    filename: str | None = None
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)


def _suffix(filename: str | None) -> str:
    """Keep a short, safe extension for humans; the type is sniffed from bytes anyway."""
    suffix = Path(filename or "").suffix
    return suffix.lower() if _SUFFIX.fullmatch(suffix) else ""


class _Collector:
    """python-multipart callbacks: one part at a time, file bytes straight to disk."""

    def __init__(self, dest_dir: Path, cap: int, cap_text: str) -> None:
        self.dest_dir = dest_dir
        self.cap = cap
        self.cap_text = cap_text
        self.out = SpooledUpload()
        self._headers: dict[bytes, bytes] = {}
        self._hname = b""
        self._hvalue = b""
        self._name: str | None = None
        self._file: BinaryIO | None = None
        self._buf = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._hname, self._hvalue = {}, b"", b""
        self._name, self._buf = None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._hname.strip().lower()] = self._hvalue.strip()
        self._hname, self._hvalue = b"", b""

    def _headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = opts.get(b"name", b"").decode("utf-8", "replace")
        if self._name == FILE_FIELD:
            if self.out.path is not None:
                raise ApiError(422, "validation_error", "send exactly one 'file' part")
            raw = opts.get(b"filename")
            self.out.filename = raw.decode("utf-8", "replace")[:255] if raw else None
            self.dest_dir.mkdir(parents=True, exist_ok=True)
            self.out.path = self.dest_dir / f"source{_suffix(self.out.filename)}"
            self._file = self.out.path.open("wb")
        elif len(self.out.fields) >= MAX_FIELDS:
            raise ApiError(422, "validation_error", f"too many form fields (max {MAX_FIELDS})")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._file is not None:
            self.out.size += n
            if self.out.size > self.cap:
                raise FileTooLarge(f"upload is larger than the {self.cap_text} limit")
            self._file.write(data[start:end])
        else:
            self._buf += data[start:end]
            if len(self._buf) > MAX_FIELD_BYTES:
                raise ApiError(422, "validation_error",
                               f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._name:
            self.out.fields[self._name] = self._buf.decode("utf-8", "replace")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _idle_timeout(request: Request) -> float:
    # From the app's settings rather than a parameter: every caller gets the same guard.
    settings = getattr(request.app.state, "settings", None)
    return float(getattr(settings, "upload_idle_timeout_s", 0.0) or 0.0)


async def _body(request: Request, idle_s: float) -> AsyncIterator[bytes]:
    """The body as it arrives. A client that stops sending for ``idle_s`` is cut off: a
    stalled upload would otherwise hold its connection and spool file forever (uvicorn
    has no timeout on a request body)."""
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), idle_s or None)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(408, "upload_timeout",
                           f"no upload bytes arrived for {idle_s:g} s; the upload was dropped",
                           headers={"Connection": "close"}) from None
        yield chunk


async def spool_multipart(
    request: Request, dest_dir: Path, cap: int, cap_text: str
) -> SpooledUpload:
    """Parse the multipart body as it streams in; raises ``FileTooLarge`` past ``cap`` bytes."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(415, "unsupported_content_type",
                       "send multipart/form-data with the media in a part named 'file'")
    collector = _Collector(dest_dir, cap, cap_text)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in _body(request, _idle_timeout(request)):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        raise ApiError(400, "bad_request", f"malformed multipart body: {e}") from None
    except ClientDisconnect:
        # The client (or the connection: a body shorter than its Content-Length) went away
        # mid-upload. Its fault, not a 500; the answer is mostly for the logs and metrics.
        raise ApiError(400, INCOMPLETE, "the connection closed before the upload was complete"
                       ) from None
    finally:
        collector.close()
    if parser.state != MultipartState.END:  # python-multipart's finalize() checks nothing
        raise ApiError(400, INCOMPLETE, "the multipart body ends before its closing boundary "
                       "(a truncated upload?); nothing was analysed")
    return collector.out

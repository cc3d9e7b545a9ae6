"""The one error type of ``dfshield models import``: a stable code plus a one-line message."""

from __future__ import annotations


class CheckpointImportError(Exception):
    """The checkpoint cannot be imported; ``message`` is one line that names the fix."""

    def __init__(self, code: str, message: str) -> None:
        # One line, always: the CLI prints it as ``error <code>: <message>``.
        self.code = code
        self.message = " ".join(message.split())
        super().__init__(self.message)

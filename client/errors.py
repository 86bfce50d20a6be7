"""The one exception type of the client: every failed call raises `AsrError`.

It carries the gRPC status code, the server's message and, when the server sent one, its
`retry-after-s` hint. It subclasses `grpc.RpcError` and answers `code()` / `details()` like a
gRPC call error, so code written against plain stubs keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

RETRY_AFTER_KEY = "retry-after-s"


class AsrError(grpc.RpcError):
    """A failed call: gRPC status `code()`, the server's message, and an optional retry hint.

    Attributes:
        message: the server's (or the client's) explanation, e.g. "not audio: ...".
        retry_after_s: seconds the server asked the caller to wait before retrying, or None.
        attempts: how many times the call was tried before giving up.
    """

    def __init__(self, code: grpc.StatusCode, message: str, *,
                 retry_after_s: float | None = None, attempts: int = 1) -> None:
        super().__init__(f"{code.name}: {message}")
        self._code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.attempts = attempts

    def code(self) -> grpc.StatusCode:
        """The gRPC status code, e.g. `grpc.StatusCode.INVALID_ARGUMENT`."""
        return self._code

    def details(self) -> str:
        """The message (same as `message`; named like `grpc.Call.details`)."""
        return self.message

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. "UNAVAILABLE"."""
        return self._code.name

    def __str__(self) -> str:
        return f"{self._code.name}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._code.name, self.message, self.retry_after_s, self.attempts))


def _rebuild(code: str, message: str, retry_after_s: float | None, attempts: int) -> AsrError:
    return AsrError(grpc.StatusCode[code], message, retry_after_s=retry_after_s,
                    attempts=attempts)


def retry_after_from(metadata: Iterable[tuple[str, Any]] | None) -> float | None:
    """The `retry-after-s` trailer value in seconds, or None when absent or malformed."""
    for key, value in metadata or ():
        if key == RETRY_AFTER_KEY:
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None


def from_rpc_error(exc: grpc.RpcError) -> AsrError:
    """Wrap a sync or asyncio gRPC error (anything with code()/details()) as `AsrError`."""
    if isinstance(exc, AsrError):
        return exc
    code_fn = getattr(exc, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(exc, "details", None)
    message = (details_fn() if callable(details_fn) else "") or str(exc)
    trailers_fn = getattr(exc, "trailing_metadata", None)
    trailers = trailers_fn() if callable(trailers_fn) else None
    return AsrError(code or grpc.StatusCode.UNKNOWN, message,
                    retry_after_s=retry_after_from(trailers))

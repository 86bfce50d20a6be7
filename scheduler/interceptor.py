"""The one place where exceptions become gRPC status codes, and where request ids are read.

`RequestError` subclasses carry their own code (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...);
RESOURCE_EXHAUSTED answers carry a `retry-after-s` trailer. Anything else is a bug: logged with
its traceback and answered INTERNAL. A message that does not parse (random bytes, a truncated
protobuf) is the client's error: INVALID_ARGUMENT, no traceback. Every call to the asr.v1
services is counted with its final code, refused ones (auth, limits, bad input) included.
Messages sent back are capped in length. The request id comes from the `x-request-id` metadata
(validated: at most 128 characters of a safe set, so it cannot forge log lines or bloat
metadata) or is made up, and is available to handlers and logs through `REQUEST_ID`.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import grpc

from protos.common.wrapping import HandlerWrapper, same_kind
from scheduler.errors import InvalidRequest, QueueFull, RequestError
from scheduler.metrics import Metrics

log = logging.getLogger(__name__)

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
REQUEST_ID_KEY = "x-request-id"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:/@+=-]{1,128}")
MAX_DETAILS = 1000  # longest status message sent back


_ID_PREFIX = uuid.uuid4().hex[:8]  # per process; ids are this plus a counter (no syscall)
_ID_COUNTER = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


def check_request_id(value: str) -> str:
    """`value` if it is a safe request id, else InvalidRequest."""
    if not REQUEST_ID_PATTERN.fullmatch(value):
        raise InvalidRequest("request id must be 1-128 characters of letters, digits and "
                             f"._:/@+=- (got one of length {len(value)})")
    return value


class _Malformed:
    """Stands in for a request message that did not parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that hands a parse failure to the handler instead of raising (gRPC would
    answer it UNKNOWN/INTERNAL with a traceback in the log)."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError and friends
            return _Malformed(exc)
    return parse


def _parsed(request: Any) -> Any:
    if isinstance(request, _Malformed):
        raise InvalidRequest(f"malformed request message: "
                             f"{str(request.error)[:200] or type(request.error).__name__}")
    return request


class _Checked:
    """A stream's requests, each checked as it is read (one that did not parse raises
    InvalidRequest). A plain iterator: no async generator made per stream."""

    __slots__ = ("_iterator", "_requests")

    def __init__(self, requests: AsyncIterable[Any]) -> None:
        self._requests = requests
        # Made at the first read: gRPC's receiver starts a coroutine when asked for one.
        self._iterator: AsyncIterator[Any] | None = None

    def __aiter__(self) -> _Checked:
        return self

    async def __anext__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._requests.__aiter__()
        return _parsed(await self._iterator.__anext__())


Trailers = tuple[tuple[str, str], ...]


def status_of(method: str, exc: Exception) -> tuple[grpc.StatusCode, str, Trailers]:
    """The status (code, capped details, trailers) a call ends with when `exc` escapes its
    handler; logged here (a traceback only for what is not a `RequestError`)."""
    if isinstance(exc, RequestError):
        trailers: Trailers = ((("retry-after-s", f"{exc.retry_after_s:g}"),)
                              if isinstance(exc, QueueFull) else ())
        message = str(exc)
        if len(message) > MAX_DETAILS:
            message = message[:MAX_DETAILS - 3] + "..."
        log.info("%s [%s]: %s %s", method, REQUEST_ID.get(), exc.code.name, message)
        return exc.code, message, trailers
    log.exception("%s [%s]: unexpected error", method, REQUEST_ID.get(), exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}", ()


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    if isinstance(exc, grpc.aio.AbortError):  # the handler already chose its status
        raise exc
    code, message, trailers = status_of(method, exc)
    if trailers:
        context.set_trailing_metadata(trailers)
    await context.abort(code, message)


def set_request_id(given: object) -> None:
    """The caller's request id `given` (checked) or a new one; a bad one is refused once the
    id of the call is set to a fresh one, so that the refusal itself logs safely."""
    REQUEST_ID.set(_new_request_id())
    if given:
        REQUEST_ID.set(check_request_id(str(given)))


def code_name(exc: BaseException, context: grpc.aio.ServicerContext | None = None) -> str:
    """The status code a request ends with when `exc` escapes its handler."""
    if isinstance(exc, RequestError):
        return exc.code.name
    if isinstance(exc, grpc.aio.AbortError) and context is not None:  # the handler's own code
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return "INTERNAL" if isinstance(exc, Exception) else "CANCELLED"


class _Guard:
    """One call's request id, its exceptions mapped to status codes, its outcome counted (an
    async context manager: one small object per call)."""

    __slots__ = ("context", "done", "method", "started")

    def __init__(self, context: grpc.aio.ServicerContext, method: str,
                 done: Callable[[str, float], None] | None) -> None:
        self.context, self.method, self.done = context, method, done
        self.started = time.monotonic()

    async def __aenter__(self) -> None:
        try:  # a bad request id is refused and counted like any other error
            set_request_id(dict(self.context.invocation_metadata() or ()).get(REQUEST_ID_KEY))
        except Exception as exc:
            await self.__aexit__(type(exc), exc, None)
            raise

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> None:
        code = "OK" if exc is None else code_name(exc, self.context)
        try:
            if isinstance(exc, Exception):
                await _abort(self.context, self.method, exc)  # raises AbortError
        finally:
            if self.done is not None:
                self.done(code, time.monotonic() - self.started)


class ErrorInterceptor(HandlerWrapper):
    """Maps exceptions of every unary and streaming handler to status codes, and counts
    every request with its final code in `metrics`. Wraps each method once where the server
    is a `WrappedServer`; works as a per-call interceptor elsewhere."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        rpc = method.rsplit("/", 1)[-1]
        # Health checks and reflection are not counted.
        track = self.metrics.track if method.startswith("/asr.v1.") else None
        deserializer = _tolerant(handler.request_deserializer)

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with _Guard(context, method, track(rpc) if track else None):
                    return await inner_uu(_parsed(request), context)

            return same_kind(handler, unary_unary=unary_unary,
                             request_deserializer=deserializer)
        if handler.stream_stream:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: AsyncIterator[Any],
                                    context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with _Guard(context, method, track(rpc) if track else None):
                    async for item in inner_ss(_Checked(requests), context):
                        yield item

            return same_kind(handler, stream_stream=stream_stream,
                             request_deserializer=deserializer)
        return handler

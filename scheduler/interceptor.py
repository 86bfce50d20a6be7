"""The one place where exceptions become gRPC status codes, and where request ids are read.

`RequestError` subclasses carry their own code (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...);
RESOURCE_EXHAUSTED answers carry a `retry-after-s` trailer. Anything else is a bug: logged with
its traceback and answered INTERNAL. The request id comes from the `x-request-id` metadata (or
is made up) and is available to handlers and logs through `REQUEST_ID`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from scheduler.errors import QueueFull, RequestError
from scheduler.metrics import Metrics

log = logging.getLogger(__name__)

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
REQUEST_ID_KEY = "x-request-id"


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
    if isinstance(exc, grpc.aio.AbortError):  # the handler already chose its status
        raise exc
    if isinstance(exc, RequestError):
        if isinstance(exc, QueueFull):
            context.set_trailing_metadata((("retry-after-s", f"{exc.retry_after_s:g}"),))
        log.info("%s [%s]: %s %s", method, REQUEST_ID.get(), exc.code.name, exc)
        await context.abort(exc.code, str(exc))
    log.exception("%s [%s]: unexpected error", method, REQUEST_ID.get(), exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")


def _set_request_id(context: grpc.aio.ServicerContext) -> None:
    meta = dict(context.invocation_metadata() or ())
    REQUEST_ID.set(str(meta.get(REQUEST_ID_KEY) or uuid.uuid4().hex[:16]))


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
    """The status code a request ends with when `exc` escapes its handler."""
    if isinstance(exc, RequestError):
        return exc.code.name
    if isinstance(exc, grpc.aio.AbortError):  # the handler aborted with its own code
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return "INTERNAL" if isinstance(exc, Exception) else "CANCELLED"


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions of every unary and streaming handler to status codes, and counts
    every request with its final code in `metrics`."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        rpc = method.rsplit("/", 1)[-1]
        counted = method.startswith("/asr.v1.")  # health checks and reflection are not counted
        metrics = self.metrics

        @contextlib.asynccontextmanager
        async def guarded(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            """Request id in, exceptions to status codes, the outcome counted."""
            _set_request_id(context)
            done = metrics.track(rpc) if counted else None
            started, code = time.monotonic(), "OK"
            try:
                yield
            except BaseException as exc:
                code = _code_of(exc, context)
                if isinstance(exc, Exception):
                    await _abort(context, method, exc)  # raises AbortError
                raise
            finally:
                if done:
                    done(code, time.monotonic() - started)

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with guarded(context):
                    return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_stream:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: AsyncIterator[Any],
                                    context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with guarded(context):
                    async for item in inner_ss(requests, context):
                        yield item

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler

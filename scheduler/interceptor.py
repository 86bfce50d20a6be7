"""The one place where exceptions become gRPC status codes, and where request ids are read.

`RequestError` subclasses carry their own code (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...);
RESOURCE_EXHAUSTED answers carry a `retry-after-s` trailer. Anything else is a bug: logged with
its traceback and answered INTERNAL. The request id comes from the `x-request-id` metadata (or
is made up) and is available to handlers and logs through `REQUEST_ID`.
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from scheduler.errors import QueueFull, RequestError

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


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions of every unary and streaming handler to status codes."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _set_request_id(context)
                try:
                    return await inner_uu(request, context)
                except Exception as exc:
                    await _abort(context, method, exc)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_stream:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: AsyncIterator[Any],
                                    context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                _set_request_id(context)
                try:
                    async for item in inner_ss(requests, context):
                        yield item
                except Exception as exc:
                    await _abort(context, method, exc)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler

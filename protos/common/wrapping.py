"""Server-side wrappers applied once per method, when its handler is registered, instead of on
every call.

A `grpc.aio.ServerInterceptor` runs for every call: gRPC awaits each interceptor's
`intercept_service`, which looks the handler up again and builds a new wrapper (closures, a
new `RpcMethodHandler`) around it, all before the handler starts. What our interceptors do per
method never changes, so `WrappedServer` asks each `HandlerWrapper` once per method for the
wrapped handler and keeps it; the per-call work left is what the wrapper's own handler does.
A `HandlerWrapper` still works as an interceptor (`intercept_service` wraps on each call),
for servers and tests that pass it to `grpc.aio.server(interceptors=...)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc


class HandlerWrapper(grpc.aio.ServerInterceptor):
    """Wraps the handler of one method; `wrap` depends only on the method's name."""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        return handler if handler is None else self.wrap(details.method, handler)


def same_kind(handler: grpc.RpcMethodHandler, unary_unary: Any = None,
              stream_stream: Any = None,
              request_deserializer: Any = None) -> grpc.RpcMethodHandler:
    """A handler like `handler` (same serializers) running `unary_unary` or `stream_stream`,
    whichever matches its kind; `request_deserializer` replaces its own when given."""
    kw = {"request_deserializer": request_deserializer or handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.request_streaming or handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)
    return grpc.unary_unary_rpc_method_handler(unary_unary, **kw)


def checked_first(handler: grpc.RpcMethodHandler,
                  check: Callable[[grpc.aio.ServicerContext], Awaitable[None]]
                  ) -> grpc.RpcMethodHandler | None:
    """A handler like `handler` that awaits `check(context)` (which raises to refuse the call)
    before running it; None for a kind other than unary or bidirectional streaming."""
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            return await inner_uu(request, context)

        return same_kind(handler, unary_unary=unary_unary)
    if handler.stream_stream:
        inner_ss = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any],
                                context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await check(context)
            async for item in inner_ss(requests, context):
                yield item

        return same_kind(handler, stream_stream=stream_stream)
    return None


class _CachedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose answers are wrapped once per method and kept."""

    def __init__(self, inner: grpc.GenericRpcHandler,
                 wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]) -> None:
        self.inner = inner
        self._wrap = wrap
        self._cache: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        try:
            return self._cache[method]
        except KeyError:
            pass
        handler = self.inner.service(handler_call_details)
        wrapped = None if handler is None else self._wrap(method, handler)
        if handler is not None:  # unknown names are not kept (a client could send many)
            self._cache[method] = wrapped
        return wrapped


class WrappedServer(grpc.aio.Server):
    """A `grpc.aio.Server` whose handlers are wrapped by `wrappers` (the first outermost, as
    interceptors are ordered) when they are registered."""

    def __init__(self, server: grpc.aio.Server, wrappers: Sequence[HandlerWrapper]) -> None:
        self._server = server
        self._wrappers = tuple(wrappers)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        for wrapper in reversed(self._wrappers):
            handler = wrapper.wrap(method, handler)
        return handler

    def add_generic_rpc_handlers(
            self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_CachedGeneric(g, self.wrap) for g in generic_rpc_handlers))

    def add_registered_method_handlers(
            self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(service_name, {
            name: self.wrap(f"/{service_name}/{name}", handler)
            for name, handler in method_handlers.items()})

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str,
                        server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)

"""The worker API accepts only its scheduler: a per-start secret, handed to each worker in its
environment (never on the command line, which any local user can read), sent by the scheduler
in every call's metadata and checked by the worker. Together with the private runtime
directory (0700) and sockets (0600), no other local user can call a worker."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from protos.common.wrapping import HandlerWrapper, checked_first

SECRET_ENV = "ASR_WORKER_SECRET"
METADATA_KEY = "x-asr-worker-secret"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _with_secret(details: grpc.aio.ClientCallDetails, secret: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add(METADATA_KEY, secret)
    return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata,
                                      details.credentials, details.wait_for_ready)


class _AttachUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, secret: str) -> None:
        self.secret = secret

    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await continuation(_with_secret(details, self.secret), request)


# One class per call kind: grpc.aio files an interceptor under its first matching kind only.
class _AttachStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, secret: str) -> None:
        self.secret = secret

    async def intercept_stream_stream(self, continuation: Callable[..., Any],
                                      details: grpc.aio.ClientCallDetails,
                                      request_iterator: Any) -> Any:
        return await continuation(_with_secret(details, self.secret), request_iterator)


def call_metadata(secret: str) -> tuple[tuple[str, str], ...]:
    """The secret as metadata of one call, for calls made without the interceptors (the
    long-lived Work call: interceptors on a stream add a task hop to every message)."""
    return ((METADATA_KEY, secret),) if secret else ()


def client_interceptors(secret: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for the scheduler's channel to a worker (none without a secret)."""
    return [_AttachUnary(secret), _AttachStream(secret)] if secret else []


class SecretCheck(HandlerWrapper):
    """Refuses (UNAUTHENTICATED) every call that does not carry the secret. As an interceptor
    (the worker's server) it also refuses calls to methods that do not exist, so that they
    tell an outsider nothing; wrapped once per method (`WrappedServer`) it checks the calls
    to the methods it wraps."""

    def __init__(self, secret: str,
                 refusal: str = "this worker serves only its scheduler") -> None:
        self.secret = secret.encode()
        self.refusal = refusal

    def _carries(self, metadata: Any) -> bool:
        given = dict(metadata or ()).get(METADATA_KEY, "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        return hmac.compare_digest(given_bytes, self.secret)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        carries, refusal = self._carries, self.refusal

        async def check(context: grpc.aio.ServicerContext) -> None:
            if not carries(context.invocation_metadata()):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)

        # A kind the service does not use: refuse every call.
        return checked_first(handler, check) or self._refusing(handler)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails],
                                     Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if self._carries(details.invocation_metadata):
            return await continuation(details)
        return self._refusing(await continuation(details))

    def _refusing(self, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, self.refusal)

        if handler is not None and (handler.request_streaming or handler.response_streaming):
            async def refuse_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, self.refusal)
                yield  # pragma: no cover  (an async generator, as stream handlers are)
            return grpc.stream_stream_rpc_method_handler(
                refuse_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(
            refuse, request_deserializer=handler.request_deserializer if handler else None,
            response_serializer=handler.response_serializer if handler else None)


def server_interceptors(secret: str) -> list[grpc.aio.ServerInterceptor]:
    """The worker's check (none when started by hand without a secret)."""
    return [SecretCheck(secret)] if secret else []

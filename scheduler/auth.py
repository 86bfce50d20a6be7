"""Transport security and bearer tokens for the public port.

TLS: `--tls-cert`/`--tls-key` (PEM) turn TLS on; `--tls-client-ca` also requires client
certificates signed by that CA (mTLS). Tokens: with `--auth-token-file`, Recognizer calls need
``authorization: Bearer <token>``; with `--admin-token-file`, Admin calls need that token (else
the auth token). Health and reflection stay open so probes and tooling work. A missing token
gets UNAUTHENTICATED, a wrong one PERMISSION_DENIED.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from scheduler.errors import PermissionDenied, RequestError, Unauthenticated

log = logging.getLogger(__name__)


def read_token(path: str) -> str:
    token = Path(path).read_text().strip() if path else ""
    if path and not token:
        raise ValueError(f"token file {path} is empty")
    return token


def server_credentials(cert: str, key: str, client_ca: str) -> grpc.ServerCredentials | None:
    """TLS credentials, or None for plaintext."""
    if not cert and not key:
        if client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert and key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    ca = Path(client_ca).read_bytes() if client_ca else None
    return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())],
                                       root_certificates=ca, require_client_auth=ca is not None)


def _deny(handler: grpc.RpcMethodHandler, error: RequestError) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that only refuses (with `error`, which the
    error interceptor around it maps to its code and counts)."""
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        raise error

    async def abort_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        raise error
        yield  # pragma: no cover - makes this an async generator

    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(abort_stream, **kw)
    return grpc.unary_unary_rpc_method_handler(abort, **kw)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Checks bearer tokens on the asr.v1 services."""

    def __init__(self, auth_token: str, admin_token: str) -> None:
        self.auth_token = auth_token
        self.admin_token = admin_token or auth_token

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is not None:
            refused = self.refusal(details.method,
                                   dict(details.invocation_metadata or ()).get("authorization"))
            if refused is not None:
                return _deny(handler, refused)
        return handler

    def refusal(self, method: str, authorization: object) -> RequestError | None:
        """Why a call to `method` with this `authorization` metadata is refused, or None."""
        if method.startswith("/asr.v1.Admin/"):
            needed = self.admin_token
        elif method.startswith("/asr.v1."):
            needed = self.auth_token
        else:
            needed = ""
        if not needed:
            return None
        given = str(authorization or "")
        if not given.startswith("Bearer "):
            return Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        if not hmac.compare_digest(given[7:].encode(), needed.encode()):
            log.warning("rejected a call to %s with a wrong token", method)
            return PermissionDenied("wrong token")
        return None

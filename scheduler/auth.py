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
from pathlib import Path

import grpc

from protos.common.wrapping import HandlerWrapper, checked_first
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


class TokenInterceptor(HandlerWrapper):
    """Checks bearer tokens on the asr.v1 services: a refused call raises its `RequestError`
    (`ErrorInterceptor`, outside, maps it to its code and counts it)."""

    def __init__(self, auth_token: str, admin_token: str) -> None:
        self.auth_token = auth_token
        self.admin_token = admin_token or auth_token

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if not self._needed(method):
            return handler
        refusal = self.refusal

        async def check(context: grpc.aio.ServicerContext) -> None:
            refused = refusal(method,
                              dict(context.invocation_metadata() or ()).get("authorization"))
            if refused is not None:
                raise refused

        wrapped = checked_first(handler, check)
        if wrapped is not None:
            return wrapped
        raise TypeError(f"{method}: token checks cover unary and bidirectional-stream methods "
                        "only")  # fail closed, at start-up

    def _needed(self, method: str) -> str:
        if method.startswith("/asr.v1.Admin/"):
            return self.admin_token
        if method.startswith("/asr.v1."):
            return self.auth_token
        return ""

    def refusal(self, method: str, authorization: object) -> RequestError | None:
        """Why a call to `method` with this `authorization` metadata is refused, or None."""
        needed = self._needed(method)
        if not needed:
            return None
        given = str(authorization or "")
        if not given.startswith("Bearer "):
            return Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        if not hmac.compare_digest(given[7:].encode(), needed.encode()):
            log.warning("rejected a call to %s with a wrong token", method)
            return PermissionDenied("wrong token")
        return None

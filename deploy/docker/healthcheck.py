"""Container health check: asks the service's own grpc.health.v1 for `asr.v1.Recognizer`.

Exit 0 when SERVING, 1 otherwise (NOT_SERVING while models load or while draining, or no
answer). Used by the image's HEALTHCHECK and, when TLS is on (Kubernetes' native gRPC probes
speak only plaintext), by the Helm chart's exec probes. Settings come from the service's own
environment: ASR_PORT, ASR_TLS_CERT / ASR_TLS_KEY; ASR_PROBE_CA (default: ASR_TLS_CERT) and
ASR_PROBE_SERVER_NAME (a name in the certificate) when TLS is on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    env = os.environ
    target = f"127.0.0.1:{env.get('ASR_PORT', '50051')}"
    cert, key = env.get("ASR_TLS_CERT", ""), env.get("ASR_TLS_KEY", "")
    if cert:
        creds = grpc.ssl_channel_credentials(
            Path(env.get("ASR_PROBE_CA", cert)).read_bytes(),
            private_key=Path(key).read_bytes() if env.get("ASR_TLS_CLIENT_CA") else None,
            certificate_chain=Path(cert).read_bytes() if env.get("ASR_TLS_CLIENT_CA") else None)
        options = [("grpc.ssl_target_name_override", env.get("ASR_PROBE_SERVER_NAME", "localhost"))]
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="asr.v1.Recognizer"), timeout=3).status
        except grpc.RpcError as exc:
            sys.stderr.write(f"health check failed: {exc.code().name}\n")
            return 1
    sys.stderr.write(f"{health_pb2.HealthCheckResponse.ServingStatus.Name(status)}\n")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())

"""Error types of the service.

Per-request errors (`RequestError` subclasses) fail one request with a specific gRPC code;
the interceptor in `scheduler.interceptor` is the one place that maps them. Anything else
that escapes a handler is a bug and becomes INTERNAL with a logged traceback.
"""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """A problem with one request; the service keeps serving others."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidAudio(RequestError):
    """The audio is empty, undecodable or badly described."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidRequest(RequestError):
    """The request breaks the API contract (e.g. a stream without a config first)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class QueueFull(RequestError):
    """Admission control: the scheduler's queue is full; retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NoCapacity(QueueFull):
    """No device could take the request within the queue timeout."""


class Unavailable(RequestError):
    """No worker can serve (all down or still starting)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RequestError):
    """The request's deadline passed before a result was ready."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class WorkerLost(Exception):
    """A worker died or became unreachable while holding work (internal: triggers a requeue)."""


class InferenceFailed(RequestError):
    """The model raised on this request alone (a bug or a model limit): INTERNAL."""

    code = grpc.StatusCode.INTERNAL


class TooBigForGpu(RequestError):
    """A unit ran out of GPU memory even alone and no CPU worker may take it."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class GpuOutOfMemory(Exception):
    """A unit ran out of GPU memory even alone (internal: it must go elsewhere)."""


class Unauthenticated(RequestError):
    """No bearer token where one is required."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RequestError):
    """A wrong bearer token."""

    code = grpc.StatusCode.PERMISSION_DENIED

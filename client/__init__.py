"""Python client of the Fun-ASR GPU scheduling service.

`AsrClient` (synchronous) and `AsyncAsrClient` (asyncio) transcribe paths, bytes or file
objects into typed `Transcript`s; every failure is an `AsrError` carrying the gRPC code. The
`asr-client` command line lives in `client.cli`.
"""

from client.aio import AsyncAsrClient
from client.errors import AsrError
from client.library import AsrClient, BatchItem
from client.options import ChannelOptions, RetryPolicy, TranscribeOptions
from client.types import (
    CacheClearReport,
    DeviceStatus,
    ModelInfo,
    Segment,
    ServiceStatus,
    StreamResult,
    Timings,
    Transcript,
    WorkerStatus,
)

__all__ = [
    "AsrClient", "AsrError", "AsyncAsrClient", "BatchItem", "CacheClearReport",
    "ChannelOptions", "DeviceStatus", "ModelInfo", "RetryPolicy", "Segment", "ServiceStatus",
    "StreamResult", "Timings", "TranscribeOptions", "Transcript", "WorkerStatus",
]

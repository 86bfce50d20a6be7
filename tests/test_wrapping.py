"""`WrappedServer`: each method's handler is wrapped once, when registered, for registered
and generic handlers alike; the wrapped handlers run on every call, in interceptor order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc
from protos.common.wrapping import HandlerWrapper, WrappedServer, same_kind


class Recording(HandlerWrapper):
    """Counts how often it wraps, and logs each call it sees (by its name)."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls
        self.wrapped: list[str] = []

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        self.wrapped.append(method)
        name, calls = self.name, self.calls
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                calls.append(name)
                return await inner(request, context)
            return same_kind(handler, unary_unary=unary)
        if handler.stream_stream:
            inner_ss = handler.stream_stream

            async def stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                calls.append(name)
                async for item in inner_ss(requests, context):
                    yield item
            return same_kind(handler, stream_stream=stream)
        return handler


class Echo(pb_grpc.RecognizerServicer):
    async def Recognize(self, request: pb.RecognizeRequest,
                        context: grpc.aio.ServicerContext) -> pb.RecognizeResponse:
        return pb.RecognizeResponse(result=pb.RecognitionResult(text=request.config.language))

    async def StreamingRecognize(self, requests: AsyncIterator[pb.StreamingRecognizeRequest],
                                 context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[pb.StreamingRecognizeResponse]:
        n = 0
        async for _ in requests:
            n += 1
        yield pb.StreamingRecognizeResponse(result=pb.RecognitionResult(text=str(n)))


@pytest.mark.parametrize("registered", [True, False], ids=["registered", "generic"])
async def test_wrapped_once_per_method_and_run_per_call(registered: bool) -> None:
    calls: list[str] = []
    outer, inner = Recording("outer", calls), Recording("inner", calls)
    server = WrappedServer(grpc.aio.server(), [outer, inner])
    if registered:
        pb_grpc.add_RecognizerServicer_to_server(Echo(), server)
    else:  # generic handlers only, as older generated code registers them
        handlers = {
            "Recognize": grpc.unary_unary_rpc_method_handler(
                Echo().Recognize, request_deserializer=pb.RecognizeRequest.FromString,
                response_serializer=pb.RecognizeResponse.SerializeToString),
            "StreamingRecognize": grpc.stream_stream_rpc_method_handler(
                Echo().StreamingRecognize,
                request_deserializer=pb.StreamingRecognizeRequest.FromString,
                response_serializer=pb.StreamingRecognizeResponse.SerializeToString)}
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("asr.v1.Recognizer", handlers),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RecognizerStub(channel)
            for lang in ("en", "zh", "ja"):
                reply = await stub.Recognize(pb.RecognizeRequest(
                    config=pb.RecognitionConfig(language=lang)))
                assert reply.result.text == lang
            for n in (1, 3):
                msgs = [pb.StreamingRecognizeRequest(audio_content=b"x")] * n
                replies = [r async for r in stub.StreamingRecognize(iter(msgs))]
                assert [r.result.text for r in replies] == [str(n)]
            status = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest())
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/asr.v1.Recognizer/Nope")(b"")
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(None)
    assert calls == ["outer", "inner"] * 6, "every call runs both wrappers, outer first"
    for wrapper in (outer, inner):
        assert wrapper.wrapped.count("/asr.v1.Recognizer/Recognize") == 1
        assert wrapper.wrapped.count("/asr.v1.Recognizer/StreamingRecognize") == 1
        assert wrapper.wrapped.count("/grpc.health.v1.Health/Check") == 1
        assert "/asr.v1.Recognizer/Nope" not in wrapper.wrapped

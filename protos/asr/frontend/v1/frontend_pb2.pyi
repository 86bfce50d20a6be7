from protos.asr.v1 import asr_pb2 as _asr_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LinkRequest(_message.Message):
    __slots__ = ("calls", "cancel", "input")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[RelayedCall]
    cancel: _containers.RepeatedScalarFieldContainer[int]
    input: _containers.RepeatedCompositeFieldContainer[StreamInput]
    def __init__(self, calls: _Optional[_Iterable[_Union[RelayedCall, _Mapping]]] = ..., cancel: _Optional[_Iterable[int]] = ..., input: _Optional[_Iterable[_Union[StreamInput, _Mapping]]] = ...) -> None: ...

class StreamInput(_message.Message):
    __slots__ = ("tag", "audio", "message", "end")
    TAG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    tag: int
    audio: bytes
    message: bytes
    end: bool
    def __init__(self, tag: _Optional[int] = ..., audio: _Optional[bytes] = ..., message: _Optional[bytes] = ..., end: _Optional[bool] = ...) -> None: ...

class RelayedCall(_message.Message):
    __slots__ = ("tag", "generation", "offset", "length", "request", "metadata", "peer", "timeout_s", "decoded", "stream", "live")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TAG_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    DECODED_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    tag: int
    generation: int
    offset: int
    length: int
    request: bytes
    metadata: _containers.ScalarMap[str, str]
    peer: str
    timeout_s: float
    decoded: DecodedAudio
    stream: bool
    live: bool
    def __init__(self, tag: _Optional[int] = ..., generation: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., request: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ..., peer: _Optional[str] = ..., timeout_s: _Optional[float] = ..., decoded: _Optional[_Union[DecodedAudio, _Mapping]] = ..., stream: _Optional[bool] = ..., live: _Optional[bool] = ...) -> None: ...

class DecodedAudio(_message.Message):
    __slots__ = ("config", "sample_format", "offset", "length", "source_rate", "source_channels", "container", "error")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_RATE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    config: _asr_pb2.RecognitionConfig
    sample_format: int
    offset: int
    length: int
    source_rate: int
    source_channels: int
    container: str
    error: str
    def __init__(self, config: _Optional[_Union[_asr_pb2.RecognitionConfig, _Mapping]] = ..., sample_format: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., source_rate: _Optional[int] = ..., source_channels: _Optional[int] = ..., container: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class LinkResponse(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[RelayedAnswer]
    def __init__(self, answers: _Optional[_Iterable[_Union[RelayedAnswer, _Mapping]]] = ...) -> None: ...

class RelayedAnswer(_message.Message):
    __slots__ = ("tag", "code", "details", "trailers", "response", "more")
    class TrailersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TAG_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    TRAILERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    tag: int
    code: int
    details: str
    trailers: _containers.ScalarMap[str, str]
    response: bytes
    more: bool
    def __init__(self, tag: _Optional[int] = ..., code: _Optional[int] = ..., details: _Optional[str] = ..., trailers: _Optional[_Mapping[str, str]] = ..., response: _Optional[bytes] = ..., more: _Optional[bool] = ...) -> None: ...

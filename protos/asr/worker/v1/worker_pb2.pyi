from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SampleFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    S16LE: _ClassVar[SampleFormat]
    F32LE: _ClassVar[SampleFormat]
S16LE: SampleFormat
F32LE: SampleFormat

class LiveLinkRequest(_message.Message):
    __slots__ = ("requests", "cancel")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[TaggedLiveRequest]
    cancel: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, requests: _Optional[_Iterable[_Union[TaggedLiveRequest, _Mapping]]] = ..., cancel: _Optional[_Iterable[int]] = ...) -> None: ...

class TaggedLiveRequest(_message.Message):
    __slots__ = ("tag", "request")
    TAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    tag: int
    request: LiveRequest
    def __init__(self, tag: _Optional[int] = ..., request: _Optional[_Union[LiveRequest, _Mapping]] = ...) -> None: ...

class LiveLinkResponse(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[TaggedLiveResponse]
    def __init__(self, answers: _Optional[_Iterable[_Union[TaggedLiveResponse, _Mapping]]] = ...) -> None: ...

class TaggedLiveResponse(_message.Message):
    __slots__ = ("tag", "response", "more", "code", "details")
    TAG_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    tag: int
    response: LiveResponse
    more: bool
    code: int
    details: str
    def __init__(self, tag: _Optional[int] = ..., response: _Optional[_Union[LiveResponse, _Mapping]] = ..., more: _Optional[bool] = ..., code: _Optional[int] = ..., details: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("device", "model", "pid", "allocated_bytes", "reserved_bytes", "supports_hotwords", "served", "batches", "oom_events", "cache_clears", "capabilities", "consecutive_failed_batches", "live_model_calls", "live_model_rows")
    class CacheClearsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_HOTWORDS_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    OOM_EVENTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_CLEARS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    LIVE_MODEL_CALLS_FIELD_NUMBER: _ClassVar[int]
    LIVE_MODEL_ROWS_FIELD_NUMBER: _ClassVar[int]
    device: str
    model: str
    pid: int
    allocated_bytes: int
    reserved_bytes: int
    supports_hotwords: bool
    served: int
    batches: int
    oom_events: int
    cache_clears: _containers.ScalarMap[str, int]
    capabilities: Capabilities
    consecutive_failed_batches: int
    live_model_calls: int
    live_model_rows: int
    def __init__(self, device: _Optional[str] = ..., model: _Optional[str] = ..., pid: _Optional[int] = ..., allocated_bytes: _Optional[int] = ..., reserved_bytes: _Optional[int] = ..., supports_hotwords: _Optional[bool] = ..., served: _Optional[int] = ..., batches: _Optional[int] = ..., oom_events: _Optional[int] = ..., cache_clears: _Optional[_Mapping[str, int]] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., consecutive_failed_batches: _Optional[int] = ..., live_model_calls: _Optional[int] = ..., live_model_rows: _Optional[int] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("kind", "family", "engine", "languages", "hotwords", "itn", "streaming", "timestamps", "padding_invariant")
    KIND_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    HOTWORDS_FIELD_NUMBER: _ClassVar[int]
    ITN_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    PADDING_INVARIANT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    family: str
    engine: str
    languages: _containers.RepeatedScalarFieldContainer[str]
    hotwords: bool
    itn: bool
    streaming: bool
    timestamps: bool
    padding_invariant: bool
    def __init__(self, kind: _Optional[str] = ..., family: _Optional[str] = ..., engine: _Optional[str] = ..., languages: _Optional[_Iterable[str]] = ..., hotwords: _Optional[bool] = ..., itn: _Optional[bool] = ..., streaming: _Optional[bool] = ..., timestamps: _Optional[bool] = ..., padding_invariant: _Optional[bool] = ...) -> None: ...

class TranscribeRequest(_message.Message):
    __slots__ = ("request_id", "pcm", "sample_format", "language", "enable_itn", "hotwords", "max_new_tokens", "pcm_ref")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    ENABLE_ITN_FIELD_NUMBER: _ClassVar[int]
    HOTWORDS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PCM_REF_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    pcm: bytes
    sample_format: SampleFormat
    language: str
    enable_itn: bool
    hotwords: _containers.RepeatedScalarFieldContainer[str]
    max_new_tokens: int
    pcm_ref: PcmRef
    def __init__(self, request_id: _Optional[str] = ..., pcm: _Optional[bytes] = ..., sample_format: _Optional[_Union[SampleFormat, str]] = ..., language: _Optional[str] = ..., enable_itn: _Optional[bool] = ..., hotwords: _Optional[_Iterable[str]] = ..., max_new_tokens: _Optional[int] = ..., pcm_ref: _Optional[_Union[PcmRef, _Mapping]] = ...) -> None: ...

class PcmRef(_message.Message):
    __slots__ = ("offset", "num_bytes")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    offset: int
    num_bytes: int
    def __init__(self, offset: _Optional[int] = ..., num_bytes: _Optional[int] = ...) -> None: ...

class WorkRequest(_message.Message):
    __slots__ = ("units", "cancel")
    UNITS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    units: _containers.RepeatedCompositeFieldContainer[WorkUnit]
    cancel: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, units: _Optional[_Iterable[_Union[WorkUnit, _Mapping]]] = ..., cancel: _Optional[_Iterable[int]] = ...) -> None: ...

class WorkUnit(_message.Message):
    __slots__ = ("tag", "request")
    TAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    tag: int
    request: TranscribeRequest
    def __init__(self, tag: _Optional[int] = ..., request: _Optional[_Union[TranscribeRequest, _Mapping]] = ...) -> None: ...

class WorkResponse(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[WorkAnswer]
    def __init__(self, answers: _Optional[_Iterable[_Union[WorkAnswer, _Mapping]]] = ...) -> None: ...

class WorkAnswer(_message.Message):
    __slots__ = ("tag", "code", "details", "result")
    TAG_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    tag: int
    code: int
    details: str
    result: TranscribeResponse
    def __init__(self, tag: _Optional[int] = ..., code: _Optional[int] = ..., details: _Optional[str] = ..., result: _Optional[_Union[TranscribeResponse, _Mapping]] = ...) -> None: ...

class TranscribeResponse(_message.Message):
    __slots__ = ("text", "language", "device", "inference_time_s", "batch_wait_s", "batch_size", "hotwords_ignored", "batch_id", "tokens_generated", "decode_steps")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_S_FIELD_NUMBER: _ClassVar[int]
    BATCH_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    HOTWORDS_IGNORED_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    DECODE_STEPS_FIELD_NUMBER: _ClassVar[int]
    text: str
    language: str
    device: str
    inference_time_s: float
    batch_wait_s: float
    batch_size: int
    hotwords_ignored: bool
    batch_id: int
    tokens_generated: int
    decode_steps: int
    def __init__(self, text: _Optional[str] = ..., language: _Optional[str] = ..., device: _Optional[str] = ..., inference_time_s: _Optional[float] = ..., batch_wait_s: _Optional[float] = ..., batch_size: _Optional[int] = ..., hotwords_ignored: _Optional[bool] = ..., batch_id: _Optional[int] = ..., tokens_generated: _Optional[int] = ..., decode_steps: _Optional[int] = ...) -> None: ...

class VadRequest(_message.Message):
    __slots__ = ("pcm", "sample_format", "is_final", "max_segment_ms", "pcm_ref")
    PCM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    MAX_SEGMENT_MS_FIELD_NUMBER: _ClassVar[int]
    PCM_REF_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    sample_format: SampleFormat
    is_final: bool
    max_segment_ms: int
    pcm_ref: PcmRef
    def __init__(self, pcm: _Optional[bytes] = ..., sample_format: _Optional[_Union[SampleFormat, str]] = ..., is_final: _Optional[bool] = ..., max_segment_ms: _Optional[int] = ..., pcm_ref: _Optional[_Union[PcmRef, _Mapping]] = ...) -> None: ...

class VadSegment(_message.Message):
    __slots__ = ("start_ms", "end_ms")
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    start_ms: int
    end_ms: int
    def __init__(self, start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ...) -> None: ...

class VadResponse(_message.Message):
    __slots__ = ("segments",)
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[VadSegment]
    def __init__(self, segments: _Optional[_Iterable[_Union[VadSegment, _Mapping]]] = ...) -> None: ...

class WorkerClearCacheRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerClearCacheResponse(_message.Message):
    __slots__ = ("reserved_before_bytes", "reserved_after_bytes")
    RESERVED_BEFORE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESERVED_AFTER_BYTES_FIELD_NUMBER: _ClassVar[int]
    reserved_before_bytes: int
    reserved_after_bytes: int
    def __init__(self, reserved_before_bytes: _Optional[int] = ..., reserved_after_bytes: _Optional[int] = ...) -> None: ...

class LiveConfig(_message.Message):
    __slots__ = ("chunk_size", "encoder_chunk_look_back", "decoder_chunk_look_back", "offset_ms", "request_id", "end_silence_ms")
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENCODER_CHUNK_LOOK_BACK_FIELD_NUMBER: _ClassVar[int]
    DECODER_CHUNK_LOOK_BACK_FIELD_NUMBER: _ClassVar[int]
    OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    END_SILENCE_MS_FIELD_NUMBER: _ClassVar[int]
    chunk_size: _containers.RepeatedScalarFieldContainer[int]
    encoder_chunk_look_back: int
    decoder_chunk_look_back: int
    offset_ms: int
    request_id: str
    end_silence_ms: int
    def __init__(self, chunk_size: _Optional[_Iterable[int]] = ..., encoder_chunk_look_back: _Optional[int] = ..., decoder_chunk_look_back: _Optional[int] = ..., offset_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., end_silence_ms: _Optional[int] = ...) -> None: ...

class LiveRequest(_message.Message):
    __slots__ = ("pcm", "sample_format", "is_final", "config")
    PCM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    sample_format: SampleFormat
    is_final: bool
    config: LiveConfig
    def __init__(self, pcm: _Optional[bytes] = ..., sample_format: _Optional[_Union[SampleFormat, str]] = ..., is_final: _Optional[bool] = ..., config: _Optional[_Union[LiveConfig, _Mapping]] = ...) -> None: ...

class LiveUtterance(_message.Message):
    __slots__ = ("start_ms", "end_ms", "text")
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    start_ms: int
    end_ms: int
    text: str
    def __init__(self, start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class LiveResponse(_message.Message):
    __slots__ = ("finals", "interim_text", "interim_start_ms", "safe_ms", "processed_ms", "tick_streams", "step_s", "last")
    FINALS_FIELD_NUMBER: _ClassVar[int]
    INTERIM_TEXT_FIELD_NUMBER: _ClassVar[int]
    INTERIM_START_MS_FIELD_NUMBER: _ClassVar[int]
    SAFE_MS_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_MS_FIELD_NUMBER: _ClassVar[int]
    TICK_STREAMS_FIELD_NUMBER: _ClassVar[int]
    STEP_S_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    finals: _containers.RepeatedCompositeFieldContainer[LiveUtterance]
    interim_text: str
    interim_start_ms: int
    safe_ms: int
    processed_ms: int
    tick_streams: int
    step_s: float
    last: bool
    def __init__(self, finals: _Optional[_Iterable[_Union[LiveUtterance, _Mapping]]] = ..., interim_text: _Optional[str] = ..., interim_start_ms: _Optional[int] = ..., safe_ms: _Optional[int] = ..., processed_ms: _Optional[int] = ..., tick_streams: _Optional[int] = ..., step_s: _Optional[float] = ..., last: _Optional[bool] = ...) -> None: ...

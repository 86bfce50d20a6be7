from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    LINEAR16: _ClassVar[AudioEncoding]
    CONTAINER: _ClassVar[AudioEncoding]

class VadMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VAD_AUTO: _ClassVar[VadMode]
    VAD_ALWAYS: _ClassVar[VadMode]
    VAD_NEVER: _ClassVar[VadMode]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
LINEAR16: AudioEncoding
CONTAINER: AudioEncoding
VAD_AUTO: VadMode
VAD_ALWAYS: VadMode
VAD_NEVER: VadMode

class RecognitionConfig(_message.Message):
    __slots__ = ("encoding", "sample_rate_hertz", "audio_channel_count", "language", "enable_itn", "hotwords", "enable_segment_timestamps", "max_segment_ms", "request_id", "vad_mode", "model", "max_new_tokens")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HERTZ_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHANNEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    ENABLE_ITN_FIELD_NUMBER: _ClassVar[int]
    HOTWORDS_FIELD_NUMBER: _ClassVar[int]
    ENABLE_SEGMENT_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEGMENT_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VAD_MODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    encoding: AudioEncoding
    sample_rate_hertz: int
    audio_channel_count: int
    language: str
    enable_itn: bool
    hotwords: _containers.RepeatedScalarFieldContainer[str]
    enable_segment_timestamps: bool
    max_segment_ms: int
    request_id: str
    vad_mode: VadMode
    model: str
    max_new_tokens: int
    def __init__(self, encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hertz: _Optional[int] = ..., audio_channel_count: _Optional[int] = ..., language: _Optional[str] = ..., enable_itn: _Optional[bool] = ..., hotwords: _Optional[_Iterable[str]] = ..., enable_segment_timestamps: _Optional[bool] = ..., max_segment_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., vad_mode: _Optional[_Union[VadMode, str]] = ..., model: _Optional[str] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("start_ms", "end_ms", "text", "device")
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    start_ms: int
    end_ms: int
    text: str
    device: str
    def __init__(self, start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., text: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class RecognitionResult(_message.Message):
    __slots__ = ("text", "segments", "language", "device", "fallback_reason", "audio_duration_s", "queue_time_s", "inference_time_s", "hotwords_ignored", "model", "request_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    AUDIO_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIME_S_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_S_FIELD_NUMBER: _ClassVar[int]
    HOTWORDS_IGNORED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    language: str
    device: str
    fallback_reason: str
    audio_duration_s: float
    queue_time_s: float
    inference_time_s: float
    hotwords_ignored: bool
    model: str
    request_id: str
    def __init__(self, text: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., language: _Optional[str] = ..., device: _Optional[str] = ..., fallback_reason: _Optional[str] = ..., audio_duration_s: _Optional[float] = ..., queue_time_s: _Optional[float] = ..., inference_time_s: _Optional[float] = ..., hotwords_ignored: _Optional[bool] = ..., model: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RecognizeRequest(_message.Message):
    __slots__ = ("config", "audio_content")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CONTENT_FIELD_NUMBER: _ClassVar[int]
    config: RecognitionConfig
    audio_content: bytes
    def __init__(self, config: _Optional[_Union[RecognitionConfig, _Mapping]] = ..., audio_content: _Optional[bytes] = ...) -> None: ...

class RecognizeResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: RecognitionResult
    def __init__(self, result: _Optional[_Union[RecognitionResult, _Mapping]] = ...) -> None: ...

class StreamingRecognizeRequest(_message.Message):
    __slots__ = ("streaming_config", "audio_content")
    STREAMING_CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CONTENT_FIELD_NUMBER: _ClassVar[int]
    streaming_config: StreamingRecognitionConfig
    audio_content: bytes
    def __init__(self, streaming_config: _Optional[_Union[StreamingRecognitionConfig, _Mapping]] = ..., audio_content: _Optional[bytes] = ...) -> None: ...

class StreamingRecognitionConfig(_message.Message):
    __slots__ = ("config", "interim_results", "live", "final_model", "chunk_size", "encoder_chunk_look_back", "decoder_chunk_look_back", "end_silence_ms")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    INTERIM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    FINAL_MODEL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENCODER_CHUNK_LOOK_BACK_FIELD_NUMBER: _ClassVar[int]
    DECODER_CHUNK_LOOK_BACK_FIELD_NUMBER: _ClassVar[int]
    END_SILENCE_MS_FIELD_NUMBER: _ClassVar[int]
    config: RecognitionConfig
    interim_results: bool
    live: bool
    final_model: str
    chunk_size: _containers.RepeatedScalarFieldContainer[int]
    encoder_chunk_look_back: int
    decoder_chunk_look_back: int
    end_silence_ms: int
    def __init__(self, config: _Optional[_Union[RecognitionConfig, _Mapping]] = ..., interim_results: _Optional[bool] = ..., live: _Optional[bool] = ..., final_model: _Optional[str] = ..., chunk_size: _Optional[_Iterable[int]] = ..., encoder_chunk_look_back: _Optional[int] = ..., decoder_chunk_look_back: _Optional[int] = ..., end_silence_ms: _Optional[int] = ...) -> None: ...

class StreamingRecognizeResponse(_message.Message):
    __slots__ = ("result", "is_final", "is_last", "audio_processed_s", "stability", "utterance_start_ms", "utterance_end_ms", "resumed")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    IS_LAST_FIELD_NUMBER: _ClassVar[int]
    AUDIO_PROCESSED_S_FIELD_NUMBER: _ClassVar[int]
    STABILITY_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_START_MS_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_END_MS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    result: RecognitionResult
    is_final: bool
    is_last: bool
    audio_processed_s: float
    stability: float
    utterance_start_ms: int
    utterance_end_ms: int
    resumed: bool
    def __init__(self, result: _Optional[_Union[RecognitionResult, _Mapping]] = ..., is_final: _Optional[bool] = ..., is_last: _Optional[bool] = ..., audio_processed_s: _Optional[float] = ..., stability: _Optional[float] = ..., utterance_start_ms: _Optional[int] = ..., utterance_end_ms: _Optional[int] = ..., resumed: _Optional[bool] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FallbackCount(_message.Message):
    __slots__ = ("reason", "count")
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    reason: str
    count: int
    def __init__(self, reason: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "pid", "state", "model", "in_flight", "served", "restarts", "last_error")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pid: int
    state: str
    model: str
    in_flight: int
    served: int
    restarts: int
    last_error: str
    def __init__(self, worker_id: _Optional[str] = ..., pid: _Optional[int] = ..., state: _Optional[str] = ..., model: _Optional[str] = ..., in_flight: _Optional[int] = ..., served: _Optional[int] = ..., restarts: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class DeviceStatus(_message.Message):
    __slots__ = ("name", "memory_used_bytes", "memory_total_bytes", "utilization_percent", "accepting", "workers", "product")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTING_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: int
    accepting: bool
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    product: str
    def __init__(self, name: _Optional[str] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., utilization_percent: _Optional[int] = ..., accepting: _Optional[bool] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., product: _Optional[str] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("devices", "queue_depth", "queue_capacity", "fallbacks", "model", "cpu_fallback", "version", "models")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceStatus]
    queue_depth: int
    queue_capacity: int
    fallbacks: _containers.RepeatedCompositeFieldContainer[FallbackCount]
    model: str
    cpu_fallback: str
    version: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, devices: _Optional[_Iterable[_Union[DeviceStatus, _Mapping]]] = ..., queue_depth: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., fallbacks: _Optional[_Iterable[_Union[FallbackCount, _Mapping]]] = ..., model: _Optional[str] = ..., cpu_fallback: _Optional[str] = ..., version: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "path", "family", "engine", "languages", "hotwords", "itn", "streaming", "ready_workers", "is_default")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    HOTWORDS_FIELD_NUMBER: _ClassVar[int]
    ITN_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    READY_WORKERS_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    family: str
    engine: str
    languages: _containers.RepeatedScalarFieldContainer[str]
    hotwords: bool
    itn: bool
    streaming: bool
    ready_workers: int
    is_default: bool
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., family: _Optional[str] = ..., engine: _Optional[str] = ..., languages: _Optional[_Iterable[str]] = ..., hotwords: _Optional[bool] = ..., itn: _Optional[bool] = ..., streaming: _Optional[bool] = ..., ready_workers: _Optional[int] = ..., is_default: _Optional[bool] = ...) -> None: ...

class ClearCacheRequest(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: str
    def __init__(self, device: _Optional[str] = ...) -> None: ...

class CacheClearResult(_message.Message):
    __slots__ = ("worker_id", "reserved_before_bytes", "reserved_after_bytes")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVED_BEFORE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESERVED_AFTER_BYTES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    reserved_before_bytes: int
    reserved_after_bytes: int
    def __init__(self, worker_id: _Optional[str] = ..., reserved_before_bytes: _Optional[int] = ..., reserved_after_bytes: _Optional[int] = ...) -> None: ...

class ClearCacheResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CacheClearResult]
    def __init__(self, results: _Optional[_Iterable[_Union[CacheClearResult, _Mapping]]] = ...) -> None: ...

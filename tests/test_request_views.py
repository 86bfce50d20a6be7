"""The zero-copy request parsers agree with protobuf on every input: the same config and audio
for what parses, protobuf's own error for what does not."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

from protos.asr.v1 import asr_pb2 as pb
from scheduler.request_views import (
    AudioChunk,
    RecognizeView,
    parse_recognize,
    parse_streaming,
    split_audio,
)


def config(seed: int) -> pb.RecognitionConfig:
    rng = random.Random(seed)
    return pb.RecognitionConfig(language=rng.choice(["", "zh", "en"]),
                                sample_rate_hertz=rng.choice([0, 8000, 16000]),
                                hotwords=["a", "b"][:rng.randint(0, 2)],
                                enable_itn=rng.random() < 0.5, request_id=f"r{seed}")


def same_as_protobuf(data: bytes) -> None:
    try:
        want = pb.RecognizeRequest.FromString(data)
    except DecodeError:
        with pytest.raises(DecodeError):
            parse_recognize(data)
        return
    got = parse_recognize(data)
    assert got.config == want.config
    assert bytes(got.audio_content) == want.audio_content


def test_a_request_keeps_its_audio_as_a_view_of_the_message() -> None:
    audio = bytes(range(256)) * 1000
    data = pb.RecognizeRequest(config=config(1), audio_content=audio).SerializeToString()
    got = parse_recognize(data)
    assert isinstance(got, RecognizeView) and isinstance(got.audio_content, memoryview)
    assert got.audio_content.obj is data, "not copied"
    assert bytes(got.audio_content) == audio and got.config == config(1)
    empty = parse_recognize(b"")
    assert bytes(empty.audio_content) == b"" and empty.config == pb.RecognitionConfig()


def test_repeated_and_reordered_fields_follow_protobuf() -> None:
    # Audio before config; two configs (protobuf merges them); two audio fields (last wins);
    # an unknown field.
    a = pb.RecognizeRequest(audio_content=b"first").SerializeToString()
    b = pb.RecognizeRequest(config=config(2)).SerializeToString()
    c = pb.RecognizeRequest(config=pb.RecognitionConfig(language="ja"),
                            audio_content=b"second").SerializeToString()
    unknown = bytes([(9 << 3) | 0, 5])  # field 9, varint 5
    for data in (a + b, b + a, a + b + c, c + a, b + unknown + a, unknown):
        same_as_protobuf(data)


def test_random_and_mutated_input_agree_with_protobuf() -> None:
    rng = random.Random(0)
    base = [pb.RecognizeRequest(config=config(i), audio_content=rng.randbytes(rng.randint(
        0, 3000))).SerializeToString() for i in range(20)]
    for _ in range(3000):
        data = bytearray(rng.choice(base))
        for _ in range(rng.randint(0, 3)):
            op = rng.random()
            if op < 0.4 and data:  # flip a byte
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op < 0.7 and data:  # cut
                del data[rng.randrange(len(data)):]
            else:  # splice in random bytes
                at = rng.randint(0, len(data))
                data[at:at] = rng.randbytes(rng.randint(1, 12))
        same_as_protobuf(bytes(data))
    for _ in range(2000):
        same_as_protobuf(rng.randbytes(rng.randint(0, 40)))


def test_wrong_wire_types_and_groups_are_left_to_protobuf() -> None:
    assert split_audio(bytes([(2 << 3) | 0, 1])) is None  # audio as a varint
    assert split_audio(bytes([(1 << 3) | 3])) is None  # a group
    assert split_audio(bytes([0, 0])) is None  # field 0
    for data in (bytes([(2 << 3) | 0, 1]), bytes([(1 << 3) | 3, (1 << 3) | 4]), bytes([0, 0])):
        same_as_protobuf(data)


def test_stream_messages_audio_alone_is_a_view_anything_else_protobuf() -> None:
    audio = b"\x01\x02" * 5000
    data = pb.StreamingRecognizeRequest(audio_content=audio).SerializeToString()
    chunk = parse_streaming(data)
    assert isinstance(chunk, AudioChunk) and bytes(chunk.audio_content) == audio
    assert chunk.WhichOneof("streaming_request") == "audio_content"
    empty_audio = parse_streaming(pb.StreamingRecognizeRequest(
        audio_content=b"").SerializeToString())
    assert empty_audio.WhichOneof("streaming_request") == "audio_content"
    first = pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=config(3), live=True))
    got = parse_streaming(first.SerializeToString())
    assert isinstance(got, pb.StreamingRecognizeRequest) and got == first
    assert parse_streaming(b"").WhichOneof("streaming_request") is None
    # Config then audio in one message: the oneof's last member wins, as in protobuf.
    both = first.SerializeToString() + data
    assert parse_streaming(both) == pb.StreamingRecognizeRequest.FromString(both)
    with pytest.raises(DecodeError):
        parse_streaming(data[:-1])

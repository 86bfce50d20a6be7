"""Live mode of StreamingRecognize, end to end: real scheduler, real worker processes, real
gRPC on loopback, paraformer-streaming-tiny with the real FSMN-VAD.

The reference is FunASR's own streaming loop: for each utterance the service reports, the
utterance's samples fed to `generate(input=chunk, cache=cache, is_final=...)` in the model's
600 ms chunks; the joined finals must equal it. Two-pass finals must equal the offline model's
text on the same samples.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile as sf

from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc
from tests.audio_fixtures import espeak_wav

pytestmark = pytest.mark.integration

CHUNK_S = 0.1
STREAM_KWARGS = {"chunk_size": [0, 10, 5], "encoder_chunk_look_back": 4,
                 "decoder_chunk_look_back": 1}


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Three utterances separated by 2 s of silence, 16 kHz float32."""
    d = tmp_path_factory.mktemp("live")
    parts = []
    for i, text in enumerate(["hello world, this is the first sentence of a live test",
                              "and here comes the second one",
                              "finally the third sentence closes the stream"]):
        a, _ = sf.read(espeak_wav(text, d / f"u{i}.wav"), dtype="float32")
        parts += [np.zeros(8000 if i == 0 else 32000, np.float32), a]
    parts.append(np.zeros(16000, np.float32))
    return np.concatenate(parts)


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def live_requests(audio: np.ndarray, realtime: bool = False, model: str = "",
                  final_model: str = "", sent: list[tuple[float, float]] | None = None
                  ) -> Iterator[pb.StreamingRecognizeRequest]:
    cfg = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hertz=16000, model=model)
    yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=cfg, live=True, final_model=final_model))
    step = int(CHUNK_S * 16000)
    started = time.monotonic()
    for i in range(0, len(audio), step):
        if realtime:
            ahead = i / 16000 - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        if sent is not None:
            sent.append((min(i + step, len(audio)) / 16000, time.monotonic()))
        yield pb.StreamingRecognizeRequest(audio_content=pcm16(audio[i:i + step]))


def run_stream(address: str, audio: np.ndarray, **kw: Any) -> list[pb.StreamingRecognizeResponse]:
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.RecognizerStub(ch)
        return list(stub.StreamingRecognize(live_requests(audio, **kw), timeout=300))


def funasr_reference(model_dir: Path, audio: np.ndarray,
                     spans: list[tuple[int, int]]) -> list[str]:
    """FunASR's own streaming loop over each span's samples (the same int16 round trip)."""
    from funasr import AutoModel

    model = AutoModel(model=str(model_dir), disable_update=True, disable_pbar=True,
                      disable_log=True)
    x = np.frombuffer(pcm16(audio), dtype="<i2").astype(np.float32) / np.float32(32768.0)
    texts = []
    for start, end in spans:
        seg = x[start * 16:end * 16]
        cache: dict[str, Any] = {}
        parts = []
        for j in range(0, len(seg), 9600):
            out = model.generate(input=seg[j:j + 9600], cache=cache,
                                 is_final=j + 9600 >= len(seg), **STREAM_KWARGS)
            parts.append(out[0]["text"])
        texts.append("".join(parts))
    return texts


def offline_reference(model_dir: Path, audio: np.ndarray,
                      spans: list[tuple[int, int]]) -> list[str]:
    from funasr import AutoModel

    model = AutoModel(model=str(model_dir), disable_update=True, disable_pbar=True,
                      disable_log=True)
    x = np.frombuffer(pcm16(audio), dtype="<i2").astype(np.float32) / np.float32(32768.0)
    out = []
    for s, e in spans:
        r = model.generate(input=x[s * 16:e * 16], language="auto", use_itn=False)
        text = r[0]["text"]
        out.append(text)
    return out


def finals_of(responses: list[pb.StreamingRecognizeResponse]
              ) -> list[pb.StreamingRecognizeResponse]:
    return [r for r in responses if r.is_final and not r.is_last]


def test_live_finals_equal_funasr_streaming_loop(start_service: Any, models_dir: Path,
                                                 talk: np.ndarray) -> None:
    svc = start_service(str(models_dir / "paraformer-streaming-tiny"),
                        vad_model=str(models_dir / "fsmn-vad"))
    responses = run_stream(svc.address, talk)
    finals = finals_of(responses)
    assert responses[-1].is_last
    assert len(finals) == 3, [(f.utterance_start_ms, f.utterance_end_ms) for f in finals]
    spans = [(f.utterance_start_ms, f.utterance_end_ms) for f in finals]
    assert all(s < e for s, e in spans) and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    expected = funasr_reference(models_dir / "paraformer-streaming-tiny", talk, spans)
    assert [f.result.text for f in finals] == expected
    assert all(expected)
    assert responses[-1].result.text == " ".join(expected)
    # Interim results came while each utterance was spoken, each a prefix of its final.
    for f in finals:
        interims = [r for r in responses if not r.is_final
                    and r.utterance_start_ms == f.utterance_start_ms]
        assert interims, f"no interim result for the utterance at {f.utterance_start_ms} ms"
        assert all(f.result.text.startswith(r.result.text) for r in interims)
        assert all(r.stability == pytest.approx(1.0) for r in interims)
        assert interims[0].audio_processed_s * 1000 < f.utterance_end_ms + 1000


def test_live_interim_before_audio_ends_and_two_pass(start_service: Any, models_dir: Path,
                                                     talk: np.ndarray) -> None:
    svc = start_service([f"live={models_dir / 'paraformer-streaming-tiny'}",
                         f"final={models_dir / 'sensevoice-tiny'}"],
                        vad_model=str(models_dir / "fsmn-vad"))
    arrivals: list[tuple[float, pb.StreamingRecognizeResponse]] = []
    sent: list[tuple[float, float]] = []
    with grpc.insecure_channel(svc.address) as ch:
        stub = pb_grpc.RecognizerStub(ch)
        for r in stub.StreamingRecognize(live_requests(talk, realtime=True, model="live",
                                                       final_model="final", sent=sent),
                                         timeout=300):
            arrivals.append((time.monotonic(), r))
    audio_end = sent[-1][1]
    first_interim = next(t for t, r in arrivals if not r.is_final)
    assert first_interim < audio_end - 2.0  # long before the audio ended
    finals = finals_of([r for _, r in arrivals])
    assert len(finals) == 3
    spans = [(f.utterance_start_ms, f.utterance_end_ms) for f in finals]
    expected = offline_reference(models_dir / "sensevoice-tiny", talk, spans)
    assert [f.result.text for f in finals] == expected
    assert all(f.result.model == "final" for f in finals)
    interims = [r for _, r in arrivals if not r.is_final]
    assert interims and all(r.result.model == "live" and r.stability == pytest.approx(0.5)
                            for r in interims)


def test_live_refuses_offline_model(start_service: Any, models_dir: Path,
                                    talk: np.ndarray) -> None:
    svc = start_service(str(models_dir / "sensevoice-tiny"),
                        vad_model=str(models_dir / "fsmn-vad"))
    with pytest.raises(grpc.RpcError) as err:
        run_stream(svc.address, talk[:16000])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "streaming model" in err.value.details()


def test_live_streams_limit(start_service: Any, models_dir: Path, talk: np.ndarray) -> None:
    svc = start_service(str(models_dir / "paraformer-streaming-tiny"),
                        vad_model=str(models_dir / "fsmn-vad"), max_live_streams=1)
    release = threading.Event()
    opened = threading.Event()

    def slow() -> Iterator[pb.StreamingRecognizeRequest]:
        gen = live_requests(talk[:32000])
        yield next(gen)
        yield next(gen)
        opened.set()
        release.wait(60)
        yield from gen

    with grpc.insecure_channel(svc.address) as ch:
        stub = pb_grpc.RecognizerStub(ch)
        first = stub.StreamingRecognize(slow(), timeout=120)
        results: list[Any] = []
        t = threading.Thread(target=lambda: results.extend(first))
        t.start()
        assert opened.wait(30)
        time.sleep(1.0)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.StreamingRecognize(live_requests(talk[:16000]), timeout=60))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
        t.join(60)
        assert results and results[-1].is_last

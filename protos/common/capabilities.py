"""What a worker's engine and model can do: reported by the worker in its ready handshake
(worker.proto `Capabilities`), read by the scheduler to validate requests. Written once here
for both sides."""

from __future__ import annotations

from dataclasses import dataclass

from protos.asr.worker.v1 import worker_pb2 as wpb

RECOGNIZE = "recognize"  # kinds of work
SEGMENT = "segment"


@dataclass(frozen=True)
class Capabilities:
    """What one engine with its model can do."""

    kind: str = ""  # RECOGNIZE or SEGMENT
    family: str = ""
    engine: str = ""
    languages: tuple[str, ...] = ()
    hotwords: bool = False
    itn: bool = False
    streaming: bool = False
    timestamps: bool = False
    padding_invariant: bool = False

    def to_proto(self) -> wpb.Capabilities:
        return wpb.Capabilities(
            kind=self.kind, family=self.family, engine=self.engine,
            languages=list(self.languages), hotwords=self.hotwords, itn=self.itn,
            streaming=self.streaming, timestamps=self.timestamps,
            padding_invariant=self.padding_invariant)

    @classmethod
    def from_proto(cls, c: wpb.Capabilities) -> Capabilities:
        return cls(kind=c.kind, family=c.family, engine=c.engine, languages=tuple(c.languages),
                   hotwords=c.hotwords, itn=c.itn, streaming=c.streaming,
                   timestamps=c.timestamps, padding_invariant=c.padding_invariant)

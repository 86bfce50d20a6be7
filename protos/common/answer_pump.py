"""The serving side of a multiplexed call: many tagged items in, their answers batched out.

Both ends of the service serve such calls: a worker its `LiveLink` (the scheduler's live
streams on that worker, `gpu_worker/service.py`), the scheduler each front end's `Link` (the
client calls that front end relays, `scheduler/frontends.py`). A reader task takes the call's
requests and starts a task per item; those tasks add answers to `outbox` and set `wake`; `run`
sends what was added between two of its turns as one message (a tick that answers many streams
at once goes out once), and ends when the reader is done and `finished` says so, cancelling
whatever is still running.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar


class _Answers(Protocol):
    """A message with a repeated `answers` field."""

    @property
    def answers(self) -> Any: ...


MessageT = TypeVar("MessageT", bound=_Answers)


class AnswerPump(Generic[MessageT]):
    """Subclasses read the call's requests (`read`), name their running item tasks (`tasks`)
    and say when the call is over (`finished`)."""

    def __init__(self, new_message: Callable[[], MessageT]) -> None:
        self._new_message = new_message
        self.outbox = new_message()
        self.wake = asyncio.Event()

    async def read(self, requests: AsyncIterator[Any]) -> None:
        raise NotImplementedError

    def tasks(self) -> Iterable[asyncio.Task[None]]:
        raise NotImplementedError

    def finished(self, reader: asyncio.Task[None]) -> bool:
        """Whether the call ends now that the reader is done (it may raise what broke it)."""
        raise NotImplementedError

    async def run(self, requests: AsyncIterator[Any]) -> AsyncIterator[MessageT]:
        reader = asyncio.get_running_loop().create_task(self.read(requests))
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                if self.outbox.answers:
                    message, self.outbox = self.outbox, self._new_message()
                    yield message
                if reader.done() and self.finished(reader):
                    return
        finally:  # the peer ended the call or went away: its items go with it
            tasks = list(self.tasks())
            for task in (reader, *tasks):
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)

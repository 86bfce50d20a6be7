"""Limits that keep one scheduler alive under load and abuse: decoded audio held across all
requests, open streams (in total and per client), idle streams, and bytes buffered by streams.

Over a limit a request either waits (decoded audio: until units finish) or is refused with
RESOURCE_EXHAUSTED and a retry hint; an idle stream ends with DEADLINE_EXCEEDED naming the
setting. Each limit is one small object, testable without gRPC."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import grpc

from scheduler.errors import QueueFull, RequestError

T = TypeVar("T")


class StreamLimit(QueueFull):
    """Too many open streams (in total, or from this client)."""


class StreamIdle(RequestError):
    """A stream sent nothing for too long."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class AudioBudget:
    """Bytes of decoded audio the scheduler holds for all requests together: audio kept for
    VAD, whole audio gathered for one unit, and units in flight. A taker that would go over
    waits, first come first served, for others to give back (one taker alone is always let
    through), up to `wait_s`, then RESOURCE_EXHAUSTED. Taking and giving back within the
    budget costs no task, lock or timer (it happens for every unit)."""

    def __init__(self, limit_bytes: int, wait_s: float = 30.0) -> None:
        self.limit = limit_bytes
        self.wait_s = wait_s
        self.held = 0
        self.peak = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, nbytes: int) -> bool:
        return self.held == 0 or self.held + nbytes <= self.limit

    def _grant(self, nbytes: int) -> None:
        self.held += nbytes
        self.peak = max(self.peak, self.held)

    async def take(self, nbytes: int) -> None:
        if not self._waiters and self._fits(nbytes):
            self._grant(nbytes)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, self.wait_s)
        except asyncio.TimeoutError:
            raise QueueFull(f"the scheduler holds {self.held >> 20} MiB of decoded audio "
                            f"(limit {self.limit >> 20} MiB, --max-decoded-audio-mib); "
                            "retry later", retry_after_s=5.0) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give(nbytes)  # granted just as the taker went away
            raise
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()  # a smaller taker behind this one may fit now

    def give(self, nbytes: int) -> None:
        self.held = max(0, self.held - nbytes)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            nbytes, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
            elif self._fits(nbytes):
                self._waiters.popleft()
                self._grant(nbytes)
                fut.set_result(None)
            else:
                break

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        await self.take(nbytes)
        try:
            yield
        finally:
            self.give(nbytes)


class ByteBudget:
    """Bytes held in memory by stream buffers, across all streams (over it, a stream spills
    to its disk spool instead of buffering)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.held = 0

    def try_take(self, nbytes: int) -> bool:
        if self.held + nbytes > self.limit:
            return False
        self.held += nbytes
        return True

    def give_back(self, nbytes: int) -> None:
        self.held = max(0, self.held - nbytes)


# Metadata a front-end process (`--frontends`) adds to each relayed call: the client's address
# as it saw it. Trusted only on the scheduler's private socket, where only front ends connect.
RELAYED_PEER_KEY = "x-asr-client-peer"


def client_key(peer: str, authorization: str = "") -> str:
    """Who a stream belongs to: its bearer token (hashed) when there is one, else the peer's
    address without the port."""
    if authorization:
        return "token:" + hashlib.sha256(authorization.encode()).hexdigest()[:16]
    host = peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer
    return host or "unknown"


class StreamLimits:
    """Open streams, in total and per client, and the idle timeout."""

    def __init__(self, max_streams: int, max_per_client: int, idle_timeout_s: float) -> None:
        self.max_streams = max_streams
        self.max_per_client = max_per_client
        self.idle_timeout_s = idle_timeout_s
        self.open = 0
        self.by_client: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def admit(self, client: str) -> Iterator[None]:
        if self.open >= self.max_streams:
            raise StreamLimit(f"{self.open} streams are open (--max-streams {self.max_streams});"
                              " retry later", retry_after_s=2.0)
        if self.by_client[client] >= self.max_per_client:
            raise StreamLimit(f"this client has {self.by_client[client]} streams open "
                              f"(--max-streams-per-client {self.max_per_client}); retry later",
                              retry_after_s=2.0)
        self.open += 1
        self.by_client[client] += 1
        try:
            yield
        finally:
            self.open -= 1
            self.by_client[client] -= 1
            if self.by_client[client] <= 0:
                del self.by_client[client]

    def idle_watch(self) -> IdleWatch:
        """The idle timeout of one stream's reads (close it when the stream ends)."""
        return IdleWatch(self.idle_timeout_s)


class IdleWatch:
    """One stream's idle timeout: while it waits for its next message, at most
    `idle_timeout_s`, then StreamIdle. One timer per stream, re-armed only when it fires (a
    stream's messages come far more often than the timeout), not a timer per message: this is
    on every message's path."""

    def __init__(self, idle_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._loop = asyncio.get_running_loop()
        self._reader: asyncio.Task[object] | None = None  # the task waiting for a message
        self._since = 0.0  # when it began to wait
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    async def next(self, messages: AsyncIterator[T]) -> T:
        """The next message of `messages`; StopAsyncIteration at its end."""
        task = self.waiting()
        try:
            return await messages.__anext__()
        except asyncio.CancelledError:
            error = self.timed_out(task)
            if error is None:
                raise
            raise error from None
        finally:
            self.done()

    # `next` in pieces, for a reader on every message's path that awaits the read itself
    # (one coroutine level less): `waiting()` before the read, `done()` after it, and
    # `timed_out(task)` when it was cancelled.

    def waiting(self) -> asyncio.Task[object] | None:
        """The current task begins to wait for a message; it is returned."""
        task = asyncio.current_task()
        self._reader, self._since = task, self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._since + self.idle_timeout_s, self._check)
        return task

    def done(self) -> None:
        self._reader = None

    def timed_out(self, task: asyncio.Task[object] | None) -> StreamIdle | None:
        """After `task`'s read was cancelled: the error to raise instead when the idle
        timeout cancelled it (that cancellation is taken back), else None."""
        if not self._expired or task is None:
            return None
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
        return StreamIdle(f"no message for {self.idle_timeout_s:g} s "
                          "(--stream-idle-timeout-s): the stream is closed")

    def _check(self) -> None:
        self._timer = None
        reader = self._reader
        if reader is None or self._expired:
            return  # not waiting now: the next read arms the timer again
        due = self._since + self.idle_timeout_s
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self._expired = True
        reader.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

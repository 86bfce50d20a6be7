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


_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+

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

    async def next_message(self, messages: AsyncIterator[T]) -> T:
        """The stream's next message; StreamIdle when none comes within the idle timeout."""
        try:
            if _timeout is None:  # Python 3.10
                return await asyncio.wait_for(messages.__anext__(), self.idle_timeout_s)
            # A timer on this task, not wait_for's task per message (a stream's hot path).
            async with _timeout(self.idle_timeout_s):
                return await messages.__anext__()
        except asyncio.TimeoutError:
            raise StreamIdle(f"no message for {self.idle_timeout_s:g} s "
                             "(--stream-idle-timeout-s): the stream is closed") from None

"""Graceful drain: refuse new recognition calls, let accepted ones finish, cut the rest late.

On the first SIGTERM the service enters the drain: health turns NOT_SERVING (so balancers and
Kubernetes stop sending), new `asr.v1.Recognizer` calls are answered UNAVAILABLE (retryable: a
client or Envoy moves them to another replica), and every call already accepted runs to its end
while the port stays open (a stream still uploading may finish its upload). When the drain
deadline passes, or a second signal arrives, `Drain.cut` ends what is left: each remaining call
is answered UNAVAILABLE at once; a stream has already received every result recognised so far,
and the status message says how far it got.

`DrainInterceptor` is the gRPC side (one wrapper per recognition call); `Drain` is the state,
testable without gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from protos.common.wrapping import HandlerWrapper, same_kind
from scheduler.errors import Unavailable

log = logging.getLogger(__name__)

DRAINED_PREFIX = "/asr.v1.Recognizer/"  # calls that are drained; health, admin pass through
REFUSED = "the server is shutting down; retry on another replica"


class Drain:
    """Counts accepted calls; after `begin()` refuses new ones; `cut()` ends the rest."""

    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self.admitted = 0  # calls accepted since start
        self.refused = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._cut = asyncio.Event()
        # Tasks inside `_until_cut` -> whether the cut cancelled them.
        self._cuttable: dict[asyncio.Task[Any], bool] = {}

    def begin(self) -> None:
        if not self.draining:
            self.draining = True
            log.info("draining: %d call(s) in progress, new calls are refused", self.active)

    def cut(self) -> None:
        """End every call still running (each answers UNAVAILABLE)."""
        if not self._cut.is_set() and self.active:
            log.warning("drain deadline: cutting %d call(s) still running", self.active)
        self._cut.set()
        for task, cut in list(self._cuttable.items()):
            if not cut:
                self._cuttable[task] = True
                task.cancel()

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True when no accepted call is left within `timeout_s`."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout_s))
        except asyncio.TimeoutError:
            return False
        return True

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Admit one call (raises `Unavailable` while draining) and count it until it ends."""
        if self.draining or self.is_cut:
            self.refused += 1
            raise Unavailable(REFUSED)
        self.active += 1
        self.admitted += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()


async def run_admitted(drain: Drain, work: Callable[[], Awaitable[Any]]) -> Any:
    """Run one unary recognition call, `work()`, through the drain: refused (Unavailable)
    while draining, answered Unavailable if the drain is cut before it ends."""
    with drain.admit():
        finished, result = await _until_cut(drain, work())
        if not finished:
            raise Unavailable("the server shut down before the result was ready; retry on "
                              "another replica")
        return result


async def _until_cut(drain: Drain, work: Awaitable[Any]) -> tuple[bool, Any]:
    """(True, result) when `work` ends first; (False, None) when the drain is cut first.
    `work` runs in the calling task (no task of its own, no `asyncio.wait` per call: this is
    on every request's path); `Drain.cut` cancels that task, and the cancellation is taken
    back here."""
    task = asyncio.current_task()
    if task is None or task in drain._cuttable:  # no task, or an outer call watches already
        return True, await work
    if drain.is_cut:
        close = getattr(work, "close", None)
        if close is not None:
            close()  # never started: no "never awaited" warning
        return False, None
    drain._cuttable[task] = False
    try:
        return True, await work
    except asyncio.CancelledError:
        if not drain._cuttable.get(task):
            raise  # the caller's cancellation (client gone), not the cut
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
        return False, None
    finally:
        drain._cuttable.pop(task, None)


class DrainInterceptor(HandlerWrapper):
    """Admits `asr.v1.Recognizer` calls through a `Drain`; place it inside `ErrorInterceptor`
    so that its `Unavailable` becomes the UNAVAILABLE status and is counted."""

    def __init__(self, drain: Drain) -> None:
        self.drain = drain

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if not method.startswith(DRAINED_PREFIX):
            return handler
        drain = self.drain
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                return await run_admitted(drain, lambda: inner_uu(request, context))

            return same_kind(handler, unary_unary=unary_unary)
        if handler.stream_stream:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: AsyncIterator[Any],
                                    context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                # `_until_cut` inlined: this frame is resumed on every message of the stream,
                # and one coroutine level less under it is measurable.
                with drain.admit():
                    responses = inner_ss(requests, context).__aiter__()
                    task = asyncio.current_task()
                    watch = task is not None and task not in drain._cuttable
                    sent, processed_s, started = 0, 0.0, time.monotonic()
                    while True:
                        cut = drain.is_cut
                        if not cut:
                            if watch:
                                drain._cuttable[task] = False  # type: ignore[index]
                            try:
                                item = await responses.__anext__()
                            except StopAsyncIteration:
                                return
                            except asyncio.CancelledError:
                                if not (watch and drain._cuttable.get(task)):  # type: ignore[arg-type]
                                    raise  # the caller's cancellation (client gone)
                                uncancel = getattr(task, "uncancel", None)  # 3.11+
                                if uncancel is not None:
                                    uncancel()
                                cut = True
                            finally:
                                if watch:
                                    drain._cuttable.pop(task, None)  # type: ignore[arg-type]
                        if cut:
                            raise Unavailable(
                                f"the server shut down {time.monotonic() - started:.1f} s into "
                                f"the stream; {sent} result(s) covering {processed_s:.2f} s of "
                                "audio were sent; send the rest to another replica")
                        sent += 1
                        processed_s = max(processed_s,
                                          float(getattr(item, "audio_processed_s", 0.0)))
                        yield item

            return same_kind(handler, stream_stream=stream_stream)
        return handler

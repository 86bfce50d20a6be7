"""One long-lived bidirectional gRPC call that carries many tagged requests.

Used for the scheduler's `Work` call to each worker and for a front end's `Link` call to the
scheduler. Requests ready at the same moment share one outgoing message (the "outbox"), answers
come back in any order and are matched by tag; a request whose caller stops waiting (deadline,
cancellation) is cancelled by tag; if the call breaks, every request still waiting gets the
reason and the next request opens a new call.

The call is a gRPC stream-stream call or anything of its shape (`write`, async iteration,
`cancel`), such as a `protos.common.framed.FramedStream`. Both messages follow one shape: the
outgoing message has a repeated `cancel` of tags, the incoming one a repeated `answers`, each
answer with its `tag`. A request made with `request_stream` may get several answers, all but
the last with `more` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncGenerator, Callable
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message

_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+

_STATUS = {c.value[0]: c for c in grpc.StatusCode}

OutboxT = TypeVar("OutboxT", bound=Message)


def answer_code(value: int) -> grpc.StatusCode:
    """The status code an answer carries as its number (UNKNOWN for a number gRPC lacks)."""
    return _STATUS.get(value, grpc.StatusCode.UNKNOWN)

AnswerT = TypeVar("AnswerT")


class TaggedCall(Generic[OutboxT, AnswerT]):
    """Requests out in batches, answers back by tag, over one call opened on first use."""

    def __init__(self, what: str, open_call: Callable[[], Any],
                 new_outbox: Callable[[], OutboxT],
                 on_broken: Callable[[str], object] | None = None,
                 linger_s: float = 0.0, input_linger_s: float = 0.0) -> None:
        """`what` names the call in failure reasons ("the Work call"); `on_broken(why)` is
        told when the other side ends the call or it breaks (not when `close` ends it).
        `linger_s`: the writer waits this long after something arrives before it sends, so
        that what arrives meanwhile shares the message (a gRPC call's message costs far more
        than an item in it). `input_linger_s`: on a call that sends at once (a framed
        stream), more input for an open request (`send_input`) waits up to this long for
        the next message, so that the inputs of many streams share one (the other side
        wakes once for them all); requests and cancels still go at once, and take what
        waits along."""
        self.what = what
        self._linger_s = linger_s
        self._input_linger_s = input_linger_s
        self._on_broken = on_broken
        self._open_call = open_call
        self._new_outbox = new_outbox
        self._outbox = new_outbox()
        self._wake = asyncio.Event()
        self._call: Any = None  # the open call (None: opened on first use)
        self._tasks: tuple[asyncio.Task[None], ...] = ()
        # An answer, or why the call was lost (a string, not an exception: an exception kept
        # in the future would tie, through its traceback, every frame it passes through, the
        # request's audio included, into a reference cycle only a full GC collects).
        # A request with several answers (`request_stream`) has a queue instead of a future.
        self._pending: dict[int, asyncio.Future[AnswerT | str] | asyncio.Queue[AnswerT | str]
                            ] = {}
        self._tags = itertools.count(1)
        self._writing = False  # the writer task is sending a message
        self._flush_soon = False  # `_flush_now` is due at the end of this event loop turn
        self._flush_later: asyncio.TimerHandle | None = None  # or after the input linger

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _open(self) -> None:
        if self._call is None:
            call = self._open_call()
            self._call = call
            loop = asyncio.get_running_loop()
            self._tasks = (loop.create_task(self._read(call), name=f"{self.what} in"),
                           loop.create_task(self._write(call), name=f"{self.what} out"))

    async def _write(self, call: Any) -> None:
        """Send what the outbox holds, as one message, whenever it holds something."""
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await self._wake.wait()
                if self._linger_s:
                    await asyncio.sleep(self._linger_s)
                self._wake.clear()
                message, self._outbox = self._outbox, self._new_outbox()
                if message.ByteSize() == 0:  # already sent by `_flush_now`
                    continue
                self._writing = True
                try:
                    await call.write(message)
                except grpc.aio.AioRpcError as exc:
                    self._broken(call, f"{exc.code().name}: {exc.details()}", notify=True)
                    return
                except (grpc.aio.UsageError, asyncio.InvalidStateError, ConnectionError) as exc:
                    self._broken(call, f"{self.what} broke: {exc}", notify=True)
                    return
                finally:
                    self._writing = False

    async def _read(self, call: Any) -> None:
        why = f"the other side ended {self.what}"
        closed = False
        try:
            async for message in call:
                for answer in message.answers:
                    fut = self._pending.get(answer.tag)
                    if isinstance(fut, asyncio.Queue):
                        fut.put_nowait(answer)
                    elif fut is not None and not fut.done():
                        fut.set_result(answer)
        except grpc.aio.AioRpcError as exc:
            why = f"{exc.code().name}: {exc.details()}"
        except ConnectionError as exc:  # a framed stream (protos.common.framed)
            why = f"{self.what} broke: {exc}"
        except asyncio.CancelledError:
            why, closed = f"{self.what} was closed", True
        finally:
            self._broken(call, why, notify=not closed)

    def _broken(self, call: Any, why: str, notify: bool = False) -> None:
        """`call` is over: every request still waiting on it gets `why`; the next reopens.
        `notify`: it ended from the other side (or broke): tell `on_broken`."""
        if self._call is not call:
            return
        self._call = None
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._outbox = self._new_outbox()
        for fut in self._pending.values():
            if isinstance(fut, asyncio.Queue):
                fut.put_nowait(why)
            elif not fut.done():
                fut.set_result(why)
        if notify and self._on_broken is not None:
            self._on_broken(why)

    def _flush(self, linger_s: float = 0.0) -> None:
        """Something went into the outbox. On a call that sends without waiting (a framed
        stream's `send_now`), the outbox goes once the event loop's current turn is over (or
        after `linger_s`): what the tasks running in the same turn add (say, the chunks of
        many live streams that came in one message) goes as one message and one write, with
        no task switch. On any other call the writer task is woken."""
        if getattr(self._call, "send_now", None) is None:
            self._wake.set()
            return
        if self._flush_soon:
            return
        if linger_s > 0:
            if self._flush_later is None:
                self._flush_later = asyncio.get_running_loop().call_later(linger_s,
                                                                          self._flush_now)
            return
        self._flush_soon = True
        asyncio.get_running_loop().call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_soon = False
        if self._flush_later is not None:
            self._flush_later.cancel()
            self._flush_later = None
        send_now = getattr(self._call, "send_now", None)
        if send_now is None or not self._outbox.ListFields():  # broke, or sent already
            return
        if not self._writing and send_now(self._outbox):
            self._outbox = self._new_outbox()
        else:
            self._wake.set()

    async def request(self, add: Callable[[OutboxT, int], Any],
                      timeout_s: float | None = None) -> AnswerT | str:
        """Send one request (`add(outbox, tag)` puts it in the next message); its answer, or
        why the call broke. TimeoutError after `timeout_s`; whenever the caller stops
        waiting without an answer, the other side is told to stop the request."""
        fut: asyncio.Future[AnswerT | str] = asyncio.get_running_loop().create_future()
        tag = self._send(add, fut)
        answered = False
        try:
            if timeout_s is None:
                answer = await fut
            elif _timeout is None:  # Python 3.10
                answer = await asyncio.wait_for(fut, timeout_s)
            else:
                async with _timeout(timeout_s):  # cheaper than wait_for's extra future
                    answer = await fut
            answered = True
            return answer
        finally:
            self._done(tag, answered)

    async def request_stream(self, add: Callable[[OutboxT, int], Any]
                             ) -> AsyncGenerator[AnswerT | str, None]:
        """Send one request whose answers come as several (`more` set on all but the last);
        each answer as it comes, or why the call broke (then nothing more). Whenever the
        caller stops reading before the last answer, the other side is told to stop it."""
        answers: asyncio.Queue[AnswerT | str] = asyncio.Queue()
        tag = self._send(add, answers)  # here, not before: nothing is sent until read
        async with contextlib.aclosing(self._stream_answers(tag, answers)) as stream:
            async for answer in stream:
                yield answer

    def open_stream(self, add: Callable[[OutboxT, int], Any]
                    ) -> tuple[int, AsyncGenerator[AnswerT | str, None]]:
        """Send one request at once, as `request_stream` does: its tag (for `send_input`)
        and its answers, as `request_stream` gives them."""
        answers: asyncio.Queue[AnswerT | str] = asyncio.Queue()
        tag = self._send(add, answers)
        return tag, self._stream_answers(tag, answers)

    async def _stream_answers(self, tag: int, answers: asyncio.Queue[AnswerT | str]
                              ) -> AsyncGenerator[AnswerT | str, None]:
        """The answers of stream `tag` until its last; told to the other side to stop it
        when left before that (once started: close it, or `cancel_stream`)."""
        finished = False
        try:
            while True:
                answer = await answers.get()
                finished = isinstance(answer, str) or not answer.more  # type: ignore[attr-defined]
                yield answer
                if finished:
                    return
        finally:
            self._done(tag, finished)

    def send_input(self, tag: int, add: Callable[[OutboxT], Any]) -> bool:
        """More input for the open request `tag` (`add(outbox)` puts it in the next message);
        False, sending nothing, once the request is over or the call it went on broke."""
        if tag not in self._pending or self._call is None:
            return False
        add(self._outbox)
        self._flush(self._input_linger_s)
        return True

    def _send(self, add: Callable[[OutboxT, int], Any],
              sink: asyncio.Future[AnswerT | str] | asyncio.Queue[AnswerT | str]) -> int:
        """Put a request in the outbox (opening the call first if needed); its tag."""
        self._open()
        tag = next(self._tags)
        self._pending[tag] = sink
        add(self._outbox, tag)
        self._flush()
        return tag

    def cancel_stream(self, tag: int, tell: bool = True) -> None:
        """Stop waiting for the answers of stream `tag` (from `open_stream`), its answers
        iterator left unread; `tell`: the other side is told to stop it."""
        self._done(tag, answered=not tell)

    def _done(self, tag: int, answered: bool) -> None:
        """The caller stopped waiting for `tag`: without its (last) answer, the other side
        is told to stop it (once: a tag no longer waiting is over already)."""
        if self._pending.pop(tag, None) is None:
            return
        if not answered and self._call is not None:
            self._outbox.cancel.append(tag)  # type: ignore[attr-defined]
            self._flush()

    async def close(self, why: str) -> None:
        """Fail what is waiting (with `why`) and end the call."""
        call = self._call
        if call is not None:
            self._broken(call, why)
            call.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

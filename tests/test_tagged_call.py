"""`TaggedCall.request_stream`: several answers per request over one tagged call, in order;
leaving early cancels the request on the other side; a broken call ends every stream with why;
what one event-loop turn adds goes as one message. A fake call of the right shape (write,
async iteration, cancel) stands in for the transport. And the scheduler's end of a front end's
Link (`_Link`) with a call cancelled in the message that brings it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from protos.asr.frontend.v1 import frontend_pb2 as fpb
from scheduler.frontends import _Link
from scheduler.tagged_call import TaggedCall


class FakeCall:
    """Records what is written; answers are pushed in by the test."""

    def __init__(self) -> None:
        self.written: list[fpb.LinkRequest] = []
        self.incoming: asyncio.Queue[fpb.LinkResponse | Exception | None] = asyncio.Queue()
        self.cancelled = False
        self.wrote = asyncio.Event()

    async def write(self, message: fpb.LinkRequest) -> None:
        self.written.append(message)
        self.wrote.set()

    def __aiter__(self) -> AsyncIterator[fpb.LinkResponse]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[fpb.LinkResponse]:
        while (item := await self.incoming.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item

    def cancel(self) -> None:
        self.cancelled = True
        self.incoming.put_nowait(None)

    def answer(self, tag: int, text: str, more: bool) -> None:
        self.incoming.put_nowait(fpb.LinkResponse(answers=[
            fpb.RelayedAnswer(tag=tag, response=text.encode(), more=more)]))

    def sent_calls(self) -> list[int]:
        return [c.tag for m in self.written for c in m.calls]

    def sent_cancels(self) -> list[int]:
        return [t for m in self.written for t in m.cancel]


async def _until(cond: object, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.001)


def _link(fake: FakeCall) -> TaggedCall[fpb.LinkRequest, fpb.RelayedAnswer]:
    return TaggedCall("the test link", lambda: fake, fpb.LinkRequest)


async def test_answers_in_order_until_the_last() -> None:
    fake = FakeCall()
    link = _link(fake)
    got: list[tuple[bytes, bool]] = []

    async def read() -> None:
        async for answer in link.request_stream(lambda out, tag: out.calls.add(tag=tag)):
            assert not isinstance(answer, str)
            got.append((answer.response, answer.more))

    reader = asyncio.ensure_future(read())
    await _until(lambda: fake.sent_calls() == [1])
    # Another request's answer in between goes to that request, not this one.
    single = asyncio.ensure_future(link.request(lambda out, tag: out.calls.add(tag=tag)))
    await _until(lambda: fake.sent_calls() == [1, 2])
    fake.answer(1, "seg1", more=True)
    fake.answer(2, "other", more=False)
    fake.answer(1, "seg2", more=True)
    fake.answer(1, "whole", more=False)
    fake.answer(1, "late", more=False)  # after the last: dropped
    await asyncio.wait_for(reader, 5)
    assert got == [(b"seg1", True), (b"seg2", True), (b"whole", False)]
    other = await asyncio.wait_for(single, 5)
    assert not isinstance(other, str) and other.response == b"other"
    assert link.pending == 0 and fake.sent_cancels() == []
    await link.close("done")


async def test_leaving_early_cancels_the_request() -> None:
    fake = FakeCall()
    link = _link(fake)
    answers = link.request_stream(lambda out, tag: out.calls.add(tag=tag))
    async with contextlib.aclosing(answers):
        first = asyncio.ensure_future(answers.__anext__())
        await _until(lambda: fake.sent_calls() == [1])
        fake.answer(1, "seg1", more=True)
        answer = await asyncio.wait_for(first, 5)
        assert not isinstance(answer, str) and answer.response == b"seg1"
    await _until(lambda: fake.sent_cancels() == [1])
    assert link.pending == 0
    await link.close("done")


async def test_a_broken_call_ends_each_stream_with_why() -> None:
    fake = FakeCall()
    link = _link(fake)
    got: list[object] = []

    async def read() -> None:
        async for answer in link.request_stream(lambda out, tag: out.calls.add(tag=tag)):
            got.append(answer if isinstance(answer, str) else answer.response)

    reader = asyncio.ensure_future(read())
    await _until(lambda: fake.sent_calls() == [1])
    fake.answer(1, "seg1", more=True)
    await _until(lambda: len(got) == 1)
    fake.incoming.put_nowait(ConnectionError("peer gone"))
    await asyncio.wait_for(reader, 5)
    assert got[0] == b"seg1" and len(got) == 2
    assert isinstance(got[1], str) and "peer gone" in got[1]
    assert link.pending == 0


async def test_an_open_stream_takes_inputs_until_it_is_over() -> None:
    """`open_stream` sends at once and gives the tag; `send_input` puts more for that tag in
    the next messages, in order, until the last answer came or the call broke."""
    fake = FakeCall()
    link = _link(fake)
    tag, answers = link.open_stream(lambda out, t: out.calls.add(tag=t, live=True))
    await _until(lambda: fake.sent_calls() == [tag])
    for chunk in (b"a", b"b", b"c"):
        assert link.send_input(tag, lambda out, c=chunk: out.input.add(tag=tag, audio=c))
    assert link.send_input(tag, lambda out: out.input.add(tag=tag, end=True))
    await _until(lambda: sum(len(m.input) for m in fake.written) == 4)
    sent = [(i.tag, i.audio, i.end) for m in fake.written for i in m.input]
    assert sent == [(tag, b"a", False), (tag, b"b", False), (tag, b"c", False), (tag, b"", True)]
    fake.answer(tag, "interim", more=True)
    fake.answer(tag, "", more=False)
    got = [a.response async for a in answers if not isinstance(a, str)]
    assert got == [b"interim", b""]
    assert not link.send_input(tag, lambda out: out.input.add(tag=tag, audio=b"late"))
    assert fake.sent_cancels() == []  # it ended with its last answer: nothing to cancel

    other, answers = link.open_stream(lambda out, t: out.calls.add(tag=t, live=True))
    fake.incoming.put_nowait(ConnectionError("gone"))
    assert [a async for a in answers] == ["the test link broke: gone"]
    assert not link.send_input(other, lambda out: out.input.add(tag=other, audio=b"x"))
    await link.close("test over")


class FramedFake(FakeCall):
    """A call that can send without waiting, as a framed stream can (`send_now`)."""

    def send_now(self, message: fpb.LinkRequest) -> bool:
        self.written.append(message)
        self.wrote.set()
        return True


async def test_what_one_loop_turn_adds_goes_as_one_message() -> None:
    """On a call that sends at once, requests and inputs added in the same turn of the event
    loop (tasks woken together) share one message, sent at the end of that turn."""
    fake = FramedFake()
    link = _link(fake)
    tags = [link.open_stream(lambda out, t: out.calls.add(tag=t, live=True))[0]
            for _ in range(3)]
    for tag in tags:
        link.send_input(tag, lambda out, t=tag: out.input.add(tag=t, audio=b"x"))
    assert fake.written == []  # not yet: the turn is not over
    await asyncio.sleep(0)
    assert len(fake.written) == 1
    assert fake.sent_calls() == tags
    assert [i.tag for i in fake.written[0].input] == tags
    await link.close("test over")


async def test_inputs_linger_for_others_and_a_request_takes_them_along() -> None:
    """With `input_linger_s`, the inputs of several streams added over a few milliseconds go
    as one message after the linger; a request made meanwhile goes at once, with them."""
    fake = FramedFake()
    link: TaggedCall[fpb.LinkRequest, fpb.RelayedAnswer] = TaggedCall(
        "the test link", lambda: fake, fpb.LinkRequest, input_linger_s=0.05)
    a, _ = link.open_stream(lambda out, t: out.calls.add(tag=t, live=True))
    b, _ = link.open_stream(lambda out, t: out.calls.add(tag=t, live=True))
    await asyncio.sleep(0)
    assert len(fake.written) == 1  # the calls went at once
    link.send_input(a, lambda out: out.input.add(tag=a, audio=b"1"))
    await asyncio.sleep(0.01)
    link.send_input(b, lambda out: out.input.add(tag=b, audio=b"2"))
    await asyncio.sleep(0.01)
    assert len(fake.written) == 1  # still lingering
    await _until(lambda: len(fake.written) == 2, timeout_s=1.0)
    assert [(i.tag, i.audio) for i in fake.written[1].input] == [(a, b"1"), (b, b"2")]

    link.send_input(a, lambda out: out.input.add(tag=a, audio=b"3"))
    single = asyncio.ensure_future(link.request(lambda out, tag: out.calls.add(tag=tag)))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(fake.written) == 3  # the request did not wait for the linger
    assert [(i.tag, i.audio) for i in fake.written[2].input] == [(a, b"3")]
    assert len(fake.written[2].calls) == 1
    await asyncio.sleep(0.08)
    assert len(fake.written) == 3  # the linger's timer found nothing left to send
    single.cancel()
    await link.close("test over")


class _Owner:
    """What a front end's `_Link` needs of the scheduler's `LinkServicer`: calls that run
    until cancelled."""

    def __init__(self) -> None:
        self.in_flight: dict[int, int] = {}
        self.carried: collections.Counter[tuple[int, str]] = collections.Counter()
        self.started: list[int] = []

    async def answer(self, call: fpb.RelayedCall, index: int, emit: object,
                     inputs: object) -> None:
        self.started.append(call.tag)
        await asyncio.sleep(30)


async def test_link_call_cancelled_in_the_message_that_brings_it() -> None:
    """A front end sends what one turn of its event loop adds as one message, so a call and
    its cancel (the client went away at once) can come together: the call's task is cancelled
    before it runs. It must still leave the Link's books, and the Link's end must not wait
    for it; another call of the same message runs and is cancelled when the Link ends."""
    owner = _Owner()
    link = _Link(owner, 0, gone_at_end=True)  # type: ignore[arg-type]

    async def requests() -> AsyncIterator[fpb.LinkRequest]:
        yield fpb.LinkRequest(calls=[fpb.RelayedCall(tag=1), fpb.RelayedCall(tag=2)],
                              cancel=[1])
        await asyncio.sleep(0.05)

    async with asyncio.timeout(5):
        answers = [m async for m in link.run(requests())]
    assert answers == [] and owner.started == [2]
    assert link.calls == {} and owner.in_flight[0] == 0

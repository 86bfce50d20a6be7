"""Which asyncio event loop the service's processes run on: uvloop where it is installed (the
default; measured with the identity engine on the 2-core machine, 4-5 % less CPU per request
for the scheduler and its workers together, BENCHMARKS.md), else the standard library's."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def run(main: Coroutine[Any, Any, T], kind: str = "auto") -> T:
    """`asyncio.run(main)` on the loop `kind` names ("auto": uvloop when installed)."""
    if kind not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {kind!r} (one of {', '.join(EVENT_LOOPS)})")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                main.close()
                raise RuntimeError("--event-loop uvloop: uvloop is not installed") from None
        else:
            return uvloop.run(main)
    return asyncio.run(main)

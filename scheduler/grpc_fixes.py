"""A workaround for a grpc.aio client bug the front-end processes meet (grpc/grpc#36066).

When a server ends a client-streaming call before the client half-closes (the scheduler
refusing a stream's token, or draining), and a write of the client is in flight, grpc.aio's
`_StreamRequestMixin._write` turns the failed write into `set_internal_error`, which overwrites
the status the server already delivered: the caller sees `INTERNAL: Internal error from Core`
instead of, say, `PERMISSION_DENIED`. A front end relays the scheduler's status to its client,
so it relayed INTERNAL about one time in two (measured: 13 of 30 refused streams). The fix
proposed upstream (grpc/grpc#43486) keeps the delivered status; `keep_delivered_status` applies
the same rule, in the front-end process only, for the grpc versions checked here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

log = logging.getLogger(__name__)

CHECKED = ("1.85.",)  # grpcio versions whose `_write` this replacement mirrors


def keep_delivered_status() -> bool:
    """Patch grpc.aio's stream write (see the module docstring); False when not applied."""
    try:
        from grpc import _common
        from grpc._cython import cygrpc
        from grpc.aio import _call
        mixin = _call._StreamRequestMixin
        finished, half_closed = _call._RPC_ALREADY_FINISHED_DETAILS, _call._RPC_HALF_CLOSED_DETAILS
    except (ImportError, AttributeError) as exc:
        log.warning("grpc.aio internals changed (%s): the early-status workaround is off", exc)
        return False
    if not grpc.__version__.startswith(CHECKED):
        log.warning("grpcio %s is not one the early-status workaround was checked with; it "
                    "is off (a refused stream may reach clients as INTERNAL)", grpc.__version__)
        return False

    async def _write(self: Any, request: Any) -> None:
        if self.done():
            raise asyncio.InvalidStateError(finished)
        if self._done_writing_flag:
            raise asyncio.InvalidStateError(half_closed)
        if not self._metadata_sent.is_set():
            await self._metadata_sent.wait()
            if self.done():
                await self._raise_for_status()
        serialized = _common.serialize(request, self._request_serializer)
        try:
            await self._cython_call.send_serialized_message(serialized)
        except cygrpc.InternalError as err:
            if not self._cython_call.done():  # the fix: keep a status Core delivered
                self._cython_call.set_internal_error(str(err))
            await self._raise_for_status()
        except asyncio.CancelledError:
            if not self.cancelled():
                self.cancel()
            raise

    mixin._write = _write
    return True

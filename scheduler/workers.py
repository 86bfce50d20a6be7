"""Worker processes: spawn, ready handshake, liveness, restart with backoff (TGI-style).

One `WorkerHandle` per worker process. `supervise()` keeps its process alive: it starts it,
waits for the model to load (the worker answers `GetInfo` only then), checks liveness every
`heartbeat_interval_s`, kills a worker that stops answering, and restarts a dead one with
exponential backoff. Five crashes within two minutes mark it crash-looping (`failed`): it is
still retried, at the longest backoff, and the state says so.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import IO

import grpc

from protos.asr.worker.v1 import worker_pb2 as wpb
from protos.asr.worker.v1 import worker_pb2_grpc as wpb_grpc
from protos.common.framed import FramedFirst
from protos.common.pcm_arena import PcmArena
from protos.common.pcm_arena import supported as pcm_arena_supported
from protos.common.wire import WORKER_CHANNEL_OPTIONS
from protos.common.worker_auth import SECRET_ENV, call_metadata, client_interceptors
from protos.common.worker_config import WorkerConfig
from scheduler.work_stream import WorkStream
from scheduler.workers_client import Capabilities, LiveLink, WorkerInfo, get_info, live_link

log = logging.getLogger(__name__)

CRASH_LOOP_COUNT = 5
CRASH_LOOP_WINDOW_S = 120.0
MAX_BACKOFF_S = 30.0
STDERR_TAIL_LINES = 40  # lines of a worker's stderr kept to explain its failure
STDERR_IN_ERROR = 3  # of which the last few go into `last_error`
MAX_ERROR_CHARS = 600


class WorkerState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class WorkerSpec:
    """Where one worker runs and what it is called."""

    worker_id: str  # "cuda:0#1"
    device_name: str  # "cuda:0", "sim:2", "cpu"
    torch_device: str  # "cuda:0" or "cpu"
    is_cpu: bool = False
    role: str = "asr"  # "asr" (recognition) or "vad" (segmentation, CPU)
    model: str = ""  # name of the served model this worker holds ("" for VAD workers)


@dataclass
class WorkerLaunch:
    """What every worker of one pool shares: the worker settings (model, engine, batching,
    dtype, logging; ids, device and socket are filled in per worker) and how it is supervised."""

    worker: WorkerConfig
    runtime_dir: str
    start_timeout_s: float = 600.0
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 20.0
    initial_backoff_s: float = 1.0
    secret: str = ""  # the per-start secret every worker call carries (worker_auth)
    pcm_arena_bytes: int = 0  # shared PCM arena per worker process (0: audio goes inline)
    work_socket: bool = True  # units over an inherited socket pair (False: a gRPC Work call)
    extra_env: dict[str, str] = field(default_factory=dict)
    # The worker program; the JSON config is appended. Tests swap in failing programs.
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "gpu_worker"])

    @property
    def model(self) -> str:
        return self.worker.model


class LostWorkers:
    """Workers that lost a request, remembered until the supervisor's verdict: a worker is
    avoided until it has been restarted (a new generation) or, still running the same
    process, until `settle_s` has passed (the loss was not the worker's death)."""

    def __init__(self, settle_s: float = 5.0) -> None:
        self.settle_s = settle_s
        self._lost: dict[str, tuple[int, float]] = {}

    def add(self, worker: WorkerHandle) -> None:
        self._lost[worker.spec.worker_id] = (worker.generation, time.monotonic())

    def avoids(self, worker: WorkerHandle) -> bool:
        lost = self._lost.get(worker.spec.worker_id)
        if lost is None:
            return False
        generation, at = lost
        return worker.generation == generation and time.monotonic() - at < self.settle_s

    def __len__(self) -> int:
        return len(self._lost)


class Stalls:
    """Worker losses of one long-lived piece of work (a VAD session, a live stream) counted
    since it last made progress: a loss after the work has moved past the point of the
    previous one starts the count again, so a long request survives any number of unrelated
    worker deaths spread over its life, while work that kills its worker at the same point
    again and again (a poison input) gives up after `limit` losses in a row."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0  # losses without progress in between
        self._mark = -1  # the furthest point reached at a loss

    def lost(self, reached: int) -> bool:
        """Record a loss with the work at `reached` (any measure that grows with progress:
        samples pushed, results sent); True when it should give up."""
        self.in_a_row = 1 if reached > self._mark else self.in_a_row + 1
        self._mark = max(self._mark, reached)
        return self.in_a_row > self.limit


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class WorkerHandle:
    """One supervised worker process and the scheduler's view of its load."""

    def __init__(self, spec: WorkerSpec, launch: WorkerLaunch,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.spec = spec
        self.launch = launch
        self.on_change = on_change
        self.state = WorkerState.STOPPED
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.generation = 0  # bumped at every process start
        self.served = 0
        self.in_flight = 0
        self.pending_audio_s = 0.0
        self.speed = 20.0 if spec.is_cpu else 200.0  # audio s per wall s, learnt as it runs
        self.last_assigned = 0.0
        self.last_error = ""
        self.stub: wpb_grpc.WorkerStub | None = None
        self.live_link: LiveLink | None = None  # its live streams' call (streaming models)
        self.link: WorkStream | None = None  # the unit hand-off of the current process
        self._arena: PcmArena | None = None  # created at spawn, handed to `link`
        self._work_sock: socket.socket | None = None  # our end of the unit socket pair, too
        self._live_sock: socket.socket | None = None  # and of the live socket pair
        self._live_open: FramedFirst | None = None  # how the live link opens its call
        self._channel: grpc.aio.Channel | None = None
        self._crashes: collections.deque[float] = collections.deque()
        self._stopping = False
        # The unit call of the current process ended from its side: almost always the
        # process is exiting. No units go to it until `_watch` knows (its exit, or that it
        # still answers and units can take the gRPC fallback).
        self._suspect = False
        self._nap_waiter: asyncio.Future[None] | None = None  # `_watch` between its checks
        self.allocated_bytes = 0
        self.reserved_bytes = 0
        self.capabilities: Capabilities | None = None  # from the ready handshake
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        # Worker-side counters summed over this handle's process lifetimes ("oom",
        # "clear:<trigger>"); _last_seen is what the current process reported last.
        self.totals: collections.Counter[str] = collections.Counter()
        self._last_seen: dict[str, int] = {}

    @property
    def socket_path(self) -> str:
        # Unix socket paths are short (108 bytes): a readable prefix plus a hash of the id.
        safe = re.sub(r"[^A-Za-z0-9.-]", "_", self.spec.worker_id)[:24]
        digest = hashlib.sha1(self.spec.worker_id.encode()).hexdigest()[:8]
        return os.path.join(self.launch.runtime_dir, f"w-{safe}-{digest}.sock")

    @property
    def pid(self) -> int:
        return self.process.pid if self.process and self.process.poll() is None else 0

    @property
    def ready(self) -> bool:
        return self.state == WorkerState.READY and not self._suspect

    def _set_suspect(self, suspect: bool) -> None:
        if suspect != self._suspect:
            self._suspect = suspect
            self.on_change()

    def _on_link_broken(self, why: str) -> None:
        if self._stopping:
            return
        log.info("worker %s: its unit call ended (%s); no units go to it until it is known "
                 "to be alive", self.spec.worker_id, why)
        self._set_suspect(True)
        if self._nap_waiter is not None:
            _wake(self._nap_waiter)

    def expected_finish_s(self, audio_s: float) -> float:
        """Seconds until this worker would finish a new request of `audio_s` seconds."""
        return (self.pending_audio_s + audio_s) / max(self.speed, 1e-3)

    def record(self, audio_s: float, wall_s: float) -> None:
        """Learn speed from a finished request (exponential moving average)."""
        if wall_s > 0 and audio_s > 0:
            self.speed = 0.8 * self.speed + 0.2 * (audio_s / wall_s)

    def _set_state(self, state: WorkerState) -> None:
        if state != self.state:
            log.info("worker %s: %s -> %s", self.spec.worker_id, self.state.value, state.value)
            self.state = state
            self.on_change()

    @property
    def unit_target(self) -> WorkStream | wpb_grpc.WorkerStub | None:
        """Where units go: the Work stream, or plain Transcribe calls (None: not connected)."""
        return self.link or self.stub

    def worker_config(self, work_fd: int = -1, live_fd: int = -1) -> WorkerConfig:
        """This worker's settings: the pool's, with its own id, device and socket;
        `work_fd`, `live_fd`: the worker's ends of the unit and live socket pairs (-1:
        none)."""
        arena = self._arena
        return dataclasses.replace(
            self.launch.worker, worker_id=self.spec.worker_id, socket_path=self.socket_path,
            torch_device=self.spec.torch_device, device_name=self.spec.device_name,
            parent_pid=os.getpid(), pcm_arena_fd=arena.fd if arena else -1,
            pcm_arena_bytes=arena.size if arena else 0, work_socket_fd=work_fd,
            live_socket_fd=live_fd)

    def absorb(self, info: WorkerInfo) -> None:
        """Fold a worker's own counters into totals that survive its restarts."""
        self.allocated_bytes, self.reserved_bytes = info.allocated_bytes, info.reserved_bytes
        if info.capabilities is not None:
            self.capabilities = info.capabilities
        for key, value in info.counters.items():
            last = self._last_seen.get(key, 0)
            self.totals[key] += value - last if value >= last else value
        self._last_seen = dict(info.counters)

    async def refresh(self) -> None:
        """Read the worker's figures now (after an admin action), not at the next heartbeat."""
        if self.stub is not None and self.ready:
            self.absorb(await get_info(self.stub, 10.0))

    def _forward_stderr(self, stream: IO[bytes]) -> None:
        """On a thread: pass the worker's stderr through, keeping its last lines."""
        with contextlib.suppress(ValueError, OSError):
            for raw in iter(stream.readline, b""):
                with contextlib.suppress(ValueError, OSError):
                    sys.stderr.buffer.write(raw)
                    sys.stderr.buffer.flush()
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self.stderr_tail.append(line)
        stream.close()

    def _failure(self, reason: str) -> str:
        """`reason` with the last lines the worker wrote to stderr (why it failed)."""
        tail = " | ".join(list(self.stderr_tail)[-STDERR_IN_ERROR:])
        text = f"{reason}: {tail}" if tail else reason
        return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."

    def _spawn(self) -> None:
        self._last_seen = {}
        self.generation += 1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        env = {**os.environ, **self.launch.extra_env}
        if self.launch.secret:
            env[SECRET_ENV] = self.launch.secret
        self.stderr_tail.clear()
        if self.launch.pcm_arena_bytes and pcm_arena_supported():
            self._arena = PcmArena.create(self.launch.pcm_arena_bytes,
                                          f"asr-pcm-{self.spec.worker_id}")
        theirs = theirs_live = None
        if self.launch.work_socket:
            self._work_sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._live_sock, theirs_live = socket.socketpair(socket.AF_UNIX,
                                                             socket.SOCK_STREAM)
        fds = tuple(fd for fd in (self._arena.fd if self._arena else -1,
                                  theirs.fileno() if theirs else -1,
                                  theirs_live.fileno() if theirs_live else -1) if fd >= 0)
        try:
            self.process = subprocess.Popen(
                [*self.launch.command,
                 self.worker_config(theirs.fileno() if theirs else -1,
                                    theirs_live.fileno() if theirs_live else -1).to_json()],
                env=env, stderr=subprocess.PIPE, umask=0o077,  # its socket: 0600
                pass_fds=fds)
        except BaseException:
            self._drop_spawned()
            raise
        finally:
            for end in (theirs, theirs_live):
                if end is not None:
                    end.close()  # the worker holds its end; its exit is our end-of-file
        assert self.process.stderr is not None
        threading.Thread(target=self._forward_stderr, args=(self.process.stderr,),
                         name=f"stderr-{self.spec.worker_id}", daemon=True).start()
        log.info("worker %s: started pid %d on %s", self.spec.worker_id, self.process.pid,
                 self.spec.torch_device)

    def _drop_spawned(self) -> None:
        """Close what was made for a process at spawn and not handed to its link yet."""
        if self._arena is not None:
            self._arena.close()
            self._arena = None
        if self._work_sock is not None:
            self._work_sock.close()
            self._work_sock = None
        if self._live_sock is not None:
            self._live_sock.close()
            self._live_sock = None

    async def _connect(self) -> None:
        # The new process's arena and unit socket go to its link, its live socket to its
        # live link.
        arena, self._arena = self._arena, None
        sock, self._work_sock = self._work_sock, None
        live_sock, self._live_sock = self._live_sock, None
        await self._close_channel()
        self._channel = grpc.aio.insecure_channel(
            f"unix://{self.socket_path}",
            options=list(WORKER_CHANNEL_OPTIONS),
            interceptors=client_interceptors(self.launch.secret))
        self.stub = wpb_grpc.WorkerStub(self._channel)
        work_channel = grpc.aio.insecure_channel(f"unix://{self.socket_path}",
                                                 options=list(WORKER_CHANNEL_OPTIONS))
        # Live streams' call: frames over the live socket pair; should that break while the
        # worker lives on, a gRPC LiveLink call on the Work call's channel (no interceptors:
        # a task hop per message on a stream; the secret in the call's metadata).
        live_stub = wpb_grpc.WorkerStub(work_channel)
        metadata = call_metadata(self.launch.secret)
        self._live_open = FramedFirst(live_sock, wpb.LiveLinkResponse.FromString,
                                      lambda: live_stub.LiveLink(metadata=metadata))
        self.live_link = live_link(self._live_open, self.spec.worker_id)
        self._set_suspect(False)
        self.link = WorkStream(work_channel, self.spec.worker_id, arena, self.launch.secret,
                               sock, self._on_link_broken)

    async def _close_channel(self) -> None:
        self._drop_spawned()
        if self.live_link is not None:  # before the Work stream closes their channel
            await self.live_link.close("the worker's connection was closed")
            self.live_link = None
        if self._live_open is not None:
            self._live_open.close()  # its socket, if no stream ever used it
            self._live_open = None
        if self.link is not None:
            await self.link.close()  # units still waiting on the old process: WorkerLost
            self.link = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self.stub = None

    def _exit_reason(self) -> str | None:
        code = self.process.poll() if self.process else 0
        if code is None:
            return None
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"

    async def _wait_ready(self) -> bool:
        """Poll GetInfo until the model is loaded, the process dies, or time runs out."""
        deadline = time.monotonic() + self.launch.start_timeout_s
        next_note = time.monotonic() + 10.0
        while time.monotonic() < deadline and not self._stopping:
            reason = self._exit_reason()
            if reason is not None:
                await asyncio.sleep(0.1)  # let the stderr thread catch the last lines
                self.last_error = self._failure(f"died while starting: {reason}")
                return False
            if os.path.exists(self.socket_path):
                try:
                    assert self.stub is not None
                    self.absorb(await get_info(self.stub, 2.0))
                    return True
                except grpc.aio.AioRpcError:
                    pass
            if time.monotonic() > next_note:
                log.info("worker %s: waiting for the model to load", self.spec.worker_id)
                next_note += 10.0
            await asyncio.sleep(0.1)
        self.last_error = f"not ready within {self.launch.start_timeout_s:.0f} s"
        return False

    async def _watch(self) -> str:
        """Return why the running worker stopped serving (exit, or a missed heartbeat)."""
        next_beat = time.monotonic() + self.launch.heartbeat_interval_s
        while not self._stopping:
            reason = self._exit_reason()
            if reason is not None:
                await asyncio.sleep(0.1)  # let the stderr thread catch the last lines
                return self._failure(reason)
            if self._suspect and await self._exits_soon():
                continue  # its exit is read above
            if time.monotonic() >= next_beat or self._suspect:
                try:
                    assert self.stub is not None
                    self.absorb(await get_info(self.stub, self.launch.heartbeat_timeout_s))
                except grpc.aio.AioRpcError as exc:
                    if self._exit_reason() is None:
                        await self._kill()
                        return f"no heartbeat ({exc.code().name}); killed"
                    continue  # it exited: read above
                if self._suspect:  # alive and answering: units take the gRPC fallback
                    log.warning("worker %s: its unit call broke but it still answers; units "
                                "go over gRPC", self.spec.worker_id)
                    self._set_suspect(False)
                next_beat = time.monotonic() + self.launch.heartbeat_interval_s
            await self._nap(0.1)
        return "stopping"

    async def _nap(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the unit call ends meanwhile (a future and a timer:
        no task or exception per nap, this runs ten times a second per worker)."""
        loop = asyncio.get_running_loop()
        waiter = self._nap_waiter = loop.create_future()
        timer = loop.call_later(seconds, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._nap_waiter = None

    async def _exits_soon(self, within_s: float = 1.0) -> bool:
        """After the unit call ended: whether the process exits within `within_s` (its
        sockets close while it exits, a moment before it can be reaped)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and not self._stopping:
            if self._exit_reason() is not None:
                return True
            await asyncio.sleep(0.01)
        return False

    async def supervise(self) -> None:
        """Keep the worker running until `stop()`."""
        backoff = self.launch.initial_backoff_s
        while not self._stopping:
            if self.state == WorkerState.STOPPED:
                self._set_state(WorkerState.STARTING)
            self._spawn()
            await self._connect()
            started = time.monotonic()
            if await self._wait_ready():
                self._set_state(WorkerState.READY)
                reason = await self._watch()
                if self._stopping:
                    break
                self.last_error = reason
            if self._stopping:
                break
            await self._kill()
            log.error("worker %s (pid %s): %s", self.spec.worker_id,
                      self.process.pid if self.process else "?", self.last_error)
            now = time.monotonic()
            if now - started > CRASH_LOOP_WINDOW_S:
                backoff = self.launch.initial_backoff_s
            self._crashes.append(now)
            while self._crashes and now - self._crashes[0] > CRASH_LOOP_WINDOW_S:
                self._crashes.popleft()
            looping = len(self._crashes) >= CRASH_LOOP_COUNT
            if looping:
                log.error("worker %s is crash-looping (%d failures in %.0f s); retrying every "
                          "%.0f s", self.spec.worker_id, len(self._crashes),
                          CRASH_LOOP_WINDOW_S, MAX_BACKOFF_S)
                backoff = MAX_BACKOFF_S
            self._set_state(WorkerState.FAILED if looping else WorkerState.RESTARTING)
            self.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        await self._close_channel()
        self._set_state(WorkerState.STOPPED)

    def kill(self) -> None:
        """SIGKILL the process now (it is reaped by the supervisor)."""
        if self.process and self.process.poll() is None:
            self.process.kill()

    async def _kill(self, wait_s: float = 5.0) -> None:
        """SIGKILL and reap without blocking the event loop (a GPU process may take seconds
        to be torn down by the driver)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        deadline = time.monotonic() + wait_s
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, wait up to `grace_s`, then SIGKILL; the process is reaped."""
        self._stopping = True
        proc = self.process
        if proc and proc.poll() is None:
            proc.terminate()
            deadline = time.monotonic() + grace_s
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await self._kill()
        await self._close_channel()
        self._set_state(WorkerState.STOPPED)

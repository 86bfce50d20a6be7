"""Assembles the scheduler: model check, GPU monitor, workers, dispatcher, gRPC server.

Health (`grpc.health.v1`) says SERVING for the overall service and `asr.v1.Recognizer` only
while at least one worker is ready, and NOT_SERVING for good once `stop()` begins the drain
(see `scheduler.drain`); reflection lists every service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import shutil
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.asr.frontend.v1 import frontend_pb2_grpc
from protos.asr.v1 import asr_pb2, asr_pb2_grpc
from protos.common.memory import trim_when_idle
from protos.common.worker_auth import SecretCheck, new_secret
from protos.common.worker_config import WorkerConfig
from protos.common.wrapping import HandlerWrapper, WrappedServer
from scheduler.auth import TokenInterceptor, read_token, server_credentials
from scheduler.catalog import ModelCatalog, ServedModel
from scheduler.config import ServeConfig
from scheduler.dispatch import NO_GPU, Dispatcher, DispatchPolicy
from scheduler.drain import Drain, DrainInterceptor
from scheduler.frontend import FrontendConfig
from scheduler.frontends import (
    FrontendCollector,
    FrontendLaunch,
    FrontendPool,
    LinkServicer,
)
from scheduler.interceptor import ErrorInterceptor
from scheduler.limits import AudioBudget, ByteBudget, StreamLimits
from scheduler.live import LiveRecognizer
from scheduler.live_metrics import LiveMetrics
from scheduler.metrics import Metrics
from scheduler.models import (
    ModelSpec,
    name_models,
    parse_model_specs,
    resolve_model,
    resolve_vad_model,
)
from scheduler.monitor import GIB, GpuMonitor, open_monitor
from scheduler.pipeline import Pipeline, StreamSettings
from scheduler.request_views import add_recognizer_to_server
from scheduler.runtime import private_runtime_dir
from scheduler.servicers import AdminServicer, RecognizerServicer
from scheduler.status import StatusReporter
from scheduler.vad import VadPool
from scheduler.workers import WorkerHandle, WorkerLaunch, WorkerSpec

log = logging.getLogger(__name__)

SERVICE_NAMES = (asr_pb2.DESCRIPTOR.services_by_name["Recognizer"].full_name,
                 asr_pb2.DESCRIPTOR.services_by_name["Admin"].full_name)
CPU_SPEC = WorkerSpec("cpu#0", "cpu", "cpu", is_cpu=True)
EXIT_MARGIN_S = 1.0  # of the shutdown grace, left for the process to exit after its workers


def cpu_specs(count: int) -> list[WorkerSpec]:
    return [WorkerSpec(f"cpu#{k}", "cpu", "cpu", is_cpu=True) for k in range(count)]


def plan_workers(config: ServeConfig, monitor: GpuMonitor) -> tuple[list[WorkerSpec], str]:
    """Worker specs for `--devices`, and what a CPU-only plan says of its requests."""
    spec = config.devices.strip().lower()
    if spec == "cpu":  # the CPU is the device: --workers-per-device applies to it
        return cpu_specs(config.workers_per_device), ""
    gpus = monitor.devices()
    if spec not in ("auto",) and not spec.startswith("sim:"):
        wanted = [d.strip() for d in spec.split(",") if d.strip()]
        known = {d.name for d in gpus}
        unknown = [d for d in wanted if d not in known]
        if unknown:
            raise ValueError(f"--devices {config.devices}: {', '.join(unknown)} not found "
                             f"(visible GPUs: {', '.join(sorted(known)) or 'none'})")
        gpus = [d for d in gpus if d.name in wanted]
    if not gpus:
        log.warning("no GPU found (--devices %s): serving on CPU; results say %s",
                    config.devices, NO_GPU)
        return cpu_specs(config.workers_per_device), NO_GPU
    specs = [WorkerSpec(f"{d.name}#{k}", d.name, "cpu" if monitor.simulated else f"cuda:{d.index}")
             for d in gpus for k in range(config.workers_per_device)]
    if config.cpu_fallback != "never":
        specs.append(CPU_SPEC)
    return specs, ""


def vad_torch_devices(vad_device: str, placements: list[WorkerSpec], count: int) -> list[str]:
    """Where each of `count` VAD workers runs its network: `--vad-device gpu` spreads them
    over the CUDA devices the recognition workers were placed on, round robin; "cpu" for all
    with `--vad-device cpu` or where no CUDA device serves (CPU-only or simulated GPUs)."""
    cuda = sorted({p.torch_device for p in placements if p.torch_device.startswith("cuda")},
                  key=lambda d: int(d.partition(":")[2] or 0))
    if vad_device != "gpu" or not cuda:
        return ["cpu"] * count
    return [cuda[i % len(cuda)] for i in range(count)]


class AsrService:
    """The running scheduler: call `start()`, then `stop()`."""

    def __init__(self, config: ServeConfig, monitor: GpuMonitor | None = None) -> None:
        self.config = config
        self.monitor = monitor
        self.port = 0
        self.workers: list[WorkerHandle] = []
        self.vad_workers: list[WorkerHandle] = []
        self.dispatcher: Dispatcher | None = None
        self.catalog: ModelCatalog | None = None
        self.pipeline: Pipeline | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []
        self._runtime_dir = ""
        self._ready = asyncio.Event()
        self.metrics = Metrics()
        self.drain = Drain()
        self.frontends: FrontendPool | None = None

    def _on_change(self) -> None:
        ready = any(w.ready for w in self.workers)
        status = (health_pb2.HealthCheckResponse.SERVING if ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", *SERVICE_NAMES):
            asyncio.get_running_loop().create_task(self._health.set(name, status))
        if ready:
            self._ready.set()
        else:
            self._ready.clear()
        if self.dispatcher is not None:
            self.dispatcher.notify()

    async def _resolve_models(self) -> list[ModelSpec]:
        """`--model` values as named local directories (demo built, hub ids checked)."""
        cfg = self.config
        specs = parse_model_specs(cfg.model)
        paths = [await asyncio.to_thread(resolve_model, s.source, Path(cfg.cache_dir))
                 for s in specs]
        return name_models(specs, paths)

    def _plan(self, models: list[ModelSpec], placements: list[WorkerSpec],
              vad_model: str | None) -> None:
        """One recognition worker per placement and model, plus the VAD workers."""
        cfg = self.config
        count = len(placements) * len(models)
        base = WorkerConfig(
            model="", threads=cfg.worker_threads or max(1, (os.cpu_count() or 1) // count),
            max_batch_size=cfg.max_batch_size, max_batch_audio_s=cfg.max_batch_audio_s,
            max_queue_delay_ms=cfg.max_queue_delay_ms, cache_clear_every=cfg.cache_clear_every,
            cache_clear_margin_bytes=cfg.cache_clear_margin_mib * 1024 * 1024, dtype=cfg.dtype,
            exact_argmax=cfg.exact_argmax == "on",
            engine=cfg.engine, max_new_tokens=cfg.max_new_tokens,
            log_level=cfg.log_level, log_format=cfg.log_format, vad_model=vad_model or "",
            vad_fbank=cfg.vad_fbank, live_fbank=cfg.live_fbank, live_tick_ms=cfg.live_tick_ms,
            event_loop=cfg.event_loop)
        supervision = WorkerLaunch(
            worker=base, runtime_dir=self._runtime_dir, start_timeout_s=cfg.worker_start_timeout_s,
            heartbeat_interval_s=cfg.heartbeat_interval_s,
            heartbeat_timeout_s=cfg.heartbeat_timeout_s, secret=new_secret(),
            pcm_arena_bytes=cfg.pcm_arena_mib * 1024 * 1024)

        def launch(**worker: object) -> WorkerLaunch:
            return dataclasses.replace(supervision,
                                       worker=dataclasses.replace(base, **worker))  # type: ignore[arg-type]

        self.workers = []
        has_gpu = any(not p.is_cpu for p in placements)
        for m in models:
            engine = m.engine or cfg.engine
            # vLLM needs CUDA: a CPU fallback worker beside GPU workers runs FunASR generate
            # (with CPU workers only, the vllm worker's own error stops the start).
            cpu_engine = "generate" if engine == "vllm" and has_gpu else engine
            gpu = launch(model=m.source, model_name=m.name, engine=engine)
            cpu = launch(model=m.source, model_name=m.name, engine=cpu_engine,
                         max_batch_size=min(cfg.max_batch_size, cfg.cpu_max_batch_size))
            prefix = f"{m.name}@" if len(models) > 1 else ""
            for p in placements:
                spec = dataclasses.replace(p, worker_id=prefix + p.worker_id, model=m.name)
                self.workers.append(WorkerHandle(spec, cpu if p.is_cpu else gpu,
                                                 self._on_change))
        # More than one where cores allow: a long request survives the loss of one.
        vad_count = cfg.vad_workers or min(4, max(2 if (os.cpu_count() or 1) >= 2 else 1,
                                                  (os.cpu_count() or 1) // 4))
        # VAD workers get their 60 s chunks (3.75 MiB) through a PCM arena too.
        vad_launch = launch(model=vad_model or "", model_name="fsmn-vad", engine="vad",
                            threads=1)
        vad_devices = vad_torch_devices(cfg.vad_device, placements, vad_count)
        self.vad_workers = [] if vad_model is None else [
            WorkerHandle(WorkerSpec(f"vad#{i}", "vad", vad_devices[i], is_cpu=True, role="vad"),
                         vad_launch) for i in range(vad_count)]

    async def start(self) -> int:
        cfg = self.config
        models = await self._resolve_models()
        vad_model = await asyncio.to_thread(resolve_vad_model, cfg.vad_model, Path(cfg.cache_dir))
        monitor = self.monitor or open_monitor(cfg.devices, int(cfg.sim_memory_gib * GIB))
        self.monitor = monitor
        placements, cpu_only_reason = plan_workers(cfg, monitor)
        self._runtime_dir = private_runtime_dir(cfg.runtime_dir)
        self._plan(models, placements, vad_model)
        self.dispatcher = Dispatcher(self.workers, monitor, DispatchPolicy(
            cpu_fallback=cfg.cpu_fallback, memory_floor_fraction=cfg.memory_floor_fraction,
            max_queue=cfg.max_queue, queue_timeout_s=cfg.queue_timeout_s,
            max_attempts=cfg.max_attempts), cpu_only_reason=cpu_only_reason)
        self.catalog = ModelCatalog([
            ServedModel(m.name, m.source, [w for w in self.workers if w.spec.model == m.name])
            for m in models])
        reporter = StatusReporter(self.dispatcher, self.catalog, cfg.cpu_fallback,
                                  self.vad_workers)
        pipeline = Pipeline(
            self.dispatcher, self.catalog, self.metrics, VadPool(self.vad_workers),
            cfg.max_segment_ms, StreamSettings(
                buffer_bytes=cfg.stream_buffer_mib * 1024 * 1024,
                max_bytes=cfg.max_stream_bytes, spool_dir=self._runtime_dir,
                buffers=ByteBudget(cfg.max_stream_buffers_mib * 1024 * 1024)),
            AudioBudget(cfg.max_decoded_audio_mib * 1024 * 1024, cfg.queue_timeout_s),
            vad_split_s=cfg.vad_split_s)
        self.pipeline = pipeline
        self.metrics.attach(self.dispatcher, self.vad_workers)
        if cfg.metrics_port:
            try:
                host = cfg.metrics_host or cfg.host
                self.metrics.serve(cfg.metrics_port, "" if host in ("[::]", "::") else host)
            except OSError as exc:
                raise OSError(f"--metrics-port {cfg.metrics_port}: cannot listen: "
                              f"{exc.strerror or exc}") from exc

        # Transport limit above the unary limit, so a too-big Recognize reaches the handler and
        # gets a message pointing to StreamingRecognize.
        limit = max(2 * cfg.max_unary_bytes, cfg.max_unary_bytes + 16 * 1024 * 1024)
        # Wrapped around each method's handler once, when it is registered (not per call).
        wrappers: list[HandlerWrapper] = [ErrorInterceptor(self.metrics),
                                          DrainInterceptor(self.drain)]
        tokens = (TokenInterceptor(read_token(cfg.auth_token_file),
                                   read_token(cfg.admin_token_file))
                  if cfg.auth_token_file or cfg.admin_token_file else None)
        if tokens is not None:  # inside: refusals are counted too
            wrappers.append(tokens)
        frontend_secret = new_secret() if cfg.frontends else ""
        if frontend_secret:  # the private socket front ends relay to: only they may call
            wrappers.insert(0, SecretCheck(
                frontend_secret, "only the service's front-end processes call this socket"))
        server = WrappedServer(grpc.aio.server(
            options=[("grpc.max_receive_message_length", limit)]), wrappers)
        live = LiveRecognizer(self.dispatcher, self.catalog, LiveMetrics(self.metrics.registry),
                              cfg.max_live_streams, self._runtime_dir, cfg.live_end_silence_ms)
        recognizer = RecognizerServicer(pipeline, cfg.max_unary_bytes, StreamLimits(
            cfg.max_streams, cfg.max_streams_per_client, cfg.stream_idle_timeout_s), live,
            relayed=bool(cfg.frontends))
        add_recognizer_to_server(recognizer, server)
        asr_pb2_grpc.add_AdminServicer_to_server(AdminServicer(reporter), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), server)
        if cfg.frontends:
            socket = os.path.join(self._runtime_dir, "frontends.sock")
            self.frontends = FrontendPool(FrontendLaunch(
                count=cfg.frontends, host=cfg.host, port=cfg.port,
                arena_bytes=cfg.pcm_arena_mib * 1024 * 1024, secret=frontend_secret,
                process=FrontendConfig(
                    index=-1, generation=0, listen="", dispatcher=f"unix:{socket}",
                    max_receive_bytes=limit, max_unary_bytes=cfg.max_unary_bytes,
                    tls_cert=cfg.tls_cert, tls_key=cfg.tls_key,
                    tls_client_ca=cfg.tls_client_ca, log_level=cfg.log_level,
                    log_format=cfg.log_format, event_loop=cfg.event_loop,
                    # Uploads that the scheduler would take whole go on the Link whole.
                    stream_link_bytes=min(cfg.stream_buffer_mib * 1024 * 1024,
                                          cfg.max_unary_bytes),
                    max_streams=cfg.max_streams,
                    max_streams_per_client=cfg.max_streams_per_client,
                    stream_idle_timeout_s=cfg.stream_idle_timeout_s,
                    live_input_linger_s=cfg.live_input_linger_ms / 1000)))
            links = LinkServicer(self.frontends, recognizer, self.drain, self.metrics, tokens)
            self.frontends.serve_links(links.serve_framed)
            frontend_pb2_grpc.add_RelayServicer_to_server(links, server)
            self.metrics.registry.register(FrontendCollector(self.frontends, links))
            server.add_insecure_port(f"unix:{socket}")
            self._server = server
            await server.start()
            self.port = await self.frontends.start()
        else:
            self.port = self._listen(server)
            self._server = server
            await server.start()
        self._tasks = [asyncio.get_running_loop().create_task(w.supervise(),
                                                              name=w.spec.worker_id)
                       for w in (*self.workers, *self.vad_workers)]
        self._tasks.append(asyncio.get_running_loop().create_task(
            trim_when_idle(lambda: self.drain.admitted, lambda: self.drain.active,
                           self._on_idle),
            name="malloc-trim"))
        log.info("listening on port %d%s; models %s; workers %s", self.port,
                 f" through {cfg.frontends} front-end process(es)" if cfg.frontends else "",
                 ", ".join(f"{m.name}={m.source}" for m in models),
                 ", ".join(w.spec.worker_id for w in self.workers))
        return self.port

    def _listen(self, server: grpc.aio.Server) -> int:
        """Bind the public port (TLS when configured); the port bound."""
        cfg = self.config
        credentials = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        address = f"{cfg.host}:{cfg.port}"
        try:
            port = (server.add_secure_port(address, credentials) if credentials
                    else server.add_insecure_port(address))
        except RuntimeError:  # gRPC's way of saying the bind failed (port in use, bad host)
            port = 0
        if port == 0:
            raise OSError(f"--host {cfg.host} --port {cfg.port}: cannot listen on {address} "
                          "(address in use or not available)")
        return port

    def _on_idle(self) -> None:
        """After activity: give the free pages of every worker's PCM arena back and, when no
        call is in progress, collect cyclic garbage (gRPC's own calls leave some)."""
        collected = gc.collect() if not self.drain.active else 0
        released = 0
        for w in (*self.workers, *self.vad_workers):
            arena = w.link.arena if w.link is not None else None
            if arena is not None:
                released += arena.release_free()
        log.debug("idle: %d call(s) in progress; %d unreachable object(s) collected, PCM "
                 "arenas' free pages (%.0f MiB) released", self.drain.active, collected,
                 released / 2**20)

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    async def wait_all_ready(self, timeout_s: float) -> None:
        async def all_ready() -> None:
            while not all(w.ready for w in (*self.workers, *self.vad_workers)):
                await asyncio.sleep(0.05)
        await asyncio.wait_for(all_ready(), timeout_s)

    async def stop(self, grace_s: float | None = None,
                   abort: asyncio.Event | None = None) -> None:
        """Drain, then stop: health NOT_SERVING and new calls UNAVAILABLE at once; accepted
        calls run on until done, until `grace_s` (default `shutdown_grace_s`) nearly passes,
        or until `abort` is set; what is left is cut; workers stop within the grace."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        # Kept for the server and the workers to exit (a worker takes up to ~2 s on SIGTERM),
        # and the last EXIT_MARGIN_S for this process itself.
        teardown_s = min(3.0, grace * 0.3)
        await self._health.enter_graceful_shutdown()
        self.drain.begin()
        if self._server is not None:
            drained = await self._wait_drained(deadline - teardown_s, abort)
            if not drained:
                self.drain.cut()  # the deadline, or a second signal
                await self.drain.wait_idle(min(0.5, max(0.0, deadline - time.monotonic())))
            if self.frontends is not None:  # nothing left to relay: they exit at once
                await self.frontends.stop(min(1.5, max(0.2, deadline - time.monotonic())))
            await self._server.stop(min(0.5, max(0.0, deadline - time.monotonic())))
            how = ("complete" if drained else "cut by a second signal"
                   if abort is not None and abort.is_set() else "cut at the deadline")
            log.info("drain %s; %d call(s) refused while draining", how, self.drain.refused)
        self.metrics.close()
        worker_grace = max(0.2, deadline - EXIT_MARGIN_S - time.monotonic())
        if self.drain.is_cut:  # nothing left to finish: SIGKILL soon after SIGTERM
            worker_grace = min(worker_grace, 1.0)
        await asyncio.gather(*(w.stop(worker_grace) for w in (*self.workers, *self.vad_workers)),
                             return_exceptions=True)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runtime_dir and not self.config.runtime_dir:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    async def _wait_drained(self, until: float, abort: asyncio.Event | None) -> bool:
        """True when every accepted call ended before `until` (and `abort` stayed unset)."""
        idle = asyncio.ensure_future(self.drain.wait_idle(until - time.monotonic()))
        waits: set[asyncio.Future[bool]] = {idle}
        if abort is not None:
            waits.add(asyncio.ensure_future(abort.wait()))
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for p in pending:
            p.cancel()
        return idle in done and idle.result() and not (abort is not None and abort.is_set())

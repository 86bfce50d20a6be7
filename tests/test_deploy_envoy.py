"""Scale-out across machines, on loopback: three service instances (`--devices sim:1` each)
behind a real Envoy running deploy/envoy/envoy.yaml, and the same three reached by the client's
own `round_robin`. In both runs one instance is drained by SIGTERM and one is killed with
kill -9 while calls are in flight: every call is answered exactly once, with the right text."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from client.library import AsrClient
from protos.asr.v1 import asr_pb2 as pb
from protos.asr.v1 import asr_pb2_grpc as pb_grpc
from tests.serve_proc import ServeProcess
from tests.test_cli import free_port
from tests.test_multi_gpu import wait_for

ROOT = Path(__file__).resolve().parent.parent
ENVOY_CONFIG = ROOT / "deploy" / "envoy" / "envoy.yaml"
ENVOY = Path(sys.executable).parent / "envoy"
CALLS, CONCURRENCY = 120, 12
DRAIN_AT, KILL_AT = 40, 70  # call numbers at which one instance is drained, another killed
GRACE_S = 20.0


@pytest.fixture
def instances(models_dir: Path, tmp_path: Path) -> Iterator[list[ServeProcess]]:
    procs = [ServeProcess(models_dir / "sensevoice-tiny", "--shutdown-grace-s", str(GRACE_S),
                          log_path=tmp_path / f"serve{i}.log") for i in range(3)]
    try:
        for p in procs:
            p.wait_serving()
        yield procs
    finally:
        for p in procs:
            p.stop()


def envoy_config(upstreams: list[int], port: int, admin_port: int) -> dict[str, Any]:
    """deploy/envoy/envoy.yaml with loopback addresses: the listener, the admin port and the
    three upstreams (a static list instead of the headless Service's DNS name); its routing,
    retry, health-check and outlier settings are used as shipped."""
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=port)
    cluster = config["static_resources"]["clusters"][0]
    del cluster["cluster_type"]
    cluster["type"] = "STATIC"
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in upstreams]
    return config


def test_envoy_config_validates_without_deprecated_fields() -> None:
    out = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(ENVOY_CONFIG),
                          "--disable-hot-restart"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr
    assert "Deprecated" not in out.stdout + out.stderr
    cluster = yaml.safe_load(ENVOY_CONFIG.read_text())["static_resources"]["clusters"][0]
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    assert cluster["health_checks"][0]["grpc_health_check"]["service_name"] == "asr.v1.Recognizer"


class Envoy:
    """A real Envoy on loopback with the shipped config."""

    def __init__(self, upstreams: list[int], workdir: Path) -> None:
        self.port, self.admin_port = free_port(), free_port()
        path = workdir / "envoy.yaml"
        path.write_text(yaml.safe_dump(envoy_config(upstreams, self.port, self.admin_port)))
        self._log = open(workdir / "envoy.log", "wb")
        self.proc = subprocess.Popen([str(ENVOY), "-c", str(path), "--disable-hot-restart",
                                     "--log-level", "warn"], stdout=self._log,
                                    stderr=subprocess.STDOUT)

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}",
                                    timeout=5) as resp:
            return resp.read().decode()

    def hosts(self) -> dict[int, dict[str, Any]]:
        """Per upstream port: its stats (rq_total, rq_success, ...) and health flags."""
        status = json.loads(self.admin("/clusters?format=json"))["cluster_statuses"][0]
        out = {}
        for h in status["host_statuses"]:
            stats = {s["name"]: int(s.get("value", 0)) for s in h["stats"]}
            stats["healthy"] = h["health_status"].get("eds_health_status") == "HEALTHY" and \
                not h["health_status"].get("failed_active_health_check", False)
            out[h["address"]["socket_address"]["port_value"]] = stats
        return out

    def all_healthy(self, count: int) -> bool:
        assert self.proc.poll() is None, "envoy exited"
        try:
            hosts = self.hosts()
        except (OSError, KeyError, IndexError, ValueError):
            return False  # admin not up yet
        return len(hosts) == count and all(h["healthy"] for h in hosts.values())

    def stat(self, name: str) -> int:
        for line in self.admin(f"/stats?filter=^{name}$").splitlines():
            if line.startswith(name + ":"):
                return int(line.split(":")[1])
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self._log.close()


def run_with_failures(instances: list[ServeProcess], call: Callable[[int], pb.RecognitionResult],
                      served: Callable[[], list[int]]) -> tuple[list[pb.RecognitionResult],
                                                                list[int]]:
    """CALLS calls, CONCURRENCY at a time; instance 0 is drained at call DRAIN_AT and
    instance 1 killed at KILL_AT. Returns the results in call order and, per instance, the
    calls it had served when it was disrupted (instance 2: at the end)."""
    drained, killed = instances[0], instances[1]
    counts: dict[int, list[int]] = {}
    lock = threading.Lock()

    def one(i: int) -> pb.RecognitionResult:
        with lock:
            if i == DRAIN_AT:
                counts[0] = served()
                drained.signal(signal.SIGTERM)
            elif i == KILL_AT:
                counts[1] = served()
                killed.signal(signal.SIGKILL)
        return call(i)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(one, range(CALLS)))
    at_end = served()
    return results, [counts[0][0], counts[1][1], at_end[2]]


def check_run(results: list[pb.RecognitionResult], expected: str, per_instance: list[int],
              instances: list[ServeProcess]) -> None:
    assert [r.request_id for r in results] == [f"call-{i}" for i in range(CALLS)], \
        "every call answered once, by its own result"
    assert all(r.text == expected for r in results)
    assert all(n >= 5 for n in per_instance), f"load spread over all three: {per_instance}"
    assert instances[0].proc.wait(GRACE_S + 10) == 0, "the drained instance exits cleanly"
    assert instances[1].proc.wait(10) == -signal.SIGKILL


@pytest.mark.integration
def test_envoy_spreads_load_and_survives_drain_and_kill9(instances: list[ServeProcess],
                                                         speech: dict[str, Path],
                                                         tmp_path: Path) -> None:
    audio = speech["wav16k"].read_bytes()
    envoy = Envoy([p.port for p in instances], tmp_path)
    try:
        wait_for(lambda: envoy.all_healthy(3), 60, "upstreams healthy")
        ports = [p.port for p in instances]
        # No client-side retries: whatever is retried, Envoy retries.
        with grpc.insecure_channel(f"127.0.0.1:{envoy.port}",
                                   options=[("grpc.enable_retries", 0)]) as channel:
            stub = pb_grpc.RecognizerStub(channel)

            def call(i: int) -> pb.RecognitionResult:
                req = pb.RecognizeRequest(audio_content=audio,
                                          config=pb.RecognitionConfig(request_id=f"call-{i}"))
                return stub.Recognize(req, timeout=180).result

            expected = call(-1).text

            def served() -> list[int]:
                hosts = envoy.hosts()
                return [hosts[p].get("rq_success", 0) for p in ports]

            try:
                results, per_instance = run_with_failures(instances, call, served)
            except grpc.RpcError:
                print(envoy.admin("/stats?filter=asr_scheduler.*(retry|rq_|health|outlier)"))
                raise
        retries = envoy.stat("cluster.asr_scheduler.upstream_rq_retry")
        # Active health checks run every 2 s: give them time to see the two stopped instances.
        deadline = time.monotonic() + 20
        while True:
            hosts = envoy.hosts()
            down = [not hosts[instances[i].port]["healthy"] for i in (0, 1)]
            if all(down) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        envoy.stop()
    print(f"envoy: served per instance at drain/kill/end {per_instance}, retries {retries}")
    check_run(results, expected, per_instance, instances)
    assert retries >= 1, "the drain or the kill made Envoy retry calls"
    assert not hosts[instances[0].port]["healthy"] and not hosts[instances[1].port]["healthy"]
    assert hosts[instances[2].port]["healthy"]


@pytest.mark.integration
def test_client_round_robin_spreads_load_and_survives_drain_and_kill9(
        instances: list[ServeProcess], speech: dict[str, Path]) -> None:
    audio = speech["wav16k"].read_bytes()
    # In Kubernetes the target is dns:///<headless Service>:50051 (one address per pod); on
    # loopback the three instances differ by port, which the ipv4: list names.
    target = "ipv4:" + ",".join(f"127.0.0.1:{p.port}" for p in instances)
    with AsrClient(target, load_balancing="round_robin") as client:
        def call(i: int) -> pb.RecognitionResult:
            return client.recognize_bytes(audio, pb.RecognitionConfig(request_id=f"call-{i}"),
                                          timeout=180)

        expected = call(-1).text

        def served() -> list[int]:
            out = []
            for p in instances:
                try:
                    out.append(int(p.metric(
                        'asr_requests_total{code="OK",mode="unary",rpc="Recognize"}')))
                except (OSError, KeyError):
                    out.append(0)
            return out

        # round_robin picks only subchannels that are READY, which with client-side health
        # checking means their health Watch said SERVING: on a loaded machine one may take a
        # few seconds more than the others. Start the run once every instance has served.
        deadline = time.monotonic() + 60
        while min(served()) < 1 and time.monotonic() < deadline:
            call(-1)
        assert min(served()) >= 1, f"every instance reachable: {served()}"
        results, per_instance = run_with_failures(instances, call, served)
    print(f"round_robin: served per instance at drain/kill/end {per_instance}")
    check_run(results, expected, per_instance, instances)


async def test_round_robin_skips_a_replica_whose_health_is_not_serving() -> None:
    """Client-side health checking: a draining replica (NOT_SERVING) gets no calls at all,
    even though its connection stays open."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from client.library import service_config

    calls = {0: 0, 1: 0}

    class Counting(pb_grpc.RecognizerServicer):
        def __init__(self, index: int) -> None:
            self.index = index

        async def Recognize(self, request, context):  # type: ignore[no-untyped-def]
            calls[self.index] += 1
            return pb.RecognizeResponse(result=pb.RecognitionResult(text=str(self.index)))

    servers, healths, ports = [], [], []
    for i in range(2):
        server = grpc.aio.server()
        pb_grpc.add_RecognizerServicer_to_server(Counting(i), server)
        h = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(h, server)
        await h.set("asr.v1.Recognizer", health_pb2.HealthCheckResponse.SERVING)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
        healths.append(h)
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
        async with grpc.aio.insecure_channel(target, options=[
                ("grpc.service_config", service_config("round_robin")),
                ("grpc.enable_retries", 1)]) as channel:
            stub = pb_grpc.RecognizerStub(channel)
            for _ in range(20):
                await stub.Recognize(pb.RecognizeRequest(), timeout=10, wait_for_ready=True)
            assert calls[0] >= 5 and calls[1] >= 5, calls
            await healths[0].enter_graceful_shutdown()
            await asyncio.sleep(0.5)  # the Watch stream delivers NOT_SERVING
            before = dict(calls)
            for _ in range(20):
                await stub.Recognize(pb.RecognizeRequest(), timeout=10)
            assert calls[0] == before[0] and calls[1] == before[1] + 20, calls
    finally:
        for server in servers:
            await server.stop(0)

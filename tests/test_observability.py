"""The Grafana dashboard and the Prometheus rules work against the real service.

`deploy/grafana/asr-overview.json` and `deploy/prometheus/alerts.yaml` are checked with
promtool, then against a running service (two simulated GPUs) scraped by a real Prometheus
server: every metric they name must be exported, every dashboard query must return data after
some load, and every alert rule must evaluate without error.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.library import AsrClient
from scheduler.monitor import GIB
from tests.test_cli import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "asr-overview.json"
PROM_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yaml"
ALERTS_TEST = PROM_DIR / "alerts_test.yaml"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
ALERT_NAMES = {"AsrWorkerDown", "AsrWorkerCrashLooping", "AsrGpuMemoryNearFull",
               "AsrQueueTimeHigh", "AsrCpuFallbackRateHigh", "AsrErrorRateHigh",
               "AsrOomEvents"}
# a metric name followed by its optional label matchers: `asr_x{a="b"}` or `asr_x`
SELECTOR = re.compile(r"\b(asr_[a-z0-9_]+)\b(\{[^}]*\})?")
GRAFANA_VARS = {"$__rate_interval": "30s", "$__interval": "30s", "$__range": "30s",
                "$device": ".*", "$model": ".*"}


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (`make setup` installs the Debian package "
                    "`prometheus`, which carries prometheus and promtool)")
    return path


def promtool(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run([binary("promtool"), *args], input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{out}"
    return out


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard."""
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p["targets"]]


def as_promql(expr: str) -> str:
    """A dashboard expression as Prometheus gets it from Grafana with every device/model."""
    for var in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(var, GRAFANA_VARS[var])
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    return {m.group(1) for m in SELECTOR.finditer(expr)}


# ---- static checks: promtool and the dashboard's shape ----

def test_alert_rules_pass_promtool_checks_and_unit_tests() -> None:
    out = promtool("check", "rules", str(ALERTS))
    assert "7 rules found" in out
    promtool("test", "rules", str(ALERTS_TEST))
    promtool("check", "config", str(PROM_CONFIG))  # also loads alerts.yaml through rule_files
    config = PROM_CONFIG.read_text()
    assert "job_name: asr" in config and "localhost:9400" in config
    assert "alerts.yaml" in config


def test_dashboard_shape() -> None:
    d = dashboard()
    assert d["uid"] == "asr-overview"
    assert d["title"] == "ASR overview"
    assert d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert {"datasource", "device", "model"} <= set(variables)
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("device", "model"):
        v = variables[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"], name
        assert re.search(rf"label_values\(asr_\w+.*,\s*{name}\)", v["query"]), v["query"]
        assert v["datasource"]["uid"] in ("$datasource", "${datasource}"), name
    panels = d["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        title = p["title"]
        assert p["type"] in ("timeseries", "stat"), title
        assert set(p["gridPos"]) >= {"x", "y", "w", "h"}, title
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, title
        assert p["datasource"]["uid"] in ("$datasource", "${datasource}"), title
        assert p["targets"], f"panel {title!r} has no query"
        for t in p["targets"]:
            assert t["expr"].strip(), f"panel {title!r} has an empty query"
            assert t["datasource"]["uid"] in ("$datasource", "${datasource}"), title
    refs = [t["refId"] for p in panels for t in p["targets"]]
    assert all(refs)
    # the panels the monitoring issue asks for
    everything = " ".join(e for _, e in dashboard_exprs())
    for metric in ("asr_audio_seconds_total", "asr_requests_total",
                   "asr_request_latency_seconds_bucket", "asr_queue_wait_seconds_bucket",
                   "asr_queue_depth", "asr_batch_size_sum", "asr_batch_size_count",
                   "asr_batch_size_bucket", "asr_batch_inference_seconds_bucket",
                   "asr_gpu_memory_used_bytes", "asr_gpu_memory_total_bytes",
                   "asr_gpu_utilization_ratio", "asr_worker_torch_allocated_bytes",
                   "asr_worker_torch_reserved_bytes", "asr_cpu_fallbacks_total",
                   "asr_oom_events_total", "asr_cache_clears_total", "asr_worker_up",
                   "asr_worker_restarts_total", "asr_live_streams",
                   "asr_stream_final_latency_seconds_bucket", "asr_real_time_factor_bucket",
                   "asr_live_final_latency_seconds_bucket",
                   "asr_live_endpoint_latency_seconds_bucket"):
        assert metric in everything, f"no panel shows {metric}"
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, rpc) (rate(asr_request_latency" in everything


# ---- against the running service and a real Prometheus ----

def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def exported_labels(text: str) -> dict[str, set[str]]:
    """Every sample name of the exposition (with _bucket, _sum, ... suffixes) and its labels."""
    names: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            names.setdefault(s.name, set()).update(s.labels)
    return names


class Prometheus:
    """A real Prometheus server scraping the service every second, with the alert rules."""

    def __init__(self, tmp: Path, target_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {ALERTS}\n"
            "scrape_configs:\n  - job_name: asr\n    scrape_interval: 1s\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
        self.log = tmp / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary("prometheus"), f"--config.file={config}",
                 f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp)

    def logs(self) -> str:
        return self.log.read_text()[-4000:]

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as e:  # a bad query: 400 with a JSON error body
            return dict(json.loads(e.read()))

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.logs()}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout} s:\n{self.logs()}")

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)

    def wait_for(self, expr: str, want: float, timeout: float = 30) -> None:
        """Until the instant value of `expr` is `want` (the scrape after the load is in)."""
        deadline = time.monotonic() + timeout
        got: Any = None
        while time.monotonic() < deadline:
            got = self.query(expr).get("data", {}).get("result")
            if got and float(got[0]["value"][1]) == want:
                return
            time.sleep(0.25)
        raise AssertionError(f"{expr} is {got}, not {want}, after {timeout} s:\n{self.logs()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(target_port: int) -> Prometheus:
        prom = Prometheus(tmp_path, target_port)
        started.append(prom)
        return prom

    binary("prometheus")
    binary("promtool")
    yield start
    for prom in started:
        prom.stop()


def send_load(svc: Any, speech: dict[str, Path]) -> int:
    """Concurrent unary requests, a stream, a bad request, a CPU fallback and a ClearCache.
    Returns how many Recognize calls succeeded."""
    audio = speech["wav16k"].read_bytes()
    with AsrClient(svc.address) as client:
        with ThreadPoolExecutor(8) as pool:
            ok = len(list(pool.map(lambda _: client.recognize_bytes(audio), range(24))))
        client.transcribe_file(speech["flac"])  # StreamingRecognize
        with pytest.raises(grpc.RpcError):
            client.recognize_bytes(b"")  # INVALID_ARGUMENT
        for device in ("sim:0", "sim:1"):
            svc.service.monitor.set_usage(device, memory_used=int(15.8 * GIB))
        time.sleep(0.3)  # the dispatcher's monitor snapshot lives 0.25 s
        assert client.recognize_bytes(audio).fallback_reason == "gpu_memory_full"
        client.clear_cache()
    return ok + 1


def test_dashboard_and_alerts_on_live_service(start_service,  # type: ignore[no-untyped-def]
                                              prometheus_factory, models_dir: Path,
                                              speech: dict[str, Path]) -> None:
    metrics_port = free_port()
    prom = prometheus_factory(metrics_port)  # starts while the workers load their models
    svc = start_service(models_dir / "sensevoice-tiny", devices="sim:2",
                        metrics_port=metrics_port, max_queue_delay_ms=50)
    prom.wait_ready()
    prom.wait_for('up{job="asr"}', 1.0)  # scraped at least once before the load
    ok = send_load(svc, speech)

    # the exposition: promtool's lint, and every metric the dashboard and alerts name
    text = scrape_text(metrics_port)
    promtool("check", "metrics", stdin=text)
    exported = exported_labels(text)
    rules = prom.get("/api/v1/rules")
    assert rules["status"] == "success", rules
    alert_exprs = {r["name"]: r["query"] for g in rules["data"]["groups"]
                   for r in g["rules"]}
    assert set(alert_exprs) == ALERT_NAMES, f"rules loaded: {sorted(alert_exprs)}"
    exprs = dashboard_exprs()
    for where, expr in [*exprs, *alert_exprs.items()]:
        missing = metric_names(expr) - set(exported)
        assert not missing, f"{where}: {sorted(missing)} not exported by the service"
    # every selector filters on $device / $model where its metric has that label
    for title, expr in exprs:
        for m in SELECTOR.finditer(expr):
            matchers = m.group(2) or ""
            for label in ("device", "model"):
                if label in exported[m.group(1)]:
                    assert f'{label}=~"${label}"' in matchers, \
                        f"panel {title!r}: {m.group(0)} does not filter on ${label}"
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            assert metric_names(v["query"]) <= set(exported), v["query"]

    # Prometheus holds the load (the last scrape has every request), plus a few samples more
    prom.wait_for('sum(asr_requests_total{rpc="Recognize",code="OK"})', float(ok))
    prom.wait_for('sum(asr_cache_clears_total{trigger="admin"})', 3.0)
    time.sleep(2.5)

    empty = []
    for title, expr in exprs:
        promql = as_promql(expr)
        resp = prom.query(promql)
        assert resp["status"] == "success", f"panel {title!r}: {promql}\n{resp}"
        if not resp["data"]["result"]:
            empty.append(f"{title}: {promql}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    for name, expr in alert_exprs.items():
        resp = prom.query(expr)
        assert resp["status"] == "success", f"alert {name}: {expr}\n{resp}"

    # every rule evaluated, none in error
    deadline = time.monotonic() + 15
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        groups = prom.get("/api/v1/rules")["data"]["groups"]
        health = {r["name"]: f"{r['health']} {r.get('lastError', '')}".strip()
                  for g in groups for r in g["rules"]}
        if all(h == "ok" for h in health.values()):
            break
        time.sleep(0.5)
    assert all(h == "ok" for h in health.values()), health
    assert {g["name"] for g in groups} == {"asr"}

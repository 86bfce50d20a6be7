"""Config: flags, ASR_* env vars, a YAML file and defaults in one validated place.

Fast: no model and no worker; the subprocess tests start `asr-scheduler serve` only to see it
refuse to start.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scheduler.config import ConfigError, ServeConfig

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return path


def refused(argv: list[str], environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        ServeConfig.parse(argv, environ=environ)
    return info.value.problems


def test_defaults() -> None:
    cfg = ServeConfig.parse([], environ={})
    assert cfg.devices == "auto" and cfg.cpu_fallback == "overflow" and cfg.model == ["demo"]
    assert cfg.memory_floor_fraction == pytest.approx(0.10)
    assert cfg == ServeConfig()


def test_env_then_flag_precedence() -> None:
    env = {"ASR_DEVICES": "sim:4", "ASR_PORT": "6000", "ASR_MEMORY_FLOOR_FRACTION": "0.2"}
    cfg = ServeConfig.parse([], environ=env)
    assert (cfg.devices, cfg.port, cfg.memory_floor_fraction) == ("sim:4", 6000, 0.2)
    cfg = ServeConfig.parse(["--devices", "cpu", "--port", "7000"], environ=env)
    assert (cfg.devices, cfg.port) == ("cpu", 7000)


def test_flag_over_env_over_yaml_over_default(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "port: 6001\nmax-queue: 7\nmax_attempts: 2\ndtype: bf16\n")
    env = {"ASR_PORT": "6002", "ASR_MAX_QUEUE": "8", "ASR_CONFIG": str(path)}
    cfg = ServeConfig.parse(["--port", "6003"], environ=env)
    assert (cfg.port, cfg.max_queue, cfg.max_attempts, cfg.dtype) == (6003, 8, 2, "bf16")
    assert cfg.max_batch_size == 32  # in no source: the default
    cfg = ServeConfig.parse(["--config", str(path)], environ={})
    assert (cfg.port, cfg.max_queue) == (6001, 7)


def test_config_flag_beats_asr_config(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("port: 1111\n")
    b.write_text("port: 2222\n")
    assert ServeConfig.parse(["--config", str(b)], environ={"ASR_CONFIG": str(a)}).port == 2222


def test_from_args_reads_only_the_given_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_PORT", "1234")
    monkeypatch.setenv("ASR_DTYPE", "fp8")
    assert ServeConfig.parse([], environ={}).port == 50051
    assert ServeConfig().port == 50051 and ServeConfig(port=5).port == 5  # kwargs only
    assert ServeConfig.parse([], environ={"ASR_PORT": "4321"}).port == 4321


def test_env_names_are_exact_and_empty_means_unset() -> None:
    cfg = ServeConfig.parse([], environ={"asr_port": "1", "ASR_PORT": "", "ASR_SERVER": "x:1",
                                         "ASR_TOKEN": "t"})
    assert cfg.port == 50051  # lower-case names and client variables are not settings


def test_every_field_has_a_flag_an_env_twin_and_a_description() -> None:
    parser = argparse.ArgumentParser()
    ServeConfig.add_arguments(parser)
    help_text = " ".join(parser.format_help().split())
    assert "--config FILE" in help_text and "ASR_CONFIG" in help_text
    for name, info in ServeConfig.model_fields.items():
        assert "--" + name.replace("_", "-") in help_text
        assert ServeConfig.env_name(name) in help_text
        assert info.description and " ".join(info.description.split()) in help_text


def readme_default(value: object) -> str:
    if isinstance(value, list):
        return "`" + ",".join(map(str, value)) + "`"
    if value == "":
        return "(none)"
    return "`" + str(value).replace(str(Path.home()), "~") + "`"


def test_every_field_is_in_the_readme_flags_table_with_its_default() -> None:
    text = (ROOT / "README.md").read_text()
    table = text.split("## Serving", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("| ").split(" | ") for line in table.splitlines()
            if line.startswith("| `--")]
    for name, info in ServeConfig.model_fields.items():
        flag = f"`--{name.replace('_', '-')}`"
        (row,) = [r for r in rows if flag in r[0].split(", ")]
        assert row[1] == readme_default(info.get_default(call_default_factory=True)), row
    assert any(r[0] == "`--config`" for r in rows)


def test_model_is_a_list_from_every_source(tmp_path: Path) -> None:
    assert ServeConfig(model="x").model == ["x"]
    assert ServeConfig(model=tmp_path).model == [str(tmp_path)]
    assert ServeConfig.parse(["--model", "d"], environ={}).model == ["d"]
    assert ServeConfig.parse(["--model", "a=/m/a", "--model", "b=/m/b"],
                             environ={}).model == ["a=/m/a", "b=/m/b"]
    assert ServeConfig.parse([], environ={"ASR_MODEL": "a=/m/a, b=/m/b  c=/m/c"}).model == [
        "a=/m/a", "b=/m/b", "c=/m/c"]
    assert ServeConfig.parse([], environ={"ASR_MODEL": "/models/one"}).model == ["/models/one"]
    path = write_yaml(tmp_path, "model: /m/only\n")
    assert ServeConfig.parse(["--config", str(path)], environ={}).model == ["/m/only"]
    path = write_yaml(tmp_path, "model: [a=/m/a, b=/m/b]\n")
    assert ServeConfig.parse(["--config", str(path)], environ={}).model == ["a=/m/a", "b=/m/b"]
    assert ServeConfig.parse(["--model", "f"], environ={"ASR_MODEL": "e"}).model == ["f"]
    refused(["--model", "a", "--model", " "], {})
    refused([], {"ASR_MODEL": " , "})


# Each defect of issue 9 and each rule: (setting, a refused value, words of the rule).
BAD = [
    ("dtype", "fp8", "'fp32', 'bf16' or 'fp16'"),
    ("exact_argmax", "maybe", "'on' or 'off'"),
    ("max_attempts", "0", "greater than or equal to 1"),
    ("max_unary_bytes", "-1", "greater than 0"),
    ("max_unary_bytes", "2000000000", "less than or equal to"),  # gRPC's int32 limit
    ("max_stream_bytes", "0", "greater than 0"),
    ("heartbeat_interval_s", "0", "greater than 0"),
    ("heartbeat_timeout_s", "0", "greater than 0"),
    ("log_format", "xml", "'text' or 'json'"),
    ("log_level", "loud", "logging level"),
    ("port", "65536", "less than or equal to 65535"),
    ("metrics_port", "-1", "greater than or equal to 0"),
    ("port", "abc", "valid integer"),
    ("cpu_fallback", "sometimes", "'never', 'overflow' or 'always-available'"),
    ("workers_per_device", "0", "greater than or equal to 1"),
    ("memory_floor_fraction", "1.5", "less than 1"),
    ("memory_floor_fraction", "nan", "finite number"),
    ("max_queue", "0", "greater than or equal to 1"),
    ("queue_timeout_s", "0", "greater than 0"),
    ("max_batch_size", "0", "greater than or equal to 1"),
    ("cpu_max_batch_size", "0", "greater than or equal to 1"),
    ("max_batch_audio_s", "-3", "greater than 0"),
    ("max_queue_delay_ms", "-1", "greater than or equal to 0"),
    ("cache_clear_every", "-1", "greater than or equal to 0"),
    ("max_segment_ms", "10", "greater than or equal to 1000"),
    ("worker_start_timeout_s", "0", "greater than 0"),
    ("sim_memory_gib", "0", "greater than 0"),
    ("devices", "gpu", "sim:N"),
    ("vad_workers", "-2", "greater than or equal to 0"),
    ("vad_device", "cuda:0", "'cpu' or 'gpu'"),
    ("vad_fbank", "numpy", "'torch' or 'kaldi'"),
    ("live_fbank", "numpy", "'torch' or 'kaldi'"),
    ("live_end_silence_ms", "100", "expected 0 (the VAD's own schedule) or 200-6000"),
    ("live_end_silence_ms", "7000", "less than or equal to 6000"),
    ("live_input_linger_ms", "60", "less than or equal to 50"),
    ("live_tick_ms", "200", "less than or equal to 100"),
    ("live_tick_ms", "-5", "greater than or equal to 0"),
    ("live_input_linger_ms", "-1", "greater than or equal to 0"),
]


@pytest.mark.parametrize(("name", "value", "rule"), BAD)
def test_a_bad_value_is_refused_naming_the_setting(name: str, value: str, rule: str) -> None:
    (line,) = refused([], {ServeConfig.env_name(name): value})
    assert line.startswith(f"{ServeConfig.env_name(name)}={value}: ") and rule in line


@pytest.mark.parametrize(("name", "value", "rule"), BAD)
def test_the_same_rule_for_flag_env_and_yaml(tmp_path: Path, name: str, value: str,
                                             rule: str) -> None:
    flag = "--" + name.replace("_", "-")
    path = write_yaml(tmp_path, f"{name}: {value}\n")
    lines = [refused([flag, value], {}), refused([], {ServeConfig.env_name(name): value}),
             refused(["--config", str(path)], {})]
    assert lines[0] == [f"{flag} {value}: " + lines[1][0].split(": ", 1)[1]]
    assert lines[2][0].startswith(f"{name}: ") and str(path) in lines[2][0]
    assert {line[0].rsplit(": ", 1)[1] for line in lines} == {lines[1][0].rsplit(": ", 1)[1]}
    assert rule in lines[2][0]


def test_log_level_is_any_case_of_a_logging_name() -> None:
    assert ServeConfig.parse([], environ={"ASR_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert ServeConfig(log_level="Warning").log_level == "WARNING"


@pytest.mark.parametrize(("argv", "env", "names"), [
    (["--port", "9400"], {}, ["--port 9400", "metrics_port=9400 (default)"]),
    ([], {"ASR_PORT": "7000", "ASR_METRICS_PORT": "7000"},
     ["ASR_PORT=7000", "ASR_METRICS_PORT=7000"]),
    ([], {"ASR_HEARTBEAT_TIMEOUT_S": "1"},
     ["ASR_HEARTBEAT_TIMEOUT_S=1", "heartbeat_interval_s=2.0 (default)"]),
    (["--heartbeat-interval-s", "5", "--heartbeat-timeout-s", "5"], {},
     ["--heartbeat-timeout-s 5", "--heartbeat-interval-s 5"]),
    (["--tls-cert", "c.pem"], {}, ["--tls-cert c.pem", "tls_key='' (default)"]),
    ([], {"ASR_TLS_CLIENT_CA": "ca.pem"}, ["ASR_TLS_CLIENT_CA=ca.pem"]),
])
def test_settings_that_disagree_are_named_together(argv: list[str], env: dict[str, str],
                                                   names: list[str]) -> None:
    (line,) = refused(argv, env)
    assert all(n in line for n in names), line


def test_equal_ports_are_fine_when_metrics_are_off() -> None:
    cfg = ServeConfig.parse(["--port", "0", "--metrics-port", "0"], environ={})
    assert (cfg.port, cfg.metrics_port) == (0, 0)


def test_every_bad_setting_gets_its_own_line() -> None:
    lines = refused(["--max-attempts", "0"], {"ASR_DTYPE": "fp8", "ASR_LOG_FORMAT": "xml"})
    assert sorted(line.split(":")[0] for line in lines) == [
        "--max-attempts 0", "ASR_DTYPE=fp8", "ASR_LOG_FORMAT=xml"]


def test_assignment_is_checked_too() -> None:
    cfg = ServeConfig()
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        cfg.max_attempts = 0


def test_yaml_unknown_keys_are_named(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "port: 1\nmax_atempts: 3\nbogus: 1\n")
    lines = refused(["--config", str(path)], {})
    assert len(lines) == 2 and all(str(path) in line for line in lines)
    assert "max_atempts: 3" in lines[0] and "did you mean max_attempts" in lines[0]
    assert lines[1].startswith("bogus: 1") and "unknown setting" in lines[1]
    path = write_yaml(tmp_path, "_env_file: x\n")  # no way into BaseSettings' own arguments
    assert "unknown setting" in refused(["--config", str(path)], {})[0]


@pytest.mark.parametrize(("text", "words"), [
    ("max-attempts: 2\nmax_attempts: 3\n", "given twice"),
    ("- port: 1\n", "expected a mapping"),
    ("port: [1\n", "cannot read it as YAML"),
])
def test_yaml_file_problems(tmp_path: Path, text: str, words: str) -> None:
    path = write_yaml(tmp_path, text)
    (line,) = refused([], {"ASR_CONFIG": str(path)})
    assert words in line and str(path) in line


def test_missing_config_file_names_where_it_was_given(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert refused(["--config", str(missing)], {}) == [f"--config {missing}: no such file"]
    assert refused([], {"ASR_CONFIG": str(missing)}) == [f"ASR_CONFIG={missing}: no such file"]


def test_empty_yaml_file_is_all_defaults(tmp_path: Path) -> None:
    assert ServeConfig.parse(["--config", str(write_yaml(tmp_path, ""))],
                             environ={}) == ServeConfig()


def run_serve(args: list[str], env: dict[str, str],
              timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ASR_")}
    start = time.monotonic()
    out = subprocess.run([str(BIN / "asr-scheduler"), "serve", *args], capture_output=True,
                         text=True, timeout=timeout, env={**clean, **env})
    return out, time.monotonic() - start


@pytest.mark.parametrize(("env", "args", "named"), [
    ({"ASR_DTYPE": "fp8"}, [], "ASR_DTYPE=fp8"),
    ({"ASR_MAX_ATTEMPTS": "0"}, [], "ASR_MAX_ATTEMPTS=0"),
    ({"ASR_MAX_UNARY_BYTES": "-1"}, [], "ASR_MAX_UNARY_BYTES=-1"),
    ({"ASR_HEARTBEAT_INTERVAL_S": "0", "ASR_HEARTBEAT_TIMEOUT_S": "0"}, [],
     "ASR_HEARTBEAT_INTERVAL_S=0"),
    ({"ASR_LOG_FORMAT": "xml"}, [], "ASR_LOG_FORMAT=xml"),
    ({"ASR_LOG_LEVEL": "loud"}, [], "ASR_LOG_LEVEL=loud"),
    ({}, ["--port", "7001", "--metrics-port", "7001"], "--port 7001, --metrics-port 7001"),
])
def test_serve_with_a_bad_setting_exits_2_at_once(env: dict[str, str], args: list[str],
                                                  named: str) -> None:
    out, took = run_serve(["--devices", "cpu", *args], env)
    assert out.returncode == 2, out.stderr
    assert named in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("asr-scheduler serve: invalid setting: ")
    assert took < 60  # no model loaded, no worker started


@pytest.mark.parametrize("which", ["port", "metrics_port"])
def test_serve_on_a_port_in_use_exits_2_naming_it(tmp_path: Path, which: str) -> None:
    """A port that another process holds: the bind fails before any worker starts."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.yaml").write_text("model: SenseVoiceSmall\n")
    (model / "model.pt").write_bytes(b"")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        ports = {"port": "0", "metrics_port": "0", which: str(busy)}
        out, _ = run_serve(["--model", str(model), "--devices", "cpu", "--host", "127.0.0.1",
                            "--vad-model", "none", "--port", ports["port"],
                            "--metrics-port", ports["metrics_port"]], {})
    assert out.returncode == 2, out.stderr
    assert f"--{which.replace('_', '-')} {busy}" in out.stderr and "cannot listen" in out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def test_serve_with_a_bad_config_file_names_key_and_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "devices: cpu\ndtype: fp8\nmax_atempts: 2\n")
    out, _ = run_serve([], {"ASR_CONFIG": str(path)})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"max_atempts: 2 (in {path}): unknown setting" in out.stderr, out.stderr
    assert f"dtype: fp8 (in {path}): Input should be" in out.stderr, out.stderr
    assert len(out.stderr.splitlines()) == 2, out.stderr

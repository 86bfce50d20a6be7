"""Config: flags, ASR_* env vars and defaults in one place."""

from __future__ import annotations

import dataclasses

import pytest

from scheduler.config import ServeConfig


def test_defaults() -> None:
    cfg = ServeConfig.parse([], environ={})
    assert cfg.devices == "auto" and cfg.cpu_fallback == "overflow" and cfg.model == "demo"
    assert cfg.memory_floor_fraction == pytest.approx(0.10)


def test_env_then_flag_precedence() -> None:
    env = {"ASR_DEVICES": "sim:4", "ASR_PORT": "6000", "ASR_MEMORY_FLOOR_FRACTION": "0.2"}
    cfg = ServeConfig.parse([], environ=env)
    assert (cfg.devices, cfg.port, cfg.memory_floor_fraction) == ("sim:4", 6000, 0.2)
    cfg = ServeConfig.parse(["--devices", "cpu", "--port", "7000"], environ=env)
    assert (cfg.devices, cfg.port) == ("cpu", 7000)


def test_every_field_has_a_flag_and_env_twin() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    ServeConfig.add_arguments(parser)
    help_text = parser.format_help()
    for f in dataclasses.fields(ServeConfig):
        assert "--" + f.name.replace("_", "-") in help_text
        assert ServeConfig.env_name(f.name) in help_text


@pytest.mark.parametrize("env", [{"ASR_PORT": "abc"}, {"ASR_CPU_FALLBACK": "sometimes"},
                                 {"ASR_WORKERS_PER_DEVICE": "0"},
                                 {"ASR_MEMORY_FLOOR_FRACTION": "1.5"}])
def test_bad_values_name_the_setting(env: dict[str, str]) -> None:
    with pytest.raises(ValueError) as info:
        ServeConfig.parse([], environ=env)
    key = next(iter(env)).removeprefix("ASR_").lower()
    assert key in str(info.value).lower()

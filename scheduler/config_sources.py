"""Where each `serve` setting comes from, and errors that name a refused one as the user wrote it.

Sources, highest first: a flag (``--max-attempts 3``), an ``ASR_<NAME>`` variable (read with
pydantic-settings' env source, but from the mapping given, not ``os.environ``), a key of the YAML
file named by ``--config FILE`` or ``ASR_CONFIG`` (the field name, ``max_attempts``; the flag
spelling ``max-attempts`` works too), then the default. Values stay raw (strings from flags and
env, YAML's own types) so that the settings model checks each the same way. A refused value
comes back as a `ConfigError` with one line per setting: ``ASR_MAX_ATTEMPTS=0: Input should be
greater than or equal to 1``.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource

if TYPE_CHECKING:
    from scheduler.config import ServeConfig

CONFIG_ENV = "ASR_CONFIG"
_LIST_SEPARATORS = re.compile(r"[\s,]+")


class ConfigError(ValueError):
    """Refused settings: `problems` holds one line per setting, naming it as it was given."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Given:
    """One setting's raw value and how the user wrote it (``--port 80``, ``ASR_PORT=80``)."""

    value: Any
    label: str


def _is_list(info: FieldInfo) -> bool:
    return get_origin(info.annotation) is list


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


class MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' env source over a given mapping instead of the process environment.

    Names are exactly ``ASR_<NAME>`` in capitals; empty values count as unset; a list setting
    (``ASR_MODEL``) takes entries separated by commas or whitespace.
    """

    def __init__(self, settings_cls: type[ServeConfig], environ: Mapping[str, str]) -> None:
        self._environ = {k: v for k, v in environ.items()
                         if k.startswith("ASR_") and k == k.upper() and v != ""}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items()}

    def prepare_field_value(self, field_name: str, field: FieldInfo, value: Any,
                            value_is_complex: bool) -> Any:
        if isinstance(value, str) and _is_list(field):
            return [v for v in _LIST_SEPARATORS.split(value) if v]
        return super().prepare_field_value(field_name, field, value, value_is_complex)


def add_arguments(cls: type[ServeConfig], parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and one flag per field, with its description, env twin and default."""
    parser.add_argument("--config", metavar="FILE", default=None, help=(
        "YAML file with any of the settings below, keyed by field name (max_attempts: 3; "
        f"max-attempts also works); flags and ASR_* variables override it (env {CONFIG_ENV})"))
    for name, info in cls.model_fields.items():
        choices = get_args(info.annotation) if get_origin(info.annotation) is Literal else ()
        default = info.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else repr(default)
        text = f"{info.description} (env {cls.env_name(name)}; default {shown})"
        parser.add_argument(cls.flag_name(name), dest=name, default=None,
                            action="append" if _is_list(info) else "store",
                            metavar="{" + ",".join(choices) + "}" if choices else None,
                            help=text.replace("%", "%%"))


def from_flags(cls: type[ServeConfig], args: argparse.Namespace | None) -> dict[str, Given]:
    out: dict[str, Given] = {}
    for name in cls.model_fields:
        value = getattr(args, name, None) if args is not None else None
        if value is not None:
            flag = cls.flag_name(name)
            shown = (" ".join(f"{flag} {v}" for v in value) if isinstance(value, list)
                     else f"{flag} {value}")
            out[name] = Given(value, shown)
    return out


def from_env(cls: type[ServeConfig], environ: Mapping[str, str]) -> dict[str, Given]:
    values = MappingEnvSource(cls, environ)()
    return {name: Given(value, f"{cls.env_name(name)}={environ[cls.env_name(name)]}")
            for name, value in values.items()}


def from_yaml(cls: type[ServeConfig], path: Path,
              origin: str) -> tuple[dict[str, Given], list[str]]:
    """The settings in a YAML file, and a line for each unknown or repeated key."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{origin}: no such file"]) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError([f"{origin}: cannot read it as YAML: {exc}"]) from None
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        raise ConfigError([f"{origin}: expected a mapping of setting: value, got "
                           f"{type(data).__name__}"])
    out: dict[str, Given] = {}
    problems: list[str] = []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        where = f"{key}: {_show(value)} (in {path})"
        if name not in cls.model_fields:
            near = difflib.get_close_matches(name, list(cls.model_fields), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            problems.append(f"{where}: unknown setting{hint}")
        elif name in out:
            problems.append(f"{where}: {name} is given twice")
        else:
            out[name] = Given(value, where)
    return out, problems


def _label(cls: type[ServeConfig], name: str, given: Mapping[str, Given]) -> str:
    if name in given:
        return given[name].label
    info = cls.model_fields.get(name)
    if info is None:
        return name
    default = info.get_default(call_default_factory=True)
    return f"{name}={_show(default) if isinstance(default, list) else repr(default)} (default)"


def describe(cls: type[ServeConfig], exc: ValidationError,
             given: Mapping[str, Given]) -> list[str]:
    """One line per error: the setting(s) as the user wrote them, then the rule broken."""
    lines = []
    for err in exc.errors():
        rule = err["msg"].removeprefix("Value error, ")
        names = (err.get("ctx") or {}).get("fields") or err["loc"][:1]
        lines.append(", ".join(_label(cls, str(n), given) for n in names) + f": {rule}")
    return lines


def build_config(cls: type[ServeConfig], args: argparse.Namespace | None,
                 environ: Mapping[str, str]) -> ServeConfig:
    """Merge file < env < flags by setting, then validate once."""
    given: dict[str, Given] = {}
    problems: list[str] = []
    file = getattr(args, "config", None) if args is not None else None
    origin = f"--config {file}"
    if not file and environ.get(CONFIG_ENV):
        file, origin = environ[CONFIG_ENV], f"{CONFIG_ENV}={environ[CONFIG_ENV]}"
    if file:
        from_file, problems = from_yaml(cls, Path(file), origin)
        given.update(from_file)
    given.update(from_env(cls, environ))
    given.update(from_flags(cls, args))
    try:
        config = cls(**{name: g.value for name, g in given.items()})
    except ValidationError as exc:
        problems += describe(cls, exc, given)
    if problems:
        raise ConfigError(problems)
    return config

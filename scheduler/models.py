"""Resolving `--model` to a local directory before any worker starts.

FunASR treats any path that does not exist as a hub id and fails late and confusingly where the
hub is unreachable, so the scheduler checks first: a local directory must hold a FunASR model
(`config.yaml` + `model.pt`); `demo` builds the offline sensevoice-tiny model once into the
cache; anything else is a hub id, which needs the hub to answer.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEMO = "demo"
DEMO_MODEL = "sensevoice-tiny"
VAD_MODEL = "fsmn-vad"
HUB_HOSTS = (("www.modelscope.cn", 443), ("huggingface.co", 443))


class ModelError(Exception):
    """`--model` cannot be served; the message says why and what to pass instead."""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelSpec:
    """One `--model` value: `DIR` (named after the directory) or `NAME=DIR`, either with an
    optional `?engine=ENGINE` suffix (e.g. `sv=/models/sv?engine=generate`)."""

    source: str  # a local directory, a hub id, or "demo"
    name: str = ""  # "" until resolved: then the directory's name
    engine: str = ""  # "" : the --engine setting


_ENGINE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _split_engine(part: str) -> tuple[str, str]:
    """`X?engine=E` -> (X, E); `X` -> (X, "")."""
    body, sep, query = part.partition("?")
    if not sep:
        return part, ""
    key, eq, engine = query.partition("=")
    if key != "engine" or not eq or not _ENGINE.match(engine):
        raise ModelError(f"--model {part!r}: the only option after '?' is engine=ENGINE "
                         "(e.g. NAME=DIR?engine=direct)")
    return body, engine


def parse_model_specs(values: Sequence[str] | str) -> list[ModelSpec]:
    """`--model` values (one string may hold several, comma- or space-separated)."""
    items = [values] if isinstance(values, str) else list(values)
    parts = [p for item in items for p in re.split(r"[,\s]+", item.strip()) if p]
    if not parts:
        raise ModelError("--model: no model given")
    specs = []
    for part in parts:
        body, engine = _split_engine(part)
        name, sep, source = body.partition("=")
        if not sep:
            specs.append(ModelSpec(body, engine=engine))
            continue
        if not _NAME.match(name) or not source:
            raise ModelError(f"--model {part!r}: expected NAME=DIR with a NAME of letters, "
                             "digits, '.', '_' or '-' (at most 64)")
        specs.append(ModelSpec(source, name, engine))
    return specs


def name_models(specs: list[ModelSpec], paths: list[str]) -> list[ModelSpec]:
    """Give each spec its name (the directory's own name when none was given); names are
    unique."""
    named = [ModelSpec(path, spec.name or Path(path).name or path, spec.engine)
             for spec, path in zip(specs, paths, strict=True)]
    seen: set[str] = set()
    for spec in named:
        if spec.name in seen:
            raise ModelError(f"--model: two models are named {spec.name!r}; name them with "
                             "NAME=DIR")
        seen.add(spec.name)
    return named


def check_model_dir(path: Path) -> Path:
    missing = [n for n in ("config.yaml", "model.pt") if not (path / n).is_file()]
    if missing:
        raise ModelError(f"model directory {path} lacks {', '.join(missing)}: not a FunASR "
                         "model directory (build test models with 'asr-scheduler make-models "
                         "DIR')")
    return path.resolve()


def run_model_builder(out_dir: Path, names: list[str] | None = None, build_all: bool = False,
                      force: bool = False) -> int:
    """Build local model directories in a child process (torch stays out of the scheduler)."""
    cmd = [sys.executable, "-m", "gpu_worker.make_models", str(out_dir)]
    cmd += (["--only", *names] if names else []) + (["--all"] if build_all else [])
    cmd += ["--force"] if force else []
    return subprocess.run(cmd, check=False).returncode


def build_models(out_dir: Path, names: list[str]) -> None:
    returncode = run_model_builder(out_dir, names)
    if returncode != 0:
        raise ModelError(f"building {', '.join(names)} into {out_dir} failed "
                         f"(exit {returncode})")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    for host, port in HUB_HOSTS:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return True
        except OSError:
            continue
    return False


def resolve_vad_model(vad_model: str, cache_dir: Path) -> str | None:
    """The FSMN-VAD directory, or None when segmentation is off (or cannot be had)."""
    if vad_model == "none":
        return None
    if vad_model != "auto":
        return str(check_model_dir(Path(vad_model).expanduser()))
    vad = cache_dir / "models" / VAD_MODEL
    if not (vad / ".complete").exists():
        try:
            build_models(vad.parent, [VAD_MODEL])
        except ModelError as exc:
            log.warning("no VAD model (%s): long audio will not be segmented; pass "
                        "--vad-model DIR", exc)
            return None
    return str(check_model_dir(vad))


def resolve_model(model: str, cache_dir: Path) -> str:
    """A local model directory for `model`, building or checking as needed."""
    if model == DEMO:
        demo = cache_dir / "models" / DEMO_MODEL
        if not (demo / ".complete").exists():
            log.info("building the offline demo model %s into %s (once)", DEMO_MODEL, demo)
            build_models(demo.parent, [DEMO_MODEL])
        return str(check_model_dir(demo))
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"--model {model}: is a file; pass a FunASR model directory")
        return str(check_model_dir(path))
    if model.startswith((".", "/", "~")):
        raise ModelError(f"--model {model}: no such directory")
    if not _hub_reachable():
        raise ModelError(
            f"--model {model!r} is not a local directory, so it would be downloaded from the "
            "model hub (ModelScope / Hugging Face), which this machine cannot reach. Download "
            "the model elsewhere and pass its directory (--model /path/to/model_dir, or "
            "ASR_MODEL), or try the offline demo with --model demo.")
    return model

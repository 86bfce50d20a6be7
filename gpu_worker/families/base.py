"""A model family: everything per-family the engines need, and the registry of families by
FunASR model class.

A family says what its models can do (languages, hotwords, ITN, streaming, timestamps,
padding invariance), which engines can run it, and how FunASR's `generate` is called for it and
its raw text post-processed. Each family lives in its own module and registers itself with
`register_family`; nothing else in the worker names model classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpu_worker.engines.base import StartupError, Utterance
from protos.common.capabilities import RECOGNIZE, Capabilities
from protos.common.worker_config import WorkerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """Rules of one model family; subclasses override the methods that differ."""

    name: str  # e.g. "sensevoice"; reported in Capabilities.family
    model_classes: tuple[str, ...]  # FunASR model classes (config.yaml `model:`) it covers
    engines: tuple[str, ...] = ("generate",)  # engines that can run it
    kind: str = RECOGNIZE
    languages: tuple[str, ...] = ()  # language hints accepted besides "auto"
    hotwords: bool = False
    itn: bool = False
    streaming: bool = False
    timestamps: bool = False
    # A clip's text does not depend on the other clips' lengths in its batch (checked by
    # tests/test_batching.py); otherwise the batcher only batches clips of equal length.
    padding_invariant: bool = False

    def capabilities(self, engine: str) -> Capabilities:
        return Capabilities(kind=self.kind, family=self.name, engine=engine,
                            languages=self.languages, hotwords=self.hotwords, itn=self.itn,
                            streaming=self.streaming, timestamps=self.timestamps,
                            padding_invariant=self.padding_invariant)

    def model_kwargs(self, cfg: WorkerConfig) -> dict[str, Any]:
        """Extra keyword arguments for FunASR's `AutoModel` when loading this family."""
        return {}

    def generate_kwargs(self, first: Utterance, batch_size: int) -> dict[str, Any]:
        """Keyword arguments of `generate` for a batch whose members share `first.options`."""
        kwargs: dict[str, Any] = {"batch_size": batch_size, "language": first.language,
                                  "use_itn": first.use_itn}
        if first.hotwords and self.hotwords:
            kwargs["hotword"] = " ".join(first.hotwords)
        return kwargs

    def generate(self, model: Any, audios: Sequence[np.ndarray],
                 kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        """FunASR output items, one per clip in order (list inputs may share one key)."""
        return list(model.generate(input=list(audios), **kwargs))

    def loaded(self, model: Any) -> None:
        """Called once with the freshly loaded FunASR `AutoModel`, before any `generate`."""

    def postprocess(self, raw: str) -> tuple[str, str]:
        """The model's raw text as (text, language); "" when the model reports none."""
        return raw, ""


_BY_CLASS: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Register `family` for each of its model classes (a later registration wins)."""
    for cls in family.model_classes:
        if cls in _BY_CLASS and _BY_CLASS[cls] is not family:
            log.info("model class %s: family %s replaces %s", cls, family.name,
                     _BY_CLASS[cls].name)
        _BY_CLASS[cls] = family
    return family


def known_model_classes() -> list[str]:
    return sorted(_BY_CLASS)


def family_for_class(model_class: str) -> Family:
    family = _BY_CLASS.get(model_class)
    if family is None:
        raise StartupError(f"no model family for FunASR model class {model_class!r}; known "
                           f"classes: {', '.join(known_model_classes())} (a new family is one "
                           "module in gpu_worker/families/ calling register_family)")
    return family


def model_class_of(model_dir: str) -> str:
    """The FunASR model class a local model directory declares (config.yaml `model:`)."""
    import yaml

    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    config = path / "config.yaml"
    if not config.is_file():
        raise StartupError(f"model directory {model_dir} has no config.yaml")
    data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    model_class = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model_class, str) or not model_class:
        raise StartupError(f"{config} does not name a model class (`model:`)")
    return model_class


def family_for(model_dir: str, engine: str) -> Family:
    """The family of the model in `model_dir`, checked to be runnable by `engine`."""
    family = family_for_class(model_class_of(model_dir))
    if engine not in family.engines:
        raise StartupError(f"engine {engine!r} cannot run model family {family.name!r} "
                           f"({model_dir}); engines for it: {', '.join(family.engines)}")
    return family

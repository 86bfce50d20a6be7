"""The models a service serves: selecting one by name, and checking a request's options
against what the model's workers said they support (their capabilities, from the ready
handshake). No model family knowledge lives in the scheduler: only capabilities."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.errors import InvalidRequest
from scheduler.workers import WorkerHandle
from scheduler.workers_client import Capabilities

MAX_ECHO = 64  # longest option value quoted back in an error message


def _quote(value: str) -> str:
    return repr(value if len(value) <= MAX_ECHO else value[:MAX_ECHO] + "...")


class UnknownModel(InvalidRequest):
    """The request names a model this service does not serve."""


class UnsupportedOption(InvalidRequest):
    """The chosen model lacks an option the request asks for."""


@dataclass
class ServedModel:
    """One model of the service and its pool of recognition workers."""

    name: str
    path: str
    workers: list[WorkerHandle]
    is_default: bool = False

    @property
    def capabilities(self) -> Capabilities | None:
        """As reported by its workers (None until one has reported)."""
        for w in self.workers:
            if w.capabilities is not None:
                return w.capabilities
        return None

    @property
    def ready_workers(self) -> int:
        return sum(1 for w in self.workers if w.ready)


class ModelCatalog:
    def __init__(self, models: list[ServedModel]) -> None:
        if not models:
            raise ValueError("a service serves at least one model")
        self.models = models
        models[0].is_default = True
        self._by_name = {m.name: m for m in models}

    @property
    def default(self) -> ServedModel:
        return self.models[0]

    def get(self, name: str) -> ServedModel:
        """The model a request names ("" for the default)."""
        if not name:
            return self.default
        model = self._by_name.get(name)
        if model is None:
            raise UnknownModel(f"model {_quote(name)} is not served here; served models: "
                               f"{', '.join(self._by_name)}")
        return model

    def check(self, model: ServedModel, language: str) -> None:
        """Refuse options the model lacks (once its workers have said what they support)."""
        caps = model.capabilities
        if caps is None or language in ("", "auto"):
            return
        if language not in caps.languages:
            family = f" ({caps.family})" if caps.family else ""
            if not caps.languages:
                raise UnsupportedOption(
                    f"model {model.name!r}{family} takes no language hint; language "
                    f"{_quote(language)} cannot be honoured: send 'auto' or none")
            raise UnsupportedOption(
                f"language {_quote(language)} is not supported by model {model.name!r}{family}; "
                f"use 'auto' or one of {', '.join(caps.languages)}")

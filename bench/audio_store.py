"""Synthesized audio, recorded once for machines that cannot synthesize it.

Tests and benchmarks make their speech with espeak-ng, sox and ffmpeg. A lent GPU machine has
none of them (and nothing can be installed there), so `bench/gpu_kit.py` runs the same recipes
here with `ASR_AUDIO_STORE=DIR` set: every file made is also kept in DIR under a hash of its
recipe (what was asked for: the text, rate, channels, source bytes...). With the variable set, a
recipe already in DIR is restored from there instead of being made again. Unset (the default),
nothing changes: every file is made with the tools.

WAV files are kept as FLAC (lossless, about a third of the size) and written back as 16-bit WAV
with the same samples; other formats are kept byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import soundfile as sf

STORE_ENV = "ASR_AUDIO_STORE"


class NotInStore(RuntimeError):
    """The recipe is not in the store and the tools to make it are missing here."""


def _entry(store: Path, recipe: str, suffix: str) -> Path:
    digest = hashlib.sha256(recipe.encode("utf-8")).hexdigest()[:32]
    return store / (digest + (".flac" if suffix == ".wav" else suffix))


def _keep(made: Path, entry: Path) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    if entry.suffix == ".flac" and made.suffix.lower() == ".wav":
        data, rate = sf.read(str(made), dtype="int16", always_2d=True)
        sf.write(str(tmp), data, rate, format="FLAC", subtype="PCM_16")
    else:
        shutil.copyfile(made, tmp)
    os.replace(tmp, entry)


def _restore(entry: Path, out: Path) -> None:
    if entry.suffix == ".flac" and out.suffix.lower() == ".wav":
        data, rate = sf.read(str(entry), dtype="int16", always_2d=True)
        sf.write(str(out), data, rate, format="WAV", subtype="PCM_16")
    else:
        shutil.copyfile(entry, out)


def synthesized(out: Path, recipe: str, make: Callable[[Path], object]) -> Path:
    """Write `out` with `make(out)`; with `$ASR_AUDIO_STORE` set, restore it from the store
    when `recipe` is there, else make it and keep a copy. `recipe` must name everything the
    file depends on."""
    out = Path(out)
    store = os.environ.get(STORE_ENV)
    if not store:
        make(out)
        return out
    entry = _entry(Path(store), recipe, out.suffix.lower())
    out.parent.mkdir(parents=True, exist_ok=True)
    if entry.is_file():
        _restore(entry, out)
        return out
    try:
        make(out)
    except FileNotFoundError as exc:  # espeak-ng, sox or ffmpeg missing on this machine
        raise NotInStore(
            f"cannot make {out.name} ({exc.filename or exc} not found) and its recipe is not "
            f"in ${STORE_ENV}={store}; record the store where the tools exist "
            f"(python bench/gpu_kit.py). Recipe: {recipe[:200]!r}") from exc
    _keep(out, entry)
    return out


def file_digest(path: Path) -> str:
    """A recipe part for a file made from another file: its contents' hash."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

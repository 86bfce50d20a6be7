"""Local Fun-ASR-Nano model directories (FunASR class ``FunASRNano``) with random weights.

Two sizes, both of the real architecture (SenseVoice-style audio encoder, Transformer adaptor,
Qwen3 causal LM decoder):

- ``funasr-nano-tiny``: a few million parameters, for tests. Its byte-level BPE tokenizer is
  trained offline with ``tokenizers`` on a few prompt strings (the chat tokens and the Chinese
  prompt words), and its weights are scaled so that different clips give different text.
- ``funasr-nano``: the Fun-ASR-Nano-2512 sizes (~830M parameters), for benchmarks; built on
  demand (``--only funasr-nano`` or ``--all``). Its tokenizer is the same small one, so most of
  the 151,936 ids it can emit decode to nothing: the text is meaningless, the work is real.

The directory holds ``config.yaml``, ``model.pt`` (plain state dict), ``configuration.json``
(``file_path_metas`` so that FunASR resolves ``Qwen3-0.6B`` against the model directory, not
the current directory) and ``Qwen3-0.6B/`` (a transformers Qwen3 config and the tokenizer; the
folder name is the one FunASR's vLLM path expects). Random weights never emit end-of-sequence,
so decoding always runs to the token cap: set ``max_length`` when calling ``generate``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LLM_DIR = "Qwen3-0.6B"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# What the prompt is made of (FunASRNano.get_prompt / data_load_speech), so the tokenizer
# covers it with few bytes left over.
_CORPUS = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "<|im_start|>user\n语音转写：<|im_end|>\n<|im_start|>assistant\n",
    "语音转写成中文：语音转写成英文：语音转写成日文：，不进行文本规整",
    "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。",
    "**上下文信息：**热词列表：[阿里巴巴, 通义, FunASR]",
    "hello world this is a test of the speech recognition service",
    "the quick brown fox jumps over the lazy dog 0123456789",
    "今天天气很好我们一起去公园散步吧欢迎使用语音识别服务",
)

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "encoder": {"output_size": 128, "attention_heads": 4, "linear_units": 256,
                    "num_blocks": 4, "tp_blocks": 1},
        "adaptor": {"ffn_dim": 256, "n_layer": 2, "attention_heads": 4},
        "llm": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64},
        "vocab_size": 512, "weight_scale": 5.0,
    },
    "full": {  # Fun-ASR-Nano-2512
        "encoder": {"output_size": 512, "attention_heads": 4, "linear_units": 2048,
                    "num_blocks": 50, "tp_blocks": 20},
        "adaptor": {"ffn_dim": 2048, "n_layer": 2, "attention_heads": 8},
        "llm": {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128},
        "vocab_size": 151936, "weight_scale": 1.0,
    },
}


def nano_config(size: str) -> dict[str, Any]:
    """The config.yaml mapping of a FunASRNano model of `size` ("tiny" or "full")."""
    s = SIZES[size]
    enc = {"dropout_rate": 0.1, "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1,
           "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder",
           "normalize_before": True, "kernel_size": 11, "sanm_shfit": 0,
           "selfattention_layer_type": "sanm", "freeze": True, **s["encoder"]}
    adaptor = {"downsample_rate": 1, "use_low_frame_rate": False, "encoder_dim":
               s["encoder"]["output_size"], "llm_dim": s["llm"]["hidden_size"],
               "freeze": True, **s["adaptor"]}
    return {
        "model": "FunASRNano",
        "model_conf": {"lsm_weight": 0.1, "length_normalized_loss": True},
        "input_size": 560,
        "audio_encoder": "SenseVoiceEncoderSmall",
        "audio_encoder_conf": enc,
        "audio_adaptor": "Transformer",
        "audio_adaptor_conf": adaptor,
        "llm": "Qwen3-0.6b",
        "llm_conf": {"hub": "hf", "freeze": True, "llm_dtype": "fp32",
                     "init_param_path": LLM_DIR, "use_lora": False},
        "tokenizer": "HuggingfaceTokenizer",
        "tokenizer_conf": {"init_param_path": LLM_DIR},
        "frontend": "WavFrontend",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                          "frame_shift": 10, "lfr_m": 7, "lfr_n": 6, "dither": 0.0,
                          "cmvn_file": None},
    }


def _qwen3_config(size: str, eos_id: int, pad_id: int) -> dict[str, Any]:
    s = SIZES[size]
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "vocab_size": s["vocab_size"], "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu",
        "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": True,
        "use_cache": True, "torch_dtype": "float32", "bos_token_id": pad_id,
        "eos_token_id": eos_id, **s["llm"],
    }


def write_tokenizer(llm_dir: Path, vocab_size: int = 512) -> tuple[int, int]:
    """Train a small byte-level BPE offline; write it as a Qwen2 tokenizer; (eos, pad) ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 512), special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    tok.save(str(llm_dir / "tokenizer.json"))
    eos, pad = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    assert eos is not None and pad is not None  # special tokens of the trainer: in the vocab
    added = {str(tok.token_to_id(t)): {"content": t, "special": True, "lstrip": False,
                                       "rstrip": False, "normalized": False,
                                       "single_word": False} for t in SPECIAL_TOKENS}
    (llm_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None,
        "model_max_length": 131072, "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added, "errors": "replace"}, indent=1), encoding="utf-8")
    return eos, pad


def build_nano(model_dir: Path, size: str) -> int:
    """Write a complete FunASRNano directory of `size` into `model_dir`; the parameter count."""
    import torch
    import yaml
    from funasr import AutoModel

    llm_dir = model_dir / LLM_DIR
    llm_dir.mkdir()
    eos, pad = write_tokenizer(llm_dir, SIZES[size]["vocab_size"])
    (llm_dir / "config.json").write_text(json.dumps(_qwen3_config(size, eos, pad), indent=1),
                                         encoding="utf-8")
    (llm_dir / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": eos, "pad_token_id": pad, "do_sample": False}), encoding="utf-8")
    cfg = nano_config(size)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False,
                                                          allow_unicode=True), encoding="utf-8")
    (model_dir / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "auto-speech-recognition",
        "model": {"type": "funasr"},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "llm_conf": {"init_param_path": LLM_DIR},
                            "tokenizer_conf": {"init_param_path": LLM_DIR}}}, indent=1),
        encoding="utf-8")
    build_cfg = json.loads(json.dumps(cfg))
    build_cfg["llm_conf"]["init_param_path"] = str(llm_dir.resolve())
    build_cfg["tokenizer_conf"]["init_param_path"] = str(llm_dir.resolve())
    threads = torch.get_num_threads()
    try:  # build_model sets the process-wide thread count; put it back
        model, _ = AutoModel.build_model(**build_cfg, device="cpu", seed=0)
    finally:
        torch.set_num_threads(threads)
    scale = SIZES[size]["weight_scale"]
    state = model.state_dict()
    if scale != 1.0:  # larger weights: outputs depend on the input, not only on the prompt
        state = {k: v * scale if v.is_floating_point() and v.dim() >= 2 else v
                 for k, v in state.items()}
    torch.save(state, model_dir / "model.pt")
    return sum(p.numel() for p in model.parameters())

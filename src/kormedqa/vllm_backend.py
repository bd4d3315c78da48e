"""Greedy generation through vLLM for `kormedqa eval`, when vLLM and a CUDA GPU are present.

The HF path stays the reference: the same prompt token ids go in (tokenised here, by the
tokenizer the HF path uses, so vLLM adds no second <bos>), decoding is greedy, and generation
stops where the HF path stops (<eos>/<end_of_turn> ids, and the complete `</reasoning>X`, kept
in the text as HF keeps it). A LoRA adapter folder is served on top of its recorded base model
with vLLM's LoRA support, so an unmerged checkpoint needs no merge step.

`pip install kormedqa[vllm]`; `--backend auto` (the default) picks vLLM only when it imports and
the device is a CUDA GPU, `--backend hf` forces the reference path.
"""
from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

from .chat import stop_token_ids
from .errors import UsageError
from .hardware import TORCH_NAMES, PrecisionChoice
from .launch import world_size
from .modeling import adapter_base, resolve_model_path

BACKENDS = ("auto", "hf", "vllm")


def vllm_installed() -> bool:
    """Whether the optional `vllm` package can be imported (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(backend: str, device: str = "auto") -> str:
    """The backend `kormedqa eval` generates with: "hf" or "vllm" ("auto": vllm when installed and on a CUDA GPU).

    Under several launched processes "auto" is hf (each process scores its share of the batches);
    vLLM is one engine that parallelises over GPUs itself, so "vllm" there is refused.
    Raises UsageError for an unknown backend, or vllm asked for without vLLM or without a CUDA GPU.
    """
    import torch

    if backend not in BACKENDS:
        raise UsageError(f"--backend is one of {BACKENDS}, not {backend!r}")
    on_gpu = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    if backend == "hf":
        return "hf"
    if world_size() > 1:
        # One vLLM engine serves all GPUs itself (tensor / data parallel); N launched processes would
        # each start one, N copies of the model competing for the same GPUs.
        if backend == "vllm":
            raise UsageError("--backend vllm runs one engine over the GPUs itself: run kormedqa eval as one process "
                             "(not under accelerate launch), or use --backend hf with several processes")
        return "hf"
    if backend == "vllm":
        if not vllm_installed():
            raise UsageError("--backend vllm needs vLLM: pip install 'kormedqa[vllm]'")
        if not on_gpu:
            raise UsageError("--backend vllm needs a CUDA GPU; use --backend hf on CPU")
        return "vllm"
    return "vllm" if on_gpu and vllm_installed() else "hf"


def _lora_rank(adapter: Path) -> int:
    return int(json.loads((adapter / "adapter_config.json").read_text()).get("r", 64))


class VllmGenerator:
    """Callable `(prompts, max_new_tokens, stop_strings) -> outputs`, like `evaluate.generate`."""

    def __init__(self, model: str, tokenizer, choice: PrecisionChoice, seed: int = 0,
                 gpu_memory_utilization: float = 0.5, max_model_len: int | None = 4096):
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        path = Path(resolve_model_path(model))
        base = adapter_base(path)
        lora = {"enable_lora": True, "max_lora_rank": _lora_rank(path)} if base else {}
        # Half the GPU by default: `--mode` with loglik, cloze or loss keeps the HF model on the same GPU for scoring.
        self.llm = LLM(model=str(base or path), tokenizer=str(path), dtype=TORCH_NAMES[choice.precision], seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, **lora)
        self.lora_request = LoRARequest("kormedqa-adapter", 1, str(path)) if base else None
        self.tokenizer = tokenizer

    def sampling_params(self, max_new_tokens: int, stop_strings: Sequence[str], temperature: float = 0.0,
                        top_p: float = 1.0, seed: int | None = None):
        """vLLM `SamplingParams`, greedy by default: at most `max_new_tokens` tokens, stopping at
        `stop_strings` (kept in the output) or a stop token (<eos>, <end_of_turn>); with a
        `temperature` > 0, nucleus sampling at `top_p` from the request's own `seed`.
        """
        from vllm import SamplingParams

        sampled = {"top_p": top_p, "seed": seed} if temperature > 0 else {}
        return SamplingParams(
            temperature=temperature, max_tokens=max_new_tokens, stop=list(stop_strings), include_stop_str_in_output=True,
            stop_token_ids=stop_token_ids(self.tokenizer), skip_special_tokens=True, **sampled,
        )

    def __call__(self, prompts: Sequence[str], max_new_tokens: int, stop_strings: Sequence[str] = (),
                 sampling=None) -> list[str]:
        """One continuation per prompt; `sampling` (a `scorers.Sampling`) gives temperature, top_p and
        one seed per prompt, each request drawing from its own seed as the HF path does.
        """
        inputs = [{"prompt_token_ids": self.tokenizer(p)["input_ids"]} for p in prompts]
        if sampling is None or sampling.temperature <= 0:
            params = self.sampling_params(max_new_tokens, stop_strings)
        else:
            params = [self.sampling_params(max_new_tokens, stop_strings, sampling.temperature, sampling.top_p, seed)
                      for seed in sampling.seeds]
        outs = self.llm.generate(inputs, params, lora_request=self.lora_request, use_tqdm=False)
        return [o.outputs[0].text for o in outs]

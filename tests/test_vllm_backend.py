"""The vLLM path without a GPU: backend choice, and the exact requests it would send to vLLM.

A stand-in `vllm` module records what kormedqa passes; the HF path is the reference the
requests must match (same prompt ids, greedy, same stops, adapters served as LoRA).
"""
import json
import sys
import types

import pytest
import torch

from kormedqa import vllm_backend
from kormedqa.data import load_mcq
from kormedqa.evaluate import evaluate_mcq
from kormedqa.hardware import choose
from kormedqa.scorers import ANSWER_STOPS, eval_prompt
from kormedqa.vllm_backend import VllmGenerator, resolve_backend

from helpers import write_sample


@pytest.fixture
def fake_vllm(monkeypatch):
    calls = {}

    class LLM:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def generate(self, inputs, params, lora_request=None, use_tqdm=True):
            calls["generate"] = {"inputs": inputs, "params": params, "lora_request": lora_request}
            out = types.SimpleNamespace(text="<reasoning>\n각 선택지를 분석하면:\n</reasoning>B")
            return [types.SimpleNamespace(outputs=[out]) for _ in inputs]

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LoRARequest:
        def __init__(self, name, lora_id, path):
            self.args = (name, lora_id, path)

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: True)
    return calls


def test_auto_backend_is_hf_without_a_gpu(monkeypatch, fake_vllm):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto", "auto") == "hf"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        resolve_backend("vllm", "auto")


def test_auto_backend_is_vllm_on_a_gpu_with_vllm(monkeypatch, fake_vllm):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto", "auto") == "vllm"
    assert resolve_backend("auto", "cuda:1") == "vllm"
    assert resolve_backend("auto", "cpu") == "hf"
    assert resolve_backend("hf", "auto") == "hf"


def test_vllm_requested_but_not_installed(monkeypatch):
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto", "auto") == "hf"
    with pytest.raises(ValueError, match=r"pip install 'kormedqa\[vllm\]'"):
        resolve_backend("vllm", "auto")
    with pytest.raises(ValueError, match="--backend is one of"):
        resolve_backend("tensorrt", "auto")


def test_requests_match_the_hf_path(fake_vllm, tiny_model_dir, tokenizer):
    gen = VllmGenerator(str(tiny_model_dir), tokenizer, choose("cpu", "bf16"), seed=3)
    assert fake_vllm["init"]["model"] == str(tiny_model_dir) and fake_vllm["init"]["dtype"] == "bfloat16"
    assert "enable_lora" not in fake_vllm["init"]
    prompts = ["<start_of_turn>user\n질문<end_of_turn>\n<start_of_turn>model\n", "짧은"]
    outs = gen(prompts, 17, ANSWER_STOPS)
    sent = fake_vllm["generate"]
    # The same ids the HF path feeds model.generate: one <bos>, no second one from vLLM.
    assert [x["prompt_token_ids"] for x in sent["inputs"]] == [tokenizer(p)["input_ids"] for p in prompts]
    params = sent["params"].kwargs
    assert params["temperature"] == 0.0 and params["max_tokens"] == 17
    assert params["stop"] == list(ANSWER_STOPS) and params["include_stop_str_in_output"] is True
    assert params["stop_token_ids"] == [1, 106]
    assert sent["lora_request"] is None
    assert outs == ["<reasoning>\n각 선택지를 분석하면:\n</reasoning>B"] * 2


def test_adapter_folder_is_served_as_lora_on_its_base(fake_vllm, tiny_model_dir, tokenizer, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir), "r": 8}))
    tokenizer.save_pretrained(adapter)
    gen = VllmGenerator(str(adapter), tokenizer, choose("cpu", "fp32"))
    assert fake_vllm["init"]["model"] == str(tiny_model_dir)
    assert fake_vllm["init"]["enable_lora"] is True and fake_vllm["init"]["max_lora_rank"] == 8
    gen(["x"], 4)
    assert fake_vllm["generate"]["lora_request"].args[2] == str(adapter)


def test_evaluate_mcq_scores_what_the_generator_returns(tmp_path, tokenizer):
    mcqs = load_mcq(write_sample(tmp_path)["mcq"], split="test")[:4]
    seen = {}

    def generator(prompts, max_new_tokens, stop_strings):
        seen.update(prompts=prompts, max_new_tokens=max_new_tokens, stops=stop_strings)
        return ["<reasoning>\nx\n</reasoning>" + q.answer for q in mcqs[:2]] + ["모름", "</reasoning>E"]

    metrics, preds = evaluate_mcq(None, tokenizer, mcqs, "generate", 2, 9, generator=generator)
    assert seen["prompts"] == [eval_prompt(q) for q in mcqs] and seen["max_new_tokens"] == 9
    assert seen["stops"] == ANSWER_STOPS
    assert [p["prediction"] for p in preds[:2]] == [q.answer for q in mcqs[:2]] and preds[2]["prediction"] == ""
    assert metrics["parse_rate"]["value"] == pytest.approx(0.75)


def test_sampled_requests_carry_one_seed_each(fake_vllm, tiny_model_dir, tokenizer):
    from kormedqa.scorers import Sampling

    gen = VllmGenerator(str(tiny_model_dir), tokenizer, choose("cpu", "fp32"))
    gen(["a", "b"], 5, ANSWER_STOPS, sampling=Sampling(temperature=0.7, top_p=0.9, seeds=(11, 12)))
    params = [p.kwargs for p in fake_vllm["generate"]["params"]]
    assert [(p["temperature"], p["top_p"], p["seed"]) for p in params] == [(0.7, 0.9, 11), (0.7, 0.9, 12)]
    assert all(p["max_tokens"] == 5 and p["stop"] == list(ANSWER_STOPS) for p in params)

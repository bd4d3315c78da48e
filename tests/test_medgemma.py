"""MedGemma as it ships, trained on text: LoRA on the language model only, merges that stay the base.

Runs on both hub layouts (tests/conftest.py `standin`): google/medgemma-4b-it's multimodal
Gemma3ForConditionalGeneration and google/medgemma-27b-text-it's Gemma3ForCausalLM, tiny and bf16.
Logits are compared in fp32, where loading an adapter two ways must give the same numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import write_sample
from kormedqa.hardware import choose

FP32 = choose("cpu", "fp32")  # the run's precision choice, as an entry point makes it
IDS = torch.tensor([[2, 105, 2364, 107, 1000, 2000, 3000, 106, 107, 105, 4368, 107]])


def _full_model(folder, dtype=torch.float32):
    """The base as a user loads it with transformers alone: its own architecture, everything in it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    multimodal = hasattr(AutoConfig.from_pretrained(folder), "vision_config")
    return (AutoModelForImageTextToText if multimodal else AutoModelForCausalLM).from_pretrained(folder, dtype=dtype)


def _logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits.float()


def _weight_names(folder: Path) -> dict[str, str]:
    from safetensors import safe_open

    out = {}
    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as fh:
            out.update({name: fh.get_slice(name).get_dtype() for name in fh.keys()})
    return out


@pytest.fixture(scope="module")
def trained(standin, tmp_path_factory):
    """(stand-in folder, adapter folder) after two SFT steps from the stand-in, through the CLI."""
    from kormedqa.cli import main

    root = tmp_path_factory.mktemp(f"sft-{standin.name}")
    data = write_sample(root / "data")
    rows = root / "mcq.jsonl"
    assert main(["prepare", "mcq", "--data", data["mcq"], "--dictionary", data["dictionary"], "--output", str(rows),
                 "--eval_data", data["mcq"], "--eval_split", "test"]) == 0
    # lr 0.05: big enough that the adapter moves the logits far from the base's
    assert main(["train", "mcq", "--data", str(rows), "--base-model", str(standin), "--output", str(root / "run"),
                 "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1", "--lora-r", "4", "--lora-alpha", "8",
                 "--learning-rate", "0.05", "--device", "cpu", "--precision", "fp32"]) == 0
    return standin, root / "run" / "adapter"


def test_a_multimodal_model_loads_for_text_without_its_vision_parts(medgemma_standin):
    from kormedqa.modeling import load_model

    model = load_model(str(medgemma_standin), FP32)
    full = _full_model(medgemma_standin)
    assert type(model) is type(full)  # the hub's class and module names: adapters fit both
    assert not any(n.startswith(("model.vision_tower", "model.multi_modal_projector")) for n, _ in model.named_parameters())
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())
    torch.testing.assert_close(_logits(model), _logits(full), rtol=0, atol=0)


def test_the_adapter_holds_the_language_model_only_and_loads_with_plain_peft(trained):
    """The adapter on the original folder through transformers + peft alone = kormedqa's own loader."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from kormedqa.modeling import load_model

    standin, adapter = trained
    keys = load_file(adapter / "adapter_model.safetensors").keys()
    prefix = "base_model.model.model.language_model.layers." if "multimodal" in standin.name else "base_model.model.model.layers."
    assert keys and all(k.startswith(prefix) for k in keys), sorted(k for k in keys if not k.startswith(prefix))[:3]
    plain = PeftModel.from_pretrained(_full_model(standin), str(adapter))
    assert not [n for n, _ in plain.named_modules() if "lora_A" in n and ("vision" in n or "projector" in n)]
    ours = load_model(str(adapter), FP32)
    torch.testing.assert_close(_logits(plain), _logits(ours), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_logits(ours), _logits(_full_model(standin)), atol=1e-3)  # the adapter does something


def test_merge_keeps_the_base_architecture_names_dtype_and_files(trained, tmp_path):
    from transformers import AutoConfig

    from kormedqa.cli import main

    standin, adapter = trained
    assert main(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "merged")]) == 0
    merged = tmp_path / "merged"
    base_cfg, merged_cfg = AutoConfig.from_pretrained(standin), AutoConfig.from_pretrained(merged)
    assert merged_cfg.architectures == base_cfg.architectures and merged_cfg.model_type == base_cfg.model_type
    names = _weight_names(merged)
    assert names.keys() == _weight_names(standin).keys() and set(names.values()) == {"BF16"}
    for path in standin.iterdir():  # every non-weight file of the base, byte for byte (the processor's too)
        if not path.name.endswith((".safetensors", ".index.json")) and path.name not in ("config.json", "generation_config.json"):
            assert (merged / path.name).read_bytes() == path.read_bytes(), path.name
    model = _full_model(merged, dtype=None)
    assert model.dtype == torch.bfloat16 and type(model).__name__ == base_cfg.architectures[0]
    # The merged weights are the adapter's model (to bf16 rounding of the weights).
    from kormedqa.modeling import load_model

    ours = _logits(load_model(str(adapter), FP32))
    torch.testing.assert_close(_logits(model.float()), ours, rtol=0.05, atol=0.05)

    assert main(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "fp32"), "--dtype", "fp32"]) == 0
    assert set(_weight_names(tmp_path / "fp32").values()) == {"F32"}


def test_the_merged_medgemma_still_takes_images(trained, tmp_path):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    standin, adapter = trained
    if "multimodal" not in standin.name:
        pytest.skip("the text layout has no processor")
    from kormedqa.modeling import merge_into_base

    merged = merge_into_base(adapter, tmp_path / "merged")
    processor = AutoProcessor.from_pretrained(merged)
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "소견은?"}]}],
                                           add_generation_prompt=True)
    inputs = processor(text=prompt, images=Image.new("RGB", (64, 64), (10, 200, 10)), return_tensors="pt")
    model = AutoModelForImageTextToText.from_pretrained(merged)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[1] == inputs["input_ids"].shape[1] and torch.isfinite(logits.float()).all()
    base_vision = {k: v for k, v in _full_model(standin, dtype=None).state_dict().items() if "vision_tower" in k}
    for name, value in model.state_dict().items():
        if name in base_vision:
            assert torch.equal(value, base_vision[name]), name  # the vision tower is the base's, untouched


def test_grpo_and_cpt_train_the_language_model_only(medgemma_standin, tmp_path):
    """The other two stages on the multimodal layout: GRPO's adapter, CPT's merged model."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from kormedqa.cpt import CPTConfig, run_cpt
    from kormedqa.data import load_mcq
    from kormedqa.grpo import GRPOStageConfig, grpo_rows_from_mcqs, run_grpo

    qs = load_mcq(write_sample(tmp_path / "d")["mcq"], split="train")
    run_grpo(GRPOStageConfig(base_model=str(medgemma_standin), max_steps=1, num_generations=2, max_completion_length=4,
                             batch_size=2, device="cpu", precision="fp32"), grpo_rows_from_mcqs(qs[:2]), tmp_path / "grpo")
    keys = load_file(tmp_path / "grpo" / "adapter_model.safetensors").keys()
    assert keys and all(".language_model." in k for k in keys)

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("고혈압은 혈압이 높은 상태이다.\n빈혈은 산소 운반 능력이 감소한 상태이다.\n", encoding="utf-8")
    run_cpt(CPTConfig(base_model=str(medgemma_standin), output=str(tmp_path / "cpt"), corpus=str(corpus),
                      heldout=str(corpus), vocab=[], max_steps=1, batch_size=2, device="cpu", precision="fp32"))
    model_dir = tmp_path / "cpt" / "model"
    assert AutoConfig.from_pretrained(model_dir).architectures == ["Gemma3ForConditionalGeneration"]
    assert _weight_names(model_dir).keys() == _weight_names(medgemma_standin).keys()
    assert set(_weight_names(model_dir).values()) == {"BF16"}
    assert (model_dir / "preprocessor_config.json").exists() and (model_dir / "chat_template.json").exists()


def test_training_records_its_peak_memory(trained):
    standin, adapter = trained
    run = json.loads((adapter.parent / "run.json").read_text())
    peak = run["peak_memory"]
    assert peak["processes"] == 1 and 0.1 < peak["cpu_peak_rss_gib"] < 64  # measured (getrusage), in GiB
    assert json.loads((adapter / "training_summary.json").read_text())["peak_memory"] == peak


def test_gradient_checkpointing_trains_the_same_model(medgemma_standin, tmp_path):
    """--gradient-checkpointing recomputes activations: same loss and LoRA update, less memory (on a GPU)."""
    from safetensors.torch import load_file

    from kormedqa.sft import TrainConfig, run_training

    rows = [{"prompt": "<start_of_turn>user\n고혈압이란?<end_of_turn>\n",
             "completion": "<start_of_turn>model\n<reasoning>혈압이 높다</reasoning>A<end_of_turn>"}] * 2
    losses, weights = [], []
    for ckpt in (False, True):
        cfg = TrainConfig(base_model=str(medgemma_standin), data="rows", max_steps=1, batch_size=2, grad_accum=1,
                          learning_rate=0.01, lora_r=4, lora_alpha=8, lora_dropout=0.0, device="cpu", precision="fp32",
                          gradient_checkpointing=ckpt)
        out = tmp_path / f"ckpt-{ckpt}"
        losses.append(run_training(cfg, rows, out, stage="ckpt")["train_loss"])
        weights.append(load_file(out / "adapter_model.safetensors"))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-5, atol=1e-6)

"""The tiny stand-ins have the hub's layouts: google/medgemma-4b-it (multimodal) and -27b-text-it (text).

What the hub ships is in STACK_NOTES.md ("MedGemma as it ships"); a stand-in that drifted from it
would let a code path pass here that fails on the real model.
"""
from __future__ import annotations

import json

import pytest
import torch


def _weights(folder):
    from safetensors import safe_open

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    names, dtypes = set(), set()
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(folder / shard), "pt") as fh:
            for name in fh.keys():
                names.add(name)
                dtypes.add(fh.get_slice(name).get_dtype())
    return index, names, dtypes


def test_multimodal_standin_has_the_hub_layout(medgemma_standin):
    from kormedqa.default_model import MULTIMODAL_HUB_FILES

    folder = medgemma_standin
    assert set(MULTIMODAL_HUB_FILES) <= {p.name for p in folder.iterdir()}
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma3ForConditionalGeneration"] and cfg["model_type"] == "gemma3"
    assert cfg["text_config"]["model_type"] == "gemma3_text" and cfg["text_config"]["vocab_size"] == 262208
    assert cfg["vision_config"]["model_type"] == "siglip_vision_model"
    assert (cfg["image_token_index"], cfg["boi_token_index"], cfg["eoi_token_index"]) == (262144, 255999, 256000)
    assert cfg["eos_token_id"] == [1, 106] and "mm_tokens_per_image" in cfg
    assert json.loads((folder / "added_tokens.json").read_text()) == {"<image_soft_token>": 262144}
    assert json.loads((folder / "processor_config.json").read_text())["processor_class"] == "Gemma3Processor"
    index, names, dtypes = _weights(folder)
    assert len(set(index["weight_map"].values())) == 2 and set(index["weight_map"]) == names
    assert dtypes == {"BF16"}
    prefixes = {n.split(".layers.")[0].split(".embeddings.")[0].split(".encoder.")[0].rsplit(".", 2)[0] for n in names}
    assert all(n.startswith(("language_model.model.", "vision_tower.vision_model.", "multi_modal_projector."))
               for n in names), sorted(prefixes)
    assert any(n.startswith("vision_tower.vision_model.encoder.layers.0.self_attn.q_proj") for n in names)


def test_text_standin_has_the_hub_layout(medgemma_text_standin):
    from kormedqa.default_model import TEXT_HUB_FILES

    folder = medgemma_text_standin
    assert set(TEXT_HUB_FILES) <= {p.name for p in folder.iterdir()}
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma3ForCausalLM"] and cfg["model_type"] == "gemma3_text"
    index, names, dtypes = _weights(folder)
    assert len(set(index["weight_map"].values())) == 2 and dtypes == {"BF16"}
    assert all(n.startswith("model.") for n in names)


def test_multimodal_standin_takes_an_image_through_its_processor(medgemma_standin):
    """The real Gemma3Processor expands <start_of_image> to the image's soft tokens; the model takes both."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(medgemma_standin)
    assert type(processor).__name__ == "Gemma3Processor"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "이 사진은?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=Image.new("RGB", (80, 60), (200, 30, 30)), return_tensors="pt")
    assert int((inputs["input_ids"] == 262144).sum()) == 4 and int(inputs["token_type_ids"].sum()) == 4
    model = AutoModelForImageTextToText.from_pretrained(medgemma_standin)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration" and model.dtype == torch.bfloat16
    with torch.no_grad():
        with_image = model(**inputs).logits
        inputs["pixel_values"] = torch.zeros_like(inputs["pixel_values"])
        other_image = model(**inputs).logits
    assert with_image.shape[:2] == inputs["input_ids"].shape and torch.isfinite(with_image.float()).all()
    assert not torch.equal(with_image, other_image)  # the image reaches the language model


@pytest.mark.parametrize("layout", ["bogus"])
def test_unknown_layout_is_refused(tmp_path, tokenizer_dir, layout):
    from kormedqa.default_model import build_standin

    with pytest.raises(ValueError, match="layout"):
        build_standin(tmp_path / "x", tokenizer_dir, layout=layout)


def test_the_4b_standin_has_medgemma_4b_s_shapes(tokenizer_dir):
    """bench/gpu_loop.py sizes the seed's run on `size="4b"`: google/medgemma-4b-it's parameter count
    (4.3B, 417M of them in the SigLIP tower; STACK_NOTES.md) and Gemma 3's five-local-one-global layers.
    Built on the meta device: shapes only, no memory."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    from kormedqa.default_model import build_standin, standin_config

    config, _ = standin_config(tokenizer_dir, "multimodal", "4b")
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    assert abs(total - 4.300e9) < 0.005e9 and abs(vision - 417e6) < 1e6
    assert config.text_config.layer_types[:6] == ["sliding_attention"] * 5 + ["full_attention"]
    assert (config.text_config.sliding_window, config.mm_tokens_per_image, config.vision_config.image_size) == (1024, 256, 896)
    with pytest.raises(ValueError, match="size"):
        build_standin("unused", tokenizer_dir, size="27b")

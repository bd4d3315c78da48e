"""What a MedGemma LoRA run needs in memory, from the configs alone (meta device: no weights, seconds).

Parameter counts come from transformers' own Gemma 3 classes built on the meta device from the hub
configs' shapes (google/medgemma-4b-it: STACK_NOTES.md "MedGemma as it ships"; google/medgemma-27b-text-it:
Gemma 3 27B's text config). Memory figures are an estimate, not a measurement (no GPU here):

- weights: the parameters kormedqa loads (a multimodal model without its vision encoder, see
  `kormedqa.modeling.load_text_only`), in bf16;
- LoRA: r64 on all seven projections of every language-model layer, fp32 weights + fp32 gradients +
  Adam's two fp32 moments (16 bytes per LoRA parameter);
- activations per token and layer kept for the backward pass, bf16: the inputs and outputs of the
  projections, norms and the gated MLP (6h + 2q + 2kv + 4i elements) plus LoRA dropout's copy of
  every projection input (5h + q + i); attention runs as SDPA and stores no seq x seq scores. With
  activation checkpointing, only each layer's input (h) plus one layer recomputed at a time;
- logits: only supervised positions reach the lm_head (kormedqa's loss), as bf16 logits + fp32
  log-softmax + its gradient (10 bytes per supervised token per vocabulary entry).

    python bench/memory_estimate.py            # the table docs/medgemma.md quotes
"""
from __future__ import annotations

import torch
from transformers import (Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3TextConfig)

GIB = 2**30
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TEXT_4B = dict(vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
               num_attention_heads=8, num_key_value_heads=4, head_dim=256, sliding_window=1024)
VISION_4B = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                 num_attention_heads=16, image_size=896, patch_size=14, vision_use_head=False)
TEXT_27B = dict(vocab_size=262208, hidden_size=5376, intermediate_size=21504, num_hidden_layers=62,
                num_attention_heads=32, num_key_value_heads=16, head_dim=128, sliding_window=1024)
# The seed recipe's micro-batches (recipes/medgemma-4b-seed.yaml, kormedqa.sft.TRACK_DEFAULTS):
# dictionary 4 x 512 tokens, MCQ 2 x 1024 tokens at most; both 2048 tokens per micro-batch.
TOKENS = 2048


def counts(model: torch.nn.Module, lora_r: int = 64) -> dict:
    """Parameter counts: total, vision (tower + projector), language model, LoRA r on its projections."""
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n)
    lora = sum(lora_r * (m.in_features + m.out_features) for n, m in model.named_modules()
               if n.rsplit(".", 1)[-1] in PROJECTIONS and "vision_tower" not in n)
    return {"total": total, "vision": vision, "language": total - vision, "lora": lora}


def activations_per_token(text: dict, checkpointing: bool) -> float:
    """Bytes of activations kept per token for the backward pass (bf16), all layers."""
    h, i = text["hidden_size"], text["intermediate_size"]
    q, kv = text["num_attention_heads"] * text["head_dim"], text["num_key_value_heads"] * text["head_dim"]
    layer = (6 * h + 2 * q + 2 * kv + 4 * i) + (5 * h + q + i)
    if checkpointing:
        return 2 * (h * text["num_hidden_layers"] + layer)
    return 2 * layer * text["num_hidden_layers"]


def estimate(name: str, model: torch.nn.Module, text: dict, supervised: int) -> list[str]:
    """Two Markdown rows (checkpointing off, on) of GiB per process for `supervised` tokens reaching the lm_head."""
    c = counts(model)
    weights = 2 * c["language"]
    lora = 16 * c["lora"]
    logits = 10 * supervised * text["vocab_size"]
    rows = []
    for ckpt in (False, True):
        act = activations_per_token(text, ckpt) * TOKENS
        rows.append(f"| {name} | {'on' if ckpt else 'off'} | {supervised} | {weights / GIB:.1f} | {lora / GIB:.1f} | "
                    f"{act / GIB:.1f} | {logits / GIB:.1f} | {(weights + lora + act + logits) / GIB:.1f} |")
    return rows


def main() -> None:
    with torch.device("meta"):
        mm = Gemma3ForConditionalGeneration(Gemma3Config(text_config=dict(TEXT_4B, model_type="gemma3_text"),
                                                         vision_config=VISION_4B, mm_tokens_per_image=256))
        big = Gemma3ForCausalLM(Gemma3TextConfig(**TEXT_27B))
    print("| model | parameters | vision tower + projector | language model | LoRA r64 |")
    print("|---|---|---|---|---|")
    table = []
    for name, model, text in (("MedGemma-4B", mm, TEXT_4B), ("MedGemma-27B text", big, TEXT_27B)):
        c = counts(model)
        print(f"| {name} | {c['total'] / 1e9:.3f}B | {c['vision'] / 1e6:.0f}M ({2 * c['vision'] / 1e9:.2f} GB bf16) | "
              f"{c['language'] / 1e9:.3f}B | {c['lora'] / 1e6:.1f}M |")
        for supervised in (256, TOKENS):
            table += estimate(name, model, text, supervised)
    print(f"\nGiB per process at {TOKENS} tokens per micro-batch (the seed recipe's dict 4 x 512 and MCQ 2 x 1024):\n")
    print("| model | activation checkpointing | supervised tokens | weights (bf16) | LoRA + grads + Adam | "
          "activations | logits | total |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()

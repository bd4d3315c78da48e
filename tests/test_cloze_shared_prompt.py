"""Cloze scores each question's prompt once and its five options after it (`scorers.shared_prompt_row`).

The reference is the plain way, as lm-evaluation-harness computes it: one full forward of prompt +
option per option, fp32, log-softmax over the whole vocabulary at every continuation position.
The shared row must give the same summed log-likelihoods (1e-4 nats) and the same picks, for
prompts and options of different lengths scored in one call, past a sliding window, on the
multimodal stand-in, and with sdpa and eager attention. The tolerance is shown to catch options
that see each other, wrong positions and an ignored sliding window.
"""
import pytest
import torch
import torch.nn.functional as F

from kormedqa.chat import END_OF_TURN
from kormedqa.records import MCQ

TOLERANCE = 1e-4  # nats, fp32; what the shared row differs by is rounding (~1e-6 here)


OPTIONS = (("A", "고혈압", "저혈당 증상과 합병증", "급성 급성 빈혈", "만성 폐렴 및 치은염"),
           ("빈혈 및 폐렴", "B", "만성 고혈압", "치은염 증상과 합병증 증상과 합병증", "급성 저혈당"),
           ("급성 급성 급성 폐렴 증상과 합병증 증상과 합병증", "폐렴", "고혈압 및 저혈당", "C", "만성 빈혈"))


def _questions() -> list[MCQ]:
    """Prompts of three lengths and options of 2 to ~20 tokens, so every row has another shape."""
    return [MCQ(id=f"q{i}", question=f"{i}번:{' 환자의 상태를 고려할 때' * (2 * i)} 다음 중 옳은 것은?", options=options,
                answer="A", exam_type="doctor") for i, options in enumerate(OPTIONS)]


def _plain(model, tokenizer, q: MCQ) -> list[float]:
    """Each option scored by its own full-sequence forward (no mask, no positions given)."""
    from kormedqa.scorers import cloze_prompt

    context = tokenizer(cloze_prompt(q))["input_ids"]
    out = []
    for option in q.options:
        cont = tokenizer(option + END_OF_TURN, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([context + cont])).logits[0].float(), -1)
        out.append(sum(float(logp[len(context) - 1 + i, t]) for i, t in enumerate(cont)))
    return out


def _assert_same(got: list[list[float]], want: list[list[float]]):
    worst = max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g, w))
    assert worst <= TOLERANCE, f"shared row differs from plain forwards by {worst:.3g} nats"
    picks = lambda scores: [max(range(5), key=s.__getitem__) for s in scores]  # noqa: E731
    assert picks(got) == picks(want)


def _windowed_model(tokenizer, attn: str):
    """A random 2-layer Gemma 3 whose first layer slides over 6 positions (cloze rows run past it)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                              sliding_window=6, layer_types=["sliding_attention", "full_attention"],
                              pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    config._attn_implementation = attn
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the init's, so attention moves the scores well above the tolerance
        for name, param in model.named_parameters():
            if "proj" in name:
                param.mul_(8)
    return model


def test_the_row_holds_the_prompt_once_and_keeps_options_apart():
    from kormedqa.scorers import shared_prompt_row

    row = shared_prompt_row([1, 2, 3], [[10, 11], [20], [30, 31, 32]])
    assert row["input_ids"].tolist() == [[1, 2, 3, 10, 30, 31]]  # last tokens are targets only
    assert row["position_ids"].tolist() == [[0, 1, 2, 3, 3, 4]]
    assert row["first"] == 2 and row["sizes"] == [2, 1, 3]
    assert row["targets"].tolist() == [10, 11, 20, 30, 31, 32]
    assert row["rows"].tolist() == [0, 1, 0, 0, 2, 3]  # from the prompt's last token on
    v = row["visible"].int().tolist()
    assert v == [[1, 0, 0, 0, 0, 0],
                 [1, 1, 0, 0, 0, 0],
                 [1, 1, 1, 0, 0, 0],
                 [1, 1, 1, 1, 0, 0],   # option 1's token: prompt and itself
                 [1, 1, 1, 0, 1, 0],   # option 3's first: not option 1's token
                 [1, 1, 1, 0, 1, 1]]
    with pytest.raises(ValueError):
        shared_prompt_row([1], [[2], []])


def test_shared_row_equals_a_plain_forward_per_option(tiny_model, tokenizer):
    from kormedqa.scorers import option_logprobs

    qs = _questions()
    _assert_same(option_logprobs(tiny_model, tokenizer, qs, batch_size=3), [_plain(tiny_model, tokenizer, q) for q in qs])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_row_equals_plain_forwards_past_a_sliding_window(tokenizer, attn):
    from kormedqa.scorers import option_logprobs

    model, qs = _windowed_model(tokenizer, attn), _questions()
    _assert_same(option_logprobs(model, tokenizer, qs, batch_size=2), [_plain(model, tokenizer, q) for q in qs])


def test_shared_row_on_the_multimodal_standin(medgemma_standin, tokenizer):
    """MedGemma-4B's class (Gemma3ForConditionalGeneration, linear RoPE scaling), loaded as eval loads it."""
    from kormedqa.hardware import choose
    from kormedqa.modeling import load_model
    from kormedqa.scorers import option_logprobs

    model, qs = load_model(str(medgemma_standin), choose("cpu", "fp32")).eval(), _questions()
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    # Its window lives in the text config, not the top-level one; 6 positions, so the rows run past it.
    model.config.text_config.sliding_window = 6
    assert model.config.text_config.layer_types[0] == "sliding_attention"
    _assert_same(option_logprobs(model, tokenizer, qs, batch_size=3), [_plain(model, tokenizer, q) for q in qs])


@pytest.mark.parametrize("defect", ["options see each other", "positions run on", "window ignored"])
def test_the_tolerance_catches_a_broken_row(tokenizer, defect):
    """The comparison above fails for each mistake a shared row could make (so it is not vacuous)."""
    from kormedqa import scorers

    model, q = _windowed_model(tokenizer, "sdpa"), _questions()[2]
    context = tokenizer(scorers.cloze_prompt(q))["input_ids"]
    conts = [tokenizer(o + END_OF_TURN, add_special_tokens=False)["input_ids"] for o in q.options]
    row = scorers.shared_prompt_row(context, conts)
    assert scorers.score_shared_row(model, row) == pytest.approx(_plain(model, tokenizer, q), abs=TOLERANCE)
    if defect == "options see each other":
        row["visible"] = torch.ones_like(row["visible"]).tril()
    elif defect == "positions run on":
        row["position_ids"] = torch.arange(row["input_ids"].shape[1])[None]
    else:
        model.config.sliding_window = 10_000  # the row's mask then lets the first layer see the whole prompt
    broken = scorers.score_shared_row(model, row)
    model.config.sliding_window = 6
    with pytest.raises(AssertionError):
        _assert_same([broken], [_plain(model, tokenizer, q)])


@pytest.mark.parametrize("softcap", [None, 0.5])  # logits here are ~0.5: a cap of 0.5 bends them
def test_row_logprobs_equal_a_log_softmax_of_the_whole_logits(tiny_model, softcap):
    """The CPU path's running log-sum-exp over vocabulary blocks (last one short, targets on block edges)."""
    from kormedqa.batching import row_logprobs

    tiny_model.config.final_logit_softcapping = softcap
    vocab = tiny_model.get_output_embeddings().weight.shape[0]
    torch.manual_seed(0)
    hidden = torch.randn(4, tiny_model.config.hidden_size) * 3
    rows = torch.tensor([0, 0, 1, 2, 3, 3])
    targets = torch.tensor([0, 999, 1000, 5000, vocab - 1, 123_456])
    with torch.no_grad():
        logits = tiny_model.get_output_embeddings()(hidden).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        want = F.log_softmax(logits, dim=-1)[rows, targets]
    got = row_logprobs(tiny_model, hidden, rows, targets, vocab_chunk=1000)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)

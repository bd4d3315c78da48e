"""A question's score does not depend on the batch it is scored in (the class of lm-eval #3055).

Batch size 1 against 16 on a tiny model, in bf16 and fp32: letter log-likelihood, cloze and the
teacher-forced loss are bitwise equal in bf16 (each question is its own forward; a padded batch moved
bf16 scores by up to 5e-3 nats and flipped picks) and within 1e-4 nats with the same picks in fp32,
where two calls of the very same forward once came out 1e-6 to 5e-6 nats apart (CI, 2026-12-03; a
padding or mask error moves scores by far more). Greedy generation is equal in fp32 and bounded in
bf16 (docs/scoring.md), so a resumed loop keeps its scoring batch.
"""
import pytest
import torch

from helpers import assert_same_results
from kormedqa.records import MCQ

PRECISIONS = ["fp32", "bf16"]
FP32_NATS = 1e-4


def _same_scores(together, alone, precision):
    """Bitwise in bf16; in fp32 within FP32_NATS, with the same argmax per question."""
    if precision == "bf16":
        assert together == alone
        return
    a, b = torch.tensor(alone), torch.tensor(together)
    torch.testing.assert_close(b, a, rtol=0, atol=FP32_NATS)
    assert b.argmax(-1).tolist() == a.argmax(-1).tolist()


def _questions(n: int = 16) -> list[MCQ]:
    """Questions and options of different lengths, so a padded batch pads each one differently."""
    words = ["고혈압", "저혈당", "빈혈", "폐렴", "치은염", "부정맥"]
    qs = []
    for i in range(n):
        extra = " 환자의 상태를 고려할 때" * (i % 5)
        options = tuple(f"{words[(i + k) % 6]}{' 증상' * ((i + k) % 3)}" for k in range(5))
        qs.append(MCQ(id=f"q{i}", question=f"{i}번:{extra} '{words[i % 6]}'에 대한 설명으로 옳은 것은?",
                      options=options, answer="ABCDE"[i % 5], exam_type="doctor"))
    return qs


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    from kormedqa.hardware import choose
    from kormedqa.modeling import load_model

    return {p: load_model(str(tiny_model_dir), choose("cpu", p)) for p in PRECISIONS}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_letter_loglik_does_not_depend_on_the_batch(models, tokenizer, precision):
    from kormedqa.scorers import eval_prompt, letter_logprobs

    prompts = [eval_prompt(q) for q in _questions()]
    alone = letter_logprobs(models[precision], tokenizer, prompts, batch_size=1)
    together = letter_logprobs(models[precision], tokenizer, prompts, batch_size=16)
    _same_scores(together, alone, precision)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_cloze_does_not_depend_on_the_batch(models, tokenizer, precision):
    from kormedqa.scorers import option_logprobs

    qs = _questions()
    _same_scores(option_logprobs(models[precision], tokenizer, qs, batch_size=16),
                 option_logprobs(models[precision], tokenizer, qs, batch_size=1), precision)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_reference_loss_does_not_depend_on_the_batch(models, tokenizer, precision):
    from kormedqa.formats import MODEL_TURN, mcq_prompt
    from kormedqa.scorers import completion_losses

    rows = [{"id": q.id, "prompt": mcq_prompt(q),
             "completion": f"{MODEL_TURN}<reasoning>{q.options[0]}</reasoning>{q.answer}<end_of_turn>"} for q in _questions()]
    together = completion_losses(models[precision], tokenizer, rows, batch_size=16)
    alone = completion_losses(models[precision], tokenizer, rows, batch_size=1)
    if precision == "bf16":
        assert together == alone
    else:
        assert_same_results(alone, together, "losses", rel=0, abs_=FP32_NATS)


def test_generation_does_not_depend_on_the_batch_in_fp32(models, tokenizer):
    from kormedqa.scorers import eval_prompt, generate

    prompts = [eval_prompt(q) for q in _questions()]
    alone = generate(models["fp32"], tokenizer, prompts, batch_size=1, max_new_tokens=5, stop_strings=())
    assert generate(models["fp32"], tokenizer, prompts, batch_size=16, max_new_tokens=5, stop_strings=()) == alone


def test_a_resumed_loop_keeps_its_scoring_batch(tmp_path):
    """Generation in bf16 is only bounded (docs/scoring.md): a loop never compares checkpoints
    scored in batches of different sizes, so --resume refuses another --eval-batch-size."""
    import json

    from kormedqa.errors import UsageError
    from kormedqa.loop_config import LoopConfig
    from kormedqa.provenance import check_resumed_settings

    (tmp_path / "run.json").write_text(json.dumps({"config": {"eval_batch_size": 8, "max_loops": 2}}))
    check_resumed_settings(tmp_path, LoopConfig(eval_batch_size=8, max_loops=3))  # how many loops may change
    with pytest.raises(UsageError, match="eval_batch_size: 8 -> 16"):
        check_resumed_settings(tmp_path, LoopConfig(eval_batch_size=16))

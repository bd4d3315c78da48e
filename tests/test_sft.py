"""Answer-only labels and the (answer-weighted) loss, against hand computations on a tiny model."""

import pytest
import torch
import torch.nn.functional as F

from kormedqa.formats import MODEL_TURN, dict_example, mcq_examples
from kormedqa.records import MCQ, DictEntry
from kormedqa.batching import CompletionCollator, answer_span, completion_loss, supervised_positions, tokenize_pair
from kormedqa.sft import TrainConfig, parse_answer_weight
from kormedqa.trainer import AnswerWeightedTrainer

Q = MCQ(id="q1", question="'고혈압'의 정의로 옳은 것은?", options=("혈압이 높은 상태", "나", "다", "라", "마"), answer="A")


def _row():
    return mcq_examples([Q], seed=0, detailed_fraction=0.0)[0]


def test_labels_are_minus_100_exactly_on_prompt_tokens(tokenizer):
    ex = _row()
    item = tokenize_pair(tokenizer, ex.prompt, ex.completion, 512)
    prompt_len = len(tokenizer(ex.prompt + "\n")["input_ids"])
    assert item["labels"][:prompt_len] == [-100] * prompt_len
    assert all(l != -100 for l in item["labels"][prompt_len:])
    assert tokenizer.decode(item["input_ids"][prompt_len:]) == ex.completion
    assert item["input_ids"][0] == tokenizer.bos_token_id and item["input_ids"].count(tokenizer.bos_token_id) == 1


def test_answer_mask_is_the_letter_after_reasoning_and_the_end_of_turn(tokenizer):
    ex = _row()
    item = tokenize_pair(tokenizer, ex.prompt, ex.completion, 512)
    answer_ids = [t for t, m in zip(item["input_ids"], item["answer_mask"]) if m]
    assert tokenizer.decode(answer_ids) == "A<end_of_turn>"
    assert answer_ids[-1] == item["input_ids"][-1] == 106


def test_answer_span_without_reasoning_is_whole_turn():
    completion = dict_example(DictEntry("고혈압", "Hypertension. 높은 혈압")).completion
    start, end = answer_span(completion)
    assert completion[start:end] == "Hypertension. 높은 혈압<end_of_turn>"
    assert completion[:start] == MODEL_TURN


def test_too_long_example_is_dropped(tokenizer):
    ex = _row()
    assert tokenize_pair(tokenizer, ex.prompt, ex.completion, 10) is None


def test_parse_answer_weight():
    assert parse_answer_weight("none") is None
    assert parse_answer_weight("2/3") == pytest.approx(2 / 3)
    assert parse_answer_weight("1") == 1.0
    with pytest.raises(ValueError):
        parse_answer_weight("1.5")


def _batch(tokenizer, rows):
    feats = [tokenize_pair(tokenizer, r.prompt, r.completion, 512) for r in rows]
    return CompletionCollator(tokenizer.pad_token_id)(feats)


def _hand_ce(model, batch):
    """Full-vocabulary logits at every position, shifted by hand: the reference."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ces, kinds = [], []
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            target = int(batch["labels"][b, t + 1])
            if target == -100:
                continue
            logp = F.log_softmax(logits[b, t].double(), -1)
            ces.append(-float(logp[target]))
            kinds.append(bool(batch["answer_mask"][b, t + 1]))
    return ces, kinds


def _trainer_loss(model, tokenizer, batch, weight):
    from transformers import TrainingArguments
    args = TrainingArguments(output_dir="/tmp/kq-unused", use_cpu=True, report_to="none")
    trainer = AnswerWeightedTrainer(model=model, args=args, answer_weight=weight,
                                    data_collator=CompletionCollator(tokenizer.pad_token_id))
    model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(model, batch))


@pytest.mark.parametrize("weight", [None, 2 / 3, 1.0])
def test_loss_equals_hand_computation(tiny_model, tokenizer, weight):
    rows = [_row(), dict_example(DictEntry("고혈압", "Hypertension. 혈압이 정상 범위보다 높은 상태"))]
    batch = _batch(tokenizer, rows)
    ces, kinds = _hand_ce(tiny_model, batch)
    ans = [c for c, k in zip(ces, kinds) if k]
    other = [c for c, k in zip(ces, kinds) if not k]
    if weight is None:
        expected = sum(ces) / len(ces)
    else:
        expected = weight * sum(ans) / len(ans) + (1 - weight) * sum(other) / len(other)
    assert _trainer_loss(tiny_model, tokenizer, batch, weight) == pytest.approx(expected, rel=1e-4)


def test_loss_ignores_padding(tiny_model, tokenizer):
    row = _row()
    alone = _batch(tokenizer, [row])
    padded = _batch(tokenizer, [row, dict_example(DictEntry("가" * 40, "긴 정의 " * 20))])
    ces_alone, _ = _hand_ce(tiny_model, alone)
    ces_padded, _ = _hand_ce(tiny_model, padded)
    assert len(ces_padded) > len(ces_alone)  # the long row adds tokens; its padding in row 0 adds none
    assert ces_padded[: len(ces_alone)] == pytest.approx(ces_alone, rel=1e-4)


def test_gradient_accumulation_matches_one_big_batch():
    """Two micro-batches normalised by window counts sum to the loss of the concatenated batch."""
    torch.manual_seed(0)
    ce = torch.rand(30)
    is_answer = torch.zeros(30, dtype=torch.bool)
    is_answer[[3, 11, 20, 27]] = True
    n_a, n_o = float(is_answer.sum()), float((~is_answer).sum())
    for w in (None, 2 / 3, 1.0):
        whole = completion_loss(ce, is_answer, w, n_a, n_o)
        parts = completion_loss(ce[:13], is_answer[:13], w, n_a, n_o) + completion_loss(ce[13:], is_answer[13:], w, n_a, n_o)
        assert float(parts) == pytest.approx(float(whole), rel=1e-6)


def test_supervised_positions_shift():
    labels = torch.tensor([[-100, -100, 5, 6, -100]])
    assert supervised_positions(labels).tolist() == [[False, True, True, False, False]]


def test_track_defaults_are_the_seeds():
    d = TrainConfig(track="dict").resolved()
    m = TrainConfig(track="mcq").resolved()
    assert (d.epochs, d.batch_size, d.grad_accum, d.learning_rate, d.max_length) == (3, 4, 4, 2e-5, 512)
    assert (m.epochs, m.batch_size, m.grad_accum, m.learning_rate, m.max_length) == (5, 2, 8, 1e-5, 1024)
    assert (d.lora_r, d.lora_alpha) == (64, 128)


@pytest.mark.parametrize("weight", [None, 2 / 3])
def test_padding_free_batch_has_the_padded_loss(tiny_model, tokenizer, weight):
    """One packed row with restarting position_ids gives the padded batch's loss and parts."""
    rows = [_row(), dict_example(DictEntry("가" * 30, "긴 정의 " * 12)), _row()]
    feats = [tokenize_pair(tokenizer, r.prompt, r.completion, 512) for r in rows]
    padded = CompletionCollator(tokenizer.pad_token_id)(feats)
    packed = CompletionCollator(tokenizer.pad_token_id, padding_free=True)(feats)
    assert packed["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in feats))
    assert "attention_mask" not in packed and int((packed["position_ids"] == 0).sum()) == 3
    assert _trainer_loss(tiny_model, tokenizer, packed, weight) == pytest.approx(
        _trainer_loss(tiny_model, tokenizer, padded, weight), rel=1e-5)
    # Rounded up to a multiple of 64 tokens (a pad segment packed, more padding padded): same loss.
    for padding_free in (True, False):
        rounded = CompletionCollator(tokenizer.pad_token_id, padding_free=padding_free, pad_to_multiple_of=64)(feats)
        assert rounded["input_ids"].shape[1] % 64 == 0
        assert _trainer_loss(tiny_model, tokenizer, rounded, weight) == pytest.approx(
            _trainer_loss(tiny_model, tokenizer, padded, weight), rel=1e-5)


def test_teacher_forced_letter_is_counted_once_per_packed_example(tiny_model, tokenizer):
    from kormedqa.trainer import _first_answer_flags

    feats = [tokenize_pair(tokenizer, r.prompt, r.completion, 512) for r in (_row(), _row())]
    for padding_free in (False, True):
        batch = CompletionCollator(tokenizer.pad_token_id, padding_free=padding_free)(feats)
        flags = _first_answer_flags(batch["answer_mask"], supervised_positions(batch["labels"]))
        assert int(flags.sum()) == 2



def test_answer_accuracy_reads_the_argmax_at_answers_first_tokens_only(tokenizer):
    """The logged answer_token_accuracy: the argmax is right at 1 of the 2 letters; elsewhere it is
    wrong everywhere, which must not count."""
    from kormedqa.trainer import _first_answer_flags, _LossParts

    feats = [tokenize_pair(tokenizer, r.prompt, r.completion, 512) for r in (_row(), _row())]
    batch = CompletionCollator(tokenizer.pad_token_id, padding_free=True)(feats)
    keep = supervised_positions(batch["labels"])
    targets = batch["labels"][:, 1:][keep[:, :-1]]
    is_answer = batch["answer_mask"][:, 1:][keep[:, :-1]].bool()
    first = _first_answer_flags(batch["answer_mask"], keep)
    logits = torch.zeros(len(targets), 50)
    logits[torch.arange(len(targets)), (targets + 1) % 50] = 1.0  # wrong everywhere
    hit = first.nonzero()[0, 0]
    logits[hit, targets[hit] % 50] = 2.0  # right at the first letter only
    targets = targets % 50
    parts = _LossParts()
    parts.add(torch.ones(len(targets)), logits, targets, is_answer, batch["answer_mask"], keep)
    assert parts.summary()["answer_token_accuracy"] == 0.5


@pytest.mark.parametrize("weight", ["none", "2/3"])
def test_gradient_accumulation_trains_like_one_big_batch(tiny_model_dir, tokenizer, tmp_path, weight):
    """batch 3 x accum 1 and batch 1 x accum 3 see the same examples: same logged loss, same update."""
    from safetensors.torch import load_file

    from kormedqa.sft import run_training

    rows = [_row(), dict_example(DictEntry("고혈압", "Hypertension. 혈압이 높은 상태")),
            mcq_examples([MCQ(id="q2", question="'빈혈'의 정의는?", options=("가", "나", "다", "라", "마"), answer="C")],
                         seed=0, detailed_fraction=0.0)[0]]
    rows = [{"prompt": r.prompt, "completion": r.completion} for r in rows]
    runs = {}
    # fp32 on every machine: where the CPU has native bf16, `auto` computes the frozen weights in bf16,
    # whose rounding differs between one batch of 3 and three of 1 (0.4% of update entries, seen on
    # an AMD EPYC with avx512_bf16), which is precision, not accumulation.
    for name, (batch, accum) in {"big": (3, 1), "accum": (1, 3)}.items():
        cfg = TrainConfig(base_model=str(tiny_model_dir), track="mcq", max_steps=1, batch_size=batch, grad_accum=accum,
                          learning_rate=1e-2, answer_weight=weight, lora_dropout=0.0, device="cpu", precision="fp32",
                          seed=7)
        summary = run_training(cfg, rows, tmp_path / name, tokenizer=tokenizer, stage=name)
        runs[name] = (summary["log"][0]["loss"], load_file(tmp_path / name / "adapter_model.safetensors"))
    assert runs["accum"][0] == pytest.approx(runs["big"][0], rel=1e-5)
    # Adam's first step is lr * g / (|g| + eps): entries whose gradient is ~0 take a sign from
    # rounding noise, so compare the update entry by entry and allow only those few to differ.
    differ = sum(int((~torch.isclose(runs["accum"][1][k], v, atol=1e-6)).sum()) for k, v in runs["big"][1].items())
    total = sum(v.numel() for v in runs["big"][1].values())
    assert differ / total < 1e-3, (differ, total)
    # The step changed something (lora_B starts at zero), so the comparison above is not vacuous.
    assert any(float(v.abs().sum()) > 0 for k, v in runs["big"][1].items() if "lora_B" in k)


def test_packed_examples_do_not_attend_to_each_other(tiny_model, tokenizer):
    """Per-token cross-entropy of a packed row equals each example scored alone.

    transformers builds the block-diagonal mask from position_ids only when no KV cache exists;
    Gemma configs set use_cache=True, so the training and scoring forwards must turn it off.
    Per-token values, not a mean loss, so that a small leak on a random tiny model still shows.
    """
    from kormedqa.batching import supervised_ce

    rows = [_row(), dict_example(DictEntry("고혈압", "Hypertension. 혈압이 정상 범위보다 높은 상태")), _row()]
    feats = [tokenize_pair(tokenizer, r.prompt, r.completion, 512) for r in rows]
    # Rounded up with a pad segment, which must not leak into the examples before it either.
    packed = CompletionCollator(tokenizer.pad_token_id, padding_free=True, pad_to_multiple_of=64)(feats)
    assert packed["input_ids"].shape[1] > sum(len(f["input_ids"]) for f in feats)
    alone = []
    for f in feats:
        one = CompletionCollator(tokenizer.pad_token_id)([f])
        alone.append(supervised_ce(tiny_model, one["input_ids"], one["attention_mask"], one["labels"])[0])
    ce, _, _ = supervised_ce(tiny_model, packed["input_ids"], None, packed["labels"], position_ids=packed["position_ids"])
    assert torch.allclose(ce, torch.cat(alone), atol=1e-6, rtol=0)
    trainer_logits = _trainer_logits(tiny_model, tokenizer, packed)
    keep = supervised_positions(packed["labels"])
    targets = packed["labels"][:, 1:][keep[:, :-1]]
    assert torch.allclose(F.cross_entropy(trainer_logits.float(), targets, reduction="none"), torch.cat(alone),
                          atol=1e-6, rtol=0)


def _trainer_logits(model, tokenizer, batch):
    from transformers import TrainingArguments
    args = TrainingArguments(output_dir="/tmp/kq-unused", use_cpu=True, report_to="none")
    trainer = AnswerWeightedTrainer(model=model, args=args, answer_weight=None,
                                    data_collator=CompletionCollator(tokenizer.pad_token_id))
    model.eval()
    with torch.no_grad():
        _, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    return outputs.logits.reshape(-1, outputs.logits.shape[-1])


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_lr_scheduler_type_sets_the_logged_learning_rates(tiny_model_dir, tokenizer, tmp_path, schedule):
    """--lr-scheduler-type reaches the Trainer: linear falls step by step from the peak, constant stays there."""
    from kormedqa.sft import run_training

    rows = [{"prompt": r.prompt, "completion": r.completion}
            for r in [_row(), dict_example(DictEntry("고혈압", "Hypertension. 혈압이 높은 상태"))]]
    cfg = TrainConfig(base_model=str(tiny_model_dir), track="mcq", max_steps=3, batch_size=1, grad_accum=1,
                      learning_rate=1e-3, lr_scheduler_type=schedule, device="cpu", precision="fp32", seed=7)
    summary = run_training(cfg, rows, tmp_path / schedule, tokenizer=tokenizer, stage=schedule)
    rates = [row["learning_rate"] for row in summary["log"] if "learning_rate" in row]
    assert len(rates) == 3 and rates[0] == pytest.approx(1e-3)
    if schedule == "constant":
        assert rates == pytest.approx([1e-3] * 3)
    else:
        assert rates[0] > rates[1] > rates[2] > 0


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_lora_input_cast_is_skipped_only_where_it_is_a_round_trip(tiny_model_dir, tokenizer, tmp_path, monkeypatch,
                                                                   dropout):
    """bf16 training without LoRA dropout skips peft's cast of each LoRA input to fp32 (autocast casts it
    back): losses and adapter bit for bit those of a run that casts. With dropout the cast stays."""
    from contextlib import nullcontext

    from safetensors.torch import load_file

    from kormedqa import trainer as trainer_module
    from kormedqa.sft import run_training

    rows = [{"prompt": r.prompt, "completion": r.completion}
            for r in [_row(), dict_example(DictEntry("고혈압", "Hypertension. 혈압이 높은 상태"))]]
    plain = trainer_module.lora_input_cast
    seen = []

    def spy(model, active):
        ctx = plain(model, active)
        seen.append(not isinstance(ctx, nullcontext))
        return ctx

    runs = {}
    for name, lever in (("skip", spy), ("cast", lambda model, active: nullcontext())):
        monkeypatch.setattr(trainer_module, "lora_input_cast", lever)
        cfg = TrainConfig(base_model=str(tiny_model_dir), track="mcq", max_steps=3, batch_size=1, grad_accum=1,
                          learning_rate=1e-2, lora_dropout=dropout, device="cpu", precision="bf16", seed=7)
        summary = run_training(cfg, rows, tmp_path / name, tokenizer=tokenizer, stage=name)
        runs[name] = ([r["loss"] for r in summary["log"] if "loss" in r],
                      load_file(tmp_path / name / "adapter_model.safetensors"))
    assert seen and all(seen) == (dropout == 0.0) and any(seen) == (dropout == 0.0)
    if dropout == 0.0:
        assert runs["skip"][0] == runs["cast"][0]
        assert all(torch.equal(runs["skip"][1][k], v) for k, v in runs["cast"][1].items())

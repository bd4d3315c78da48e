"""Generation, log-likelihood and loss scoring on a tiny model, checked against direct computations."""
import pytest
import torch
import torch.nn.functional as F

from kormedqa.data import load_mcq
from kormedqa.evaluate import evaluate_mcq
from kormedqa.scorers import eval_prompt, generate, letter_logprobs
from kormedqa.metrics import wilson_interval

from helpers import write_sample


def test_loglik_equals_full_forward(tiny_model, tokenizer, tmp_path):
    qs = load_mcq(write_sample(tmp_path)["mcq"], split="test")
    prompts = [eval_prompt(q) for q in qs]
    batched = letter_logprobs(tiny_model, tokenizer, prompts, batch_size=3)
    letters = [tokenizer.convert_tokens_to_ids(x) for x in "ABCDE"]
    for prompt, got in zip(prompts, batched):
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            logp = F.log_softmax(tiny_model(**ids).logits[0, -1].float(), -1)
        assert torch.allclose(torch.tensor(got), logp[letters], atol=1e-4)


def test_batched_generation_equals_one_by_one(tiny_model, tokenizer, tmp_path):
    qs = load_mcq(write_sample(tmp_path)["mcq"], split="test")
    prompts = [eval_prompt(q) for q in qs]
    batched = generate(tiny_model, tokenizer, prompts, batch_size=4, max_new_tokens=6)
    single = [generate(tiny_model, tokenizer, [p], batch_size=1, max_new_tokens=6)[0] for p in prompts]
    assert batched == single


def test_evaluate_all_reports_every_view(tiny_model, tokenizer, tmp_path):
    qs = load_mcq(write_sample(tmp_path)["mcq"], split="test")
    metrics, preds = evaluate_mcq(tiny_model, tokenizer, qs, "all", batch_size=2, max_new_tokens=4)
    assert metrics["n"] == len(qs) == len(preds)
    for key in ("accuracy", "parse_rate", "loglik_accuracy", "teacher_forced_answer_accuracy"):
        assert 0 <= metrics[key]["value"] <= 1
    hits = sum(p["loglik_correct"] for p in preds)
    assert metrics["loglik_accuracy"]["correct"] == hits
    assert set(metrics["accuracy_by_exam_type"]) == {"doctor", "nurse"}
    assert metrics["reference_loss"]["value"] > 0 and metrics["reference_loss_skipped"] == 0
    assert {"id", "gold", "prediction", "raw_output", "loglik_prediction"} <= set(preds[0])


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert round(low, 4) == 0.4902 and round(high, 4) == 0.9433
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 0) == (0.0, 0.0)
    assert wilson_interval(0, 224)[0] == 0.0 and wilson_interval(224, 224)[1] == 1.0  # no rounding dust


def test_dict_eval_scores_both_directions(monkeypatch, tiny_model, tokenizer):
    """Forward recall: exact match and chrF of the definition; reverse recall: exact match of the term
    after the very prompt the reverse dictionary row trains (formats.dict_examples)."""
    import kormedqa.evaluate as ev
    from kormedqa.formats import GENERATION_PREFIX, dict_examples
    from kormedqa.records import DictEntry

    entries = [DictEntry("고혈압", "Hypertension. 혈압이 높은 상태"), DictEntry("빈혈", "Anemia. 산소 운반 능력 감소")]
    seen = []
    answers = {"Meaning of word 고혈압:": " Hypertension. 혈압이 높은 상태", "Meaning of word 빈혈:": "전혀 다른 말",
               "Word with meaning 혈압이 높은 상태:": "저혈압", "Word with meaning 산소 운반 능력 감소:": " 빈혈\n"}

    def fake_generate(model, tok, prompts, *a, **k):
        seen.extend(prompts)
        return [next(v for key, v in answers.items() if key in p) for p in prompts]

    monkeypatch.setattr(ev, "generate", fake_generate)
    metrics, preds = ev.evaluate_dict(tiny_model, tokenizer, entries)
    assert seen[0] == "<start_of_turn>user\nMeaning of word 고혈압:<end_of_turn>\n<start_of_turn>model\n"
    reverse_rows = dict_examples(entries, directions=("reverse",))
    assert sorted(seen[2:]) == sorted(r.prompt + GENERATION_PREFIX for r in reverse_rows)
    assert [p["exact"] for p in preds] == [True, False] and [p["reverse_exact"] for p in preds] == [False, True]
    assert preds[0]["chrf"] == 100.0 and preds[1]["chrf"] < 20
    assert metrics["exact_match"]["value"] == 0.5 == metrics["reverse_exact_match"]["value"]
    assert metrics["reverse_exact_match"]["total"] == 2 and "reverse exact match 50.0%" in ev.summary_line(metrics)


def test_chunked_completion_loss_equals_full_logits(tiny_model, tokenizer, tmp_path):
    from kormedqa.scorers import completion_losses
    from kormedqa.formats import mcq_examples
    from kormedqa.batching import CompletionCollator, tokenize_pair

    qs = load_mcq(write_sample(tmp_path)["mcq"], split="test")
    rows = [e.to_row() for e in mcq_examples(qs, seed=0, detailed_fraction=0.0)]
    got = completion_losses(tiny_model, tokenizer, rows, batch_size=3)
    assert list(got) == [r["id"] for r in rows]
    for row in rows:
        result = got[row["id"]]
        feat = tokenize_pair(tokenizer, row["prompt"], row["completion"], 2048)
        batch = CompletionCollator(tokenizer.pad_token_id)([feat])
        with torch.no_grad():
            logits = tiny_model(input_ids=batch["input_ids"]).logits[0, :-1].float()
        targets = batch["labels"][0, 1:]
        ce = F.cross_entropy(logits, targets, ignore_index=-100, reduction="none")[targets != -100]
        assert result["loss"] == pytest.approx(float(ce.mean()), rel=1e-4)
        assert result["tokens"] == int((targets != -100).sum())


def test_generation_stops_after_a_stop_string_as_hf_does(tiny_model, tokenizer, tmp_path):
    """The prebuilt stop criterion cuts where `generate(stop_strings=...)` cuts, and only there."""
    qs = load_mcq(write_sample(tmp_path)["mcq"], split="test")
    prompts = [eval_prompt(q) for q in qs]
    free = generate(tiny_model, tokenizer, prompts, batch_size=4, max_new_tokens=10, stop_strings=())
    # A stop string the first output reaches after a few tokens (random weights say nothing else).
    first_ids = tokenizer(free[0], add_special_tokens=False)["input_ids"]
    stop = tokenizer.decode(first_ids[:4])
    assert stop and len(stop) < len(free[0])
    ours = generate(tiny_model, tokenizer, prompts, batch_size=4, max_new_tokens=10, stop_strings=(stop,))
    reference = []
    for p in prompts:
        enc = tokenizer(p, return_tensors="pt")
        out = tiny_model.generate(**enc, max_new_tokens=10, do_sample=False, eos_token_id=[1, 106],
                                  pad_token_id=tokenizer.pad_token_id, stop_strings=[stop], tokenizer=tokenizer)
        reference.append(tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    assert ours == reference
    assert ours[0] == stop


def test_cpu_vocab_projection_same_logits_and_gradients_then_restored(tiny_model, tokenizer):
    """The W @ h.T lm_head gives the logits and input gradients F.linear gives, and is undone after."""
    from kormedqa.modeling import cpu_vocab_projection

    head = tiny_model.get_output_embeddings()
    ids = tokenizer(["Meaning of word 고혈압:", "A) 정답"], return_tensors="pt", padding=True)
    plain = tiny_model(**ids).logits
    hidden = torch.randn(3, 5, head.weight.shape[1], requires_grad=True)
    F.linear(hidden, head.weight).square().sum().backward()
    plain_grad = hidden.grad.clone()
    hidden.grad = None
    with cpu_vocab_projection(tiny_model):
        assert "forward" in vars(head)
        patched = tiny_model(**ids).logits
        head(hidden).square().sum().backward()
    assert torch.allclose(patched, plain, atol=1e-5)
    assert torch.allclose(hidden.grad, plain_grad, rtol=1e-4, atol=1e-4)
    assert "forward" not in vars(head)  # the class's forward is back
    assert tiny_model.get_output_embeddings().weight is tiny_model.get_input_embeddings().weight


def test_over_long_reference_is_skipped_by_id_not_shifted(tiny_model, tokenizer, tmp_path):
    """A reference longer than max_length is absent from the result; the others keep their own losses."""
    from kormedqa.formats import mcq_examples
    from kormedqa.scorers import completion_losses

    qs = load_mcq(write_sample(tmp_path)["mcq"], split="test")
    rows = [e.to_row() for e in mcq_examples(qs, seed=0, detailed_fraction=0.0)]
    rows[1] = {**rows[1], "completion": rows[1]["completion"].replace("<reasoning>\n", "<reasoning>\n" + "긴 " * 400)}
    alone = {r["id"]: completion_losses(tiny_model, tokenizer, [r], max_length=300).get(r["id"]) for r in rows}
    together = completion_losses(tiny_model, tokenizer, rows, batch_size=4, max_length=300)
    assert rows[1]["id"] not in together and alone[rows[1]["id"]] is None
    for r in rows:
        if r["id"] in together:
            assert together[r["id"]]["loss"] == pytest.approx(alone[r["id"]]["loss"], rel=1e-5)


def test_join_records_refuses_results_that_do_not_match_the_questions(tmp_path):
    from kormedqa.evaluate import join_records

    qs = load_mcq(write_sample(tmp_path)["mcq"], split="test")
    full = {q.id: {"correct": True} for q in qs}
    assert [p["id"] for p in join_records(qs, {"generate": full})] == [q.id for q in qs]
    with pytest.raises(RuntimeError):
        join_records(qs, {"generate": {k: v for k, v in list(full.items())[1:]}})
    with pytest.raises(RuntimeError):
        join_records(qs, {"cloze": {**full, "stranger": {}}})
    partial = join_records(qs, {"loss": {qs[0].id: {"reference_loss": 1.0}}})
    assert "reference_loss" in partial[0] and "reference_loss" not in partial[1]


def test_cloze_scores_equal_each_option_scored_alone(tiny_model, tokenizer, tmp_path):
    """Packed option log-likelihoods equal a plain full-logits forward of each prompt + option."""
    from kormedqa.chat import END_OF_TURN
    from kormedqa.scorers import cloze_prompt, option_logprobs

    qs = load_mcq(write_sample(tmp_path)["mcq"], split="test")
    packed = option_logprobs(tiny_model, tokenizer, qs, batch_size=3)
    assert len(packed) == len(qs) and all(len(row) == 5 for row in packed)
    for q, row in zip(qs, packed):
        context = tokenizer(cloze_prompt(q))["input_ids"]
        for option, got in zip(q.options, row):
            cont = tokenizer(option + END_OF_TURN, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = F.log_softmax(tiny_model(torch.tensor([context + cont])).logits[0].float(), -1)
            want = sum(float(logp[len(context) - 1 + i, t]) for i, t in enumerate(cont))
            assert got == pytest.approx(want, abs=1e-3)


def test_cloze_metrics_from_canned_scores(tmp_path):
    """Raw and length-normalised picks, and the metrics built from them, on hand-made scores."""
    from kormedqa.evaluate import cloze_records, join_records, mcq_metrics
    from kormedqa.records import MCQ

    qs = [MCQ(id="a", question="?", options=("짧음", "아주 긴 설명입니다", "c", "d", "e"), answer="B", exam_type="doctor"),
          MCQ(id="b", question="?", options=("x", "y", "z", "w", "v"), answer="C", exam_type="nurse")]
    # a: raw favours A (-4 > -6), normalised favours B (-6/9 > -4/2); b: C wins both ways.
    scores = [[-4.0, -6.0, -50.0, -50.0, -50.0], [-9.0, -9.0, -1.0, -9.0, -9.0]]
    recs = cloze_records(qs, scores)
    assert (recs["a"]["cloze_prediction"], recs["a"]["cloze_norm_prediction"]) == ("A", "B")
    m = mcq_metrics(join_records(qs, {"cloze": recs}), ("cloze",))
    assert m["cloze_accuracy"]["correct"] == 1 and m["cloze_accuracy_norm"]["correct"] == 2
    assert m["cloze_accuracy"]["value"] == 0.5 and m["cloze_accuracy_norm"]["value"] == 1.0
    assert m["cloze_accuracy_by_exam_type"]["doctor"]["value"] == 0.0
    assert m["cloze_accuracy_by_exam_type"]["nurse"]["value"] == 1.0

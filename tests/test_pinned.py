"""Exact values: collation on literal tensors, McNemar on a literal table, report rows, perplexity,
and the first logged losses of a fixed tiny-model training run (as torchtune's recipe tests pin
their loss lists). A change that moves any of these is a behaviour change and must say so."""
import math

import pytest
import torch
import torch.nn.functional as F

from kormedqa.batching import CompletionCollator

FEATURES = [
    {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "answer_mask": [0, 0, 1]},
    {"input_ids": [8, 9], "labels": [-100, 9], "answer_mask": [0, 1]},
]


def test_padded_collation_on_literal_tensors():
    batch = CompletionCollator(pad_token_id=0)(FEATURES)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]
    assert batch["answer_mask"].tolist() == [[0, 0, 1], [0, 1, 0]]


def test_padding_free_collation_on_literal_tensors():
    batch = CompletionCollator(pad_token_id=0, padding_free=True)(FEATURES)
    assert set(batch) == {"input_ids", "position_ids", "labels", "answer_mask"}
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert batch["answer_mask"].tolist() == [[0, 0, 1, 0, 1]]


def test_collation_rounded_to_a_multiple_on_literal_tensors():
    padded = CompletionCollator(pad_token_id=0, pad_to_multiple_of=4)(FEATURES)
    assert padded["input_ids"].tolist() == [[5, 6, 7, 0], [8, 9, 0, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert padded["labels"].tolist() == [[-100, 6, 7, -100], [-100, 9, -100, -100]]
    # Packed: 5 tokens -> 8, the 3 extra a segment of its own (positions restart), never a target.
    packed = CompletionCollator(pad_token_id=0, padding_free=True, pad_to_multiple_of=4)(FEATURES)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert packed["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, -100, -100]]
    assert packed["answer_mask"].tolist() == [[0, 0, 1, 0, 1, 0, 0, 0]]
    # Already a multiple: nothing added.
    assert CompletionCollator(pad_token_id=0, padding_free=True, pad_to_multiple_of=5)(FEATURES)["input_ids"].shape == (1, 5)


def test_mcnemar_exact_on_a_literal_table():
    from kormedqa.metrics import mcnemar_exact

    # 3 questions only the first arm got, 0 only the second: two-sided binomial p = 2 * 0.5**3.
    got = mcnemar_exact([True, True, True, False, True], [False, False, False, False, True])
    assert (got["only_a"], got["only_b"]) == (3, 0)
    assert got["p_value"] == pytest.approx(0.25) and got["significant_at_0.05"] is False
    # 1 vs 9 discordant: p = 2 * (C(10,0) + C(10,1)) / 2**10 = 22/1024.
    got = mcnemar_exact([True] + [False] * 9, [False] + [True] * 9)
    assert got["p_value"] == pytest.approx(22 / 1024) and got["significant_at_0.05"] is True
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0


def test_mean_interval_on_literal_values():
    from kormedqa.metrics import mean_interval

    got = mean_interval([1.0, 2.0, 3.0])
    half = 1.959963984540054 * 1.0 / math.sqrt(3)
    assert got["value"] == 2.0 and got["total"] == 3
    assert got["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    from kormedqa.numerics import NonFiniteError

    with pytest.raises(NonFiniteError):
        mean_interval([1.0, float("nan")])


def test_report_rows_and_sentences_from_literal_metrics():
    from kormedqa.report import results_table, what_moved

    def p(value, low, high):
        return {"value": value, "ci95": [low, high]}

    before = {"accuracy": p(0.2, 0.1, 0.3), "cloze_accuracy": p(0.3, 0.2, 0.4)}
    after = {"accuracy": p(0.5, 0.4, 0.6), "cloze_accuracy": p(0.6, 0.5, 0.7)}
    table = results_table(before, {"loops": [{"loop": 1, "metrics": after}]}).splitlines()
    assert table[0] == "| stage | accuracy (gen) | cloze accuracy |"
    assert table[2] == "| before training | 20.0% [10.0%, 30.0%] | 30.0% [20.0%, 40.0%] |"
    assert table[3] == "| loop 1 | 50.0% [40.0%, 60.0%] | 60.0% [50.0%, 70.0%] |"
    tests = {"cloze_accuracy": {"p_value": 0.001, "significant_at_0.05": True}}
    lines = what_moved(before, after, tests)
    assert lines[0] == "- Generation accuracy: 20.0% -> 50.0% [40.0%, 60.0%] (+30.0 points)"
    assert lines[1] == ("- Cloze accuracy (option text): 30.0% -> 60.0% [50.0%, 70.0%] (+30.0 points); "
                        "McNemar exact p = 0.001 (significant at 0.05)")


def test_perplexity_is_exp_of_the_mean_next_token_cross_entropy(tiny_model, tokenizer):
    from kormedqa.cpt import perplexity

    texts = ["고혈압은 혈압이 높은 상태이다.", "빈혈은 혈액의 산소 운반 능력이 감소한 상태이다."]
    total, count = 0.0, 0
    eos = tokenizer.eos_token_id
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"] + [eos]])
        with torch.no_grad():
            logits = tiny_model(ids).logits[0, :-1].float()
        ce = F.cross_entropy(logits, ids[0, 1:], reduction="sum")
        total, count = total + float(ce), count + ids.shape[1] - 1
    assert perplexity(tiny_model, tokenizer, texts) == pytest.approx(math.exp(total / count), rel=1e-5)


# The first three logged losses of `run_training` on the tiny model (tests/conftest.py), the rows
# below, batch 2, lr 1e-2, no dropout, seed 7, padding-free, answer weight 2/3, fp32.
PINNED_LOSSES = [12.5255, 12.4235, 12.3104]  # measured 2026-11-30, AMD EPYC (avx2), torch 2.13 CPU


def test_first_training_losses_are_pinned(tiny_model_dir, tokenizer, tmp_path):
    from kormedqa.formats import dict_example, mcq_examples
    from kormedqa.records import MCQ, DictEntry
    from kormedqa.sft import TrainConfig, run_training

    mcq = MCQ(id="q1", question="'고혈압'의 정의로 옳은 것은?", options=("혈압이 높은 상태", "나", "다", "라", "마"), answer="A")
    rows = [mcq_examples([mcq], seed=0, detailed_fraction=0.0)[0], dict_example(DictEntry("빈혈", "Anemia. 혈색소가 부족한 상태")),
            dict_example(DictEntry("고혈압", "Hypertension. 혈압이 높은 상태")), mcq_examples([mcq], seed=1, detailed_fraction=0.0)[0]]
    rows = [{"prompt": r.prompt, "completion": r.completion} for r in rows]
    cfg = TrainConfig(base_model=str(tiny_model_dir), track="mcq", max_steps=3, batch_size=2, grad_accum=1, learning_rate=1e-2,
                      answer_weight="2/3", lora_dropout=0.0, device="cpu", precision="fp32", seed=7)
    log = run_training(cfg, rows, tmp_path / "run", tokenizer=tokenizer, stage="pinned")["log"]
    # rel 1e-4: other CPUs' fp32 kernels sum in other orders; a real change moves the loss far more.
    assert [row["loss"] for row in log] == pytest.approx(PINNED_LOSSES, rel=1e-4)


# CPT (`run_cpt`) on the tiny model: the two sample paragraphs below plus one vocabulary line x2,
# batch 2, lr 1e-2, 3 steps, seed 7, fp32. The logged losses and held-out perplexity before/after.
PINNED_CPT_LOSSES = [12.4652, 12.3981, 12.2460]  # measured 2026-12-03, Intel Xeon Processor (amx_bf16), torch 2.13 CPU
PINNED_CPT_PERPLEXITY = (258767.2, 216954.8)  # held-out perplexity before and after (the corpus itself)


def test_first_cpt_losses_are_pinned(tiny_model_dir, tmp_path):
    import json

    from kormedqa.cpt import CPTConfig, run_cpt

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("고혈압은 혈압이 정상 범위보다 높은 상태이다.\n빈혈은 혈액의 산소 운반 능력이 감소한 상태이다.\n",
                      encoding="utf-8")
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps([{"term": "폐렴", "definition": "Pneumonia. 폐 실질에 생긴 염증"}], ensure_ascii=False))
    cfg = CPTConfig(base_model=str(tiny_model_dir), corpus=str(corpus), heldout=str(corpus), vocab=[str(vocab)],
                    vocab_repeat=2, output=str(tmp_path / "cpt"), max_steps=3, batch_size=2, learning_rate=1e-2,
                    max_length=64, device="cpu", precision="fp32", seed=7)
    metrics = run_cpt(cfg)
    log = [json.loads(line) for line in (tmp_path / "cpt" / "train_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    perplexity = (metrics["perplexity_before"], metrics["perplexity_after"])
    assert losses == pytest.approx(PINNED_CPT_LOSSES, rel=1e-4)
    assert perplexity == pytest.approx(PINNED_CPT_PERPLEXITY, rel=1e-4)


# GRPO (`run_grpo`) on the tiny model: write_sample's 6 training questions, 2 completions of at most
# 6 tokens per prompt, 4 completions per step, 1 step, seed 7, fp32. Sampling is seeded, so the
# completions are fixed: the random model's never reach `</reasoning>X`, so reward and loss are 0;
# the tokens TRL counted and the policy's entropy on the sampled tokens pin the sampling and the forward.
PINNED_GRPO = {"loss": 0.0, "reward": 0.0, "num_tokens": 424.0, "entropy": 12.46384}  # measured 2026-12-03, Intel Xeon Processor, torch 2.13 CPU


def test_first_grpo_steps_are_pinned(tiny_model_dir, tmp_path):
    from kormedqa.data import load_mcq
    from kormedqa.grpo import GRPOStageConfig, grpo_rows_from_mcqs, run_grpo

    from helpers import write_sample

    qs = load_mcq(write_sample(tmp_path / "d")["mcq"], split="train")
    cfg = GRPOStageConfig(base_model=str(tiny_model_dir), max_steps=1, num_generations=2, max_completion_length=6,
                          batch_size=4, learning_rate=1e-2, device="cpu", precision="fp32", seed=7)
    log = run_grpo(cfg, grpo_rows_from_mcqs(qs), tmp_path / "grpo")["log"]
    assert len(log) == 1
    assert {k: log[0][k] for k in PINNED_GRPO} == pytest.approx(PINNED_GRPO, rel=1e-4, abs=1e-6)


# One loop of the shared tiny loop (tests/helpers.py TINY_LOOP) in fp32: the metrics history.json keeps.
PINNED_LOOP_LOSSES = {"dict": 12.5435, "mcq": 12.5741}  # measured 2026-12-03, Intel Xeon Processor, torch 2.13 CPU
# dict_chrf scores greedy text of a random model, the figure most sensitive to rounding: it moved from
# 1.424286 when training batches were first rounded up to 64 tokens (other matmul shapes; losses unchanged).
PINNED_LOOP_METRICS = {"accuracy": 0.0, "loglik_accuracy": 0.0, "cloze_accuracy": 0.0, "cloze_accuracy_norm": 0.5,
                       "reference_loss": 12.47958, "reference_answer_loss": 12.57676, "dict_chrf": 1.430808}


@pytest.mark.slow  # a whole loop: training, every scorer, checkpoints (the fast subset has the parts)
def test_one_tiny_loops_metrics_are_pinned(tiny_model_dir, tmp_path):
    from kormedqa.loop import run_loop

    from helpers import tiny_loop_config, write_sample

    # Scored on the test split as when pinned (the loop's default is now to choose on dev and score
    # test once at the end): the same questions, so the same figures.
    history = run_loop(tiny_loop_config(write_sample(tmp_path / "data"), tiny_model_dir, tmp_path / "run",
                                        precision="fp32", eval_split="test", test_split=""))
    record = history["loops"][0]
    losses = {track: part["train_loss"] for track, part in record["training"].items()}
    metrics = {k: v["value"] if isinstance(v, dict) else v for k, v in record["metrics"].items() if k in PINNED_LOOP_METRICS}
    assert losses == pytest.approx(PINNED_LOOP_LOSSES, rel=1e-4)
    assert metrics == pytest.approx(PINNED_LOOP_METRICS, rel=1e-4)

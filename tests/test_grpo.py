"""Reward training with the spec's score: the reward matches the table; a few steps write an adapter."""
import json

import pytest

from kormedqa.data import load_mcq
from kormedqa.grpo import GRPOStageConfig, grpo_rows_from_mcqs, grpo_rows_from_prepared, run_grpo, seed_reward

from helpers import write_sample

DETAILED = "<reasoning>\n첫째: a\n둘째: b\n셋째: c\n넷째: A) 70%, B) 10%, C) 10%, D) 5%, E) 5%\n</reasoning>A"


def test_reward_is_the_seed_table():
    outs = [DETAILED, DETAILED, "<reasoning>x</reasoning>A", "<reasoning>x</reasoning>B", "", [{"role": "assistant", "content": DETAILED}]]
    gold = ["A", "B", "A", "A", "A", "A"]
    assert seed_reward(outs, gold=gold) == pytest.approx([1.0, 0.25, 2 / 3, 0.0, 0.0, 1.0])


def test_reward_pays_only_an_answer_in_the_seeds_place():
    # The lenient extraction reads "A" from the last listed option; as a reward that pays looping.
    looping = "<reasoning>\n각 선택지를 분석하면:\nC) 오답\nB) 오답\nA) 오답"
    assert seed_reward([looping, looping + "\n</reasoning>A"], gold=["A", "A"]) == pytest.approx([0.0, 2 / 3])


def test_reward_pays_only_an_answer_that_ends_at_its_letter():
    good = "<reasoning>\nA) 정답 ✓\n</reasoning>A"
    run_on = [good + "model>A", good + "model</reasoning>A", good + "\n", "<reasoning>x</reasoning> 정답: A"]
    assert seed_reward(run_on, gold=["A"] * 4) == pytest.approx([0.0, 0.0, 2 / 3, 2 / 3])


def test_prepared_rows_give_gold_from_reference_completion():
    rows = [{"prompt": "<start_of_turn>user\nq<end_of_turn>", "completion": "<start_of_turn>model\n<reasoning>\nx\n</reasoning>D<end_of_turn>"}]
    assert grpo_rows_from_prepared(rows) == [{"prompt": "<start_of_turn>user\nq<end_of_turn>\n<start_of_turn>model\n", "gold": "D"}]


@pytest.mark.slow  # two GRPO steps end to end (test_pinned has one)
def test_a_few_grpo_steps_write_an_adapter(tmp_path, tiny_model_dir):
    import shutil

    qs = load_mcq(write_sample(tmp_path / "d")["mcq"], split="train")
    # A checkpoint whose generation config stops on <eos> only, as many Gemma checkpoints ship.
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    (model_dir / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": 1}))
    cfg = GRPOStageConfig(base_model=str(model_dir), max_steps=2, num_generations=2, max_completion_length=6,
                          batch_size=4, device="cpu")
    summary = run_grpo(cfg, grpo_rows_from_mcqs(qs), tmp_path / "grpo")
    assert summary["steps"] == 2
    assert 106 in summary["eos_token_ids"]  # <end_of_turn> ends a completion and its loss mask
    assert (tmp_path / "grpo" / "adapter_model.safetensors").exists()
    logged = [json.loads(l) for l in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert any("reward" in l for l in logged)


def test_seed_reward_docstring_examples_hold():
    import doctest

    import kormedqa.grpo

    result = doctest.testmod(kormedqa.grpo)
    assert result.attempted >= 3 and result.failed == 0


def test_per_example_lists_of_unequal_length_fail_instead_of_shifting():
    """Issue 13 item 6: results paired by position must fail loudly when a list lost an element."""
    from kormedqa.metrics import accuracy_by_group, mcnemar_exact

    with pytest.raises(ValueError):
        seed_reward(["</reasoning>A", "</reasoning>B"], gold=["A"])
    with pytest.raises(ValueError):
        accuracy_by_group([True, False], ["doctor"])
    with pytest.raises(ValueError):
        mcnemar_exact([True, False, True], [True, False])

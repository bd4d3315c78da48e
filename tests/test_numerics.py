"""No NaN or inf reaches a pick, a logged loss or a metric (case fp16_nan and its class).

A model stand-in that overflows: a forward hook writes NaN or inf into the final norm's output,
which is what Gemma 3 in fp16 does after a few layers. Every scorer, training, the log callback
and the metric helpers must stop with NonFiniteError instead of picking "A".
"""
import json
import math
from pathlib import Path

import pytest
import torch

from kormedqa.numerics import NonFiniteError, check_finite, check_finite_number, check_finite_tree

CASE = Path(__file__).resolve().parents[2] / "shared" / "cases" / "fp16_nan"
BAD = [("nan", float("nan")), ("inf", float("inf")), ("-inf", float("-inf"))]


def _overflow(model, value):
    """Make `model` produce `value` in its last hidden state (hence in every logit)."""
    norm = model.get_decoder().norm
    return norm.register_forward_hook(lambda mod, args, out: torch.full_like(out, value))


def test_check_finite_passes_finite_and_names_what_and_how_many():
    t = torch.tensor([1.0, -2.0])
    assert check_finite(t, "x") is t
    with pytest.raises(NonFiniteError, match=r"letter log-probabilities: 2 of 3 values are not finite \(1 NaN, 1 inf\)"):
        check_finite(torch.tensor([0.0, float("nan"), float("-inf")]), "letter log-probabilities")
    with pytest.raises(NonFiniteError, match="bfloat16"):
        check_finite(torch.tensor([float("inf")], dtype=torch.bfloat16), "logits")


@pytest.mark.parametrize("name,value", BAD)
def test_letter_scores_refuse_overflow(tiny_model, tokenizer, name, value):
    from kormedqa.scorers import letter_logprobs

    _overflow(tiny_model, value)
    with pytest.raises(NonFiniteError, match="letter log-probabilities"):
        letter_logprobs(tiny_model, tokenizer, ["<start_of_turn>user\n질문<end_of_turn>\n<start_of_turn>model\n"])


@pytest.mark.parametrize("name,value", BAD[:2])
def test_generation_refuses_overflow_instead_of_emitting_token_0(tiny_model, tokenizer, name, value):
    from kormedqa.scorers import generate

    _overflow(tiny_model, value)
    with pytest.raises(NonFiniteError, match="generation logits"):
        generate(tiny_model, tokenizer, ["<start_of_turn>user\n질문<end_of_turn>\n<start_of_turn>model\n"] * 2,
                 batch_size=2, max_new_tokens=3)


@pytest.mark.parametrize("name,value", BAD[:2])
def test_teacher_forced_loss_refuses_overflow(tiny_model, tokenizer, name, value):
    from kormedqa.scorers import completion_losses

    _overflow(tiny_model, value)
    rows = [{"id": "q1", "prompt": "<start_of_turn>user\n질문<end_of_turn>", "completion": "<start_of_turn>model\nA<end_of_turn>"}]
    with pytest.raises(NonFiniteError, match="teacher-forced cross-entropy"):
        completion_losses(tiny_model, tokenizer, rows)


def test_cloze_option_scores_refuse_overflow(tiny_model, tokenizer):
    from kormedqa import scorers
    from kormedqa.records import MCQ

    _overflow(tiny_model, float("nan"))
    q = MCQ(id="q", question="고혈압?", options=("가", "나", "다", "라", "마"), answer="A")
    with pytest.raises(NonFiniteError):
        scorers.option_logprobs(tiny_model, tokenizer, [q], 1)


@pytest.mark.parametrize("name,value", BAD[:2])
def test_training_stops_on_a_non_finite_loss_and_writes_no_adapter(tiny_model, tokenizer, tmp_path, name, value):
    from kormedqa.sft import TrainConfig, run_training

    _overflow(tiny_model, value)
    rows = [{"id": "q1", "prompt": "<start_of_turn>user\n질문<end_of_turn>", "completion": "<start_of_turn>model\nA<end_of_turn>"}] * 2
    cfg = TrainConfig(base_model="unused", track="mcq", max_steps=2, batch_size=2, grad_accum=1, learning_rate=1e-3,
                      max_length=64, device="cpu", precision="fp32")
    with pytest.raises(NonFiniteError, match="training loss at step 1"):
        run_training(cfg, rows, tmp_path / "adapter", model=tiny_model, tokenizer=tokenizer, logs_dir=tmp_path)
    assert not (tmp_path / "adapter").exists()
    log = tmp_path / "train_log.jsonl"
    assert not log.exists() or not log.read_text().strip()  # no loss line logged as if it were fine


@pytest.mark.parametrize("key", ["loss", "grad_norm"])
def test_log_callback_refuses_a_non_finite_logged_value(tmp_path, key):
    """GRPO's loss is TRL's own: the log callback is where a NaN of it is caught."""
    from types import SimpleNamespace

    from kormedqa.trainer import JsonlLogCallback

    cb = JsonlLogCallback(tmp_path / "log.jsonl", "grpo")
    state = SimpleNamespace(is_world_process_zero=True, global_step=3, epoch=1.0)
    with pytest.raises(NonFiniteError, match=f"grpo {key} at step 3"):
        cb.on_log(None, state, None, logs={"loss": 1.0, "grad_norm": 1.0, key: torch.tensor(float("nan"))})
    assert not (tmp_path / "log.jsonl").exists()
    cb.on_log(None, state, None, logs={"loss": 0.5, "grad_norm": 2.0})
    assert json.loads((tmp_path / "log.jsonl").read_text())["loss"] == 0.5


@pytest.mark.parametrize("name,value", BAD)
def test_metric_helpers_refuse_non_finite(name, value):
    from kormedqa.metrics import finite_mean, proportion

    with pytest.raises(NonFiniteError):
        finite_mean([1.0, value], "answer-only loss")
    with pytest.raises(NonFiniteError):
        proportion(value, 10)
    with pytest.raises(NonFiniteError, match=r"metrics.loglik_accuracy.value"):
        check_finite_tree({"n": 2, "loglik_accuracy": {"value": value, "ci95": [0.1, 0.9]}}, "metrics")
    with pytest.raises(NonFiniteError):
        check_finite_number(value, "x")
    assert finite_mean([1.0, 2.0], "x") == 1.5 and proportion(1, 2)["value"] == 0.5
    check_finite_tree({"a": [1.0, None, {"b": 2}]})


def test_write_eval_refuses_a_nan_metric_and_writes_nothing(tmp_path):
    from kormedqa.evaluate import write_eval

    with pytest.raises(NonFiniteError, match="answer_letter_loss"):
        write_eval(tmp_path / "ev", {"n": 1, "answer_letter_loss": math.nan}, [{"id": "q"}])
    assert not (tmp_path / "ev").exists()


def _run(argv, capsys):
    from kormedqa.cli import main

    code = main(argv)
    return code, capsys.readouterr().err.strip()


def test_case_fp16_eval_is_refused_in_one_line_before_any_output(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ev_fp16"
    code, err = _run(["eval", "--model", str(tiny_model_dir), "--data", str(CASE / "q.jsonl"), "--output", str(out),
                      "--mode", "generate,loglik", "--max-new-tokens", "8", "--batch-size", "2", "--device", "cpu",
                      "--precision", "fp16"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "fp16" in err and "bf16 or fp32" in err, err
    assert not out.exists()


def test_case_fp16_train_is_refused_before_run_json(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "<start_of_turn>user\nq<end_of_turn>",
                                "completion": "<start_of_turn>model\nA<end_of_turn>"}) + "\n")
    code, err = _run(["train", "mcq", "--base-model", str(tiny_model_dir), "--data", str(data), "--output",
                      str(tmp_path / "run"), "--device", "cpu", "--precision", "fp16"], capsys)
    assert code == 2 and "overflow in fp16" in err and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def overflowing_model_dir(tiny_model_dir, tmp_path_factory):
    """A saved model whose final norm weights are inf: it overflows in fp32 too, as fp16 Gemma does."""
    from kormedqa.hardware import choose
    from kormedqa.modeling import load_model

    model = load_model(str(tiny_model_dir), choose("cpu", "fp32"))
    with torch.no_grad():
        model.get_decoder().norm.weight.fill_(float("inf"))
    out = tmp_path_factory.mktemp("overflow") / "model"
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model_dir / name).exists():
            (out / name).write_bytes((tiny_model_dir / name).read_bytes())
    return out


@pytest.mark.parametrize("mode", ["loglik", "generate"])
def test_eval_of_an_overflowing_model_stops_in_one_line_without_metrics(overflowing_model_dir, tmp_path, capsys,
                                                                        mode):
    out = tmp_path / "ev"
    code, err = _run(["eval", "--model", str(overflowing_model_dir), "--data", str(CASE / "q.jsonl"), "--output",
                      str(out), "--mode", mode, "--max-new-tokens", "4", "--batch-size", "2", "--device", "cpu",
                      "--backend", "hf"], capsys)
    errors = [line for line in err.replace("\r", "\n").splitlines() if "error" in line]  # not the progress bars
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("kormedqa eval: error: ") and "not finite" in errors[0] and "--precision fp32" in errors[0]
    assert not (out / "metrics.json").exists() and not (out / "predictions.jsonl").exists()

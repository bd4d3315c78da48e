"""`--precision auto` follows what the hardware computes: both kinds of CPU simulated, bf16 training checked."""
import json

import pytest
import torch

from kormedqa import hardware as P
from kormedqa.modeling import ModelError, check_precision, load_model

X86_NATIVE = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
X86_PLAIN = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
ARM_NATIVE = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"


def _probe(fp32, bf16):
    calls = []

    def probe():
        calls.append(1)
        return {"n": 512, "fp32_gflops": fp32, "bf16_gflops": bf16}

    return probe, calls


def test_cpu_flags_are_read_from_x86_flags_and_arm_features():
    assert "avx512_bf16" in P.cpu_flags(X86_NATIVE)
    assert "bf16" in P.cpu_flags(ARM_NATIVE)
    assert P.cpu_flags("processor\t: 0\n") == set()


def test_cpu_without_native_bf16_gets_fp32_without_running_the_probe():
    probe, calls = _probe(100, 400)
    choice = P.decide_cpu(P.cpu_flags(X86_PLAIN), probe, machine="x86_64")
    assert choice.precision == "fp32" and choice.dtype == torch.float32
    assert "avx512_bf16" in choice.reason and not calls  # an emulated-bf16 probe would cost seconds


@pytest.mark.parametrize("cpuinfo,machine,flag", [(X86_NATIVE, "x86_64", "avx512_bf16"),
                                                  ("flags\t: avx2 amx_bf16 amx_tile\n", "x86_64", "amx_bf16"),
                                                  (ARM_NATIVE, "aarch64", "bf16")])
def test_cpu_with_native_bf16_and_a_fast_probe_gets_bf16(cpuinfo, machine, flag):
    probe, calls = _probe(100.7, 407.6)  # the figures measured on the avx512_bf16 EPYC (issue 14)
    choice = P.decide_cpu(P.cpu_flags(cpuinfo), probe, machine=machine)
    assert choice.precision == "bf16" and calls == [1]
    assert flag in choice.reason and "4.0x" in choice.reason
    assert choice.cpu_bf16_flags == (flag,) and choice.probe["bf16_speedup"] == pytest.approx(4.05, abs=0.01)


def test_a_flag_the_probe_does_not_confirm_gives_fp32():
    probe, _ = _probe(100, 0.3)  # flag passed through by a hypervisor, kernel not used by this torch build
    choice = P.decide_cpu(P.cpu_flags(X86_NATIVE), probe, machine="x86_64")
    assert choice.precision == "fp32" and "probe" in choice.reason


def test_an_arm_flag_does_not_count_on_x86():
    probe, calls = _probe(100, 400)
    assert P.decide_cpu({"bf16"}, probe, machine="x86_64").precision == "fp32" and not calls


def test_probe_is_sub_second_here():
    import time

    started = time.perf_counter()
    result = P.matmul_probe()
    # It gives up early on emulated bf16: ~0.3 s here; the bound leaves room for a shared machine.
    assert time.perf_counter() - started < 2.0, result
    assert result["fp32_gflops"] > 0 and result["bf16_gflops"] > 0


@pytest.fixture()
def cpu_kind(monkeypatch):
    """Make this process's CPU look like one kind or the other."""

    def set_kind(native: bool):
        cpuinfo = X86_NATIVE if native else X86_PLAIN
        probe, _ = _probe(100.7, 407.6)
        choice = P.decide_cpu(P.cpu_flags(cpuinfo), probe, machine="x86_64", cpu="simulated")
        monkeypatch.setattr(P, "cpu_auto_choice", lambda: choice)
        return choice

    return set_kind


@pytest.mark.parametrize("native,dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_follows_the_cpu_and_explicit_choices_win(cpu_kind, native, dtype):
    cpu_kind(native)
    assert P.choose(torch.device("cpu"), "auto").dtype == dtype
    assert P.choose("cpu", "fp32").dtype == torch.float32
    assert P.choose("cpu", "bf16").dtype == torch.bfloat16
    with pytest.raises(ModelError, match="--precision must be one of"):  # a user error: one line, exit 2
        P.choose("cpu", "float8")


@pytest.mark.parametrize("native", [True, False])
def test_run_json_records_the_choice_and_why(cpu_kind, native):
    from kormedqa.provenance import provenance
    from kormedqa.sft import TrainConfig

    cpu_kind(native)
    cfg = TrainConfig(device="cpu")
    record = json.loads(json.dumps(provenance(cfg, choice=P.choose(cfg.device, cfg.precision))))["precision"]
    assert record["precision"] == ("bf16" if native else "fp32") and record["requested"] == "auto"
    assert ("avx512_bf16" in record["reason"]) and record["cpu"] == "simulated"
    assert record["kept_fp32"] == ["LoRA weights", "optimizer state", "loss", "log-softmax of scores"]
    assert (record["probe"] is not None) == native
    requested = provenance(cfg, choice=P.choose("cpu", "bf16"))["precision"]
    assert requested["requested"] == "bf16" and ("no fast bf16" in requested["reason"]) == (not native)


@pytest.mark.parametrize("native", [True, False])
def test_a_recorded_choice_reads_back_as_it_was(cpu_kind, native):
    cpu_kind(native)
    choice = P.choose("cpu", "auto")
    record = json.loads(json.dumps(choice.as_dict()))  # as run.json holds it, with kept_fp32 added
    assert P.PrecisionChoice.from_dict(record) == choice
    with pytest.raises(TypeError):
        P.PrecisionChoice.from_dict({k: v for k, v in record.items() if k != "reason"})


def test_a_resume_keeps_the_precision_its_run_recorded(cpu_kind, tmp_path, caplog):
    """The automatic choice rests on a timing probe: a resume on a busy machine must not switch precision."""
    from kormedqa.provenance import provenance, run_precision
    from kormedqa.sft import TrainConfig

    cpu_kind(True)  # the run starts where the probe says bf16
    started = TrainConfig(device="cpu", output=str(tmp_path))
    (tmp_path / "run.json").write_text(json.dumps(provenance(started, choice=run_precision(started))))
    cpu_kind(False)  # today the probe says fp32
    resumed = run_precision(TrainConfig(device="cpu", output=str(tmp_path), resume=True))
    assert (resumed.precision, resumed.requested, resumed.cpu_bf16_flags) == ("bf16", "auto", ("avx512_bf16",))
    assert "resuming in bf16, as the run recorded" in caplog.text
    # A new run, an explicit precision or another kind of device decides afresh.
    assert run_precision(TrainConfig(device="cpu", output=str(tmp_path))).precision == "fp32"
    assert run_precision(TrainConfig(device="cpu", output=str(tmp_path), resume=True, precision="fp32")).precision == "fp32"
    record = json.loads((tmp_path / "run.json").read_text())
    record["precision"]["device"] = "cuda:0"
    (tmp_path / "run.json").write_text(json.dumps(record))
    assert run_precision(TrainConfig(device="cpu", output=str(tmp_path), resume=True)).precision == "fp32"
    assert run_precision(TrainConfig(device="cpu", output=str(tmp_path / "none"), resume=True)).precision == "fp32"


def test_fp16_is_refused_for_gemma_before_anything_is_loaded(tiny_model_dir):
    with pytest.raises(P.PrecisionError, match="overflow in fp16"):
        P.check_model_precision("gemma3_text", torch.float16)
    P.check_model_precision("llama", torch.float16)  # other families may run in fp16; the NaN guards stay
    with pytest.raises(ModelError, match="use --precision bf16 or fp32"):
        check_precision(str(tiny_model_dir), P.choose("cpu", "fp16"))
    with pytest.raises(ModelError, match="overflow in fp16"):
        load_model(str(tiny_model_dir), P.choose("cpu", "fp16"))


def _train(tiny_model_dir, tokenizer, tmp_path, precision, monkeypatch, steps=2):
    import kormedqa.sft as sft
    from kormedqa.sft import TrainConfig, run_training

    seen = {}
    original = sft.save_checkpoint

    def keep_trainer(trainer, *args, **kwargs):
        seen["trainer"] = trainer
        return original(trainer, *args, **kwargs)

    monkeypatch.setattr(sft, "save_checkpoint", keep_trainer)
    # Short completions: only supervised positions reach the 262k-row lm_head, the cost of a CPU step
    # where bf16 is emulated (~300x slower matmuls); the code path is the same as for long ones.
    rows = [{"prompt": "<start_of_turn>user\n'고혈압'의 정의로 옳은 것은?<end_of_turn>",
             "completion": "<start_of_turn>model\n혈압이 높은 상태, A<end_of_turn>"},
            {"prompt": "<start_of_turn>user\nMeaning of word 빈혈:<end_of_turn>",
             "completion": "<start_of_turn>model\nAnemia.<end_of_turn>"}]
    cfg = TrainConfig(base_model=str(tiny_model_dir), track="mcq", max_steps=steps, batch_size=2, grad_accum=1,
                      learning_rate=1e-2, max_length=128, answer_weight="none", lora_dropout=0.0, device="cpu",
                      precision=precision, seed=3)
    summary = run_training(cfg, rows, tmp_path / precision / "adapter", tokenizer=tokenizer,
                           logs_dir=tmp_path / precision)
    return summary, seen["trainer"]


def test_bf16_training_step_matches_fp32_and_keeps_lora_and_adam_in_fp32(tiny_model_dir, tokenizer, tmp_path,
                                                                          monkeypatch):
    """Tolerance: 1% of the loss. bf16 keeps 8 mantissa bits (0.4% per value); the loss is an fp32
    cross-entropy averaged over tokens, so the rounding of the logits mostly cancels (measured here:
    ~1e-5 relative at step 1). Step 2 also compares the update, made on fp32 LoRA weights."""
    from safetensors.torch import load_file

    fp32, _ = _train(tiny_model_dir, tokenizer, tmp_path, "fp32", monkeypatch)
    bf16, trainer = _train(tiny_model_dir, tokenizer, tmp_path, "bf16", monkeypatch)
    losses32 = [h["loss"] for h in fp32["log"]]
    losses16 = [h["loss"] for h in bf16["log"]]
    assert len(losses16) == len(losses32) == 2
    for a, b in zip(losses32, losses16):
        assert abs(a - b) <= 0.01 * abs(a), (losses32, losses16)
    model = trainer.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # LoRA weights
    assert all(p.dtype == torch.bfloat16 for p in frozen)  # the base ran in bf16
    moments = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    assert moments and all(v.dtype == torch.float32 for v in moments)  # Adam's state
    saved = load_file(tmp_path / "bf16" / "adapter" / "adapter_model.safetensors")
    assert all(t.dtype == torch.float32 for t in saved.values())

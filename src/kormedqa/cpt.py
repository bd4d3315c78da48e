"""Continued pretraining (the spec's stage 1.1): causal-LM training on plain medical text.

Dictionary lines are repeated `vocab_repeat` times (the spec's "medical vocab x5"). Training uses
LoRA and then merges it, so the output is a plain model folder the SFT stages start from.
Perplexity on held-out text is measured before and after (the spec's target is < 3.0).
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from .batching import CompletionCollator, SpecialTokenError, encode_text, strip_leading_bos, supervised_ce
from .checks import Range, check_config
from .config import SAMPLE_DICTIONARIES, LoraArgs, ModelArgs, ReportArgs, RunArgs, arg
from .data import load_dictionary, read_text_corpus
from .fsio import write_json_atomic
from .hardware import PrecisionChoice
from .modeling import load_model, load_tokenizer, lora_config, merge_into_base
from .provenance import claim_run, provenance, run_precision
from .records import DataError
from .stage import Stage
from .trainer import AnswerWeightedTrainer, TrainerSettings, training_arguments

log = logging.getLogger(__name__)

@dataclass
class CPTConfig(ModelArgs, LoraArgs, ReportArgs, RunArgs):
    """`kormedqa cpt`: continued pretraining on plain text + repeated vocabulary."""

    output: str = arg("runs/cpt", "folder for model/ (the merged model), metrics.json, run.json and train_log.jsonl")
    corpus: str = arg("data/sample/corpus/train.txt", "a .txt file or a folder of .txt files (one paragraph per line)")
    heldout: str | None = arg("data/sample/corpus/heldout.txt", "held-out text for perplexity before and after")
    vocab: list[str] = arg(help="dictionary JSON(s) whose 'term: definition' lines are trained --vocab-repeat times",
                           factory=lambda: list(SAMPLE_DICTIONARIES))
    vocab_repeat: int = arg(5, "copies of each vocabulary line (the spec's 'medical vocab x5')")
    epochs: float = arg(1.0, "passes over the texts")
    max_steps: int = arg(-1, "stop after this many optimizer steps (overrides epochs; -1: off)")
    batch_size: int = arg(4, "texts per micro-batch")
    grad_accum: int = arg(1, "micro-batches per optimizer step")
    learning_rate: float = arg(1e-4, "peak learning rate, linear decay, no warm-up")
    max_length: int = arg(256, "tokens per text at most (longer texts are cut)")

    RANGES: ClassVar[dict] = {
        "vocab_repeat": Range(low=0), "epochs": Range(low=0, low_open=True), "max_steps": Range(low=1, also=(-1,)),
        "batch_size": Range(low=1), "grad_accum": Range(low=1), "learning_rate": Range(low=0, low_open=True),
        "max_length": Range(low=2),
    }

    def __post_init__(self):
        """Choices and ranges (UsageError) at parse time, before any input is read."""
        check_config(self)

    def trainer_settings(self) -> TrainerSettings:
        """The Trainer's schedule (`trainer.TrainerSettings`): linear decay, a log line per step, no checkpoints."""
        return TrainerSettings(epochs=self.epochs, max_steps=self.max_steps, batch_size=self.batch_size,
                               grad_accum=self.grad_accum, learning_rate=self.learning_rate, seed=self.seed,
                               lr_scheduler_type="linear", logging_steps=1, save_steps=0, group_by_length=False,
                               keep_order=False, gradient_checkpointing=self.gradient_checkpointing,
                               report_to=self.report_targets())


def vocab_lines(entries) -> list[str]:
    """Dictionary entries -> 'term: definition' lines, one per entry, in order."""
    return [f"{e.term}: {e.definition}" for e in entries]


def training_texts(paragraphs: Sequence[str], vocab: Sequence[str], repeat: int, seed: int) -> list[str]:
    """The CPT texts: `paragraphs` plus each `vocab` line `repeat` times, shuffled by `seed`.

    Returns a new list of len(paragraphs) + repeat * len(vocab) strings.
    """
    texts = list(paragraphs) + [line for line in vocab for _ in range(repeat)]
    random.Random(seed).shuffle(texts)  # spread the repeats so one batch is not five copies of a line
    return texts


def text_features(tokenizer, texts: Sequence[str], max_length: int) -> list[dict]:
    """One causal-LM example per text: one BOS, the text, EOS (cut to max_length).

    A literal `<bos>` at the start of a text is stripped (the tokenizer adds its own) and the
    count is logged; a `<bos>` inside a text raises DataError quoting the text's start.
    """
    eos = tokenizer.eos_token_id
    out, stripped = [], 0
    for text in texts:
        stripped += strip_leading_bos(tokenizer, text)[1]
        try:
            ids = encode_text(tokenizer, text)[: max_length - 1] + [eos]
        except SpecialTokenError as exc:
            raise DataError("CPT text", None, None, f"{text[:40]!r}...: {exc}") from None
        out.append({"input_ids": ids, "labels": list(ids), "answer_mask": [0] * len(ids)})
    if stripped:
        log.warning("stripped a literal %s from the start of %d of %d CPT texts: the tokenizer adds its own",
                    tokenizer.bos_token, stripped, len(texts))
    return out


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], max_length: int = 256, batch_size: int = 8) -> float:
    """exp(mean next-token cross-entropy, in nats) over all tokens of `texts` (each cut to `max_length`).

    `model` is put in eval mode. The mean is capped at 50 before exp so that a random model gives
    a large finite number. Raises DataError for a text with <bos> after its start.
    """
    model.eval()
    device = next(model.parameters()).device
    feats = text_features(tokenizer, texts, max_length)
    collate = CompletionCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    for start in range(0, len(feats), batch_size):
        batch = {k: v.to(device) for k, v in collate(feats[start : start + batch_size]).items()}
        ce, _, _ = supervised_ce(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        total += float(ce.sum())
        count += int(ce.numel())
    return math.exp(min(total / max(count, 1), 50.0))


def run_cpt(cfg: CPTConfig, choice: PrecisionChoice | None = None) -> dict:
    """Continued pretraining: LoRA on `cfg.corpus` + repeated vocabulary, merged into `output/model`.

    Reads and validates every input before claiming `cfg.output`. Writes `output/model` (the
    merged model, of the base's architecture and dtype with all its non-weight files:
    `modeling.merge_into_base`), `metrics.json`, `run.json` and `train_log.jsonl`. Returns
    the metrics: perplexity_before/after (None without held-out text), perplexity_target (3.0),
    target_reached, train_loss, train_texts, vocab_lines, vocab_repeat, heldout_paragraphs,
    steps, seconds (wall). `choice` is the run's precision (`hardware.choose`), decided here from
    `cfg` when the caller has none. Raises DataError for bad inputs, ModelError for a model that cannot
    load, OutputExistsError for an existing output without --overwrite.
    """
    from datasets import Dataset
    from peft import get_peft_model

    paragraphs = read_text_corpus(cfg.corpus)
    heldout = read_text_corpus(cfg.heldout) if cfg.heldout else []
    entries = load_dictionary(*cfg.vocab) if cfg.vocab else []
    tokenizer = load_tokenizer(cfg.base_model)
    choice = choice or run_precision(cfg)
    out = claim_run(cfg, "cpt", {"corpus": cfg.corpus, "heldout": cfg.heldout or ""}, choice=choice)
    run = Stage("cpt", out / "model", choice, seed=cfg.seed, logs_dir=out,
                work=out / ".work")
    model, _ = run.load(cfg.base_model, tokenizer=tokenizer, trainable_adapter=False)
    before = perplexity(model, tokenizer, heldout, cfg.max_length) if heldout else None

    texts = training_texts(paragraphs, vocab_lines(entries), cfg.vocab_repeat, cfg.seed)
    features = text_features(tokenizer, texts, cfg.max_length)
    model = get_peft_model(model, lora_config(cfg.lora_r, cfg.lora_alpha, model=model))
    trainer = AnswerWeightedTrainer(
        model=model,
        args=training_arguments(cfg.trainer_settings(), run.work, run.device, run.dtype),
        train_dataset=Dataset.from_list(features),
        data_collator=CompletionCollator(tokenizer.pad_token_id),
        answer_weight=None,
        callbacks=run.callbacks(report_to=cfg.report_targets()),
    )
    result = run.train(trainer, checkpoint_on_interrupt=False)  # cpt has no --resume to continue one
    steps = trainer.state.global_step
    # The merged model is the base's kind (a multimodal MedGemma stays one, in its own dtype): the
    # adapter is merged into the base read from disk, and perplexity after is measured on that folder.
    adapter_dir = run.work / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    del trainer, model
    merge_into_base(adapter_dir, run.output)
    merged = load_model(str(run.output), choice)
    after = perplexity(merged, tokenizer, heldout, cfg.max_length) if heldout else None
    metrics = {
        "perplexity_before": before,
        "perplexity_after": after,
        "perplexity_target": 3.0,
        "target_reached": after is not None and after < 3.0,
        "train_loss": result.training_loss,
        "train_texts": len(texts),
        "vocab_lines": len(entries),
        "vocab_repeat": cfg.vocab_repeat,
        "heldout_paragraphs": len(heldout),
        "steps": steps,
        "seconds": run.seconds,
        "peak_memory": run.peak_memory,
    }
    write_json_atomic(out / "metrics.json", metrics)
    write_json_atomic(out / "run.json", {**provenance(cfg, {"corpus": cfg.corpus, "heldout": cfg.heldout or ""},
                                                      command="cpt", choice=choice), "peak_memory": run.peak_memory})
    run.drop_work()
    print(json.dumps(metrics, indent=2))
    return metrics

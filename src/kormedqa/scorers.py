"""Scorers: each turns (model, questions) into one number or list per question.

Generation (greedy, the spec's prompt), letter log-likelihood (A-E as the next token), cloze
log-likelihood (each option's text as the model's turn), and the teacher-forced loss of a
reference completion. They are plain batched forward passes; only the positions that are scored
ever reach the 262k-entry lm_head. `evaluate` joins their per-question results by id and builds
the metrics; nothing here knows about metrics.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .batching import CompletionCollator, supervised_ce, tokenize_pair
from .chat import END_OF_TURN, stop_token_ids
from .formats import GENERATION_PREFIX, REASONING_CLOSE, USER_TURN, mcq_prompt
from .fsio import fault_point
from .modeling import cpu_vocab_projection
from .numerics import check_finite
from .records import LETTERS, MCQ

log = logging.getLogger(__name__)


def eval_prompt(mcq: MCQ) -> str:
    """The spec's MCQ prompt followed by the model turn: what generation and letter scoring continue."""
    return mcq_prompt(mcq) + GENERATION_PREFIX


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def _encode_left_padded(tokenizer, texts: Sequence[str], device) -> dict:
    tokenizer.padding_side = "left"
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=True)
    return {k: v.to(device) for k, v in enc.items()}


def length_order(texts: Sequence[str]) -> list[int]:
    """Indices of `texts` shortest first (ties in input order): the order generation and letter
    scoring batch in (less padding); results are put back in input order."""
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))



ANSWER_STOPS = tuple(f"{REASONING_CLOSE}{letter}" for letter in LETTERS)


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one generation call: `temperature` 0 is greedy (then `top_p` is unused).

    `seeds` gives one seed per prompt (same order): each prompt draws from its own random stream,
    so its continuation does not depend on which other prompts share its batch or in which order
    they run (a resumed run redraws exactly what an unbroken one drew).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seeds: tuple[int, ...] = ()


GREEDY = Sampling()


class HFGenerator:
    """Generation with the HF model: the same call shape as `vllm_backend.VllmGenerator`.

    `gen(prompts, max_new_tokens, stop_strings[, sampling])` -> one decoded continuation per
    prompt; greedy unless `sampling` (a `Sampling`) says otherwise.
    """

    def __init__(self, model, tokenizer, batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def __call__(self, prompts: Sequence[str], max_new_tokens: int, stop_strings: Sequence[str],
                 sampling: Sampling = GREEDY) -> list[str]:
        return generate(self.model, self.tokenizer, prompts, self.batch_size, max_new_tokens, stop_strings=stop_strings,
                        sampling=sampling)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], batch_size: int = 8, max_new_tokens: int = 256, desc="generate",
             stop_strings: Sequence[str] = ANSWER_STOPS, sampling: Sampling = GREEDY) -> list[str]:
    """Greedy (or, with `sampling`, sampled) continuations of full prompts (already ending with the model turn).

    Stops at <end_of_turn>/<eos>, and by default once the answer in the spec's format is complete
    (`</reasoning>X`): anything after it cannot change the extracted letter or the reasoning
    score, and a half-trained model often runs on to max_new_tokens there.
    Returns one decoded continuation per prompt, in `prompts` order (`max_new_tokens` tokens at
    most). Raises NonFiniteError when the logits hold NaN or inf (argmax would pick token 0),
    ValueError when a sampled call does not give one seed per prompt.
    """
    if sampling.temperature > 0 and len(sampling.seeds) != len(prompts):
        raise ValueError(f"sampling needs one seed per prompt: {len(sampling.seeds)} seeds, {len(prompts)} prompts")
    order = length_order(prompts)
    outputs: list[str] = [""] * len(prompts)
    eos = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    stops = _stop_criteria(tokenizer, tuple(stop_strings)) if stop_strings else None
    with cpu_vocab_projection(model):
        for _, idx in tqdm(list(_batches(order, batch_size)), desc=desc, leave=False):
            fault_point("generate_batch")
            enc = _encode_left_padded(tokenizer, [prompts[i] for i in idx], device)
            pick = None if sampling.temperature <= 0 else _sampler(sampling, [sampling.seeds[i] for i in idx])
            new = _greedy_dropping_finished(model, enc, max_new_tokens, eos, stops, pick)
            for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
                outputs[i] = text
    return outputs


_STOP_CRITERIA: dict = {}


def _stop_criteria(tokenizer, stop_strings: tuple[str, ...]):
    """A `StoppingCriteriaList` for `stop_strings`, built once per tokenizer and stop set.

    Over a 262k vocabulary its token tables take seconds (6 s on 2 busy cores), which
    `stop_strings=` would pay again for every batch, and a caller generating in many calls (the
    rationale teacher) for every call. The criterion keeps no state between calls.
    """
    from transformers import StopStringCriteria, StoppingCriteriaList

    key = (id(tokenizer), stop_strings)
    cached = _STOP_CRITERIA.get(key)
    if cached is None or cached[0] is not tokenizer:  # an id reused by another tokenizer is rebuilt
        cached = _STOP_CRITERIA[key] = (tokenizer, StoppingCriteriaList([StopStringCriteria(tokenizer, list(stop_strings))]))
    return cached[1]


def _sampler(sampling: Sampling, seeds: Sequence[int]):
    """`pick(logits, rows) -> tokens`: temperature and nucleus (top-p) sampling, one generator per input row.

    `rows` maps each logits row to its input row, whose own `torch.Generator` (seeded from
    `seeds`) draws its token, so a row's draws never depend on the rows beside it.
    """
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def pick(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float() / sampling.temperature, dim=-1).cpu()
        if sampling.top_p < 1:
            # transformers' TopPLogitsWarper rule: drop the lowest tokens whose mass is at most 1 - top_p.
            sorted_p, order = probs.sort(dim=-1, descending=True)
            tail = sorted_p.cumsum(-1) - sorted_p >= sampling.top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(tail, 0.0))
        tokens = [torch.multinomial(probs[i], 1, generator=generators[r]) for i, r in enumerate(rows.tolist())]
        return torch.cat(tokens).to(logits.device)

    return pick


def _greedy_dropping_finished(model, enc: dict, max_new_tokens: int, eos: Sequence[int], stops,
                              pick=None) -> list[list[int]]:
    """Greedy decoding, as `model.generate(do_sample=False)` does it, minus the finished rows.

    `pick(logits, rows) -> tokens` replaces the argmax (sampling; `rows` are the input rows still
    decoding).

    `generate` keeps computing a row after it has stopped (padding it) until every row has: one
    run-on answer in a batch of 32 costs 32 rows up to max_new_tokens. Here a row leaves the batch
    and the KV cache the step it ends, so the rest runs at the batch size still needed. Positions,
    mask and cache follow `generate` (tests compare the two).
    """
    from transformers import DynamicCache

    ids, mask = enc["input_ids"], enc["attention_mask"]
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    rows = torch.arange(ids.shape[0], device=ids.device)  # batch row -> input row
    new: list[list[int]] = [[] for _ in range(ids.shape[0])]
    eos = torch.tensor(list(eos), device=ids.device)
    seqs, last = ids, positions[:, -1:]
    for step in range(max_new_tokens):
        check_finite(logits, "generation logits")  # argmax over NaN would pick token 0
        token = logits.argmax(-1) if pick is None else pick(logits, rows)
        for r, t in zip(rows.tolist(), token.tolist()):
            new[r].append(t)
        seqs = torch.cat([seqs, token[:, None]], dim=1)
        done = torch.isin(token, eos)
        if stops is not None:
            done |= stops(seqs, logits)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, seqs, mask, last, token = rows[keep], seqs[keep], mask[keep], last[keep], token[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        last = last + 1
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=last, cache=cache,
                       use_cache=True).logits[:, -1]
    return new


def letter_token_ids(tokenizer) -> list[int]:
    """The token ids of 'A'...'E' (five ints); ValueError when a letter is not a single token."""
    ids = [tokenizer.convert_tokens_to_ids(letter) for letter in LETTERS]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError("tokenizer has no single-token letters A-E")
    return ids


@torch.no_grad()
def letter_logprobs(model, tokenizer, prompts: Sequence[str], batch_size: int = 8) -> list[list[float]]:
    """log P(letter | prompt) for A-E at the next position; only that position hits the lm_head.

    Returns five floats (nats) per prompt, in `prompts` order. Raises NonFiniteError on NaN/inf
    log-probabilities, ValueError for a tokenizer without single-token letters.
    """
    letters = torch.tensor(letter_token_ids(tokenizer))
    order = length_order(prompts)
    scores: list[list[float]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    with cpu_vocab_projection(model):
        for _, idx in tqdm(list(_batches(order, batch_size)), desc="loglik", leave=False):
            enc = _encode_left_padded(tokenizer, [prompts[i] for i in idx], device)
            logits = model(**enc, logits_to_keep=1).logits[:, -1, :].float()
            logp = check_finite(F.log_softmax(logits, dim=-1)[:, letters.to(device)], "letter log-probabilities")
            for i, row in zip(idx, logp.tolist()):
                scores[i] = row
    return scores


@torch.no_grad()
def completion_losses(model, tokenizer, rows: Sequence[dict], batch_size: int = 8, max_length: int = 2048) -> dict[str, dict]:
    """Teacher-forced loss of each reference completion, keyed by `row["id"]`.

    `rows`: dicts with id, prompt, completion. Per id: `loss` (mean CE in nats over the completion
    tokens), `answer_loss` (mean CE over the answer: letter + `<end_of_turn>`), `answer_token_correct`
    (argmax at the letter is the letter) and `tokens`. A row longer than `max_length` tokens is
    absent from the result (the caller counts it), never shifted onto another question.
    """
    results: dict[str, dict] = {}
    device = next(model.parameters()).device
    collate = CompletionCollator(tokenizer.pad_token_id)
    for _, chunk in tqdm(list(_batches(rows, batch_size)), desc="loss", leave=False):
        kept = [(r["id"], f) for r in chunk
                if (f := tokenize_pair(tokenizer, r["prompt"], r["completion"], max_length)) is not None]
        if not kept:
            continue
        batch = {k: v.to(device) for k, v in collate([f for _, f in kept]).items()}
        ce, hits, keep = supervised_ce(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        row_of = torch.arange(keep.shape[0], device=device)[:, None].expand_as(keep)[keep]
        is_answer = batch["answer_mask"][:, 1:][keep[:, :-1]].bool()
        for r, (qid, _) in enumerate(kept):
            mine = row_of == r
            ans = mine & is_answer
            first = ans.nonzero()[:1].squeeze(-1)
            results[qid] = {
                "loss": float(ce[mine].mean()),
                "answer_loss": float(ce[ans].mean()) if ans.any() else None,
                "answer_token_correct": bool(hits[first].all()) if first.numel() else False,
                "tokens": int(mine.sum()),
            }
    return results


def cloze_prompt(mcq: MCQ) -> str:
    """The question alone as the user's turn, then the model turn: what each option's text continues.

    lm-evaluation-harness's `multiple_choice` formulation (OLMES: the cloze formulation, CF): the
    options are not listed, so a pick says which text the model finds likely as the answer, not
    whether it can map a text to a letter.
    """
    return f"{USER_TURN}{mcq.question}{END_OF_TURN}{GENERATION_PREFIX}"


@torch.no_grad()
def option_logprobs(model, tokenizer, mcqs: Sequence[MCQ], batch_size: int = 8, pack_tokens: int = 512) -> list[list[float]]:
    """Summed log P(option text + `<end_of_turn>` | `cloze_prompt`) for each option, in nats.

    Returns one list of 5 floats per question, in input order. The five sequences of a question
    (and of the next ones, up to `pack_tokens` tokens) are packed into one padding-free row
    (position ids restart per sequence, so attention stays within a sequence), and only the
    continuation positions reach the lm_head: one forward per question or fewer. Rows stay
    short because attention over a packed row is quadratic in its length (docs/decisions.md,
    "Cloze rows stay short"). `batch_size` only sets the progress granularity. The
    continuation is tokenised on its own after the prompt, which for these chat prompts (ending
    in a newline) gives lm-evaluation-harness's split (bench/cloze_vs_harness.py checks picks).
    """
    collate = CompletionCollator(tokenizer.pad_token_id, padding_free=True)
    device = next(model.parameters()).device
    scores: list[list[float]] = []

    def question_features(q: MCQ) -> list[dict]:
        context = tokenizer(cloze_prompt(q), add_special_tokens=True)["input_ids"]
        feats = []
        for option in q.options:
            cont = tokenizer(option + END_OF_TURN, add_special_tokens=False)["input_ids"]
            feats.append({"input_ids": context + cont, "labels": [-100] * len(context) + cont,
                          "answer_mask": [0] * (len(context) + len(cont)), "n": len(cont)})
        return feats

    def flush(feats: list[dict]) -> None:
        batch = {k: v.to(device) for k, v in collate(feats).items()}
        ce, _, _ = supervised_ce(model, batch["input_ids"], None, batch["labels"], position_ids=batch["position_ids"])
        sums = [-float(part.sum()) for part in torch.split(ce, [f["n"] for f in feats])]
        scores.extend(sums[i : i + len(LETTERS)] for i in range(0, len(sums), len(LETTERS)))

    with cpu_vocab_projection(model):
        for _, chunk in tqdm(list(_batches(mcqs, batch_size)), desc="cloze", leave=False):
            pending: list[dict] = []
            for q in chunk:
                feats = question_features(q)
                size = sum(len(f["input_ids"]) for f in feats)
                if pending and sum(len(f["input_ids"]) for f in pending) + size > pack_tokens:
                    flush(pending)
                    pending = []
                pending.extend(feats)
            if pending:
                flush(pending)
    return scores

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

from .batching import CompletionCollator, row_logprobs, supervised_ce, tokenize_pair
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


NUCLEUS_CANDIDATES = 1024


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`probs` ([rows, vocab], each row summing to 1) with every token outside the top-p nucleus set to 0.

    transformers' TopPLogitsWarper rule: keep the most likely tokens until their mass reaches
    `top_p`. Looked for among the NUCLEUS_CANDIDATES most likely (topk over 262k entries took 0.18 s
    for 32 rows where a full sort took 2.7 s, on 2 busy cores); when some row's candidates hold
    less than `top_p`, the rows are sorted whole. Tokens outside the candidates are then beyond the cut.
    """
    top, index = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)
    if not bool((top.sum(-1) >= top_p).all()):
        top, index = probs.sort(dim=-1, descending=True)
    keep = top.cumsum(-1) - top < top_p
    return torch.zeros_like(probs).scatter(-1, index, top * keep)


def _sampler(sampling: Sampling, seeds: Sequence[int]):
    """`pick(logits, rows) -> tokens`: temperature and nucleus (top-p) sampling, one generator per input row.

    `rows` maps each logits row to its input row, whose own `torch.Generator` (seeded from
    `seeds`) draws its token, so a row's draws never depend on the rows beside it.
    """
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def pick(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float() / sampling.temperature, dim=-1).cpu()
        if sampling.top_p < 1:
            probs = nucleus(probs, sampling.top_p)
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

    Returns five floats (nats) per prompt, in `prompts` order. Each prompt is its own forward,
    unpadded: in bf16 a padded batch gives a prompt other roundings depending on its neighbours
    (picks flipped, docs/scoring.md), so `batch_size` only sets the progress granularity and a
    question's scores are the same whatever comes with it (tested bitwise in bf16 and fp32).
    Raises NonFiniteError on NaN/inf log-probabilities, ValueError for a tokenizer without
    single-token letters.
    """
    letters = torch.tensor(letter_token_ids(tokenizer))
    scores: list[list[float]] = []
    device = next(model.parameters()).device
    with cpu_vocab_projection(model):
        for _, chunk in tqdm(list(_batches(prompts, batch_size)), desc="loglik", leave=False):
            for prompt in chunk:
                enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=True).to(device)
                logits = model(**enc, logits_to_keep=1).logits[0, -1, :].float()
                logp = check_finite(F.log_softmax(logits, dim=-1)[letters.to(device)], "letter log-probabilities")
                scores.append(logp.tolist())
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
        for row in chunk:
            # One row per forward, unpadded, for the reason `letter_logprobs` gives: `batch_size`
            # is progress granularity, and a row's loss does not depend on the rows scored with it.
            feature = tokenize_pair(tokenizer, row["prompt"], row["completion"], max_length)
            if feature is None:
                continue
            batch = {k: v.to(device) for k, v in collate([feature]).items()}
            ce, hits, keep = supervised_ce(model, batch["input_ids"], None, batch["labels"])
            is_answer = batch["answer_mask"][:, 1:][keep[:, :-1]].bool()
            first = is_answer.nonzero()[:1].squeeze(-1)
            results[row["id"]] = {
                "loss": float(ce.mean()),
                "answer_loss": float(ce[is_answer].mean()) if is_answer.any() else None,
                "answer_token_correct": bool(hits[first].all()) if first.numel() else False,
                "tokens": int(ce.numel()),
            }
    return results


def cloze_prompt(mcq: MCQ) -> str:
    """The question alone as the user's turn, then the model turn: what each option's text continues.

    lm-evaluation-harness's `multiple_choice` formulation (OLMES: the cloze formulation, CF): the
    options are not listed, so a pick says which text the model finds likely as the answer, not
    whether it can map a text to a letter.
    """
    return f"{USER_TURN}{mcq.question}{END_OF_TURN}{GENERATION_PREFIX}"


def shared_prompt_row(context: Sequence[int], continuations: Sequence[Sequence[int]]) -> dict:
    """One question's prompt followed by all its continuations, as a single row.

    A continuation's last token is only ever a target, never an input, so it is left out of the
    row. `input_ids`/`position_ids`: (1, T) with T = len(context) + sum(len(c) - 1); each
    continuation's positions continue the prompt's (as if it followed the prompt alone).
    `visible`: (T, T) bool, True where query i may attend key j: causal within the prompt, and
    each continuation sees the whole prompt and its own earlier tokens, never another continuation.
    `first` = len(context) - 1: every row position from it on predicts something (the prompt's
    last token predicts each continuation's first, every continuation input its next token).
    `rows`: (n,) for each continuation token, the index, counted from `first`, of the position
    whose next-token distribution scores it; `targets`: (n,) those tokens; `sizes`: the
    continuation lengths (they sum to n). ValueError for an empty context or continuation.
    """
    p = len(context)
    if p == 0 or any(len(c) == 0 for c in continuations):
        raise ValueError("a cloze row needs a non-empty prompt and non-empty continuations")
    ids, pos, owner, rows = list(context), list(range(p)), [-1] * p, []
    for i, c in enumerate(continuations):
        rows.append(0)  # the prompt's last position predicts every continuation's first token
        for j, token in enumerate(c[:-1]):
            rows.append(len(ids) - (p - 1))
            ids.append(token)
            pos.append(p + j)
            owner.append(i)
    positions, owners = torch.tensor(pos), torch.tensor(owner)
    visible = (positions[None, :] <= positions[:, None]) & ((owners[None, :] == -1) | (owners[None, :] == owners[:, None]))
    return {"input_ids": torch.tensor([ids]), "position_ids": positions[None], "visible": visible, "first": p - 1,
            "rows": torch.tensor(rows), "targets": torch.tensor([t for c in continuations for t in c]),
            "sizes": [len(c) for c in continuations]}


def _additive_masks(model, row: dict, dtype: torch.dtype, device) -> torch.Tensor | dict[str, torch.Tensor]:
    """`row["visible"]` as the (1, 1, T, T) additive mask sdpa and eager attention take as is;
    a {layer type: mask} dict with the sliding window applied when the row reaches past it."""
    def additive(visible):
        return torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(
            ~visible.to(device), torch.finfo(dtype).min)[None, None]

    # The text config: a multimodal Gemma 3 (MedGemma-4B) keeps its window there, not at the top level.
    window = getattr(model.config.get_text_config(decoder=True), "sliding_window", None)
    positions = row["position_ids"][0]
    if not window or int(positions.max()) < window:
        return additive(row["visible"])
    near = (positions[:, None] - positions[None, :]) < window  # transformers' sliding_window_overlay
    return {"full_attention": additive(row["visible"]), "sliding_attention": additive(row["visible"] & near)}


@torch.no_grad()
def option_logprobs(model, tokenizer, mcqs: Sequence[MCQ], batch_size: int = 8) -> list[list[float]]:
    """Summed log P(option text + `<end_of_turn>` | `cloze_prompt`) for each option, in nats.

    Returns one list of 5 floats per question, in input order. Each question is one forward of
    one row: its prompt once, then its five continuations, each seeing the prompt and itself but
    not the others (`shared_prompt_row`); each position that predicts a continuation token
    reaches the lm_head once (`batching.row_logprobs`). lm-evaluation-harness instead runs the
    prompt once per option and the lm_head on every position. No other question shares the
    row, so a question's scores do not depend on the batch size or on which questions come with
    it, in bf16 as in fp32 (tested: bitwise); `batch_size` only sets the progress granularity.
    The continuation is tokenised on its own after the prompt, which for these chat prompts
    (ending in a newline) gives lm-evaluation-harness's split (bench/cloze_vs_harness.py checks
    picks). Raises NonFiniteError on NaN/inf log-likelihoods; ValueError for an attention
    implementation that takes no custom mask (kormedqa loads models with sdpa).
    """
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"cloze scoring needs sdpa or eager attention (a custom mask per row), not {impl}")
    scores: list[list[float]] = []
    # No cpu_vocab_projection: at ~90 rows per question `W @ h.T` is no faster than F.linear, and
    # its column-major logits made the log-sum-exp over the vocabulary ~2x slower.
    for _, chunk in tqdm(list(_batches(mcqs, batch_size)), desc="cloze", leave=False):
        for q in chunk:
            context = tokenizer(cloze_prompt(q), add_special_tokens=True)["input_ids"]
            conts = [tokenizer(option + END_OF_TURN, add_special_tokens=False)["input_ids"] for option in q.options]
            scores.append(score_shared_row(model, shared_prompt_row(context, conts)))
    return scores


@torch.no_grad()
def score_shared_row(model, row: dict) -> list[float]:
    """Summed log-likelihood (nats) of each continuation of one `shared_prompt_row`, in its order:
    one decoder forward of the row under its mask, then `batching.row_logprobs`."""
    device = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    hidden = model.get_decoder()(input_ids=row["input_ids"].to(device), position_ids=row["position_ids"].to(device),
                                 attention_mask=_additive_masks(model, row, dtype, device),
                                 use_cache=False).last_hidden_state[0, row["first"]:]
    logp = row_logprobs(model, hidden, row["rows"].to(device), row["targets"].to(device))
    return [float(part.sum()) for part in torch.split(logp, row["sizes"])]

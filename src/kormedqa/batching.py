"""Tokenising prompt/completion pairs, collating batches, and the supervised cross-entropy.

Shared by every stage that feeds the model prompt/completion text: SFT training (`sft`), CPT
(`cpt`), GRPO (`grpo`) and teacher-forced scoring (`scorers`). Keeping it here means no stage
module imports another (torchtune keeps `data/_collate.py` and `modules/loss/` apart from its
recipes for the same reason).

Shapes: token lists are plain `list[int]`; collated tensors are `(batch, seq)` int64, or
`(1, total_tokens)` when padding-free.
"""
from __future__ import annotations

import logging
import re
from typing import Sequence

import torch
import torch.nn.functional as F

from .chat import END_OF_TURN
from .errors import UsageError
from .formats import MODEL_TURN, REASONING_CLOSE, TURN_SEPARATOR
from .records import DataError
from .numerics import check_finite

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- tokenisation


def answer_span(completion: str) -> tuple[int, int]:
    """Character span of the answer inside a completion, the closing `<end_of_turn>` included.

    With reasoning: the letter(s) after `</reasoning>` and `<end_of_turn>`. Without reasoning (the
    dictionary track, answer-only MCQs): the whole content of the model turn and `<end_of_turn>`.
    The end of turn belongs to the answer: an answer that does not stop is not one, and the
    pretrained default never learned to emit it otherwise (docs/decisions.md, "The answer span").
    """
    eot = completion.rfind(END_OF_TURN)
    end = len(completion) if eot < 0 else eot + len(END_OF_TURN)
    close = completion.rfind(REASONING_CLOSE)
    if close >= 0:
        return close + len(REASONING_CLOSE), end
    start = len(MODEL_TURN) if completion.startswith(MODEL_TURN) else 0
    return start, end


class SpecialTokenError(ValueError):
    """A BOS token where no sequence starts: inside a prompt, a completion or a text."""


def strip_leading_bos(tokenizer, text: str) -> tuple[str, bool]:
    """`text` without the literal BOS string(s) it starts with (whitespace before them included),
    and whether there were any. `(text, False)` for a tokenizer without a BOS token.

    Prompts rendered by `apply_chat_template` start with `<bos>`, and the tokenizer adds its own
    when it encodes them: trained as is, every example would begin with two BOS tokens. The
    literal one is dropped (not refused) because it asks for exactly what the tokenizer does.
    """
    bos = getattr(tokenizer, "bos_token", None)
    if not bos:
        return text, False
    match = re.match(rf"(?:\s*{re.escape(bos)})+", text)
    return (text[match.end():], True) if match else (text, False)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as a sequence start: exactly one BOS (for a tokenizer that has one),
    a literal leading `<bos>` stripped (see `strip_leading_bos`).

    Raises SpecialTokenError for a BOS anywhere else in the text: it would teach the model to
    predict a sequence start mid-text, and no rule says where the text really begins.
    """
    text, stripped = strip_leading_bos(tokenizer, text)
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return ids
    if stripped and (not ids or ids[0] != bos_id):
        ids = [bos_id] + ids  # a tokenizer that adds none: keep the one the text asked for
    if bos_id in ids[1:]:
        raise SpecialTokenError(f"contains {tokenizer.bos_token} after its start (only a leading one is allowed)")
    return ids


def tokenize_pair(tokenizer, prompt: str, completion: str, max_length: int) -> dict | None:
    """input_ids, labels (-100 on the prompt) and answer_mask; None when longer than max_length.

    Prompt and completion are tokenised separately and concatenated, so the boundary is a token
    boundary by construction (TRL does the same) and no marker string is searched for.
    The sequence starts with exactly one BOS: a literal `<bos>` at the start of the prompt (as
    `apply_chat_template` renders it, with or without whitespace before it) is stripped, since
    the tokenizer adds its own; a BOS anywhere else in the prompt or in the completion raises
    SpecialTokenError (field name as its first word).
    """
    try:
        prompt_ids = encode_text(tokenizer, prompt + TURN_SEPARATOR)
    except SpecialTokenError as exc:
        raise SpecialTokenError(f"prompt {exc}") from None
    enc = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    completion_ids = enc["input_ids"]
    if getattr(tokenizer, "bos_token_id", None) is not None and tokenizer.bos_token_id in completion_ids:
        raise SpecialTokenError(f"completion contains {tokenizer.bos_token} (a completion never starts a sequence)")
    start, end = answer_span(completion)
    in_answer = [int(s < end and e > start) for s, e in enc["offset_mapping"]]
    ids = prompt_ids + completion_ids
    if len(ids) > max_length:
        return None
    return {
        "input_ids": ids,
        "labels": [-100] * len(prompt_ids) + completion_ids,
        "answer_mask": [0] * len(prompt_ids) + in_answer,
    }


REHEARSAL_FORMAT = "dict_rehearsal"  # row "format" of a dictionary row mixed into an MCQ stage (loop --dict-rehearsal)


def tokenize_rows(tokenizer, rows: Sequence[dict], max_length: int, source: str = "prepared rows") -> list[dict]:
    """`tokenize_pair` on each row; logs how many were dropped for length and how many prompts
    had a literal leading `<bos>` stripped. Raises DataError(source, row number, field) for a BOS
    elsewhere (1-based row of `rows`: the line of a prepared file without blank lines), and
    ValueError when no row fits."""
    out, dropped, stripped = [], 0, 0
    for number, row in enumerate(rows, start=1):
        stripped += strip_leading_bos(tokenizer, row["prompt"])[1]
        try:
            item = tokenize_pair(tokenizer, row["prompt"], row["completion"], max_length)
        except SpecialTokenError as exc:
            field, _, reason = str(exc).partition(" ")
            raise DataError(source, number, field, reason) from None
        if item is None:
            dropped += 1
        else:
            if row.get("format") == REHEARSAL_FORMAT:
                # Rehearsal rows keep their knowledge in the loss without taking the answer's
                # weighted share: their tokens count with the reasoning, so the letter's weight
                # in an MCQ stage is the same with or without them.
                item["answer_mask"] = [0] * len(item["answer_mask"])
            out.append(item)
    if stripped:
        log.warning("stripped a literal %s from the start of %d of %d prompts (%s): the tokenizer adds "
                    "its own, and two would be trained", tokenizer.bos_token, stripped, len(rows), source)
    if not out:
        raise UsageError(f"no example fits in --max-length {max_length} (all {len(rows)} are longer); raise it")
    if dropped:
        log.warning("dropped %d of %d examples longer than max_length=%d", dropped, len(rows), max_length)
    return out


class CompletionCollator:
    """Right-pads a batch; padding is -100 in labels and 0 in the masks.

    `padding_free=True` instead concatenates the batch into one row with `position_ids` restarting
    at 0 for every example and no attention mask: transformers then builds a block-diagonal causal
    mask (flash-attention varlen kernels on GPU, a packed mask for sdpa/eager), so no compute goes
    to padding (8% of tokens at batch 2 on the sample MCQs, 19% at 4, 31% at 8) and the loss is the
    padded batch's loss. Every prompt starts with labels -100, so no target crosses two examples.

    `pad_to_multiple_of=N` rounds the sequence length up to a multiple of N tokens (transformers'
    `DataCollatorWithPadding` has the same argument): padded, by more padding; packed, by one more
    segment of pad tokens with its own restarting positions and labels -100, so it attends only to
    itself and adds nothing to the loss. Why: oneDNN builds kernels per matmul shape, and on a CPU
    with AMX a step whose length it has not seen costs ~10x a seen one (docs/decisions.md, "Lengths
    in buckets"); rounding keeps the number of distinct shapes small. None keeps exact lengths.
    """

    def __init__(self, pad_token_id: int, padding_free: bool = False, pad_to_multiple_of: int | None = None):
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1 or None, got {pad_to_multiple_of}")
        self.pad_token_id = pad_token_id
        self.padding_free = padding_free
        self.pad_to_multiple_of = pad_to_multiple_of

    def _rounded(self, length: int) -> int:
        m = self.pad_to_multiple_of
        return length if not m else -(-length // m) * m

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if self.padding_free:
            total = sum(len(f["input_ids"]) for f in features)
            extra = self._rounded(total) - total
            if extra:
                features = [*features, {"input_ids": [self.pad_token_id] * extra, "labels": [-100] * extra,
                                        "answer_mask": [0] * extra}]

            def packed(key):
                return torch.tensor([[t for f in features for t in f[key]]], dtype=torch.long)

            positions = [[i for f in features for i in range(len(f["input_ids"]))]]
            return {
                "input_ids": packed("input_ids"),
                "position_ids": torch.tensor(positions, dtype=torch.long),
                "labels": packed("labels"),
                "answer_mask": packed("answer_mask"),
            }
        width = self._rounded(max(len(f["input_ids"]) for f in features))

        def pad(key, value):
            return torch.tensor([f[key] + [value] * (width - len(f[key])) for f in features], dtype=torch.long)

        return {
            "input_ids": pad("input_ids", self.pad_token_id),
            "attention_mask": torch.tensor(
                [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features], dtype=torch.long
            ),
            "labels": pad("labels", -100),
            "answer_mask": pad("answer_mask", 0),
        }


# ---------------------------------------------------------------- loss


def completion_loss(
    ce: torch.Tensor,
    is_answer: torch.Tensor,
    answer_weight: float | None,
    n_answer: float,
    n_other: float,
) -> torch.Tensor:
    """Loss over supervised positions, normalised by token counts of the whole accumulation window.

    `ce` is the per-token cross-entropy of the supervised positions.
    answer_weight None: sum(CE) / (n_answer + n_other), the plain token mean TRL computes.
    Otherwise W * sum(CE_answer) / n_answer + (1 - W) * sum(CE_other) / n_other; when the window
    has tokens of one kind only, that kind takes the whole loss.
    """
    if answer_weight is None:
        return ce.sum() / max(n_answer + n_other, 1)
    is_answer = is_answer.bool()
    w = answer_weight if n_other > 0 else 1.0
    w = w if n_answer > 0 else 0.0
    loss = ce.new_zeros(())
    if n_answer > 0:
        loss = loss + w * ce[is_answer].sum() / n_answer
    if n_other > 0:
        loss = loss + (1 - w) * ce[~is_answer].sum() / n_other
    return loss


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, seq) mask of positions whose next token is supervised."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


def _softcap(model) -> float | None:
    """Gemma's final logit soft-capping, read from the text config (a multimodal model nests it there)."""
    return getattr(model.config.get_text_config(decoder=True), "final_logit_softcapping", None)


def _final_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The lm_head (and Gemma's optional final soft-capping) on selected hidden states."""
    logits = model.get_output_embeddings()(hidden)
    cap = _softcap(model)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


@torch.no_grad()
def supervised_ce(model, input_ids, attention_mask, labels, chunk: int = 512, position_ids=None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy (nats) and argmax hits at supervised positions, lm_head in chunks.

    Scoring only: the decoder runs once and the 262k-wide logits exist `chunk` rows at a time,
    instead of one (tokens x vocab) tensor of gigabytes. `input_ids`/`labels`: (batch, seq);
    `attention_mask` (batch, seq) or None with `position_ids` for a padding-free packed row.
    Returns (ce, hits, keep): ce and hits of shape (n_supervised,) in row-major order of the
    supervised positions, keep the (batch, seq) bool mask of those positions.
    """
    keep = supervised_positions(labels)
    decoder = model.get_decoder()
    # use_cache=False: with a cache transformers ignores the packing in position_ids (see trainer).
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).last_hidden_state[keep]
    ce, hits = token_ce(model, hidden, labels[:, 1:][keep[:, :-1]], chunk)
    return ce, hits, keep


@torch.no_grad()
def token_ce(model, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy (nats, fp32) of `targets` (n,) under the lm_head on `hidden` (n, hidden_size),
    and whether each target is the argmax; the (n, vocab) logits exist `chunk` rows at a time.

    Raises NonFiniteError for NaN/inf cross-entropy."""
    ces, hits = [], []
    for start in range(0, hidden.shape[0], chunk):
        logits = _final_logits(model, hidden[start : start + chunk])
        t = targets[start : start + chunk]
        ces.append(F.cross_entropy(logits, t, reduction="none"))
        hits.append(logits.argmax(-1) == t)
    empty = hidden.new_zeros(0, dtype=torch.float32)
    ce = check_finite(torch.cat(ces), "teacher-forced cross-entropy") if ces else empty
    return ce, (torch.cat(hits) if hits else empty.bool())


@torch.no_grad()
def row_logprobs(model, hidden: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor,
                 vocab_chunk: int = 4096) -> torch.Tensor:
    """log P(`targets[k]` | `hidden[rows[k]]`) under the lm_head, in nats (fp32): shape (len(targets),).

    `hidden`: (n, hidden_size), the distinct positions whose next-token distribution is needed;
    several targets may share a row (each of a question's options is predicted first from the
    prompt's last position), which then meets the 262k-wide lm_head once. Nothing else is
    computed: no argmax, no log-softmax tensor. On CPU, with a plain Linear lm_head, the
    normaliser is a running log-sum-exp over `vocab_chunk` vocabulary rows at a time, so the
    (n, vocab) logits never exist whole: each (n, vocab_chunk) block is reduced while it is in
    cache (92 rows of Gemma 3's vocabulary, 2 threads of the busy Xeon: 0.15 s against 0.19 s for
    the whole logits then `torch.logsumexp`; equal within 2e-6 nats). Elsewhere the logits are
    computed whole and reduced by `torch.logsumexp`.
    Raises NonFiniteError for NaN/inf log-probabilities.
    """
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or hidden.device.type != "cpu":
        logits = _final_logits(model, hidden)
        return check_finite(logits[rows, targets] - torch.logsumexp(logits, dim=-1)[rows], "option log-likelihoods")
    cap = _softcap(model)
    top = hidden.new_full((hidden.shape[0],), float("-inf"), dtype=torch.float32)
    total = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
    picked = hidden.new_empty(targets.shape[0], dtype=torch.float32)
    for start in range(0, head.weight.shape[0], vocab_chunk):
        end = start + vocab_chunk
        logits = F.linear(hidden, head.weight[start:end], None if head.bias is None else head.bias[start:end])
        if cap:
            logits = torch.tanh(logits / cap) * cap
        logits = logits.float()
        new_top = torch.maximum(top, logits.amax(dim=-1))
        total = total * torch.exp(top - new_top) + torch.exp(logits - new_top[:, None]).sum(dim=-1)
        top = new_top
        mine = ((targets >= start) & (targets < end)).nonzero().squeeze(-1)
        picked[mine] = logits[rows[mine], targets[mine] - start]
    return check_finite(picked - (top + total.log())[rows], "option log-likelihoods")

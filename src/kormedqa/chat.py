"""Gemma's chat turns: the template, the end-of-turn marker and the ids generation stops at.

The one place these are spelled: `formats` builds the spec's prompt/completion strings from
`END_OF_TURN`, `modeling` gives every loaded tokenizer `GEMMA_CHAT_TEMPLATE`, and every generator
(HF, vLLM, TRL's GRPO sampling) stops at `stop_token_ids`.
"""
from __future__ import annotations

from .errors import ModelError

END_OF_TURN = "<end_of_turn>"

# Gemma's turn format. The GGUF ships no template; this one renders exactly the strings the
# seed spec trains on (`<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n`).
# A system message is folded into the first user turn, as Gemma 3's own template does.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_prefix if loop.first else '') + message['content'] + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def stop_token_ids(tokenizer) -> list[int]:
    """The ids generation stops at: [<eos>, <end_of_turn>] (or [<end_of_turn>] when they are the same).

    Gemma checkpoints often stop only on eos, which runs on past the turn. Raises ModelError for
    a tokenizer without <end_of_turn> (not a Gemma chat tokenizer).
    """
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if eot is None or eot == tokenizer.unk_token_id:
        raise ModelError(f"tokenizer has no {END_OF_TURN} token: not a Gemma chat tokenizer")
    ids = [eot]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id != eot:
        ids.insert(0, tokenizer.eos_token_id)
    return ids


def ensure_chat_template(tokenizer) -> None:
    """Give `tokenizer` the Gemma chat template (`GEMMA_CHAT_TEMPLATE`) when it has none; in place."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE

"""Gemma's chat turns: the template, the end-of-turn marker and the ids generation stops at.

The one place these are spelled: `formats` builds the spec's prompt/completion strings from
`END_OF_TURN`, `modeling` gives every loaded tokenizer `GEMMA_CHAT_TEMPLATE` (Gemma 3's own), and every generator
(HF, vLLM, TRL's GRPO sampling) stops at `stop_token_ids`.
"""
from __future__ import annotations

from .errors import ModelError

END_OF_TURN = "<end_of_turn>"

# Gemma 3's own chat template, verbatim (as google/gemma-3-*-it ship it in tokenizer_config.json;
# the same text is transformers' models/gemma3/convert_gemma3_weights.py `_CHAT_TEMPLATE` and
# trl/chat_templates/gemma3.jinja). The GGUF of the embedded default ships none, and every model and
# adapter folder kormedqa writes carries this one, so a server (vLLM's OpenAI chat API sends content
# as a list of text parts) renders exactly what Gemma 3 would. For the spec's strings it renders what
# kormedqa trains on: `<bos><start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n`; a system
# message is folded into the first user turn; content is trimmed; roles must alternate.
GEMMA_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# The template kormedqa wrote before it used Gemma 3's own (no list content, no trim): a tokenizer
# still carrying it (a model or adapter folder written then) gets GEMMA_CHAT_TEMPLATE on loading.
_EARLIER_KORMEDQA_TEMPLATE = (
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
    """Give `tokenizer` Gemma 3's chat template (`GEMMA_CHAT_TEMPLATE`) when it has none, or still has
    the one earlier kormedqa versions wrote; in place. A model's own template is kept."""
    current = getattr(tokenizer, "chat_template", None)
    if not current or current == _EARLIER_KORMEDQA_TEMPLATE:
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE

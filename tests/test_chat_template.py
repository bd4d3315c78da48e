"""The chat template kormedqa writes into model and adapter folders renders what Gemma 3's own does (issue 26).

The reference is Gemma 3's official template (tests/fixtures/gemma3_chat_template.jinja, its source
in tests/fixtures/README.md), rendered by transformers' own `apply_chat_template`, on every input
form a server or processor sends: string content, lists of text parts (vLLM's OpenAI server),
a system message (string or parts), several turns, with and without the generation prompt.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

OFFICIAL = (Path(__file__).parent / "fixtures" / "gemma3_chat_template.jinja").read_text(encoding="utf-8")


def _render(tokenizer, template, messages, add_generation_prompt):
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _parts(text: str) -> list[dict]:
    return [{"type": "text", "text": text}]


CASES = {
    "one user turn": [{"role": "user", "content": "고혈압의 정의는?"}],
    "list of text parts": [{"role": "user", "content": _parts("고혈압의 정의는?")}],
    "several text parts": [{"role": "user", "content": _parts("질문: ") + _parts("고혈압?")}],
    "system + user": [{"role": "system", "content": "의학 시험 문제에 답하세요."},
                      {"role": "user", "content": "고혈압의 정의는?"}],
    "system as parts": [{"role": "system", "content": _parts("의학 시험 문제에 답하세요.")},
                        {"role": "user", "content": _parts("고혈압의 정의는?")}],
    "multi-turn": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "<reasoning>r</reasoning>A"},
                   {"role": "user", "content": "B?"}],
    "multi-turn, mixed forms": [{"role": "system", "content": "s"}, {"role": "user", "content": _parts("A?")},
                                {"role": "assistant", "content": "A"}, {"role": "user", "content": _parts(" B? ")}],
    "surrounding whitespace": [{"role": "user", "content": "  질문\n\n"}],
}


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_template_renders_what_gemma3s_own_does(tokenizer, case, add_generation_prompt):
    from kormedqa.chat import GEMMA_CHAT_TEMPLATE

    messages = CASES[case]
    assert _render(tokenizer, GEMMA_CHAT_TEMPLATE, messages, add_generation_prompt) == \
        _render(tokenizer, OFFICIAL, messages, add_generation_prompt)


text = st.text(alphabet=st.sampled_from(list("가나다 ABC\n\t<>/{}'\"")), max_size=12)
content = st.one_of(text, st.lists(text, min_size=1, max_size=3).map(lambda ts: [p for t in ts for p in _parts(t)]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(system=st.one_of(st.none(), content), turns=st.lists(content, min_size=1, max_size=5),
       add_generation_prompt=st.booleans())
def test_template_matches_on_any_conversation(tokenizer, system, turns, add_generation_prompt):
    from kormedqa.chat import GEMMA_CHAT_TEMPLATE

    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(turns)]
    assert _render(tokenizer, GEMMA_CHAT_TEMPLATE, messages, add_generation_prompt) == \
        _render(tokenizer, OFFICIAL, messages, add_generation_prompt)


def test_spec_prompt_is_rendered_as_kormedqa_trains_on_it(tokenizer):
    from kormedqa.formats import GENERATION_PREFIX, USER_TURN, END_OF_TURN
    from kormedqa.chat import GEMMA_CHAT_TEMPLATE

    rendered = _render(tokenizer, GEMMA_CHAT_TEMPLATE, [{"role": "user", "content": "질문"}], True)
    assert rendered == f"{tokenizer.bos_token}{USER_TURN}질문{END_OF_TURN}{GENERATION_PREFIX}"


def test_written_folders_carry_it_and_earlier_ones_are_upgraded(tokenizer_dir, tmp_path):
    """A tokenizer without a template, or with the one kormedqa wrote before, gets Gemma 3's on loading."""
    import shutil

    from transformers import AutoTokenizer

    from kormedqa.chat import _EARLIER_KORMEDQA_TEMPLATE, GEMMA_CHAT_TEMPLATE
    from kormedqa.modeling import load_tokenizer

    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.chat_template = _EARLIER_KORMEDQA_TEMPLATE
    tok.save_pretrained(folder)
    loaded = load_tokenizer(str(folder))
    assert loaded.chat_template == GEMMA_CHAT_TEMPLATE
    loaded.save_pretrained(tmp_path / "adapter")  # what an adapter folder gets
    assert AutoTokenizer.from_pretrained(str(tmp_path / "adapter")).chat_template == OFFICIAL


def test_fixture_is_the_template_trl_ships_as_gemma3s():
    """The fixture is checked against a second copy: TRL's record of the original Gemma 3 template."""
    import trl

    shipped = Path(trl.__file__).parent / "chat_templates" / "gemma3.jinja"
    if not shipped.exists():
        pytest.skip("this TRL version ships no chat_templates/gemma3.jinja")
    assert shipped.read_text(encoding="utf-8") == OFFICIAL

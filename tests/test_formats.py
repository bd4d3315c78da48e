"""The spec's strings, checked against the spec's own examples."""
import random
from pathlib import Path

from kormedqa.formats import (
    DEFAULT_RATIONALE_TEMPLATE, korean_part,
    Glossary, choose_detailed, dict_example, mcq_completion, mcq_examples, mcq_prompt, percentages,
)
from kormedqa.records import MCQ, DictEntry

SPEC_MCQ = MCQ(
    id="spec-1",
    question="항문압 측정 검사에서 항문 압력이 증가하는 경우는?",
    options=(
        "직장질루(rectovaginal fistula)", "항문열창(anal fissure)", "대변실금(fecal incontinence)",
        "대변메막힘(fecal impaction)", "직장탈출증(rectal prolapse)",
    ),
    answer="B",
)


def test_dict_example_matches_spec_jsonl():
    ex = dict_example(DictEntry("고혈압", "Hypertension. 혈압이 정상 범위보다 높은 상태"))
    assert ex.prompt == "<start_of_turn>user\nMeaning of word 고혈압:<end_of_turn>"
    assert ex.completion == "<start_of_turn>model\nHypertension. 혈압이 정상 범위보다 높은 상태<end_of_turn>"


def test_dict_example_rendered_like_spec_format_block(tokenizer):
    # The spec's rendered block is prompt + "\n" + completion: the chat template must agree.
    ex = dict_example(DictEntry("고혈압", "Hypertension. 혈압이 정상 범위보다 높은 상태"))
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Meaning of word 고혈압:"},
         {"role": "assistant", "content": "Hypertension. 혈압이 정상 범위보다 높은 상태"}], tokenize=False)
    assert rendered == "<bos>" + ex.prompt + "\n" + ex.completion + "\n"


def test_simple_mcq_prompt_and_completion_match_spec_block():
    prompt = mcq_prompt(SPEC_MCQ)
    reasoning = (
        "각 선택지를 분석하면:\nA) 직장질루 - 항문 압력 감소\nB) 항문열창 - 괄약근 긴장 증가로 압력 상승 ✓\n"
        "C) 대변실금 - 압력 감소\nD) 대변메막힘 - 압력 변화 없음\nE) 직장탈출증 - 압력 감소"
    )
    spec_block = """<start_of_turn>user
Reasoning 후 정답 알파벳 하나만 답하세요.

항문압 측정 검사에서 항문 압력이 증가하는 경우는?
A) 직장질루(rectovaginal fistula)
B) 항문열창(anal fissure)
C) 대변실금(fecal incontinence)
D) 대변메막힘(fecal impaction)
E) 직장탈출증(rectal prolapse)

<end_of_turn>
<start_of_turn>model
<reasoning>
각 선택지를 분석하면:
A) 직장질루 - 항문 압력 감소
B) 항문열창 - 괄약근 긴장 증가로 압력 상승 ✓
C) 대변실금 - 압력 감소
D) 대변메막힘 - 압력 변화 없음
E) 직장탈출증 - 압력 감소
</reasoning>B<end_of_turn>"""
    assert prompt + "\n" + mcq_completion(reasoning, "B") == spec_block


def test_detailed_prompt_has_spec_blocks_in_order():
    prompt = mcq_prompt(SPEC_MCQ, detailed=True)
    assert prompt.startswith("<start_of_turn>user\nReasoning 후 정답 알파벳 하나만 답하세요.\n\n```format\n첫째: 문제의 핵심 파악 (3-5 문장)\n")
    assert "넷째: A) ~%, B) ~%, C) ~%, D) ~%, E) ~% 형식으로 확률 제시\n```\n\n```example\n첫째: 이 문제는 심전도" in prompt
    assert prompt.endswith("```\n\n항문압 측정 검사에서 항문 압력이 증가하는 경우는?\nA) 직장질루(rectovaginal fistula)\n"
                           "B) 항문열창(anal fissure)\nC) 대변실금(fecal incontinence)\nD) 대변메막힘(fecal impaction)\n"
                           "E) 직장탈출증(rectal prolapse)\n\n<end_of_turn>")


def test_percentages_sum_to_100_and_favour_answer():
    rng = random.Random(0)
    for answer in "ABCDE" * 20:
        pct = percentages(answer, rng)
        assert sum(pct.values()) == 100
        assert pct[answer] == max(pct.values())
        assert all(v >= 0 for v in pct.values())


def _mcqs(n):
    letters = "ABCDE"
    return [MCQ(id=f"q{i}", question=f"질문 {i} 고혈압?", options=("가", "나", "다", "라", "마"), answer=letters[i % 5])
            for i in range(n)]


def test_95_5_split_is_exact_and_seeded():
    assert len(choose_detailed(1890, seed=1)) == 94  # the spec: 1,796 simple + 94 detailed
    assert choose_detailed(200, seed=3) == choose_detailed(200, seed=3)
    assert choose_detailed(200, seed=3) != choose_detailed(200, seed=4)
    formats = [e.format for e in mcq_examples(_mcqs(200), seed=7)]
    assert formats.count("detailed") == 10 and formats.count("simple") == 190


def test_rationale_sources_in_order():
    q = _mcqs(1)[0]
    from dataclasses import replace
    glossary = Glossary([DictEntry("고혈압", "Hypertension. 혈압이 정상 범위보다 높은 상태")])
    with_cot = replace(q, cot="기록된 풀이")
    assert "<reasoning>\n기록된 풀이\n</reasoning>A" in mcq_examples([with_cot], 0, glossary, {"q0": "교사"}, 0.0)[0].completion
    assert "<reasoning>\n교사 풀이\n</reasoning>A" in mcq_examples([q], 0, glossary, {"q0": "교사 풀이"}, 0.0)[0].completion
    head = "<start_of_turn>model\n<reasoning>\n"
    recall = "고혈압: 혈압이 정상 범위보다 높은 상태"
    expected = {
        "linked": f"각 선택지를 분석하면:\n{recall}\nA) 가 - 일치 ✓\nB) 나 - 불일치\nC) 다 - 불일치\nD) 라 - 불일치\nE) 마 - 불일치",
        "verdict": f"각 선택지를 분석하면:\n{recall}\nA) 정답 ✓\nB) 오답\nC) 오답\nD) 오답\nE) 오답",
        "recall": recall,
        # The dictionary track's own example, prompt text and definition, English name first.
        "dictionary_line": "Meaning of word 고혈압: Hypertension. 혈압이 정상 범위보다 높은 상태",
    }
    for template, body in expected.items():
        got = mcq_examples([q], 0, glossary, None, 0.0, template)[0].completion
        assert got == f"{head}{body}\n</reasoning>A<end_of_turn>", template
    default = mcq_examples([q], 0, glossary, None, 0.0)[0].completion
    assert default == f"{head}{expected[DEFAULT_RATIONALE_TEMPLATE]}\n</reasoning>A<end_of_turn>"
    # Without a dictionary term to recall, "recall" falls back to the option list with its verdicts.
    for template in ("recall", "dictionary_line"):
        bare = mcq_examples([q], 0, Glossary(), None, 0.0, template)[0].completion
        assert bare == f"{head}각 선택지를 분석하면:\nA) 정답 ✓\nB) 오답\nC) 오답\nD) 오답\nE) 오답\n</reasoning>A<end_of_turn>"


def test_detailed_completion_has_keywords_and_percentages():
    ex = mcq_examples(_mcqs(1), seed=0, detailed_fraction=1.0)[0]
    from kormedqa import reasoning_score
    text = ex.completion
    assert all(k in text for k in ("첫째:", "둘째:", "셋째:", "넷째:"))
    assert reasoning_score(text, "A") == 1.0


# ---------------------------------------------------------------- beyond the spec: both directions


def test_dict_examples_default_to_the_spec_rows_and_add_the_other_direction():
    from kormedqa.formats import dict_examples

    entries = [DictEntry("고혈압", "Hypertension. 혈압이 정상 범위보다 높은 상태"), DictEntry("빈혈", "Anemia. 혈색소가 부족한 상태")]
    assert dict_examples(entries) == [dict_example(e) for e in entries]
    rows = dict_examples(entries, ("forward", "reverse"), phrasings=2)
    assert len(rows) == 8 and len({r.id for r in rows}) == 8
    assert rows[:2] == [dict_example(e) for e in entries]  # the spec's rows first, unchanged
    reverse = [r for r in rows if "~rev" in r.id]
    assert reverse[0].prompt == "<start_of_turn>user\nWord with meaning 혈압이 정상 범위보다 높은 상태:<end_of_turn>"
    assert reverse[0].completion == "<start_of_turn>model\n고혈압<end_of_turn>"
    # The reverse prompt gives the Korean part only: the English name stays something to recall.
    assert all("Hypertension" not in r.prompt and "Anemia" not in r.prompt for r in reverse)
    assert rows[2].prompt == "<start_of_turn>user\n고혈압의 뜻:<end_of_turn>" and rows[2].completion == rows[0].completion


def test_dictionary_line_recalls_from_the_side_the_question_gives():
    from kormedqa.formats import template_simple_reasoning

    glossary = Glossary([DictEntry("고혈압", "Hypertension. 혈압이 정상 범위보다 지속적으로 높은 상태"),
                         DictEntry("혈압", "Blood pressure. 혈관 벽에 가해지는 압력")])
    forward = MCQ(id="f", question="'고혈압'의 정의로 가장 적절한 것은?", options=tuple("ABCDE"), answer="A")
    assert template_simple_reasoning(forward, glossary, "dictionary_line") == (
        "Meaning of word 고혈압: Hypertension. 혈압이 정상 범위보다 지속적으로 높은 상태")
    # The description mentions the term 혈압 too: the quoted definition decides the side.
    backward = MCQ(id="r", question="다음 설명에 해당하는 용어는?\n혈압이 정상 범위보다 지속적으로 높은 상태",
                   options=("혈압", "고혈압", "C", "D", "E"), answer="B")
    assert template_simple_reasoning(backward, glossary, "dictionary_line") == (
        "Word with meaning 혈압이 정상 범위보다 지속적으로 높은 상태: 고혈압")
    # Other templates are untouched by the reverse side.
    assert template_simple_reasoning(backward, glossary, "recall").startswith("혈압:")


def test_the_shipped_forward_training_rationales_are_unchanged_by_the_reverse_side():
    """dictionary_line on the sample's forward training questions: every rationale the forward recall
    line, never the reverse one (no forward question quotes a definition)."""
    from pathlib import Path

    from kormedqa.data import load_dictionary, load_mcq
    from kormedqa.formats import template_simple_reasoning

    root = Path(__file__).resolve().parents[1] / "data/sample"
    glossary = Glossary(load_dictionary(root / "dictionary.json", root / "characters.json"))
    forward = load_mcq(root / "mcq", split="train")
    assert all(template_simple_reasoning(q, glossary, "dictionary_line").startswith("Meaning of word ") for q in forward)
    backward = load_mcq(root / "mcq_reverse", split="train")
    lines = [template_simple_reasoning(q, glossary, "dictionary_line") for q in backward]
    assert all(l.startswith("Word with meaning ") for l in lines)
    # ... and each names the question's right option as the term.
    assert all(l.endswith(": " + q.options["ABCDE".index(q.answer)]) for l, q in zip(lines, backward))


def _naive_described(entries, text):
    from kormedqa.formats import reverse_description
    terms = sorted((e for e in entries if not e.is_symbol), key=lambda e: -len(e.term))
    found = [e for e in terms if len(reverse_description(e)) >= 8 and reverse_description(e) in text]
    return sorted(found, key=lambda e: -len(reverse_description(e)))[:1]


def _naive_mentioned(entries, text, limit=2):
    found = []
    for entry in sorted((e for e in entries if not e.is_symbol), key=lambda e: -len(e.term)):
        if entry.term in text and not any(entry.term in f.term for f in found):
            found.append(entry)
            if len(found) == limit:
                break
    return found


def test_glossary_lookups_equal_a_scan_of_every_entry():
    """The indexed look-ups find exactly what scanning every entry finds, on every shipped question
    and option text (forward, rephrased, reverse) and on texts made of pieces of terms."""
    import random

    from kormedqa.data import load_dictionary, load_mcq

    root = Path(__file__).resolve().parents[1] / "data" / "sample"
    entries = load_dictionary(root / "dictionary.json", root / "characters.json")
    entries += [DictEntry("심근", "Myocardium. 심장의 근육층"), DictEntry("급성 심근경색", "Acute MI. 관상동맥이 갑자기 막혀 심근이 괴사함"),
                DictEntry("팔자병", "Eightosis. 여덟글자인설명문")]  # a description of exactly the indexed 8 characters
    glossary = Glossary(entries)
    sets = [("mcq", "train"), ("mcq", "test"), ("mcq_rephrased", "test"), ("mcq_reverse", "train"), ("mcq_reverse", "test")]
    texts = [t for name, split in sets for q in load_mcq(root / name, split=split) for t in (q.question, *q.options)]
    rng = random.Random(0)
    pieces = [e.term for e in entries] + [e.definition for e in entries]
    texts += [" ".join(rng.sample(pieces, 3)) for _ in range(300)]
    texts += [f"다음 설명에 해당하는 것은? {korean_part(e.definition)}" for e in entries[:40]]  # quoted at the very end
    texts += [korean_part(e.definition) for e in entries[40:60]] + [e.term for e in entries[:20]]
    texts += ["다음 설명에 해당하는 것은? 여덟글자인설명문", "여덟글자인설명문"]
    for text in texts:
        assert glossary.mentioned(text) == _naive_mentioned(entries, text), text
        assert glossary.mentioned(text, limit=5) == _naive_mentioned(entries, text, 5), text
        assert glossary.described(text) == _naive_described(entries, text), text
    assert any(glossary.described(t) for t in texts) and any(len(glossary.mentioned(t)) == 2 for t in texts)

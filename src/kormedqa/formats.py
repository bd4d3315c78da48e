"""The spec's chat strings, and nothing else.

Every string here is binding (../shared/spec/SEED_SPEC.md): users compare our prepared files
against the spec byte for byte. Prompts end at the user's `<end_of_turn>` and completions begin
with `<start_of_turn>model\n`, exactly as in the spec's JSONL examples; when the two are joined
for training or generation, `TURN_SEPARATOR` goes between them, which is what the spec's rendered
examples and Gemma's chat template both show.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

from .chat import END_OF_TURN
from .records import LETTERS, MCQ, DictEntry

USER_TURN = "<start_of_turn>user\n"
MODEL_TURN = "<start_of_turn>model\n"
TURN_SEPARATOR = "\n"
GENERATION_PREFIX = TURN_SEPARATOR + MODEL_TURN  # appended to a prompt to ask the model to answer

MCQ_INSTRUCTION = "Reasoning 후 정답 알파벳 하나만 답하세요."
DETAILED_FORMAT_BLOCK = (
    "```format\n"
    "첫째: 문제의 핵심 파악 (3-5 문장)\n"
    "둘째: 관련 의학 지식 설명 (3-5 문장)\n"
    "셋째: 각 선택지 분석 (3-5 문장)\n"
    "넷째: A) ~%, B) ~%, C) ~%, D) ~%, E) ~% 형식으로 확률 제시\n"
    "```"
)
DETAILED_EXAMPLE_BLOCK = (
    "```example\n"
    "첫째: 이 문제는 심전도 ST 분절 상승을 보이는 환자의 진단에 관한 문제입니다...\n"
    "둘째: ST 분절 상승은 심근경색의 특징적 소견으로...\n"
    "셋째: A) 협심증은 ST 하강을 보이므로...\n"
    "넷째: A) 5%, B) 90%, C) 3%, D) 1%, E) 1%\n"
    "```"
)
REASONING_OPEN, REASONING_CLOSE = "<reasoning>", "</reasoning>"
DETAILED_KEYWORDS = ("첫째:", "둘째:", "셋째:", "넷째:")
DETAILED_FRACTION = 0.05


@dataclass(frozen=True)
class Example:
    """One prompt/completion pair, as written to the prepared JSONL.

    `format` is the spec's format of the row ("dict", or for MCQs "simple" / "detailed"), written as
    the row's "format" key.
    """

    prompt: str
    completion: str
    id: str = ""
    format: str = ""  # "dict", "simple" or "detailed"

    def to_row(self) -> dict:
        return {"id": self.id, "format": self.format, "prompt": self.prompt, "completion": self.completion}


# ---------------------------------------------------------------- Track 1: dictionary


def dict_prompt(term: str) -> str:
    return f"{USER_TURN}{forward_question(term)}{END_OF_TURN}"


def dict_example(entry: DictEntry) -> Example:
    return Example(
        prompt=dict_prompt(entry.term),
        completion=f"{MODEL_TURN}{entry.definition}{END_OF_TURN}",
        id=entry.term,
        format="dict",
    )


# Beyond the spec (selectable, off by default): the same dictionary fact asked in other words and the
# other way round. A fact trained only as term -> definition is not recalled as definition -> term
# (the reversal curse, Berglund et al. 2023), and facts seen in several phrasings become usable in
# new ones (Allen-Zhu & Li 2023, Physics of Language Models 3.1/3.2). Index 0 of FORWARD_PHRASINGS
# is the spec's prompt. None of these is a question stem of the sample's evaluation sets
# (scripts/make_sample_mcq.py); tests check that.
FORWARD_PHRASINGS = ("Meaning of word {term}:", "{term}의 뜻:", "Definition of {term}:")
REVERSE_PHRASINGS = ("Word with meaning {description}:", "다음 뜻을 가진 용어: {description}",
                     "Term defined as {description}:")
DICT_DIRECTIONS = ("forward", "reverse")


def forward_question(term: str, phrasing: int = 0) -> str:
    """A forward dictionary question without turn markers: `FORWARD_PHRASINGS[phrasing]` with the
    term (`Meaning of word 고혈압:`, the spec's at 0); the rows' prompts and the rationale
    templates' recall lines both say it this way."""
    return FORWARD_PHRASINGS[phrasing].format(term=term)


def reverse_question(entry: DictEntry, phrasing: int = 0) -> str:
    """A reverse dictionary question without turn markers: `REVERSE_PHRASINGS[phrasing]` with the
    entry's `reverse_description` (`Word with meaning 혈압이 ...:`); its answer is `entry.term`."""
    return REVERSE_PHRASINGS[phrasing].format(description=reverse_description(entry))


def reverse_description(entry: DictEntry) -> str:
    """What a reverse row gives: the definition's Korean part (`korean_part`), as exam questions
    describe a term in Korean; the English name stays something to recall."""
    return korean_part(entry.definition)


def reverse_dict_prompt(entry: DictEntry, phrasing: int = 0) -> str:
    """The user turn of a reverse dictionary row: `REVERSE_PHRASINGS[phrasing]` with the entry's
    `reverse_description`; its answer is `entry.term`."""
    return f"{USER_TURN}{reverse_question(entry, phrasing)}{END_OF_TURN}"


def dict_examples(entries: Sequence[DictEntry], directions: Sequence[str] = ("forward",),
                  phrasings: int = 1) -> list[Example]:
    """Track 1 rows: for each direction, for each of the first `phrasings` wordings, every entry.

    forward: the prompt names the term, the completion is the definition (wording 0 is the spec's
    row, `dict_example`, byte for byte); reverse: the prompt gives `reverse_description(entry)`, the
    completion is the term. Row ids: the term, then `~fwd{k}` / `~rev{k}` for every row other than
    the spec's. The defaults give exactly the spec's rows. Raises ValueError for an unknown
    direction or `phrasings` outside 1..3.
    """
    unknown = [d for d in directions if d not in DICT_DIRECTIONS]
    if unknown or not directions:
        raise ValueError(f"dictionary directions are a non-empty list of {DICT_DIRECTIONS}, got {list(directions)}")
    if not 1 <= phrasings <= len(FORWARD_PHRASINGS):
        raise ValueError(f"dictionary phrasings must be 1-{len(FORWARD_PHRASINGS)}, got {phrasings}")
    out: list[Example] = []
    for direction in directions:
        for k in range(phrasings):
            for entry in entries:
                if direction == "forward" and k == 0:
                    out.append(dict_example(entry))
                elif direction == "forward":
                    out.append(Example(f"{USER_TURN}{forward_question(entry.term, k)}{END_OF_TURN}",
                                       f"{MODEL_TURN}{entry.definition}{END_OF_TURN}", f"{entry.term}~fwd{k}", "dict"))
                else:
                    out.append(Example(reverse_dict_prompt(entry, k), f"{MODEL_TURN}{entry.term}{END_OF_TURN}",
                                       f"{entry.term}~rev{k}", "dict"))
    return out


# ---------------------------------------------------------------- Track 2: MCQ


def options_block(mcq: MCQ) -> str:
    return "\n".join(f"{letter}) {text}" for letter, text in zip(LETTERS, mcq.options))


def mcq_body(mcq: MCQ) -> str:
    return f"{mcq.question}\n{options_block(mcq)}\n\n"


def mcq_prompt(mcq: MCQ, detailed: bool = False) -> str:
    header = f"{MCQ_INSTRUCTION}\n\n"
    if detailed:
        header += f"{DETAILED_FORMAT_BLOCK}\n\n{DETAILED_EXAMPLE_BLOCK}\n\n"
    return f"{USER_TURN}{header}{mcq_body(mcq)}{END_OF_TURN}"


def mcq_completion(reasoning: str, answer: str) -> str:
    return f"{MODEL_TURN}{REASONING_OPEN}\n{reasoning.strip()}\n{REASONING_CLOSE}{answer}{END_OF_TURN}"


# ---------------------------------------------------------------- rationales


class Glossary:
    """Dictionary look-ups for template rationales: which known terms a text mentions, which
    definition it quotes.

    Each look-up walks the text once and checks only the entries that can start at each position
    (indexed by first character, or by the description's first 8), so its cost grows with the
    text and the matches, not with the dictionary: a KorMedMCQA-sized run with a 10^5-entry
    dictionary is not 10^5 substring searches per question.
    """

    DESCRIBED_MIN = 8  # shorter descriptions ("혈압") would match inside unrelated text

    def __init__(self, entries: Sequence[DictEntry] = ()):
        # Longest terms first, so "급성 심근경색" wins over "심근경색" inside the same text.
        self._entries = sorted((e for e in entries if not e.is_symbol), key=lambda e: -len(e.term))
        self._rank = {id(e): i for i, e in enumerate(self._entries)}
        self._by_first: dict[str, list[DictEntry]] = {}
        self._by_prefix: dict[str, list[DictEntry]] = {}
        for e in self._entries:
            if e.term:
                self._by_first.setdefault(e.term[0], []).append(e)
            description = reverse_description(e)
            if len(description) >= self.DESCRIBED_MIN:
                self._by_prefix.setdefault(description[: self.DESCRIBED_MIN], []).append(e)

    def described(self, text: str) -> list[DictEntry]:
        """Entries whose Korean description (`reverse_description`) `text` quotes, longest first, at
        most one: a question that gives a definition and asks for its term."""
        found = {id(e): e for i in range(len(text) - self.DESCRIBED_MIN + 1)
                 for e in self._by_prefix.get(text[i:i + self.DESCRIBED_MIN], ())
                 if text.startswith(reverse_description(e), i)}
        ordered = sorted(found.values(), key=lambda e: self._rank[id(e)])  # as a scan of the entries finds them
        return sorted(ordered, key=lambda e: -len(reverse_description(e)))[:1]

    def mentioned(self, text: str, limit: int = 2) -> list[DictEntry]:
        """Up to `limit` entries whose term occurs in `text`, longest first; a term inside an
        already found one ("심근경색" in "급성 심근경색") is skipped."""
        present = {id(e): e for i, ch in enumerate(text) for e in self._by_first.get(ch, ())
                   if text.startswith(e.term, i)}
        found: list[DictEntry] = []
        for entry in sorted(present.values(), key=lambda e: self._rank[id(e)]):
            if not any(entry.term in f.term for f in found):
                found.append(entry)
                if len(found) == limit:
                    break
        return found


def korean_part(definition: str) -> str:
    """'Hypertension. 혈압이 ...' -> '혈압이 ...': the part an option is most likely to paraphrase."""
    head, sep, tail = definition.partition(". ")
    return tail if sep and head.isascii() else definition


def _short(text: str, width: int = 10) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


RATIONALE_TEMPLATES = ("linked", "recall", "dictionary_line", "verdict")
DEFAULT_RATIONALE_TEMPLATE = "linked"


def template_simple_reasoning(mcq: MCQ, glossary: Glossary, template: str = DEFAULT_RATIONALE_TEMPLATE) -> str:
    """The spec's '각 선택지를 분석하면:' list, recalling dictionary definitions first.

    The recall runs term -> definition, the direction the dictionary track teaches. Then one line
    per option in the spec's shape (`B) 항문열창 - ... ✓`):
    - "linked" (default): each line copies the option's text and says whether it matches the
      recalled definition (`- 일치 ✓` / `- 불일치`), so the verdict compares two texts in the
      context instead of asking the model to know, unaided, which letter holds the definition.
      See docs/decisions.md ("Linked rationales").
    - "recall": only the recall line(s), then `</reasoning>X`: the answer letter, which carries the
      weighted share of the loss, is itself the decision "which option says what I recalled".
      Questions with no dictionary term get the option list with the ✓ line, as "verdict".
    - "dictionary_line": as "recall", but each recall line is the dictionary track's own example
      written out (`Meaning of word 고혈압: Hypertension. 혈압이 ...`): the prompt the dictionary
      track trained, then its definition, English name first. The English name is in no option, so
      the model must recall it from what the dictionary track taught before it writes the Korean
      part, which it then copies from the matching option. A question that quotes a definition
      (definition -> term) is recalled from that side instead, as the reverse dictionary row says
      it: `Word with meaning 혈압이 ...: 고혈압`.
    - "verdict": the earlier template, one-word verdicts without option text (`A) 정답 ✓` /
      `B) 오답`); nothing in it links the recalled definition to a letter. Kept for comparison.
    Measurements of each: docs/decisions.md ("Linked rationales") and bench/README.md.
    """
    if template not in RATIONALE_TEMPLATES:
        raise ValueError(f"rationale template must be one of {RATIONALE_TEMPLATES}, got {template!r}")
    if template == "dictionary_line":
        # A question quoting a definition asks for its term: recall from that side, as the
        # reverse dictionary row says it (`Word with meaning <description>: <term>`).
        described = glossary.described(mcq.question)
        if described:
            return "\n".join(f"{reverse_question(e)} {e.term}" for e in described)
    known = glossary.mentioned(mcq.question)
    if template == "dictionary_line" and known:
        return "\n".join(f"{forward_question(entry.term)} {entry.definition}" for entry in known)
    recalled = [f"{entry.term}: {korean_part(entry.definition)}" for entry in known]
    if template == "recall" and recalled:
        return "\n".join(recalled)
    lines = ["각 선택지를 분석하면:", *recalled]
    for letter, option in zip(LETTERS, mcq.options):
        if template != "linked":
            lines.append(f"{letter}) 정답 ✓" if letter == mcq.answer else f"{letter}) 오답")
        else:
            text = " ".join(option.split())
            lines.append(f"{letter}) {text} - 일치 ✓" if letter == mcq.answer else f"{letter}) {text} - 불일치")
    return "\n".join(lines)


def percentages(answer: str, rng: random.Random) -> dict[str, int]:
    """A-E percentages summing to 100, most mass on the correct letter."""
    correct = rng.randint(70, 90)
    rest = 100 - correct
    cuts = sorted(rng.randint(0, rest) for _ in range(3))
    shares = [a - b for a, b in zip(cuts + [rest], [0] + cuts)]
    out, it = {}, iter(shares)
    for letter in LETTERS:
        out[letter] = correct if letter == answer else next(it)
    return out


def template_detailed_reasoning(mcq: MCQ, glossary: Glossary, rng: random.Random, knowledge: str = "") -> str:
    known = glossary.mentioned(mcq.question)
    if known:
        focus = ", ".join(e.term for e in known)
        first = f"이 문제는 {focus}에 관한 문제입니다. 선택지 중 질문에 맞는 설명을 골라야 합니다."
    else:
        first = f"이 문제는 다음 질문에 답하는 문제입니다. {_short(mcq.question, 60)}"
    if not knowledge:
        knowledge = " ".join(f"{e.term}은(는) {korean_part(e.definition)}입니다." for e in known)
    second = knowledge or "각 선택지의 의학적 의미를 질문과 비교합니다."
    third = " ".join(
        f"{letter}) {_short(option)}: {'질문에 부합함.' if letter == mcq.answer else '해당하지 않음.'}"
        for letter, option in zip(LETTERS, mcq.options)
    )
    pct = percentages(mcq.answer, rng)
    fourth = ", ".join(f"{letter}) {pct[letter]}%" for letter in LETTERS)
    return f"첫째: {first}\n\n둘째: {second}\n\n셋째: {third}\n\n넷째: {fourth}"


def choose_detailed(n: int, seed: int, fraction: float = DETAILED_FRACTION) -> set[int]:
    """Exactly round(n * fraction) indices get the detailed format, chosen by the random `seed`."""
    k = round(n * fraction)
    return set(random.Random(seed).sample(range(n), k))


def mcq_examples(
    mcqs: Sequence[MCQ],
    seed: int,
    glossary: Glossary | None = None,
    rationales: Mapping[str, str] | None = None,
    detailed_fraction: float = DETAILED_FRACTION,
    template: str = DEFAULT_RATIONALE_TEMPLATE,
) -> list[Example]:
    """Seed-format MCQ examples. Rationale order: the record's `cot`, the rationale file, a template.

    A detailed row takes a given rationale that already holds all four markers (첫째..넷째) as it
    is; any other given text becomes the template's 둘째 (knowledge) section.

    Same records and seed give the same examples, so prepared files are byte-identical.
    """
    glossary = glossary or Glossary()
    rationales = rationales or {}
    detailed = choose_detailed(len(mcqs), seed, detailed_fraction)
    rng = random.Random(seed + 1)
    out = []
    for i, mcq in enumerate(mcqs):
        given = mcq.cot.strip() or rationales.get(mcq.id, "").strip()
        if i in detailed:
            reasoning = template_detailed_reasoning(mcq, glossary, rng, knowledge=" ".join(given.split()))
            if all(keyword in given for keyword in DETAILED_KEYWORDS):
                # Already in the detailed form (a teacher's, from `kormedqa rationales`): used as written.
                # The template above still ran, so the percentages of later rows stay what they were.
                reasoning = given
            out.append(Example(mcq_prompt(mcq, True), mcq_completion(reasoning, mcq.answer), mcq.id, "detailed"))
        else:
            reasoning = given or template_simple_reasoning(mcq, glossary, template)
            out.append(Example(mcq_prompt(mcq), mcq_completion(reasoning, mcq.answer), mcq.id, "simple"))
    return out

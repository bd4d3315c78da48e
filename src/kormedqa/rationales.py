"""`kormedqa rationales`: a teacher writes the spec's reasoning for each training question (STaR).

For every question of `--data/--split` a teacher model writes a rationale in the spec's form
(SEED_SPEC.md, Track 2): the simple option-by-option list, or for the same round(0.05 n) questions
that `prepare mcq` gives the detailed prompt (`formats.choose_detailed`, same `--seed`) the
첫째..넷째 form with percentages. A rationale is kept only when it ends on the gold letter, is in
the form asked (`judge`) and does not state the answer before analysing the options. Each question
gets up to `--samples` tries; one that all tries miss gets one more with the gold letter as a hint
("rationalisation", Zelikman et al. 2022, STaR), kept only if the text does not mention the hint;
what still fails falls back to the project's template, flagged `"kind": "template"`.

Output folder: `rationales.jsonl` ({"id", "rationale", "kind", "format"} per question, in input
order: what `prepare mcq --rationales` reads), `rationales_summary.json` (kept / rationalised /
fallback per exam type, the teacher's accuracy), `run.json` (teacher, prompt hash, sampling,
seed) and `journal.jsonl`, the working record: each finished question is appended and fsynced,
so a killed run continues with `--resume` and writes the same files as an unbroken one (every
try draws from its own seed, derived from --seed, the question id and the try).

Teachers: any model kormedqa loads (hub id, folder, LoRA adapter, 'gemma3-270m') through the
generation backends of `eval` (HF, or vLLM on a GPU), or an OpenAI-compatible chat endpoint
(`--teacher-url http://HOST:PORT/v1 --teacher-model NAME`, key in the environment variable
`--teacher-key-env`). docs/rationales.md says how to run it on real KorMedMCQA and what it costs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import ClassVar, Sequence

from .chat import END_OF_TURN
from .checks import Range, check_config
from .config import DEFAULT_MODEL_HELP, DeviceArgs, ResumableRunArgs, arg
from .data import load_dictionary, load_mcq, load_mcq_sources, read_jsonl
from .endpoint import DEFAULT_KEY_ENV, EndpointGenerator
from .errors import DataError, OutputExistsError, UsageError
from .extract import AFTER_REASONING, reasoning_score
from .formats import (DEFAULT_RATIONALE_TEMPLATE, DETAILED_FRACTION, DETAILED_KEYWORDS, Glossary,
    RATIONALE_TEMPLATES, REASONING_CLOSE, REASONING_OPEN, USER_TURN, choose_detailed, mcq_prompt,
    template_detailed_reasoning, template_simple_reasoning)
from .fsio import claim_output, fault_point, write_json_atomic, write_jsonl_atomic
from .hardware import PrecisionChoice
from .metrics import proportion
from .modeling import check_precision, load_model, load_tokenizer
from .provenance import RESUMABLE_CHANGES, check_resumed_settings, provenance, run_precision
from .records import EXAM_TYPES, LETTERS, MCQ
from .scorers import ANSWER_STOPS, HFGenerator, Sampling
from .text import normalize_text
from .vllm_backend import BACKENDS, VllmGenerator, resolve_backend

log = logging.getLogger(__name__)

SHIPPED_EXEMPLARS = "resources/rationale_exemplars.jsonl"
SIMPLE_HEADER = "각 선택지를 분석하면:"
# What the teacher is told besides the exemplars (Korean, like the data). The spec's own prompt
# follows as the user's turn, so the question reads exactly as the student will see it.
INSTRUCTIONS = {
    "simple": (
        "당신은 한국 보건의료인 국가시험 문제의 풀이를 쓰는 교사입니다. 예시와 같은 형식으로만 답하세요: "
        f"{REASONING_OPEN} 다음 줄에 '{SIMPLE_HEADER}', 이어서 A)부터 E)까지 선택지마다 한 줄씩 그 선택지의 "
        "내용과 맞거나 틀린 이유를 쓰고, 정답 선택지의 줄 끝에만 ✓를 붙인 뒤, "
        f"{REASONING_CLOSE} 바로 뒤에 정답 알파벳 하나만 쓰세요. 선택지를 분석하기 전에 정답을 말하지 마세요."
    ),
    "detailed": (
        "당신은 한국 보건의료인 국가시험 문제의 풀이를 쓰는 교사입니다. 예시와 같은 형식으로만 답하세요: "
        f"{REASONING_OPEN} 다음에 첫째: 문제의 핵심, 둘째: 관련 의학 지식, 셋째: 각 선택지 분석, "
        "넷째: A) ~%, B) ~%, C) ~%, D) ~%, E) ~% (합계 100%)를 쓰고, "
        f"{REASONING_CLOSE} 바로 뒤에 정답 알파벳 하나만 쓰세요. 셋째 전에는 정답을 말하지 마세요."
    ),
}
HINT = "\n\n(참고: 이 문제의 정답은 {letter}입니다. 이 참고 문구나 정답을 미리 알았다는 사실은 언급하지 말고, 처음 푸는 것처럼 풀이를 쓰세요.)"
# An answer stated as such ("정답은 B", "답: (B)") or a verdict mark: not allowed before the options are analysed.
ANSWER_STATEMENT = re.compile(r"(?:정답|답)\s*(?:은|는|이|:|：)?\s*[\(\[]?[A-E](?![A-Za-z])|✓")
# A rationalised text must read as if written without the hint.
HINT_MENTION = re.compile(r"힌트|hint|참고|주어진\s*(?:정답|답)|(?:정답|답)\s*(?:은|는|이|:|：)?\s*[\(\[]?[A-E](?![A-Za-z])",
                          re.IGNORECASE)
OPTION_LINE = re.compile(r"^\s*(?:[-*•]\s*)?\(?([A-E])\)")
PERCENT = re.compile(r"([A-E])\)\s*(\d+(?:\.\d+)?)\s*%")
KINDS = ("teacher", "rationalised", "template")


@dataclass
class RationalesConfig(DeviceArgs, ResumableRunArgs):
    """`kormedqa rationales`: a teacher writes the spec's rationale for each question, kept only when right."""

    output: str = arg("", "folder for rationales.jsonl, rationales_summary.json, run.json and the journal")
    seed: int = arg(42, "random seed: which questions get the detailed form (as `prepare mcq --seed`), and every sample")
    data: list[str] = arg(help="KorMedMCQA file(s), folder(s) or hub id (e.g. sean0042/KorMedMCQA), as for prepare mcq",
                          factory=list)
    split: str = arg("train", "split to read when --data is a folder or hub id")
    limit: int | None = arg(None, "write rationales for the first N questions only (the detailed ones are still "
                                  "chosen over all of them, as prepare chooses)")
    detailed_fraction: float = arg(DETAILED_FRACTION, "share of questions in the detailed form, as prepare mcq's")
    teacher: str = arg("gemma3-270m", "teacher model when no --teacher-url: " + DEFAULT_MODEL_HELP)
    teacher_url: str | None = arg(None, "OpenAI-compatible endpoint instead, e.g. http://127.0.0.1:8000/v1")
    teacher_model: str = arg("", "model name at --teacher-url (required with it)")
    teacher_key_env: str = arg(DEFAULT_KEY_ENV, "environment variable holding the endpoint's key")
    backend: str = arg("auto", "local teacher's backend: auto (vLLM when installed and on a GPU), hf, vllm",
                       choices=BACKENDS)
    exemplars: str | None = arg(None, "JSONL of few-shot exemplars (the shipped file's schema); default: the data's "
                                      "--fewshot-split where its records carry cot, else the shipped exemplars")
    fewshot_split: str = arg("fewshot", "split of --data whose cot texts become the exemplars")
    shots: int = arg(3, "exemplars per prompt (the question's exam type first)")
    samples: int = arg(4, "tries per question before the hinted one")
    temperature: float = arg(0.7, "sampling temperature (0: greedy, then --samples must be 1)")
    top_p: float = arg(0.95, "nucleus sampling threshold")
    max_new_tokens: int = arg(768, "token budget of one try")
    batch_size: int = arg(8, "questions per batch (local: per forward batch; endpoint: concurrent requests)")
    max_retries: int = arg(3, "endpoint: retries of a failed or rate-limited request (with back-off)")
    rationalise: bool = arg(True, "give questions all tries miss one try with the gold letter as a hint")
    dictionary: list[str] = arg(help="dictionary JSON(s) for the template fallback", factory=list)
    rationale_template: str = arg(DEFAULT_RATIONALE_TEMPLATE, "template for the fallback (as prepare mcq's)",
                                  choices=RATIONALE_TEMPLATES)

    RANGES: ClassVar[dict] = {"limit": Range(low=1), "detailed_fraction": Range(low=0, high=1), "shots": Range(low=0),
                              "samples": Range(low=1), "temperature": Range(low=0), "top_p": Range(low=0, high=1, low_open=True),
                              "max_new_tokens": Range(low=1), "batch_size": Range(low=1), "max_retries": Range(low=0)}

    def __post_init__(self):
        """Choices, ranges and flag combinations at parse time (UsageError), before anything is read."""
        check_config(self)
        if self.samples > 1 and self.temperature == 0:
            raise UsageError("--samples > 1 needs --temperature > 0 (greedy tries are all the same)")
        if self.teacher_url and not self.teacher_model:
            raise UsageError("--teacher-url needs --teacher-model (the model name the server serves)")


# ---------------------------------------------------------------- exemplars and prompts


@dataclass(frozen=True)
class Exemplar:
    """A solved question shown to the teacher: its rationale in both forms (reasoning text only, no tags)."""

    mcq: MCQ
    simple: str
    detailed: str

    def text(self, detailed: bool) -> str:
        return self.detailed if detailed else self.simple


def shipped_exemplars() -> list[Exemplar]:
    """The exemplars shipped with kormedqa (written for the project; not KorMedMCQA text)."""
    return load_exemplars(Path(str(files("kormedqa").joinpath(SHIPPED_EXEMPLARS))))


def load_exemplars(path: str | Path) -> list[Exemplar]:
    """Exemplars from a JSONL of KorMedMCQA-schema rows with `simple` and `detailed` rationale texts.

    Raises DataError naming file and line for a bad question row or a rationale that does not
    pass `judge` in its form (an exemplar must show what is kept).
    """
    mcqs = load_mcq(path)
    out = []
    for line, (mcq, row) in enumerate(zip(mcqs, read_jsonl(path)), start=1):
        for form in ("simple", "detailed"):
            text = row.get(form)
            if not isinstance(text, str) or not text.strip():
                raise DataError(str(path), line, form, "needs the rationale text in this form")
            verdict = judge(f"{REASONING_OPEN}\n{text}\n{REASONING_CLOSE}{mcq.answer}", mcq, form == "detailed")
            if not verdict.ok:
                raise DataError(str(path), line, form, f"not a rationale that would be kept: {verdict.reason}")
        out.append(Exemplar(mcq, row["simple"].strip(), row["detailed"].strip()))
    return out


def without_answer_statements(text: str) -> str:
    """`text` minus its sentences that state the answer ("따라서 정답은 B이다."), whitespace collapsed."""
    sentences = re.split(r"(?<=[.!?。])\s+|\n+", text)
    return " ".join(s.strip() for s in sentences if s.strip() and not ANSWER_STATEMENT.search(s))


def exemplar_from_cot(mcq: MCQ) -> Exemplar:
    """An exemplar from a record with a written `cot` (KorMedMCQA's fewshot split), in the spec's two forms.

    Simple: the cot (its answer statements removed, since the answer must follow the analysis),
    then one line per option with ✓ on the gold one. Detailed: the project's detailed template
    with the cot as its 둘째 (knowledge) part, as `prepare mcq` builds detailed rows from cot.
    """
    knowledge = without_answer_statements(mcq.cot)
    lines = [f"{letter}) {' '.join(option.split())}{' ✓' if letter == mcq.answer else ''}"
             for letter, option in zip(LETTERS, mcq.options)]
    simple = "\n".join([SIMPLE_HEADER, knowledge, *lines]) if knowledge else "\n".join([SIMPLE_HEADER, *lines])
    detailed = template_detailed_reasoning(mcq, Glossary(), random.Random(mcq.id), knowledge=knowledge)
    return Exemplar(mcq, simple, detailed)


def choose_exemplars(cfg: RationalesConfig) -> tuple[list[Exemplar], str]:
    """The exemplars the prompts show and where they came from ("file:...", "data:<split>" or "shipped").

    `--exemplars` wins; else the records of the data's `--fewshot-split` that carry a cot (a folder
    or hub id only: a single file has no splits); else the shipped ones.
    """
    if cfg.exemplars:
        return load_exemplars(cfg.exemplars), f"file:{cfg.exemplars}"
    found: list[MCQ] = []
    for source in cfg.data:
        if Path(source).is_file():
            continue
        try:
            found.extend(q for q in load_mcq(source, split=cfg.fewshot_split) if q.cot.strip())
        except DataError:  # no such split: the shipped exemplars stand in
            continue
    if found:
        return [exemplar_from_cot(q) for q in found], f"data:{cfg.fewshot_split}"
    return shipped_exemplars(), "shipped"


def pick_exemplars(exemplars: Sequence[Exemplar], mcq: MCQ, shots: int) -> list[Exemplar]:
    """`shots` exemplars for `mcq`: those of its exam type first, then the others, in file order; never itself."""
    pool = [e for e in exemplars if e.mcq.id != mcq.id]
    same = [e for e in pool if e.mcq.exam_type and e.mcq.exam_type == mcq.exam_type]
    return (same + [e for e in pool if e not in same])[:shots]


def user_text(mcq: MCQ, detailed: bool) -> str:
    """The spec's user turn for `mcq` (`formats.mcq_prompt`) without the turn markers: a chat message's content."""
    return mcq_prompt(mcq, detailed)[len(USER_TURN):-len(END_OF_TURN)]


def conversation(mcq: MCQ, detailed: bool, exemplars: Sequence[Exemplar], shots: int, hint: str = "") -> list[dict]:
    """The teacher's chat: instructions, `shots` solved exemplars, then the question (with the hint, if any).

    Returns OpenAI-style messages [{"role", "content"}]; a local teacher renders them with its
    tokenizer's chat template, an endpoint with its server's.
    """
    form = "detailed" if detailed else "simple"
    messages = [{"role": "system", "content": INSTRUCTIONS[form]}]
    for ex in pick_exemplars(exemplars, mcq, shots):
        messages.append({"role": "user", "content": user_text(ex.mcq, detailed)})
        messages.append({"role": "assistant",
                         "content": f"{REASONING_OPEN}\n{ex.text(detailed)}\n{REASONING_CLOSE}{ex.mcq.answer}"})
    question = user_text(mcq, detailed) + (HINT.format(letter=hint) if hint else "")
    messages.append({"role": "user", "content": question})
    return messages


def prompt_sha256(exemplars: Sequence[Exemplar]) -> str:
    """SHA-256 of everything the prompts are made of besides the question: instructions, hint, exemplars."""
    blob = json.dumps({"instructions": INSTRUCTIONS, "hint": HINT,
                       "exemplars": [[e.mcq.id, user_text(e.mcq, False), e.simple, e.detailed, e.mcq.answer]
                                     for e in exemplars]}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- what is kept


@dataclass(frozen=True)
class Verdict:
    """`judge`'s answer: whether the output is kept, the letter it ends on, why not, and the rationale text."""

    ok: bool
    letter: str
    reason: str
    rationale: str = ""


def judge(output: str, mcq: MCQ, detailed: bool, hinted: bool = False) -> Verdict:
    """Whether a teacher's output is a rationale to keep for `mcq`.

    Kept when: one `<reasoning>...</reasoning>` block followed by the gold letter and nothing
    else; in the simple form every option A-E has its own line and the one ✓ is on the gold
    line; in the detailed form the spec's reasoning score is 1 (`extract.reasoning_score`: tags,
    첫째..넷째, right letter), the markers come in order and 넷째 gives A-E percentages summing to
    100 with the gold letter highest; no answer is stated (`정답은 B`, ✓) before the options are
    analysed (the first option line; 셋째 in the detailed form); with `hinted`, nothing mentions
    the hint or states the answer anywhere. Returns a Verdict whose `rationale` is the text
    between the tags.
    """
    text = normalize_text(output)
    start, end = text.find(REASONING_OPEN), text.find(REASONING_CLOSE)
    if start < 0 or end < start:
        return Verdict(False, "", "no <reasoning>...</reasoning> block")
    tail = AFTER_REASONING.match(text, end)
    letter = tail.group(1).upper() if tail else ""
    if not tail or text[tail.end():].strip(" \n)].。") or text.count(REASONING_OPEN) != 1:
        return Verdict(False, letter, "not one reasoning block ending on a letter")
    body = text[start + len(REASONING_OPEN):end].strip()
    if letter != mcq.answer:
        return Verdict(False, letter, f"ends on {letter or 'no letter'}, gold is {mcq.answer}")
    if not body:
        return Verdict(False, letter, "empty reasoning")
    reason = _detailed_form(text, body, mcq) if detailed else _simple_form(body, mcq)
    if not reason and hinted and HINT_MENTION.search(body):
        reason = "mentions the hint or states the answer"
    return Verdict(not reason, letter, reason, body if not reason else "")


def _simple_form(body: str, mcq: MCQ) -> str:
    lines = body.split("\n")
    at: dict[str, list[int]] = {letter: [] for letter in LETTERS}
    for i, line in enumerate(lines):
        if (m := OPTION_LINE.match(line)) is not None:
            at[m.group(1)].append(i)
    missing = [letter for letter in LETTERS if len(at[letter]) != 1]
    if missing:
        return f"option(s) {''.join(missing)} not analysed in exactly one line of their own"
    if body.count("✓") != 1 or "✓" not in lines[at[mcq.answer][0]]:
        return "not exactly one ✓, on the gold option's line"
    first = min(i[0] for i in at.values())
    if ANSWER_STATEMENT.search("\n".join(lines[:first])):
        return "states the answer before analysing the options"
    return ""


def _detailed_form(text: str, body: str, mcq: MCQ) -> str:
    if reasoning_score(text, mcq.answer) != 1:
        return "reasoning score below 1 (tags, 첫째..넷째, letter)"
    where = [body.find(keyword) for keyword in DETAILED_KEYWORDS]
    if where != sorted(where) or min(where) < 0:
        return "첫째..넷째 out of order"
    shares = PERCENT.findall(body[where[-1]:])
    letters = [letter for letter, _ in shares]
    if sorted(letters) != list(LETTERS):
        return "넷째 does not give one percentage for each of A-E"
    value = {letter: float(p) for letter, p in shares}
    if abs(sum(value.values()) - 100) > 0.5:
        return f"percentages sum to {sum(value.values()):g}, not 100"
    top = max(value.values())
    if value[mcq.answer] != top or list(value.values()).count(top) != 1:
        return "the gold letter is not the one most likely in 넷째"
    if ANSWER_STATEMENT.search(body[:where[2]]):
        return "states the answer before analysing the options (before 셋째)"
    return ""


# ---------------------------------------------------------------- teachers


class LocalTeacher:
    """A model kormedqa loads, behind the generation backends of `eval` (`scorers.HFGenerator`, vLLM).

    `teacher(conversations, max_new_tokens, sampling)` -> one continuation per conversation,
    rendered with the tokenizer's chat template (its leading <bos> dropped: the tokenizer adds
    one when it encodes, and two would be a prompt the model never saw).
    """

    def __init__(self, generator, tokenizer):
        self.generator, self.tokenizer = generator, tokenizer

    def render(self, messages: Sequence[dict]) -> str:
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        bos = self.tokenizer.bos_token
        return text[len(bos):] if bos and text.startswith(bos) else text

    def __call__(self, conversations, max_new_tokens: int, sampling: Sampling) -> list[str]:
        return self.generator([self.render(c) for c in conversations], max_new_tokens, ANSWER_STOPS, sampling=sampling)


def make_teacher(cfg: RationalesConfig, choice: PrecisionChoice) -> tuple[object, dict]:
    """The teacher callable and its description for run.json; checked before any output is claimed.
    A local teacher runs in the run's precision `choice` (`hardware.choose`).

    Raises TeacherError for an endpoint that cannot be reached or refuses the key, ModelError for
    a model that does not load, UsageError for a backend that cannot run here.
    """
    if cfg.teacher_url:
        teacher = EndpointGenerator(cfg.teacher_url, cfg.teacher_model, cfg.teacher_key_env, cfg.batch_size,
                                    cfg.max_retries)
        teacher.check()
        return teacher, {"kind": "endpoint", "url": cfg.teacher_url, "model": cfg.teacher_model,
                         "key_env": cfg.teacher_key_env}

    tokenizer = load_tokenizer(cfg.teacher)
    backend = resolve_backend(cfg.backend, cfg.device)
    check_precision(cfg.teacher, choice)
    if backend == "vllm":
        generator = VllmGenerator(cfg.teacher, tokenizer, choice, cfg.seed)
    else:
        model = load_model(cfg.teacher, choice, merge_adapter=True)
        model.eval()
        generator = HFGenerator(model, tokenizer, cfg.batch_size)
    return LocalTeacher(generator, tokenizer), {"kind": "model", "model": cfg.teacher, "backend": backend}


# ---------------------------------------------------------------- one batch of questions


def cut_after_answer(output: str) -> str:
    """`output` up to its first complete answer (`</reasoning>X`), where local generation stops.

    An endpoint is sent no stop strings (the API would drop them from the reply, the letter with
    them), so a model that runs on past its answer is cut here: every teacher is judged on what
    the HF path would have produced. An output without a complete answer is returned unchanged.
    """
    ends = [i + len(stop) for stop in ANSWER_STOPS if (i := output.find(stop)) >= 0]
    return output[:min(ends)] if ends else output


def derived_seed(seed: int, qid: str, tag: str) -> int:
    """A 31-bit seed for one try of one question: the same for the same (--seed, id, try) in any run."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{qid}\0{tag}".encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass
class Item:
    """One question being worked on: its form, its tries so far and what was kept."""

    mcq: MCQ
    detailed: bool
    tries: list[dict] = field(default_factory=list)
    hint: dict | None = None
    kind: str = ""
    rationale: str = ""

    def record(self) -> dict:
        """The journal line of a finished question."""
        return {"id": self.mcq.id, "exam_type": self.mcq.exam_type, "format": "detailed" if self.detailed else "simple",
                "kind": self.kind, "rationale": self.rationale, "tries": self.tries, "hint": self.hint}


def solve_batch(teacher, items: Sequence[Item], cfg: RationalesConfig, exemplars: Sequence[Exemplar],
                glossary: Glossary) -> None:
    """Fill in `kind` and `rationale` of every item: up to `cfg.samples` tries, the hinted try, the template."""
    sampling = dict(temperature=cfg.temperature, top_p=cfg.top_p)

    def ask(todo: list[Item], tag: str, hinted: bool) -> list[tuple[Item, Verdict, str]]:
        conversations = [conversation(it.mcq, it.detailed, exemplars, cfg.shots, it.mcq.answer if hinted else "")
                         for it in todo]
        seeds = tuple(derived_seed(cfg.seed, it.mcq.id, tag) for it in todo)
        outputs = [cut_after_answer(out) for out in teacher(conversations, cfg.max_new_tokens,
                                                             Sampling(seeds=seeds, **sampling))]
        return [(it, judge(out, it.mcq, it.detailed, hinted), out) for it, out in zip(todo, outputs, strict=True)]

    for t in range(cfg.samples):
        todo = [it for it in items if not it.kind]
        if not todo:
            break
        for it, verdict, out in ask(todo, f"try{t}", hinted=False):
            it.tries.append({"letter": verdict.letter, "kept": verdict.ok, "reason": verdict.reason, "output": out})
            if verdict.ok:
                it.kind, it.rationale = "teacher", verdict.rationale
    todo = [it for it in items if not it.kind]
    if cfg.rationalise and todo:
        for it, verdict, out in ask(todo, "hint", hinted=True):
            it.hint = {"letter": verdict.letter, "kept": verdict.ok, "reason": verdict.reason, "output": out}
            if verdict.ok:
                it.kind, it.rationale = "rationalised", verdict.rationale
    for it in items:
        if not it.kind:
            it.kind = "template"
            it.rationale = (template_detailed_reasoning(it.mcq, glossary, random.Random(derived_seed(cfg.seed, it.mcq.id, "template")))
                            if it.detailed else template_simple_reasoning(it.mcq, glossary, cfg.rationale_template))


# ---------------------------------------------------------------- the journal


def read_journal(path: Path) -> dict[str, dict]:
    """Finished questions by id from a journal; a torn last line (a kill mid-append) is cut off the file."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        with open(path, "r+b") as fh:
            fh.truncate(len(raw))
            os.fsync(fh.fileno())
    done = {}
    for line in raw.decode("utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            done[row["id"]] = row
    return done


def append_journal(path: Path, record: dict) -> None:
    """Append one finished question and fsync it: once this returns, a kill cannot lose it."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# ---------------------------------------------------------------- summary


def summarise(records: Sequence[dict]) -> dict:
    """Kept / rationalised / fallback counts and the teacher's accuracy, per exam type and over all.

    `teacher_accuracy`: the first try's letter is gold (a proportion with its Wilson interval);
    `teacher_accuracy_any`: some unhinted try's letter is; `right_letter_rejected`: tries that
    ended on the gold letter but were not kept (form, early answer).
    """
    def group(rows: Sequence[dict]) -> dict:
        first = [bool(r["tries"]) and r["tries"][0]["letter"] == r["gold"] for r in rows]
        anyright = [any(t["letter"] == r["gold"] for t in r["tries"]) for r in rows]
        return {"n": len(rows), **{k: sum(r["kind"] == k for r in rows) for k in KINDS},
                "detailed": sum(r["format"] == "detailed" for r in rows),
                "teacher_accuracy": proportion(sum(first), len(rows)),
                "teacher_accuracy_any": proportion(sum(anyright), len(rows)),
                "tries": sum(len(r["tries"]) for r in rows) + sum(r["hint"] is not None for r in rows),
                "right_letter_rejected": sum(t["letter"] == r["gold"] and not t["kept"] for r in rows for t in r["tries"])}

    exams = [e for e in EXAM_TYPES if any(r["exam_type"] == e for r in records)]
    exams += sorted({r["exam_type"] for r in records} - set(exams))
    return {"by_exam_type": {e or "(none)": group([r for r in records if r["exam_type"] == e]) for e in exams},
            "all": group(records)}


def summary_table(summary: dict) -> str:
    """The summary as one fixed-width table: exam type, n, kept, rationalised, fallback, teacher accuracy."""
    head = f"{'exam type':<10} {'n':>5} {'kept':>6} {'rationalised':>13} {'fallback':>9} {'teacher acc (1st try)':>22}"
    rows = [head, "-" * len(head)]
    for name, g in [*summary["by_exam_type"].items(), ("all", summary["all"])]:
        acc = g["teacher_accuracy"]
        rows.append(f"{name:<10} {g['n']:>5} {g['teacher']:>6} {g['rationalised']:>13} {g['template']:>9} "
                    f"{acc['value']:>9.1%} [{acc['ci95'][0]:.0%}, {acc['ci95'][1]:.0%}]")
    return "\n".join(rows)


# ---------------------------------------------------------------- the command


def run_rationales(cfg: RationalesConfig) -> dict:
    """`kormedqa rationales`: write `cfg.output`/rationales.jsonl (+ summary, run.json), resumably.

    Returns the summary dict. Raises UsageError for missing --data/--output, DataError for bad
    questions or exemplars, ModelError / TeacherError for a teacher that cannot be used,
    OutputExistsError for an existing output without --resume/--overwrite: all before the output
    is claimed. A TeacherError during the run (endpoint gone, rate limit past the retries) leaves
    the journal with every finished question and no rationales.jsonl; rerun with --resume.
    """
    from tqdm.auto import tqdm

    if not cfg.data or not cfg.output:
        raise UsageError("--data and --output are required")
    existing = Path(cfg.output)
    if existing.exists() and (not existing.is_dir() or any(existing.iterdir())) and not (cfg.resume or cfg.overwrite):
        # Refused before the data and the teacher load (a 27B teacher takes minutes); claimed after.
        raise OutputExistsError(f"{existing} already exists: pass --resume to continue it or --overwrite to replace it")
    mcqs = load_mcq_sources(cfg.data, cfg.split)
    detailed = choose_detailed(len(mcqs), cfg.seed, cfg.detailed_fraction)  # over all questions, as prepare
    chosen = [Item(q, i in detailed) for i, q in enumerate(mcqs)][: cfg.limit or None]
    exemplars, exemplar_source = choose_exemplars(cfg)
    glossary = Glossary(load_dictionary(*cfg.dictionary)) if cfg.dictionary else Glossary()
    if cfg.resume:  # a server on another port or a new key is the same teacher
        check_resumed_settings(cfg.output, cfg, RESUMABLE_CHANGES | {"teacher_url", "teacher_key_env", "max_retries"})
    choice = run_precision(cfg)  # the run's precision, decided once (kept on resume) and passed down
    teacher, teacher_info = make_teacher(cfg, choice)
    out = claim_output(cfg.output, resume=cfg.resume, overwrite=cfg.overwrite)
    run = provenance(cfg, {f"data{i}": d for i, d in enumerate(cfg.data)}, choice=choice)
    run.update(teacher=teacher_info, prompt_sha256=prompt_sha256(exemplars), exemplars=exemplar_source,
               sampling={"samples": cfg.samples, "temperature": cfg.temperature, "top_p": cfg.top_p,
                         "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "rationalise": cfg.rationalise})
    write_json_atomic(out / "run.json", run)

    journal = out / "journal.jsonl"
    done = read_journal(journal)
    started = time.time()
    # Batches are fixed slices of the question list, and one is skipped only when every question
    # in it is journaled: a resumed run recomputes exactly the batches an unbroken run computed,
    # with the same neighbours, so even batched numerics give the same texts.
    batches = [chosen[i:i + cfg.batch_size] for i in range(0, len(chosen), cfg.batch_size)]
    finished = sum(all(it.mcq.id in done for it in b) * len(b) for b in batches)
    with tqdm(total=len(chosen), initial=finished, desc="rationales", unit="q") as bar:
        for batch in batches:
            if all(it.mcq.id in done for it in batch):
                continue
            solve_batch(teacher, batch, cfg, exemplars, glossary)
            for it in batch:
                done[it.mcq.id] = it.record()
                append_journal(journal, done[it.mcq.id])
                fault_point("rationale_journaled")
            bar.update(len(batch))
    records = [{**done[it.mcq.id], "gold": it.mcq.answer} for it in chosen]
    summary = {**summarise(records), "teacher": teacher_info, "exemplars": exemplar_source,
               "seconds_this_run": round(time.time() - started, 1), "questions_this_run": len(chosen) - finished}
    write_jsonl_atomic(out / "rationales.jsonl", ({"id": r["id"], "rationale": r["rationale"], "kind": r["kind"],
                                                   "format": r["format"]} for r in records))
    write_json_atomic(out / "rationales_summary.json", summary)
    print(summary_table(summary))
    print(f"rationales written to {out / 'rationales.jsonl'}")
    return summary

"""A persona: its hand-written system prompt, few-shot dialogues, and the rule that checks it.

On disk, beside each other (`examples/personas/pirate.*`):
- `pirate.txt`: the plain system prompt, the hard prompt a soft prompt is compared with;
- `pirate.shots.jsonl`: example dialogues in the persona's voice (`{"messages": [...]}` lines),
  put after the system prompt in the teacher's context: a small model follows examples far
  better than instructions;
- `pirate.check.json`: the adherence rule (one of `RULES`), also copied into the trained task's
  `task.json` so a served persona carries its own check.

Beside them, `facts.jsonl` (any persona): questions with a known short answer, to see that a
persona still answers correctly (`Fact`, `load_facts`).

Torch-free: the checks run on text, in tests and in the eval command alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.render import ChatMessage

RULES = ("vocabulary", "terse", "praise_opening")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_WORD = re.compile(r"\d+(?:[.,]\d+)*|[A-Za-z][A-Za-z0-9'’-]*")


def sentences(text: str) -> list[str]:
    """Sentences of an answer: split after . ! or ? followed by whitespace."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _phrase_hits(text: str, phrases: tuple[str, ...]) -> int:
    """Occurrences of the phrases as whole words (case-insensitive); "ye" never matches "yes"."""
    low = " ".join(words(text))
    return sum(len(re.findall(rf"(?<![a-z0-9]){re.escape(p)}(?![a-z0-9])", low)) for p in phrases)


@dataclass(frozen=True)
class Check:
    """An adherence rule on one answer's text."""

    rule: str
    description: str = ""
    words: tuple[str, ...] = ()  # vocabulary: the persona's words or phrases
    min_hits: int = 1  # vocabulary: occurrences needed
    max_sentences: int = 1  # terse
    max_words: int = 15  # terse
    praise: tuple[str, ...] = ()  # praise_opening: one of these words ...
    subject: tuple[str, ...] = ()  # ... and one of these, in the first sentence

    @classmethod
    def from_json(cls, data: Any) -> Check:
        if not isinstance(data, dict) or data.get("rule") not in RULES:
            raise ValueError(f"a check needs a rule, one of {', '.join(RULES)}")
        known = {"rule", "description", "words", "min_hits", "max_sentences", "max_words"}
        known |= {"praise", "subject"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown check fields: {', '.join(unknown)}")
        lists = {
            k: tuple(str(w).lower() for w in data.get(k, ()))
            for k in ("words", "praise", "subject")
        }
        check = cls(
            rule=str(data["rule"]),
            description=str(data.get("description", "")),
            min_hits=int(data.get("min_hits", 1)),
            max_sentences=int(data.get("max_sentences", 1)),
            max_words=int(data.get("max_words", 15)),
            **lists,
        )
        if check.rule == "vocabulary" and not check.words:
            raise ValueError("a vocabulary check needs words")
        if check.rule == "praise_opening" and not (check.praise and check.subject):
            raise ValueError("a praise_opening check needs praise and subject words")
        return check

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "description": self.description}
        if self.rule == "vocabulary":
            out |= {"words": list(self.words), "min_hits": self.min_hits}
        elif self.rule == "terse":
            out |= {"max_sentences": self.max_sentences, "max_words": self.max_words}
        else:
            out |= {"praise": list(self.praise), "subject": list(self.subject)}
        return out

    def passes(self, answer: str) -> bool:
        if not answer.strip():
            return False
        if self.rule == "vocabulary":
            return _phrase_hits(answer, self.words) >= self.min_hits
        if self.rule == "terse":
            parts = sentences(answer)
            return len(parts) <= self.max_sentences and len(words(answer)) <= self.max_words
        first = sentences(answer)[0]
        return _phrase_hits(first, self.praise) > 0 and _phrase_hits(first, self.subject) > 0


def _forms(topic_word: str) -> tuple[str, str]:
    """What names a topic word: a word starting with its stem (the word less up to three
    letters, four at least: "volcanoes" -> "volcan"), or its singular as a whole word ("cows" ->
    "cow", too short to have a stem of its own; "" when it is no plural)."""
    singular = topic_word[:-1] if topic_word.endswith("s") and not topic_word.endswith("ss") else ""
    return topic_word[: max(4, len(topic_word) - 3)], singular


def on_topic(answer: str, topic: str) -> bool:
    """The answer addresses the question: it names the topic (a word of 4+ letters of it, by
    its stem, so "volcanoes" matches "volcano", "gardening" "garden" and "cows" "cow")."""
    forms = [_forms(w) for w in words(topic) if len(w) >= 4]
    said = words(answer)
    return (
        any(w.startswith(stem) or w == one for stem, one in forms for w in said) if forms else True
    )


@dataclass(frozen=True)
class Fact:
    """A question with a known short answer: whether a persona, in its voice, still gets it."""

    question: str
    answers: tuple[str, ...]  # any one of them, as whole words (normalised by `words`)

    def answered_by(self, text: str) -> bool:
        return _phrase_hits(text, self.answers) > 0


def _fact(line: str, where: str) -> Fact:
    try:
        data = json.loads(line)
        question, raw = data["question"], data["answers"]
        if not isinstance(question, str) or not question.strip() or not isinstance(raw, list):
            raise TypeError
        answers = tuple(" ".join(words(a)) for a in raw)  # TypeError on a non-string
        if not answers or not all(answers):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f'{where}: expected {{"question": "...", "answers": ["...", ...]}}, '
            "each answer with a word or number in it"
        ) from None
    return Fact(question.strip(), answers)


def load_facts(path: Path) -> tuple[Fact, ...]:
    """`{"question": ..., "answers": [...]}` lines; every question distinct."""
    if not path.is_file():
        raise ValueError(f"no facts file {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    facts = [_fact(line, f"{path}:{i}") for i, line in enumerate(lines, 1) if line.strip()]
    if not facts:
        raise ValueError(f"{path}: no facts")
    if len({f.question for f in facts}) != len(facts):
        raise ValueError(f"{path}: a question is listed twice")
    return tuple(facts)


@dataclass(frozen=True)
class Persona:
    name: str
    system_prompt: str
    shots: tuple[tuple[ChatMessage, ...], ...]  # example dialogues, user/assistant turns
    check: Check | None  # None: a bare system prompt, with nothing to check it by

    def adherence(self, answers: Sequence[str]) -> float | None:
        """Share of answers passing the check (None without a check or answers)."""
        if self.check is None or not answers:
            return None
        return sum(self.check.passes(a) for a in answers) / len(answers)

    def context(self) -> tuple[ChatMessage, ...]:
        """The teacher's context: the system prompt, then every example dialogue."""
        turns = [m for shot in self.shots for m in shot]
        return (ChatMessage("system", self.system_prompt), *turns)


def _shot(line: str, where: str) -> tuple[ChatMessage, ...]:
    try:
        data = json.loads(line)
        messages = tuple(ChatMessage(str(m["role"]), str(m["content"])) for m in data["messages"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f'{where}: expected {{"messages": [{{role, content}}]}} ({exc})') from None
    if not messages or any(m.role not in ("user", "assistant") for m in messages):
        raise ValueError(f"{where}: example dialogues hold user and assistant turns only")
    return messages


def load_persona(path: Path) -> Persona:
    """`path` is the persona's system prompt (`NAME.txt`); its shots and check sit beside it."""
    if not path.is_file():
        raise ValueError(f"no persona file {path}")
    system_prompt = path.read_text(encoding="utf-8").strip()
    if not system_prompt:
        raise ValueError(f"{path}: empty system prompt")
    name = path.name.removesuffix(".txt")
    shots_path = path.with_name(f"{name}.shots.jsonl")
    shots: tuple[tuple[ChatMessage, ...], ...] = ()
    if shots_path.is_file():
        lines = shots_path.read_text(encoding="utf-8").splitlines()
        shots = tuple(
            _shot(line, f"{shots_path}:{i}") for i, line in enumerate(lines, 1) if line.strip()
        )
    check_path = path.with_name(f"{name}.check.json")
    if not check_path.is_file():
        raise ValueError(f"{check_path}: a persona needs its adherence check")
    try:
        check = Check.from_json(json.loads(check_path.read_text(encoding="utf-8")))
    except ValueError as exc:
        raise ValueError(f"{check_path}: {exc}") from None
    return Persona(name=name, system_prompt=system_prompt, shots=shots, check=check)

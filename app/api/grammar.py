"""Constrained decoding, library side: grammars compiled by llguidance (chosen by measurement:
bench/constrained) into the engine's `TokenConstraint`. JSON schemas, a choice among fixed
strings (a task's labels) and tool calls all become one llguidance grammar.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.hf
from app.api.errors import ApiError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Compact JSON (no free whitespace: a small model cannot wander off into blank space), and
# schema keywords llguidance does not implement are ignored rather than refused.
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False, "lenient": True}


class Matcher:
    """One row's llguidance matcher, as the engine's `TokenMatcher`."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._matcher = matcher

    def mask(self) -> bytes:
        return self._matcher.compute_bitmask()

    def consume(self, token: int) -> None:
        self._matcher.consume_token(token)

    def finished(self) -> bool:
        return bool(self._matcher.is_stopped())


@dataclass(frozen=True, eq=False)
class Grammar:
    """A compiled grammar, as the engine's `TokenConstraint`: a fresh matcher per row."""

    tokenizer: llguidance.LLTokenizer
    grammar: str

    def matcher(self) -> Matcher:
        return Matcher(llguidance.LLMatcher(self.tokenizer, self.grammar, log_level=0))


def _literal(text: str) -> str:
    return json.dumps(text)  # a Lark string literal: JSON's escapes are Lark's


class Grammars:
    """Builds constraints for one model's tokenizer. The tokenizer's llguidance view is built on
    first use (about a second for a 49k vocabulary), once."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        self._hf = tokenizer
        self._vocab = vocab_size
        self._eos = list(eos_token_ids)
        self._lock = threading.Lock()
        self._tokenizer: llguidance.LLTokenizer | None = None

    def _ll(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf, n_vocab=self._vocab, eos_token=self._eos
                )
            return self._tokenizer

    def _compile(self, grammar: str, param: str) -> Grammar:
        tokenizer = self._ll()
        error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        if error and not error.startswith("WARNING"):
            raise ApiError(400, f"cannot enforce this {param}: {error}", param=param)
        return Grammar(tokenizer, grammar)

    def json_schema(self, schema: Mapping[str, Any], param: str) -> Grammar:
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(schema), defaults=JSON_OPTIONS
            )
        except ValueError as exc:
            raise ApiError(400, f"invalid JSON schema: {exc}", param=param) from None
        return self._compile(grammar, param)

    def choice(self, options: Sequence[str], param: str) -> Grammar:
        """Exactly one of `options`, optionally after one space (text after a colon)."""
        alternatives = " | ".join(_literal(o) for o in options)
        return self._compile(
            llguidance.LLMatcher.grammar_from_lark(f'start: " "? ({alternatives})'), param
        )

    def lark(self, grammar: str, param: str) -> Grammar:
        return self._compile(llguidance.LLMatcher.grammar_from_lark(grammar), param)

"""Incremental detokenization with exact stop-string cuts.

Text is released only once it can no longer turn into a stop string (or into a complete UTF-8
character), so a streamed response never shows a partial stop string it later takes back.
"""

from __future__ import annotations

from typing import Any


class TextStream:
    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._ids: list[int] = []
        self._emitted = 0  # characters of the decoded text already released
        self._cut: int | None = None  # where a stop string began: nothing after it is released

    def _decode(self) -> str:
        return str(self._tokenizer.decode(self._ids, skip_special_tokens=True))

    def add(self, token_id: int) -> tuple[str, bool]:
        """Append one token. Returns (text to release now, whether a stop string was hit)."""
        self._ids.append(token_id)
        text = self._decode()
        cut = min((i for i in (text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self._cut = cut
            return self._release(text, cut), True
        end = len(text.rstrip("\ufffd"))  # an incomplete multi-byte character decodes as U+FFFD
        # Hold back the longest tail that is still the beginning of some stop string.
        hold = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, end), hold, -1):
                if text.endswith(s[:k], 0, end):
                    hold = k
                    break
        return self._release(text, end - hold), False

    def flush(self) -> str:
        """At the end (EOS or length): release whatever was held back."""
        return self._release(self._decode(), self._cut)

    def _release(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        if end <= self._emitted:
            return ""
        delta = text[self._emitted : end]
        self._emitted = end
        return delta
